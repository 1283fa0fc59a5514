"""Keras input pipelines built once per data set and kept, instead of once per `fit` or `evaluate`.

Given numpy arrays, every `Model.fit` and `Model.evaluate` call builds a new `tf.data` pipeline
(Keras's `ArrayDataAdapter`: a shuffled index permutation, batching, a traced parallel gather) and an
iterator over it: on a small local data set that costs more than the training itself (digits: 60 ms
of CPU for an `evaluate` on 96 examples, 5 ms over a kept pipeline). `fit_dataset` and
`evaluate_dataset` return pipelines that give Keras the very batches it would have made of those
arrays, in the same order, built on first use and kept while the arrays are:
- evaluation: the examples in order, in batches (no permutation);
- training: Keras's own shuffled pipeline is built once, under the global seed of the call, and read
  once; its batches are kept, in order, as a plain pipeline. Its permutation comes from a random op
  whose seeds are fixed when the pipeline is built, so every pass over it (every epoch, every round)
  yields the same order, as does a pipeline Keras builds afresh after the same `set_random_seed` (the
  agent sets the run's seed before every round). A different global seed builds it again.
tests/test_keras_data.py checks both bit for bit against `fit` and `evaluate` on the arrays, over
rounds and epochs.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

KEPT = 8
"""Pipelines kept (least recently used dropped first): a client's train and test splits, a held-out set."""

EVALUATE_BATCH_SIZE = 32
"""Keras's own default batch size for `evaluate`."""

_Key = tuple[int, int, int, bool, Any]
_kept: OrderedDict[_Key, tuple[Any, Any, Any]] = OrderedDict()


def fit_dataset(x: np.ndarray, y: np.ndarray, batch_size: int) -> Any:
    """The batches `Model.fit(x, y, batch_size=batch_size, shuffle=True)` trains on, in its order (give
    `fit` `shuffle=False` with it: the order is the shuffled one, and Keras warns of a `shuffle` it ignores)."""
    return _dataset(x, y, batch_size, shuffle=True)


def evaluate_dataset(x: np.ndarray, y: np.ndarray, batch_size: int = EVALUATE_BATCH_SIZE) -> Any:
    """The batches `Model.evaluate(x, y, batch_size=batch_size)` evaluates (default 32, Keras's)."""
    return _dataset(x, y, batch_size, shuffle=False)


def _dataset(x: Any, y: Any, batch_size: int, shuffle: bool) -> Any:
    from tensorflow.python.eager import context

    seed = context.global_seed() if shuffle else None  # the permutation's seeds follow from it
    key = (id(x), id(y), int(batch_size), shuffle, seed)
    kept = _kept.get(key)
    if kept is not None and kept[0] is x and kept[1] is y:  # the arrays are held, so their ids are theirs
        _kept.move_to_end(key)
        return kept[2]
    dataset = _build(x, y, int(batch_size), shuffle)
    _kept[key] = (x, y, dataset)
    while len(_kept) > KEPT:
        _kept.popitem(last=False)
    return dataset


def _build(x: Any, y: Any, batch_size: int, shuffle: bool) -> Any:
    import tensorflow as tf
    from keras.src.trainers.data_adapters.array_data_adapter import ArrayDataAdapter

    plain = isinstance(x, np.ndarray) and isinstance(y, np.ndarray)
    if plain and not shuffle:
        return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)
    adapter = ArrayDataAdapter(x, y, batch_size=batch_size, shuffle=shuffle)
    # its length stated, as Keras knows it for arrays: no "ran out of data" warning at the end of a pass
    keras_own = adapter.get_tf_dataset().apply(tf.data.experimental.assert_cardinality(adapter.num_batches))
    if not plain:  # nested inputs: Keras's own pipeline, kept
        return keras_own
    batches = [(bx.numpy(), by.numpy()) for bx, by in keras_own]
    xs, ys = np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])
    return tf.data.Dataset.from_tensor_slices((xs, ys)).batch(batch_size)


# -- the compiled step over kept batches ---------------------------------------------------------


def batches(dataset: Any) -> list[tuple[Any, ...]]:
    """A kept pipeline's batches as tensors, read once and kept with it (the pipeline yields the same
    batches, in the same order, on every pass)."""
    kept = _batches.get(id(dataset))
    if kept is None or kept[0] is not dataset:
        kept = _batches[id(dataset)] = (dataset, list(dataset))
        live = {id(entry[2]) for entry in _kept.values()}
        for key in [k for k in _batches if k not in live and k != id(dataset)]:
            del _batches[key]
    return kept[1]


_batches: dict[int, tuple[Any, list[tuple[Any, ...]]]] = {}


def fit_epochs(net: Any, dataset: Any, epochs: int) -> dict[str, float]:
    """What `net.fit(dataset, epochs=epochs, shuffle=False, verbose=0)` does to `net` and returns as its
    last epoch's logs, for a compiled, built model and no callbacks: each epoch resets the metrics and
    runs Keras's own compiled train step (`make_train_function`) on each kept batch in turn. Without
    `fit`'s per-call machinery (an epoch iterator, a `tf.data` iterator, callbacks), a small local data
    set trains in a fraction of the time, to the same weights (tests/test_keras_data.py)."""
    net.make_train_function()
    net.stop_training = False
    kept = batches(dataset)
    logs: Any = {}
    for _ in range(epochs):
        net.reset_metrics()
        steps = iter(kept)
        for _ in kept:
            logs = net.train_function(steps)
        logs = _metrics_or_logs(net, logs)
    return _floats(logs)


def evaluate_batches(net: Any, dataset: Any) -> dict[str, float]:
    """What `net.evaluate(dataset, verbose=0, return_dict=True)` returns, by Keras's own compiled test
    step (`make_test_function`) on each kept batch in turn, the metrics reset first."""
    net.make_test_function()
    kept = batches(dataset)
    net.reset_metrics()
    logs: Any = {}
    steps = iter(kept)
    for _ in kept:
        logs = net.test_function(steps)
    return _floats(_metrics_or_logs(net, logs))


def _metrics_or_logs(net: Any, logs: Any) -> Any:
    """The model's metric results when they are the step's logs (Keras's `_get_metrics_result_or_logs`)."""
    results = net.get_metrics_result()
    return results if isinstance(logs, dict) and set(logs) == set(results) else logs


def _floats(logs: Any) -> dict[str, float]:
    return {name: float(np.asarray(value)) for name, value in dict(logs).items()}
