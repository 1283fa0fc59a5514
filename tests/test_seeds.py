"""`client_agent.seeds.set_random_seed`: Keras's seeds, without TensorFlow's cache clear when nothing
holds a random stream of its own."""

from __future__ import annotations

import numpy as np

from client_agent import seeds


def _clears(monkeypatch) -> list[int]:
    from tensorflow.python import pywrap_tfe

    cleared: list[int] = []
    clear = pywrap_tfe.TFE_ContextClearCaches
    monkeypatch.setattr(pywrap_tfe, "TFE_ContextClearCaches", lambda handle: cleared.append(1) or clear(handle))
    return cleared


def _two_rounds(set_seed) -> list[np.ndarray]:
    """Two rounds as `keras_fit` trains a warm model: the seed set, then evaluate, fit, evaluate."""
    from client_agent.keras_model import import_keras
    from client_agent.models import digits_mlp

    keras = import_keras()
    set_seed(1)
    x = np.random.default_rng(0).random((70, 64), dtype=np.float32)
    y = np.arange(70) % 10
    net = digits_mlp()
    for _ in range(2):
        set_seed(3)
        net.evaluate(x, y, verbose=0)
        net.fit(x, y, batch_size=32, epochs=1, shuffle=True, verbose=0)
        net.evaluate(x, y, verbose=0)
    return [*net.get_weights(), np.random.random(3), np.asarray(keras.random.uniform((3,)))]


def test_the_seeds_are_keras_s_and_the_compiled_functions_are_kept(monkeypatch):
    from tensorflow.python.eager import context

    from client_agent.keras_model import import_keras

    expected = _two_rounds(import_keras().utils.set_random_seed)
    cleared = _clears(monkeypatch)
    found = _two_rounds(seeds.set_random_seed)
    assert all(np.array_equal(a, b) for a, b in zip(found, expected, strict=True))  # bit for bit
    assert context.global_seed() == 3
    assert not cleared  # no op of a Keras model keeps a random stream in its kernel


def test_a_random_op_with_a_stream_of_its_own_still_restarts_with_the_seed(monkeypatch):
    import tensorflow as tf

    cleared = _clears(monkeypatch)
    seeds.set_random_seed(11)
    first = tf.random.uniform([2]).numpy()  # a stateful op: its kernel keeps the stream
    from tensorflow.python.eager import context

    assert seeds.holds_random_streams(context.context())
    seeds.set_random_seed(11)
    assert np.array_equal(tf.random.uniform([2]).numpy(), first)  # the stream started again
    assert cleared
