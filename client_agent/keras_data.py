"""Keras input pipelines built once per data set and kept, instead of once per `fit` or `evaluate`.

Given numpy arrays, every `Model.fit` and `Model.evaluate` call builds a new `tf.data` pipeline
(Keras's `ArrayDataAdapter`: a shuffled index permutation, batching, a traced gather): on a small
local data set that costs more than the training itself (digits: 60 ms of CPU for an `evaluate`
on 96 examples, 7 ms over a kept pipeline). `fit_dataset` and `evaluate_dataset` return the very
pipeline Keras would build for those arrays, built on first use and kept while the arrays are. The
numbers do not change: the permutation is drawn from the same seeded random op each time the
pipeline is iterated, as when Keras built it afresh after the same `set_random_seed`
(tests/test_keras_data.py checks it bit for bit, over rounds and epochs).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

KEPT = 8
"""Pipelines kept (least recently used dropped first): a client's train and test splits, a held-out set."""

EVALUATE_BATCH_SIZE = 32
"""Keras's own default batch size for `evaluate`."""

_kept: OrderedDict[tuple[int, int, int, bool], tuple[np.ndarray, np.ndarray, Any]] = OrderedDict()


def fit_dataset(x: np.ndarray, y: np.ndarray, batch_size: int) -> Any:
    """The shuffled, batched pipeline `Model.fit(x, y, batch_size=batch_size, shuffle=True)` builds (give
    `fit` `shuffle=False` with it: the pipeline shuffles, and Keras warns of a `shuffle` it ignores)."""
    return _dataset(x, y, batch_size, shuffle=True)


def evaluate_dataset(x: np.ndarray, y: np.ndarray, batch_size: int = EVALUATE_BATCH_SIZE) -> Any:
    """The batched pipeline `Model.evaluate(x, y, batch_size=batch_size)` builds (default 32, Keras's)."""
    return _dataset(x, y, batch_size, shuffle=False)


def _dataset(x: np.ndarray, y: np.ndarray, batch_size: int, shuffle: bool) -> Any:
    key = (id(x), id(y), int(batch_size), shuffle)
    kept = _kept.get(key)
    if kept is not None and kept[0] is x and kept[1] is y:  # the arrays are held, so their ids are theirs
        _kept.move_to_end(key)
        return kept[2]
    import tensorflow as tf
    from keras.src.trainers.data_adapters.array_data_adapter import ArrayDataAdapter

    adapter = ArrayDataAdapter(x, y, batch_size=int(batch_size), shuffle=shuffle)
    # its length stated, as Keras knows it for arrays: no "ran out of data" warning at the end of each pass
    dataset = adapter.get_tf_dataset().apply(tf.data.experimental.assert_cardinality(adapter.num_batches))
    _kept[key] = (x, y, dataset)
    while len(_kept) > KEPT:
        _kept.popitem(last=False)
    return dataset
