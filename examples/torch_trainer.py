"""A PyTorch client: the built-in Keras MLP, trained with PyTorch on the CPU, in the same run as Keras clients.

The agent hands a train function the global weights as numpy arrays and takes the new ones back, so
a client can train with PyTorch while the others train with Keras, and FedAvg averages them all. The
run's model must be the built-in `client_agent.models.mlp` (`digits_mlp` for the demo's `digits`,
also `mnist_mlp` and `heart_mlp`): Dense(hidden, relu) -> Dense(classes, softmax). This client
mirrors it with `torch.nn.Linear` layers:

    Keras tensor (run's name)   shape               PyTorch parameter   shape
    000/hidden/kernel           (inputs, hidden)    hidden.weight       (hidden, inputs)   transposed
    001/hidden/bias             (hidden,)           hidden.bias         (hidden,)
    002/output/kernel           (hidden, classes)   output.weight       (classes, hidden)  transposed
    003/output/bias             (classes,)          output.bias         (classes,)

The softmax is in the loss (`cross_entropy` on logits), as Keras' sparse categorical cross-entropy
on probabilities. Any other architecture is refused with an error naming the tensor or layer that
differs, before training.

    pip install -r requirements-torch.txt                                  # torch==2.13.0, CPU
    fedstep-client run --config client.json --trainer examples.torch_trainer:train

The round's training config: `epochs`; `batch_size` (mini-batches of a fresh seeded shuffle every
epoch, as Keras `fit(shuffle=True)`); `learning_rate` for plain SGD (no momentum, as the built-in
models' Keras SGD), `DEFAULT_LEARNING_RATE` (0.1, the built-in digits and mnist models' rate) when
the run sets none; the agent's seed (`RoundModel.seed`) seeds the shuffle. FedProx's `proximal_mu`
instruction adds mu/2 * ||w - w_global||^2 to the loss (the reported `train_loss` includes it, as
the Keras trainer's does). `dp_mode` "dp-sgd" is refused (this example does not implement DP-SGD,
and the agent would account a guarantee it does not give); "client-clip" needs nothing from the
trainer (the agent clips the update).
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from client_agent import dp_sgd
from client_agent.proximal import proximal_mu
from client_agent.training import RoundModel, Split
from fedstep.core.errors import FedstepError
from fedstep.core.schemas import TrainingConfig

DEFAULT_LEARNING_RATE = 0.1
"""The SGD learning rate when the run sets none (the built-in digits and mnist models' rate)."""

MIRRORED = "Dense(hidden, relu) -> Dense(classes, softmax) named 'hidden' and 'output' (client_agent.models.mlp)"


class Tensor(NamedTuple):
    """One Keras tensor of the mirrored model and the PyTorch parameter that holds it."""

    keras: str
    torch: str
    transposed: bool  # Dense kernel (in, out) <-> Linear weight (out, in)


MAPPING = (
    Tensor("000/hidden/kernel", "hidden.weight", True),
    Tensor("001/hidden/bias", "hidden.bias", False),
    Tensor("002/output/kernel", "output.weight", True),
    Tensor("003/output/bias", "output.bias", False),
)
"""The run's tensors, in the run's (sorted) order, and their PyTorch counterparts."""

ACTIVATIONS = {"hidden": "relu", "output": "softmax"}
"""The activation of each Dense layer of the mirrored model (the torch model applies relu; softmax is in the loss)."""


class Dims(NamedTuple):
    inputs: int
    hidden: int
    classes: int


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise FedstepError(
            "examples.torch_trainer needs PyTorch: pip install -r requirements-torch.txt (torch==2.13.0, CPU)"
        ) from None
    return torch


def check_tensors(shapes: Mapping[str, tuple[int, ...]]) -> Dims:
    """The mirrored model's sizes from the run's tensor shapes; FedstepError naming the first tensor
    that is missing, unexpected or of the wrong shape."""
    expected = [t.keras for t in MAPPING]
    for name in shapes:
        if name not in expected:
            raise FedstepError(
                f"the run's model has tensor {name} {tuple(shapes[name])}, which examples.torch_trainer does not "
                f"mirror; it trains {MIRRORED}, tensors {', '.join(expected)}"
            )
    for name in expected:
        if name not in shapes:
            raise FedstepError(f"the run's model has no tensor {name}; examples.torch_trainer trains {MIRRORED}")
    kernels = {name: tuple(shapes[name]) for name in (expected[0], expected[2])}
    for name, shape in kernels.items():
        if len(shape) != 2:
            raise FedstepError(f"tensor {name} has shape {shape}; a Dense kernel is 2-D (inputs, units)")
    (inputs, hidden), (_, classes) = kernels.values()
    sizes = (
        f"Dense 'hidden' has {hidden} units on {inputs} inputs ({expected[0]}), Dense 'output' "
        f"{classes} units ({expected[2]})"
    )
    want = dict(zip(expected, [(inputs, hidden), (hidden,), (hidden, classes), (classes,)], strict=True))
    for name, shape in want.items():
        if tuple(shapes[name]) != shape:
            raise FedstepError(f"tensor {name} has shape {tuple(shapes[name])}, expected {shape}: {sizes}")
    return Dims(inputs, hidden, classes)


def check_activations(architecture: bytes) -> None:
    """FedstepError naming the layer when the run's `.keras` file does not describe the mirrored model:
    an activation or `use_bias` that differs, or a layer the torch model does not have. Reads the
    file's `config.json` as JSON only (nothing is loaded or run)."""
    try:
        with zipfile.ZipFile(io.BytesIO(architecture)) as archive:
            config = json.loads(archive.read("config.json"))
        layers = config["config"]["layers"]
        if not isinstance(layers, list) or not all(isinstance(layer.get("config", {}), dict) for layer in layers):
            raise TypeError("config.json's layers are not a list of layer configs")
    except (zipfile.BadZipFile, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise FedstepError(f"the run's architecture is not a Keras Sequential .keras file ({exc})") from None
    dense = {}
    for layer in layers:
        kind, layer_config = layer.get("class_name"), layer.get("config", {})
        name = layer_config.get("name")
        if kind == "InputLayer":
            continue
        if kind != "Dense" or name not in ACTIVATIONS:
            raise FedstepError(
                f"the run's model has layer {name!r} ({kind}), which examples.torch_trainer does not mirror; "
                f"it trains {MIRRORED}"
            )
        dense[name] = layer_config
    for name, activation in ACTIVATIONS.items():
        if name not in dense:
            raise FedstepError(f"the run's model has no Dense layer {name!r}; examples.torch_trainer trains {MIRRORED}")
        got = dense[name].get("activation")
        if got != activation or dense[name].get("use_bias") is not True:
            raise FedstepError(
                f"layer {name!r} of the run's model has activation {got!r} (use_bias "
                f"{dense[name].get('use_bias')}); examples.torch_trainer mirrors activation {activation!r} with a bias"
            )


def torch_mlp(dims: Dims) -> Any:
    """The PyTorch mirror: Linear(inputs, hidden) -> ReLU -> Linear(hidden, classes), returning logits."""
    torch = _torch()
    from collections import OrderedDict

    return torch.nn.Sequential(
        OrderedDict(
            hidden=torch.nn.Linear(dims.inputs, dims.hidden),
            relu=torch.nn.ReLU(),
            output=torch.nn.Linear(dims.hidden, dims.classes),
        )
    )


def keras_to_torch(tensors: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The run's tensors (by Keras name) as the torch model's state dict (float32, kernels transposed)."""
    torch = _torch()
    check_tensors({name: np.shape(array) for name, array in tensors.items()})
    state = {}
    for t in MAPPING:
        array = np.asarray(tensors[t.keras], dtype=np.float32)
        state[t.torch] = torch.tensor(array.T if t.transposed else array)  # a copy
    return state


def torch_to_keras(state: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The torch model's state dict as the run's tensors (by Keras name, float32, weights transposed)."""
    out = {}
    for t in MAPPING:
        if t.torch not in state:
            raise FedstepError(f"the torch state dict has no {t.torch} (for tensor {t.keras})")
        array = state[t.torch].detach().cpu().numpy().astype(np.float32)
        out[t.keras] = np.ascontiguousarray(array.T if t.transposed else array)
    return out


def _evaluate(net: Any, x: Any, y: Any) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of `net` on (x, y)."""
    torch = _torch()
    with torch.no_grad():
        logits = net(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        return float(loss), float((logits.argmax(dim=1) == y).float().mean())


def _instructions(training: TrainingConfig) -> float:
    """FedProx's mu (0: none); FedstepError for DP-SGD or unusable instructions."""
    try:
        mu = proximal_mu(training.instructions)
        mode = dp_sgd.dp_mode(training.instructions)
    except ValueError as exc:
        raise FedstepError(f"the round's instructions are unusable: {exc}") from None
    if mode == dp_sgd.DP_SGD:
        raise FedstepError(
            "this run asks for DP-SGD (dp_mode 'dp-sgd'), which examples.torch_trainer does not implement; "
            "serve it with the default Keras trainer (client_agent.training:keras_fit)"
        )
    return mu


def _arrays(x: Any, y: Any, dims: Dims, split: str) -> tuple[Any, Any]:
    """One split as torch tensors (copies): features float32 of shape (n, inputs), labels int64."""
    torch = _torch()
    labels = np.asarray(y)
    if labels.size and (labels.min() < 0 or labels.max() >= dims.classes):
        raise FedstepError(
            f"the {split} labels must be 0..{dims.classes - 1} for the model's {dims.classes} classes, "
            f"got {labels.min()}..{labels.max()}"
        )
    features = np.array(x, dtype=np.float32).reshape(len(labels), -1) if len(labels) else np.zeros((0, dims.inputs))
    if features.shape[1] != dims.inputs:
        raise FedstepError(
            f"the local {split} data has {features.shape[1]} features; the model's {MAPPING[0].keras} "
            f"takes {dims.inputs}"
        )
    return torch.tensor(features, dtype=torch.float32), torch.tensor(labels, dtype=torch.int64)


def train(model: RoundModel, data: Split, training: TrainingConfig) -> dict[str, float]:
    """Evaluate the global model on the local test split, train it with PyTorch SGD on the local train
    split (the round's epochs, batch size, learning rate, seeded shuffle, FedProx term), evaluate again."""
    torch = _torch()
    mu = _instructions(training)
    tensors = model.tensors()
    dims = check_tensors({name: array.shape for name, array in tensors.items()})
    check_activations(model.architecture)
    (x_train, y_train), (x_test, y_test) = data
    if not len(x_train):
        raise FedstepError("no local training examples")
    x_train, y_train = _arrays(x_train, y_train, dims, "training")
    x_test, y_test = _arrays(x_test, y_test, dims, "test")
    net = torch_mlp(dims)
    net.load_state_dict(keras_to_torch(tensors))
    metrics: dict[str, float] = {}
    if len(x_test):
        metrics["test_loss_before"], metrics["test_accuracy_before"] = _evaluate(net, x_test, y_test)
    rate = DEFAULT_LEARNING_RATE if training.learning_rate is None else training.learning_rate
    optimizer = torch.optim.SGD(net.parameters(), lr=rate)
    anchors = [p.detach().clone() for p in net.parameters()]
    shuffle = torch.Generator().manual_seed(model.seed)
    n = len(x_train)
    for _ in range(training.epochs):
        loss_sum, correct = 0.0, 0
        for batch in torch.randperm(n, generator=shuffle).split(training.batch_size):
            logits = net(x_train[batch])
            loss = torch.nn.functional.cross_entropy(logits, y_train[batch])
            if mu > 0:
                pairs = zip(net.parameters(), anchors, strict=True)
                loss = loss + 0.5 * mu * sum(((p - a) ** 2).sum() for p, a in pairs)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(batch)
            correct += int((logits.argmax(dim=1) == y_train[batch]).sum())
        metrics["train_loss"], metrics["train_accuracy"] = loss_sum / n, correct / n  # the last epoch's, as Keras
    weights = torch_to_keras(net.state_dict())
    model.set_weights([weights[name] for name in model.names])
    if len(x_test):
        metrics["test_loss"], metrics["test_accuracy"] = _evaluate(net, x_test, y_test)
    return metrics
