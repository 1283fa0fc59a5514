"""The batches Keras would make of a client's numpy arrays, made once and kept, and Keras's own
compiled steps run on them.

Given numpy arrays, every `Model.fit` and `Model.evaluate` call builds a new `tf.data` pipeline
(Keras's `ArrayDataAdapter`: a shuffled index permutation, batching, a traced parallel gather), an
iterator over it, an epoch iterator and callbacks: on a small local data set that costs several
times the training itself (digits: 0.28 s of CPU for a round's evaluate, fit, evaluate; 0.09 s
with what follows). `kept(x, y, batch_size, shuffle)` gives the batches Keras would make, in its
order, made once and kept while the arrays are:
- evaluation: the examples in order, in batches;
- training: in Keras's shuffled order. The order is what Keras's own permutation pipeline yields,
  per number of examples, batch size and global seed. Its random op's seeds are fixed when the
  pipeline is built, from the global seed alone, so every pass (every epoch, every round) yields the
  same order, as does a pipeline Keras builds afresh after the same `set_random_seed` (the agent
  sets the run's seed before every round). The seeds are read from one pipeline's graph and the
  op is run with them for each number of examples (a simulation worker meets hundreds).
`Kept.dataset()` is a plain `tf.data` pipeline of those batches (for Keras's `fit` and `evaluate`);
`fit_epochs` and `evaluate_batches` run Keras's compiled train and test steps on `Kept.batches()`
directly, for a model that went through `fit` and `evaluate` once. tests/test_keras_data.py checks
all of it bit for bit against `fit` and `evaluate` on the arrays, over rounds, epochs and seeds.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

KEPT = 8
"""Arrays whose batches are kept (least recently used dropped first): a client's train and test
splits, a held-out set, and the clients a simulation worker trained last."""

EVALUATE_BATCH_SIZE = 32
"""Keras's own default batch size for `evaluate`."""

ORDERS_KEPT = 256
"""Shuffled orders kept, by number of examples, batch size and global seed."""


class Kept:
    """The batches of (x, y) Keras would make, in its order (`order`: the examples' indices; None: as they are)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, order: np.ndarray | None) -> None:
        self.x, self.y, self.batch_size, self.order = x, y, batch_size, order
        self._dataset: Any = None
        self._batches: list[tuple[Any, Any]] | None = None

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return (self.x, self.y) if self.order is None else (self.x[self.order], self.y[self.order])

    def dataset(self) -> Any:
        """A `tf.data` pipeline of the batches (give `fit` `shuffle=False` with it: it is in Keras's order)."""
        if self._dataset is None:
            import tensorflow as tf

            self._dataset = tf.data.Dataset.from_tensor_slices(self._arrays()).batch(self.batch_size)
        return self._dataset

    def batches(self) -> list[tuple[Any, Any]]:
        """The batches as tensors."""
        if self._batches is None:
            import tensorflow as tf

            x, y = self._arrays()
            size = self.batch_size
            self._batches = [
                (tf.constant(x[i : i + size]), tf.constant(y[i : i + size])) for i in range(0, len(y), size)
            ]
        return self._batches


_kept: OrderedDict[tuple[int, int, int, bool, Any], tuple[Any, Any, Kept]] = OrderedDict()
_orders: OrderedDict[tuple[int, int, Any], np.ndarray] = OrderedDict()


def arrays_kept(*arrays: Any) -> bool:
    """Whether these are arrays whose batches are kept: numpy arrays (a trainer's other inputs, such
    as a dict of features, go to Keras as they are)."""
    return all(isinstance(a, np.ndarray) for a in arrays)


def fit_data(x: np.ndarray, y: np.ndarray, batch_size: int) -> Kept:
    """The batches `Model.fit(x, y, batch_size=batch_size, shuffle=True)` trains on, in its order."""
    return _kept_for(x, y, batch_size, shuffle=True)


def evaluate_data(x: np.ndarray, y: np.ndarray, batch_size: int = EVALUATE_BATCH_SIZE) -> Kept:
    """The batches `Model.evaluate(x, y, batch_size=batch_size)` evaluates (default 32, Keras's)."""
    return _kept_for(x, y, batch_size, shuffle=False)


def _kept_for(x: np.ndarray, y: np.ndarray, batch_size: int, shuffle: bool) -> Kept:
    if not (isinstance(x, np.ndarray) and isinstance(y, np.ndarray)):
        raise TypeError("kept batches are made of numpy arrays")
    from tensorflow.python.eager import context

    seed = context.global_seed() if shuffle else None  # the permutation's seeds follow from it
    key = (id(x), id(y), int(batch_size), shuffle, seed)
    entry = _kept.get(key)
    if entry is not None and entry[0] is x and entry[1] is y:  # the arrays are held, so their ids are theirs
        _kept.move_to_end(key)
        return entry[2]
    order = _order(len(y), int(batch_size), seed) if shuffle else None
    kept = _kept[key] = (x, y, Kept(x, y, int(batch_size), order))
    while len(_kept) > KEPT:
        _kept.popitem(last=False)
    return kept[2]


def _order(examples: int, batch_size: int, seed: Any) -> np.ndarray:
    """Keras's shuffled order of `examples` examples (`ArrayDataAdapter`, shuffle=True) under the global
    seed `seed`. It depends on the number of examples and the global seed only, so it is kept by those
    (and the batch size, for safety). Made by the random op Keras's pipeline runs, with the seeds read
    from that pipeline (`_shuffle_seeds`: 3-4 ms), or else by the pipeline itself (40-80 ms: a traced
    map function, graph optimizations, an iterator)."""
    key = (examples, batch_size, seed)
    order = _orders.get(key)
    if order is None:
        seeds = _shuffle_seeds(batch_size, seed)
        order = _pipeline_order(examples, batch_size) if seeds is None else _shuffled(examples, seeds)
        _orders[key] = order
        while len(_orders) > ORDERS_KEPT:
            _orders.popitem(last=False)
    else:
        _orders.move_to_end(key)
    return order


def _pipeline_order(examples: int, batch_size: int) -> np.ndarray:
    """The order Keras's own permutation pipeline yields for `examples` indices, read once."""
    return np.concatenate([batch[0].numpy() for batch in _pipeline(examples, batch_size)])


def _pipeline(examples: int, batch_size: int) -> Any:
    from keras.src.trainers.data_adapters.array_data_adapter import ArrayDataAdapter

    indices = np.arange(examples, dtype=np.int64)
    adapter = ArrayDataAdapter(indices, indices, batch_size=batch_size, shuffle=True)
    return adapter.get_tf_dataset().take(adapter.num_batches)


def _shuffled(examples: int, seeds: tuple[int, int]) -> np.ndarray:
    """What a fresh `RandomShuffle` op of seeds `seeds` yields first for the indices 0..examples-1 (in a
    graph of its own: an op's random stream starts with its kernel)."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        shuffled = tf.raw_ops.RandomShuffle(value=tf.range(examples, dtype=tf.int64), seed=seeds[0], seed2=seeds[1])
    with tf.compat.v1.Session(graph=graph) as session:
        return session.run(shuffled)


PROBE_EXAMPLES = 37
"""The examples of the pipeline `_shuffle_seeds` reads the seeds from and checks them on."""

_seeds: dict[tuple[int, Any], tuple[int, int] | None] = {}


def _shuffle_seeds(batch_size: int, seed: Any) -> tuple[int, int] | None:
    """The seeds of the one `RandomShuffle` op in Keras's permutation pipeline under global seed `seed`
    (fixed when the pipeline is built, from the global seed alone), read from the pipeline's graph
    once per batch size and seed and checked: the op with them must yield the pipeline's own order
    for `PROBE_EXAMPLES` examples. None when the pipeline has no such op, or the check fails (another
    Keras): `_order` then reads every order from the pipeline."""
    key = (batch_size, seed)
    if key not in _seeds:
        import tensorflow as tf

        pipeline = _pipeline(PROBE_EXAMPLES, batch_size)
        graph = tf.compat.v1.GraphDef.FromString(
            tf.raw_ops.DatasetToGraphV2(input_dataset=pipeline._variant_tensor).numpy()
        )
        nodes = [n for n in graph.node if n.op == "RandomShuffle"]
        nodes += [n for f in graph.library.function for n in f.node_def if n.op == "RandomShuffle"]
        found: tuple[int, int] | None = None
        if len(nodes) == 1:
            found = (nodes[0].attr["seed"].i, nodes[0].attr["seed2"].i)
            expected = np.concatenate([batch[0].numpy() for batch in pipeline])
            if not np.array_equal(_shuffled(PROBE_EXAMPLES, found), expected):
                found = None
        _seeds[key] = found
    return _seeds[key]


# -- Keras's compiled steps on the kept batches ---------------------------------------------------


def fit_epochs(net: Any, data: Kept, epochs: int) -> dict[str, float]:
    """What `net.fit(data.dataset(), epochs=epochs, shuffle=False, verbose=0)` does to `net` and returns
    as its last epoch's logs, for a compiled model that went through `fit` once and no callbacks: each
    epoch resets the metrics and runs Keras's own compiled train step (`make_train_function`) on each
    kept batch in turn, without `fit`'s per-call machinery."""
    net.make_train_function()
    net.stop_training = False
    batches = data.batches()
    logs: Any = {}
    for _ in range(epochs):
        net.reset_metrics()
        steps = iter(batches)
        for _ in batches:
            logs = net.train_function(steps)
        logs = _metrics_or_logs(net, logs)
    return _floats(logs)


def evaluate_batches(net: Any, data: Kept) -> dict[str, float]:
    """What `net.evaluate(data.dataset(), verbose=0, return_dict=True)` returns, by Keras's own compiled
    test step (`make_test_function`) on each kept batch in turn, the metrics reset first."""
    net.make_test_function()
    batches = data.batches()
    net.reset_metrics()
    logs: Any = {}
    steps = iter(batches)
    for _ in batches:
        logs = net.test_function(steps)
    return _floats(_metrics_or_logs(net, logs))


def _metrics_or_logs(net: Any, logs: Any) -> Any:
    """The model's metric results when they are the step's logs (Keras's `_get_metrics_result_or_logs`)."""
    results = net.get_metrics_result()
    return results if isinstance(logs, dict) and set(logs) == set(results) else logs


def _floats(logs: Any) -> dict[str, float]:
    return {name: float(np.asarray(value)) for name, value in dict(logs).items()}
