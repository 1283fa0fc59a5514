"""Record-level differential privacy on the client: DP-SGD (Abadi et al. 2016, "Deep Learning with
Differential Privacy") for the default Keras trainer, on Keras 3 with the TensorFlow backend
(tensorflow-privacy does not work with TensorFlow 2.21).

The server's strategy asks for privacy in the round's instructions (these names are the wire format):

- `{"dp_mode": "dp-sgd", "dp_noise_multiplier": z, "dp_clip": C, "dp_delta": d}`: DP-SGD, below;
- `{"dp_mode": "client-clip", "dp_clip": C}`: client-level DP with clipping on the client (the agent
  clips the update before upload, `client_agent.agent.clip_delta`);
- no `dp_mode`: nothing.

One DP-SGD step (`fit`):

1. Poisson sampling: each of the n training examples joins the batch independently with
   probability q = min(1, batch_size / n), so batch sizes vary and a batch may be empty;
2. the gradient of the model's compiled loss (`model.compute_loss`: the loss given to `compile`
   plus the model's regularization terms, e.g. FedProx's proximal term) for every example of the
   batch, in one vectorized pass (`tf.vectorized_map`), each clipped to L2 norm C over all trainable
   variables together;
3. their sum, plus Gaussian noise N(0, (z C)^2) on every coordinate, divided by the *expected*
   batch size q n (a fixed number: one example moves the step by at most C / (q n) before noise);
4. applied by the model's optimizer, at the round's learning rate (the model's own when the run
   sets none).

A round takes `steps_per_round` = epochs x ceil(n / batch_size) steps. The privacy ledger
(`client_agent.privacy_ledger`) accounts exactly this mechanism: that many compositions of the
Poisson-sampled Gaussian mechanism with rate q and noise multiplier z
(`fedstep.privacy.accounting.epsilon_poisson`, add/remove-one neighbours).

Randomness: the noise comes from a TensorFlow generator seeded from the operating system's entropy
(`secrets`), never from a configured seed (noise an observer can reproduce protects nothing). The
sampling does too, by default: the amplification by subsampling the accounting relies on holds
only if nobody can tell which examples a step used. `fit(..., sampling_seed=...)` fixes it, for tests.

Outside the guarantee: the metrics a trainer reports (computed from the data without noise) and the
number of examples. Layers that mix the examples of a batch (BatchNormalization) do not have
per-example gradients; do not use them with DP-SGD.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedstep.core.errors import FedstepError

DP_MODE = "dp_mode"
DP_SGD = "dp-sgd"
CLIENT_CLIP = "client-clip"
MODES = (DP_SGD, CLIENT_CLIP)
NOISE_MULTIPLIER = "dp_noise_multiplier"
CLIP = "dp_clip"
DELTA = "dp_delta"


def dp_mode(instructions: Mapping[str, Any]) -> str | None:
    """The round's `dp_mode` (None: no client-side privacy). ValueError for an unknown mode."""
    mode = instructions.get(DP_MODE)
    if mode is not None and mode not in MODES:
        raise ValueError(f"instruction {DP_MODE} must be one of {', '.join(MODES)}, got {mode!r:.40}")
    return mode


def _number(
    instructions: Mapping[str, Any], name: str, minimum: float, maximum: float = math.inf, *, or_equal: bool = False
) -> float | None:
    """The instruction `name` as a float above `minimum` (or equal to it, with `or_equal`) and below
    `maximum`; None when absent."""
    value = instructions.get(name)
    if value is None:
        return None
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not (number and (minimum <= value if or_equal else minimum < value) and value < maximum):
        bound = f"{'>=' if or_equal else '>'} {minimum:g}" + (f" and < {maximum:g}" if maximum < math.inf else "")
        raise ValueError(f"instruction {name} must be a number {bound}, got {value!r:.40}")
    return float(value)


def client_clip_norm(instructions: Mapping[str, Any]) -> float:
    """C of a `client-clip` round. ValueError when missing or not > 0."""
    clip = _number(instructions, CLIP, 0.0)
    if clip is None:
        raise ValueError(f"{DP_MODE} {CLIENT_CLIP} needs the instruction {CLIP}")
    return clip


@dataclass(frozen=True)
class DpSgdParams:
    """A `dp-sgd` round's parameters: noise multiplier z, clip norm C, and the delta to account at
    (None when the instructions carry none: the round can be trained, not accounted)."""

    noise_multiplier: float
    clip: float
    delta: float | None = None

    @classmethod
    def of(cls, instructions: Mapping[str, Any]) -> DpSgdParams:
        """From the round's instructions; ValueError naming the missing or bad instruction."""
        noise = _number(instructions, NOISE_MULTIPLIER, 0.0, or_equal=True)  # 0: no noise, no guarantee
        clip = _number(instructions, CLIP, 0.0)
        if noise is None or clip is None:
            missing = NOISE_MULTIPLIER if noise is None else CLIP
            raise ValueError(f"{DP_MODE} {DP_SGD} needs the instruction {missing}")
        return cls(noise, clip, _number(instructions, DELTA, 0.0, 1.0))


def sampling_rate(batch_size: int, n: int) -> float:
    """q: the probability that an example is in a step's batch."""
    return min(1.0, batch_size / n)


def steps_per_round(epochs: int, batch_size: int, n: int) -> int:
    """The DP-SGD steps of a round: epochs x ceil(n / batch_size)."""
    return epochs * math.ceil(n / batch_size)


def poisson_batches(n: int, rate: float, steps: int, seed: int | None = None) -> Iterator[np.ndarray]:
    """`steps` batches of indices into n examples, each example in each batch independently with
    probability `rate`. `seed` None: from the operating system's entropy."""
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        yield np.flatnonzero(rng.random(n) < rate).astype(np.int32)


def _per_example(model: Any, clip: float) -> Any:
    """The function `tf.vectorized_map` applies to one (x, y): its clipped gradients and its loss."""
    import tensorflow as tf

    variables = model.trainable_variables

    def one(example: tuple[Any, Any]) -> tuple[list[Any], Any]:
        x, y = example[0][None], example[1][None]
        with tf.GradientTape() as tape:
            loss = model.compute_loss(x=x, y=y, y_pred=model(x, training=True), training=True)
        grads = tape.gradient(loss, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        # sqrt of the sum of squares, not tf.linalg.global_norm (its L2Loss has no vectorized form)
        norm = tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(g)) for g in grads]))
        scale = tf.minimum(1.0, clip / tf.maximum(norm, 1e-30))
        return [g * tf.cast(scale, g.dtype) for g in grads], loss

    return one


def clipped_gradient_sum(model: Any, x: Any, y: Any, clip: float) -> tuple[list[Any], Any]:
    """The sum over the examples of (x, y) of each one's loss gradient clipped to L2 norm `clip`
    (one tensor per trainable variable), and the examples' losses."""
    import tensorflow as tf

    grads, losses = tf.vectorized_map(_per_example(model, clip), (x, y))
    return [tf.reduce_sum(g, axis=0) for g in grads], losses


def _build(model: Any, x: Any, y: Any) -> None:
    """Build the compiled loss and the optimizer's variables outside the traced step."""
    model.compute_loss(x=x, y=y, y_pred=model(x, training=False), training=True)
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)


def fit(
    model: Any,
    x: Any,
    y: Any,
    params: DpSgdParams,
    *,
    epochs: int,
    batch_size: int,
    sampling_seed: int | None = None,
    callbacks: Sequence[Any] = (),
) -> dict[str, float]:
    """Train the compiled Keras `model` on (x, y) with DP-SGD (see the module docstring) for
    `steps_per_round(epochs, batch_size, len(x))` steps. Returns {"train_loss": the mean over the
    non-empty batches of their mean example loss} (empty when every batch was empty).
    `callbacks` are Keras callbacks (the agent's progress bar), called as `fit` would."""
    import tensorflow as tf

    from client_agent.keras_model import import_keras

    keras = import_keras()
    n = len(x)
    if n == 0:
        raise FedstepError("DP-SGD needs training examples; the local train split is empty")
    if model.optimizer is None:
        raise FedstepError("the run's model is not compiled; DP-SGD needs its loss and optimizer")
    x = np.asarray(x)
    if np.issubdtype(x.dtype, np.floating):
        x = x.astype(keras.backend.floatx())
    xs, ys = tf.constant(x), tf.constant(np.asarray(y))
    rate = sampling_rate(batch_size, n)
    expected = rate * n
    stddev = params.noise_multiplier * params.clip
    variables = model.trainable_variables
    noise = tf.random.Generator.from_seed(secrets.randbits(63))
    per_example = _per_example(model, params.clip)
    _build(model, xs[:1], ys[:1])

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int32)])
    def step(indices: Any) -> tuple[Any, Any]:
        grads, losses = tf.vectorized_map(per_example, (tf.gather(xs, indices), tf.gather(ys, indices)))
        noisy = []
        for g in grads:
            total = tf.reduce_sum(g, axis=0)
            noisy.append((total + noise.normal(tf.shape(total), stddev=stddev, dtype=total.dtype)) / expected)
        model.optimizer.apply(noisy, variables)
        return tf.reduce_sum(losses), tf.size(losses)

    per_epoch = math.ceil(n / batch_size)
    batches = poisson_batches(n, rate, epochs * per_epoch, sampling_seed)
    hooks = keras.callbacks.CallbackList(list(callbacks), model=model, epochs=epochs, steps=per_epoch, verbose=0)
    hooks.on_train_begin()
    batch_losses: list[float] = []
    for epoch in range(epochs):
        hooks.on_epoch_begin(epoch)
        for i in range(per_epoch):
            hooks.on_train_batch_begin(i)
            total, count = step(tf.constant(next(batches)))
            logs = {}
            if int(count):
                batch_losses.append(float(total) / int(count))
                logs = {"loss": batch_losses[-1]}
            hooks.on_train_batch_end(i, logs)
        hooks.on_epoch_end(epoch, {})
    hooks.on_train_end()
    return {"train_loss": float(np.mean(batch_losses))} if batch_losses else {}
