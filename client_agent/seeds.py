"""The global random seeds, set as `keras.utils.set_random_seed` sets them, without throwing away
TensorFlow's compiled functions when nothing needs it.

`tf.random.set_seed` clears the eager context's caches so that random ops whose kernels keep their
own state (`RandomUniform`, `RandomShuffle`, ...: stateful ops seeded by `seed` and `seed2`) start
their streams again. That also drops every instantiated function: the next call of a Keras train or
test step instantiates and optimizes its graph again, 10-15 ms each. A client's round (evaluate, fit,
evaluate) paid about 40 ms for it, every round; a simulation worker, which sets the seed for every
client it trains, paid it for every client, most of a small client's time.

Keras 3's own random ops are stateless (a layer's random state is a variable), and TensorFlow runs
eager operations as functions too, so the context's function library shows every op whose kernel
could hold a stream. When none does, there is nothing to restart: `set_random_seed` sets the same
seeds (Python's, NumPy's, Keras's, TensorFlow's global seed and its eager op-seed sequence) and keeps
the caches. Otherwise it is `keras.utils.set_random_seed` itself.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np

_stream_ops: dict[str, bool] = {}
"""Per function in TensorFlow's context: whether it holds an op whose kernel keeps a random stream."""
_stream_op_types: dict[str, bool] = {}


def set_random_seed(seed: int) -> None:
    """`keras.utils.set_random_seed(seed)`, keeping TensorFlow's instantiated functions when no function
    it holds has a random op with a stream of its own (the module doc)."""
    from tensorflow.python.eager import context

    from client_agent.keras_model import import_keras

    keras = import_keras()
    ctx = context.context()
    if not (context.executing_eagerly() and hasattr(ctx, "_rng")) or holds_random_streams(ctx):
        keras.utils.set_random_seed(seed)
        return
    from keras.src.backend.common import global_state
    from keras.src.random import seed_generator
    from keras.src.utils import rng_utils

    if not isinstance(seed, int):
        raise ValueError(f"the random seed must be an integer, got {seed!r}")
    global_state.set_global_attribute(rng_utils.GLOBAL_RANDOM_SEED, seed)
    global_state.set_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR, None)
    random.seed(seed)
    np.random.seed(seed)
    ctx._seed = seed  # what `tf.random.set_seed` sets, but for the cache clear
    ctx._rng = random.Random(seed)


def holds_random_streams(ctx: Any) -> bool:
    """Whether a function in the context's library (eager ops included) has an op whose kernel keeps a
    random stream: a stateful op with `seed` and `seed2` attributes. Each function is read once."""
    names = ctx.list_function_names()
    for name in names:
        if name not in _stream_ops:
            _stream_ops[name] = any(_keeps_stream(node.op) for node in ctx.get_function_def(name).node_def)
    return any(_stream_ops[name] for name in names)


def _keeps_stream(op_type: str) -> bool:
    if op_type not in _stream_op_types:
        from tensorflow.python.framework import op_def_registry

        op_def = op_def_registry.get(op_type)
        attrs = {attr.name for attr in op_def.attr} if op_def is not None else set()
        _stream_op_types[op_type] = op_def is not None and op_def.is_stateful and {"seed", "seed2"} <= attrs
    return _stream_op_types[op_type]
