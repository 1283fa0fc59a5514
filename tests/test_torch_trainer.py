"""A PyTorch client (examples/torch_trainer.py) trains the built-in Keras MLP in the same run as Keras clients.

Skipped when PyTorch is not installed: `make test-torch` installs requirements-torch.txt and runs this file.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="PyTorch is not installed; `make test-torch` installs requirements-torch.txt and runs these tests"
)

from client_agent import datasets  # noqa: E402 - after the skip
from client_agent.keras_model import get_tensors, import_keras, model_to_bytes  # noqa: E402
from client_agent.models import digits_mlp, mlp  # noqa: E402
from client_agent.training import FunctionTrainer, RoundModel, keras_fit, load_trainer  # noqa: E402
from examples import torch_trainer  # noqa: E402
from examples.sklearn_trainer import softmax_regression  # noqa: E402
from fedstep.core import tensors  # noqa: E402
from fedstep.core.errors import FedstepError  # noqa: E402
from fedstep.core.schemas import TrainingConfig  # noqa: E402

keras = import_keras()


@pytest.fixture(scope="module")
def digits_model():
    """The demo's model for `digits` (seeded): its `.keras` bytes and initial tensors."""
    keras.utils.set_random_seed(0)
    model = digits_mlp()
    return model_to_bytes(model), get_tensors(model)


@pytest.fixture(scope="module")
def digits_client():
    """One client's local split of `digits` (part 1 of 3)."""
    return datasets.load_partition("digits", (1, 3))


def test_keras_tensors_map_to_torch_parameters_and_back_exactly(digits_model):
    _, weights = digits_model
    state = torch_trainer.keras_to_torch(weights)
    assert {k: tuple(v.shape) for k, v in state.items()} == {
        "hidden.weight": (64, 64),
        "hidden.bias": (64,),
        "output.weight": (10, 64),
        "output.bias": (10,),
    }
    np.testing.assert_array_equal(state["output.weight"].numpy(), weights["002/output/kernel"].T)
    back = torch_trainer.torch_to_keras(state)
    assert back.keys() == weights.keys()
    for name in weights:
        assert back[name].dtype == np.float32 and back[name].shape == weights[name].shape
        np.testing.assert_array_equal(back[name], weights[name])  # bit for bit


def test_the_torch_mirror_computes_what_the_keras_model_computes(digits_model):
    architecture, weights = digits_model
    torch_trainer.check_activations(architecture)
    dims = torch_trainer.check_tensors({n: w.shape for n, w in weights.items()})
    net = torch_trainer.torch_mlp(dims)
    net.load_state_dict(torch_trainer.keras_to_torch(weights))
    x = datasets.load_heldout("digits")[0][:50]
    keras_model = digits_mlp()
    keras_model.set_weights([weights[n] for n in sorted(weights)])
    expected = keras_model.predict(x, verbose=0)
    with torch.no_grad():
        got = torch.softmax(net(torch.from_numpy(x)), dim=1).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_training_on_digits_reduces_the_loss_and_returns_the_keras_trainers_metrics(digits_model, digits_client):
    architecture, weights = digits_model
    model = RoundModel(architecture, weights)
    metrics = torch_trainer.train(model, digits_client, TrainingConfig(epochs=5))
    assert set(metrics) == {
        "train_loss",
        "train_accuracy",
        "test_loss",
        "test_accuracy",
        "test_loss_before",
        "test_accuracy_before",
    }
    assert metrics["test_loss"] < 0.6 * metrics["test_loss_before"]
    assert metrics["test_accuracy"] > 0.7 > 0.2 > metrics["test_accuracy_before"]
    assert metrics["train_accuracy"] > 0.7
    trained = model.tensors()
    assert trained.keys() == weights.keys()
    assert all(trained[n].shape == weights[n].shape and trained[n].dtype == np.float32 for n in weights)


def test_it_trains_like_the_keras_trainer_from_the_same_global_model(digits_model, digits_client):
    architecture, weights = digits_model
    training = TrainingConfig(epochs=3)
    by_torch = torch_trainer.train(RoundModel(architecture, weights), digits_client, training)
    by_keras = keras_fit(RoundModel(architecture, weights), digits_client, training)
    assert by_torch["test_loss_before"] == pytest.approx(by_keras["test_loss_before"], abs=1e-5)
    assert by_torch["test_accuracy_before"] == by_keras["test_accuracy_before"]
    for name in ("train_loss", "test_loss"):  # another shuffle order, the same SGD
        assert by_torch[name] == pytest.approx(by_keras[name], abs=0.1)
    for name in ("train_accuracy", "test_accuracy"):
        assert by_torch[name] == pytest.approx(by_keras[name], abs=0.1)


def test_the_agent_loads_it_as_a_trainer_and_gets_every_tensor_back(digits_model, digits_client):
    architecture, weights = digits_model
    trainer = load_trainer("examples.torch_trainer:train", digits_client)
    result = trainer.fit(architecture, weights, TrainingConfig())
    assert result.weights.keys() == weights.keys() and result.num_examples == len(digits_client[0][0])
    assert 0 < result.metrics["train_loss"] < 3


def test_the_same_seed_trains_the_same_weights_and_another_seed_shuffles_differently(digits_model, digits_client):
    architecture, weights = digits_model

    def trained(seed: int, learning_rate: float | None = None) -> dict[str, np.ndarray]:
        model = RoundModel(architecture, weights, seed=seed)
        torch_trainer.train(model, digits_client, TrainingConfig(learning_rate=learning_rate))
        return model.tensors()

    first, again, other = trained(0), trained(0), trained(1)
    assert all(np.array_equal(first[n], again[n]) for n in weights)
    assert not np.array_equal(first["000/hidden/kernel"], other["000/hidden/kernel"])
    documented = trained(0, learning_rate=torch_trainer.DEFAULT_LEARNING_RATE)
    assert all(np.array_equal(first[n], documented[n]) for n in weights)  # None trains at the documented rate
    slower = trained(0, learning_rate=0.001)
    step = np.abs(first["000/hidden/kernel"] - weights["000/hidden/kernel"]).sum()
    assert np.abs(slower["000/hidden/kernel"] - weights["000/hidden/kernel"]).sum() < step / 10


def test_the_batch_size_sets_the_number_of_sgd_steps(digits_model, digits_client):
    architecture, weights = digits_model
    moved = []
    for batch_size in (8, 1024):  # many small steps move the weights further than one full-batch step
        model = RoundModel(architecture, weights)
        torch_trainer.train(model, digits_client, TrainingConfig(batch_size=batch_size, learning_rate=0.01))
        moved.append(np.abs(model.tensors()["002/output/kernel"] - weights["002/output/kernel"]).sum())
    assert moved[0] > 5 * moved[1]


def test_fedprox_mu_keeps_the_local_model_near_the_global_one(digits_model, digits_client):
    architecture, weights = digits_model

    def distance(mu: float) -> float:
        model = RoundModel(architecture, weights)
        training = TrainingConfig(epochs=3, instructions={"proximal_mu": mu})
        torch_trainer.train(model, digits_client, training)
        trained = model.tensors()
        return float(np.sqrt(sum(((trained[n] - weights[n]) ** 2).sum() for n in weights)))

    assert distance(1.0) < 0.7 * distance(0.0)


def test_dp_sgd_is_refused_by_name_and_bad_instructions_are_named(digits_model, digits_client):
    architecture, weights = digits_model
    dp = {"dp_mode": "dp-sgd", "dp_noise_multiplier": 1.0, "dp_clip": 1.0, "dp_delta": 1e-5}
    with pytest.raises(FedstepError, match=r"DP-SGD \(dp_mode 'dp-sgd'\).*keras_fit"):
        torch_trainer.train(RoundModel(architecture, weights), digits_client, TrainingConfig(instructions=dp))
    with pytest.raises(FedstepError, match="proximal_mu must be a number >= 0"):
        training = TrainingConfig(instructions={"proximal_mu": -1})
        torch_trainer.train(RoundModel(architecture, weights), digits_client, training)
    clip = {"dp_mode": "client-clip", "dp_clip": 1.0}  # the agent clips the update; training is unchanged
    assert torch_trainer.train(RoundModel(architecture, weights), digits_client, TrainingConfig(instructions=clip))


def test_a_model_that_is_not_the_mirrored_mlp_is_refused_naming_the_tensor(digits_model, digits_client):
    architecture, weights = digits_model
    sklearn_model = softmax_regression()
    model = RoundModel(model_to_bytes(sklearn_model), get_tensors(sklearn_model))
    with pytest.raises(FedstepError, match=r"tensor 000/softmax/kernel \(64, 10\), which examples.torch_trainer does"):
        torch_trainer.train(model, digits_client, TrainingConfig())
    wrong_bias = {**weights, "001/hidden/bias": np.zeros(32, np.float32)}
    with pytest.raises(FedstepError, match=r"tensor 001/hidden/bias has shape \(32,\), expected \(64,\)"):
        torch_trainer.train(RoundModel(architecture, wrong_bias), digits_client, TrainingConfig())
    missing = {n: w for n, w in weights.items() if n != "003/output/bias"}
    with pytest.raises(FedstepError, match="has no tensor 003/output/bias"):
        torch_trainer.keras_to_torch(missing)


def test_a_layer_with_another_activation_is_refused_naming_the_layer(digits_client):
    tanh = mlp(64, 10)
    tanh.get_layer("hidden").activation = keras.activations.tanh  # same tensors, another function
    tanh_config = model_to_bytes(tanh)
    with pytest.raises(FedstepError, match=r"layer 'hidden' of the run's model has activation 'tanh'"):
        torch_trainer.train(RoundModel(tanh_config, get_tensors(tanh)), digits_client, TrainingConfig())
    with pytest.raises(FedstepError, match=r"not a Keras Sequential \.keras file"):
        torch_trainer.check_activations(b"not a zip file")


def test_other_sizes_of_the_builtin_mlp_are_mirrored_too():
    heart = mlp(13, 2, hidden=32)
    dims = torch_trainer.check_tensors({n: w.shape for n, w in get_tensors(heart).items()})
    assert dims == torch_trainer.Dims(inputs=13, hidden=32, classes=2)
    torch_trainer.check_activations(model_to_bytes(heart))


def test_bad_labels_a_wrong_feature_count_and_a_missing_torch_are_named(digits_model, digits_client, monkeypatch):
    architecture, weights = digits_model
    (x_train, y_train), test = digits_client
    bad = ((x_train, y_train + 10), test)
    with pytest.raises(FedstepError, match=r"training labels must be 0\.\.9 .* got 10\.\.19"):
        torch_trainer.train(RoundModel(architecture, weights), bad, TrainingConfig())
    narrow = ((x_train[:, :32], y_train), test)
    with pytest.raises(FedstepError, match=r"training data has 32 features; the model's 000/hidden/kernel takes 64"):
        torch_trainer.train(RoundModel(architecture, weights), narrow, TrainingConfig())
    no_test = ((x_train, y_train), (x_train[:0], y_train[:0]))
    metrics = torch_trainer.train(RoundModel(architecture, weights), no_test, TrainingConfig())
    assert set(metrics) == {"train_loss", "train_accuracy"}  # no test split, no test metrics
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    with pytest.raises(FedstepError, match=r"needs PyTorch: pip install -r requirements-torch\.txt"):
        torch_trainer.train(RoundModel(architecture, weights), digits_client, TrainingConfig())


# --- a mixed consortium on the local cloud -----------------------------------------------------------

CLIENTS = ("client-1", "client-2", "client-3")
TORCH_CLIENT = "client-3"


@pytest.fixture(scope="module")
def three_client_cloud():
    """The real stack for three clients, deployed into a moto server on 127.0.0.1."""
    from tests.cloud_helpers import cloud_of

    with cloud_of(CLIENTS, round_timeout_s=300) as cloud:
        yield cloud


def test_keras_and_pytorch_clients_train_one_model_on_the_local_cloud(three_client_cloud, digits_model, tmp_path):
    from fedstep.local.demo import HeldoutEvaluator
    from fedstep.operator.settings import RunSettings
    from fedstep.operator.start import start_run
    from tests.cloud_helpers import agent, global_after, serve_run, summaries, wait_for_execution

    cloud = three_client_cloud
    architecture, initial = digits_model
    agents = []
    for i, client_id in enumerate(CLIENTS, start=1):
        train = torch_trainer.train if client_id == TORCH_CLIENT else keras_fit
        data = datasets.load_partition("digits", (i, len(CLIENTS)))
        agents.append(agent(cloud, client_id, tmp_path, FunctionTrainer(train, data, train.__module__)))
    settings = RunSettings(rounds=3, epochs=3, round_timeout_s=300, min_participants=3).validated()
    run = start_run(
        architecture,
        initial,
        settings,
        cloud.outputs,
        s3=cloud.client("s3"),
        dynamodb=cloud.client("dynamodb"),
        stepfunctions=cloud.client("stepfunctions"),
    )
    serve_run(agents, rounds=3)
    assert wait_for_execution(cloud, run.execution_arn, timeout_s=120)["status"] == "SUCCEEDED"
    history = summaries(cloud, run.run_id)
    assert [h.round for h in history] == [1, 2, 3]
    assert all(sorted(h.participants) == list(CLIENTS) for h in history)  # the torch client's update counts

    evaluator = HeldoutEvaluator(datasets.load_heldout("digits"), architecture)
    accuracy = {0: evaluator.evaluate(initial)["test_accuracy"]}
    for r in (1, 2, 3):
        accuracy[r] = evaluator.evaluate(tensors.decode(global_after(cloud, run.run_id, r)))["test_accuracy"]
    print(f"held-out digits accuracy of the global model by round (0: initial): {accuracy}")
    assert accuracy[3] > accuracy[1] > accuracy[0]
    assert accuracy[3] >= 0.85
