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
