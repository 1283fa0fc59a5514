import pytest

from fedstep.core.schemas import (
    EvalItem,
    InvalidMessage,
    RoundMessage,
    RunEndedMessage,
    TrainingConfig,
    UpdateItem,
    parse_message,
)

SHA = "ab" * 32
ROUND = {
    "schema": 2,
    "type": "round",
    "run_id": "run-1",
    "round": 2,
    "attempt": 0,
    "model": {"key": "runs/run-1/model.keras", "sha256": SHA, "bytes": 10},
    "global_model": {"key": "runs/run-1/rounds/00001/global-ab12.safetensors", "sha256": SHA, "bytes": 20},
    "training": {"epochs": 1, "batch_size": 32, "learning_rate": 0.1},
    "deadline_s": 600,
    "issued_at": "2026-11-21T10:00:00.000Z",
}


def test_round_message_parses_into_its_typed_form():
    msg = parse_message(ROUND)
    assert isinstance(msg, RoundMessage)
    assert msg.round == 2 and msg.training == TrainingConfig(1, 32, 0.1) and msg.global_model.bytes == 20


def test_run_ended_message_parses():
    msg = parse_message(
        {"schema": 2, "type": "run_ended", "run_id": "run-1", "reason": "max_rounds", "rounds_completed": 5}
    )
    assert isinstance(msg, RunEndedMessage) and msg.rounds_completed == 5


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"schema": 1}, r"wire schema 1, but this fedstep \(.*\) reads schema 2 only: upgrade the side on schema 1"),
        ({"round": 0}, "'round' must be >= 1"),
        ({"round": "2"}, "'round' must be int"),
        ({"round": True}, "'round' must be int"),
        ({"run_id": "../x"}, "invalid run id"),
        ({"type": "party"}, "unknown type 'party'"),
        ({"training": {"epochs": 0, "batch_size": 32, "learning_rate": 0.1}}, "'epochs' must be from 1 to 1000"),
        ({"training": {"epochs": 10**9, "batch_size": 32}}, "'epochs' must be from 1 to 1000, got 1000000000"),
        ({"training": {"epochs": 1, "batch_size": 10**12}}, "'batch_size' must be from 1 to 65536"),
        ({"deadline_s": 10**15}, "'deadline_s' must be from 1 to 31536000"),
        ({"issued_at": "soon"}, "'issued_at' must be an ISO 8601 time such as 2026-11-30T12:00:00Z, got 'soon'"),
        ({"issued_at": "2026-11-21T10:00:00"}, "'issued_at' must say its UTC offset"),
        ({"issued_at": 1732183200}, "'issued_at' must be str"),
        ({"global_model": {"key": "k", "sha256": "xyz", "bytes": 1}}, "64 lowercase hex"),
    ],
)
def test_malformed_round_messages_name_the_bad_field(change, message):
    with pytest.raises(InvalidMessage, match=message):
        parse_message({**ROUND, **change})


def test_the_training_config_a_run_may_ask_for_is_bounded():
    assert TrainingConfig(epochs=1000, batch_size=65_536) == TrainingConfig.parse(
        {"epochs": 1000, "batch_size": 65_536}
    )
    for bad, why in (
        ({"epochs": 1001}, "epochs must be a whole number from 1 to 1000, got 1001"),
        ({"epochs": 1e9}, "epochs must be a whole number from 1 to 1000, got 1000000000.0"),
        ({"batch_size": 10**12}, "batch_size must be a whole number from 1 to 65536, got 1000000000000"),
        ({"batch_size": True}, "batch_size must be a whole number"),
    ):
        with pytest.raises(InvalidMessage, match=why):
            TrainingConfig(**bad)


@pytest.mark.parametrize(
    ("params", "why"),
    [
        ({"dropout": {"nested": 1}}, "training param dropout: a value is a boolean, a finite number or a text"),
        ({"dropout": float("nan")}, "training param dropout: a value is a boolean, a finite number or a text"),
        ({"note": "x" * 257}, "training param note: a text of at most 256 characters"),
        ({"bad name": 1}, "training param 'bad name': a name is letters, digits and _"),
        ({f"p{i}": i for i in range(33)}, "training params: 33 given, at most 32"),
    ],
)
def test_the_operators_training_params_are_bounded_scalars(params, why):
    ok = {"dropout": 0.2, "augment": True, "epochs_warmup": 3, "backbone": "resnet18"}
    base = {"epochs": 1, "batch_size": 32}
    assert TrainingConfig.parse({**base, "params": ok}).params == ok
    with pytest.raises(InvalidMessage, match=why):
        TrainingConfig.parse({**base, "params": params})  # as an agent reads a round message


def test_missing_fields_are_named():
    broken = dict(ROUND)
    del broken["global_model"]
    with pytest.raises(InvalidMessage, match="missing field 'global_model'"):
        parse_message(broken)


ITEM = {
    "schema": 2,
    "pk": "CLIENT#c1",
    "sk": "UPDATE#run-1#00002",
    "run_id": "run-1",
    "round": 2,
    "client_id": "c1",
    "num_examples": 5,
    "update": {"key": "updates/c1/run-1/00002.safetensors", "sha256": SHA, "bytes": 100},
    "metrics": {"train_loss": 0.5},
    "created_at": "2026-11-21T10:00:00.000Z",
}


def test_update_item_parses_when_its_key_and_fields_agree():
    assert UpdateItem.parse(ITEM).num_examples == 5


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sk": "UPDATE#run-1#00003"}, "key does not match"),
        ({"pk": "CLIENT#c2"}, "key does not match"),
        ({"update": {"key": "updates/c2/run-1/00002.safetensors", "sha256": SHA, "bytes": 1}}, "not this client's"),
        ({"update": {"key": "k" * 2000, "sha256": SHA, "bytes": 1}}, "2000 characters, at most 1024"),
        ({"update": {**ITEM["update"], "bytes": 0}}, "update bytes 0 is less than the smallest safetensors file"),
        ({"update": {**ITEM["update"], "bytes": 9}}, "update bytes 9 is less than the smallest safetensors file"),
        ({"num_examples": 2**41}, "'num_examples' must be from 1 to"),
        ({"num_examples": 0}, "'num_examples' must be from 1 to"),
        ({"metrics": {"train_loss": float("nan")}}, "finite number"),
        ({"metrics": {"test_accuracy": 1.5}}, "must lie in \\[0, 1\\]"),
        ({"metrics": {"train_loss": -1.0}}, "loss and must be >= 0"),
        ({"metrics": {f"m{i}": 0.0 for i in range(33)}}, "33 metrics, at most 32"),
        ({"metrics": {"x" * 300: 0.0}}, "metric name"),
        ({"created_at": "t" * 500}, "'created_at' is 500 characters"),
    ],
)
def test_every_field_a_client_writes_is_bounded(change, message):
    with pytest.raises(InvalidMessage, match=message):
        UpdateItem.parse({**ITEM, **change})


def test_a_client_of_one_example_claims_one_and_no_test_split_and_is_accepted():
    assert UpdateItem.parse({**ITEM, "num_examples": 1}).num_examples == 1
    unable = EvalItem("run-1", 2, "abc123", "c1", 0, {}, "2026-11-21T10:00:00Z", "no local test split").to_item()
    assert EvalItem.parse(unable).num_examples == 0  # honest: it evaluated nothing and says why


@pytest.mark.parametrize(
    ("kind", "claim", "error"),
    [
        ("update", -1, ""),
        ("update", 0, ""),
        ("update", 2**40 + 1, ""),
        ("evaluation", -1, "no local test split"),
        ("evaluation", 2**40 + 1, "no local test split"),
        ("evaluation", 0, ""),  # metrics from no test example: not honest
    ],
)
def test_a_claimed_count_below_its_minimum_or_above_the_limit_is_still_refused(kind, claim, error):
    if kind == "update":
        with pytest.raises(InvalidMessage, match=r"'num_examples' must be from 1 to"):
            UpdateItem.parse({**ITEM, "num_examples": claim})
        return
    item = EvalItem("run-1", 2, "abc123", "c1", 5, {"test_accuracy": 0.5}, "2026-11-21T10:00:00Z", error).to_item()
    minimum = 0 if error else 1
    with pytest.raises(InvalidMessage, match=rf"'num_examples' must be from {minimum} to"):
        EvalItem.parse({**item, "num_examples": claim})


@pytest.mark.parametrize(
    ("text", "metrics", "reached"),
    [
        ("test_accuracy>=0.9", {"test_accuracy_before": 0.91}, True),
        ("test_accuracy>=0.9", {"test_accuracy_before": 0.89}, False),
        ("test_loss<=0.3", {"test_loss_before": 0.3}, True),
        ("test_accuracy_before>=0.9", {"test_accuracy_before": 0.95}, True),
        ("test_loss<=0.3", {"train_loss": 0.1}, False),  # a metric nobody reports is never reached
    ],
)
def test_a_target_is_reached_when_the_global_models_federated_evaluation_meets_it(text, metrics, reached):
    from fedstep.core.schemas import Target

    assert Target.parse_text(text).reached(metrics) is reached


def test_a_target_is_not_reached_by_the_clients_metrics_after_local_training():
    """Observed: a run stopped on the clients' post-training accuracy while the global model's was lower."""
    from fedstep.core.schemas import Target

    after_local_training_only = {"test_accuracy": 0.95, "test_accuracy_before": 0.7}
    assert Target.parse_text("test_accuracy>=0.9").reached(after_local_training_only) is False


def test_a_target_on_a_train_metric_is_refused_with_the_reason():
    from fedstep.core.schemas import Target

    with pytest.raises(InvalidMessage, match=r"judged on the global model's federated evaluation.*test metric"):
        Target.parse_text("train_loss<=0.6")


@pytest.mark.parametrize("text", ["accuracy>0.9", "test_accuracy>=high", "0.9"])
def test_a_malformed_target_is_named(text):
    from fedstep.core.schemas import Target

    with pytest.raises(InvalidMessage, match=r"must look like test_accuracy>=0\.9"):
        Target.parse_text(text)
