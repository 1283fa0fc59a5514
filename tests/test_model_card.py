"""A model card per run, the approved model and its checks.

Unit tests build cards on the in-memory ports (`tests/round_world.py`); the local-cloud tests run the
real stack: the server writes each finished run's card, `fedstep promote` approves a round, and
`fedstep download --approved` fetches it, every sha256 checked (a download that writes the .keras file
runs in this process, `fedstep_here`: a process would import TensorFlow again); a client's credentials
cannot write a card or the approved pointer.
"""

from __future__ import annotations

import json
import zipfile
from fnmatch import fnmatch
from typing import Any

import numpy as np
import pytest
from botocore.exceptions import ClientError

from client_agent.training import TrainResult
from fedstep.aws.adapters import DynamoRoundTable, S3ModelStore
from fedstep.aws.errors import error_code
from fedstep.core import keys, model_card, tensors
from fedstep.core.model_card import ModelCardError, ModelTampered
from fedstep.core.schemas import Bounds, ObjectRef, RunRecord, TrainingConfig
from tests.cloud_helpers import agent, drain_queues, fedstep, fedstep_here, serve_run, summaries, wait_for_execution
from tests.round_world import GLOBAL, RUN, World

ARCHITECTURE = b"an architecture file (.keras)"

# -- the card, built on the in-memory ports ------------------------------------------------------------


class CardWorld(World):
    """A run on the in-memory ports whose table also answers `latest_updates` (as DynamoRoundTable)."""

    def latest_updates(self, run_id: str, client_ids: list[str], up_to_round: int) -> dict[str, dict[str, Any]]:
        latest = {}
        for client in client_ids:
            for r in range(up_to_round, 0, -1):
                item = self.table.get(keys.update_item_key(run_id, r, client))
                if item and item.get("kind") == "update":
                    latest[client] = item
                    break
        return latest

    def get_run(self, run_id: str) -> RunRecord | None:
        return self.table.get_run(run_id)

    def get_round(self, run_id: str, round_number: int) -> dict[str, Any] | None:
        return self.table.get_round(run_id, round_number)


def two_round_world() -> CardWorld:
    """Round 1 from a (10 examples) and b (30); round 2 from a alone (12 examples), at its deadline."""
    run = RunRecord(
        RUN,
        ["a", "b"],
        2,
        TrainingConfig(epochs=2, batch_size=16, learning_rate=0.05),
        "fedavg",
        "2026-11-21T00:00:00+00:00",
        quorum=1,
        min_participants=1,
        bounds=Bounds(),
        model=ObjectRef(keys.model_key(RUN), tensors.sha256_hex(ARCHITECTURE), len(ARCHITECTURE)),
    )
    world = CardWorld(run)
    world.store.put(keys.model_key(RUN), ARCHITECTURE)
    world.publish()
    world.report("a", 1.0, n=10, metrics={"test_accuracy": 0.5, "test_accuracy_before": 0.25, "test_loss": 1.0})
    world.report("b", 2.0, n=30, metrics={"test_accuracy": 0.7, "test_accuracy_before": 0.35, "test_loss": 0.6})
    world.complete()
    round_1 = ObjectRef(**world.table.get_round(RUN, 1)["global_model"])
    world.publish(2, token="tok-2", model=round_1)
    world.report("a", 1.0, n=12, round_number=2, metrics={"test_accuracy": 0.8, "test_accuracy_before": 0.6})
    from fedstep.core.rounds import AggregationSettings

    world.at_deadline(2, settings=AggregationSettings(wait_s=0.0), sleep=lambda s: None)
    return world


def test_the_card_names_the_model_its_sha256s_each_clients_examples_the_settings_and_the_final_metrics():
    world = two_round_world()
    card = model_card.compose_card(RUN, 2, world.store, world)
    summary = world.table.get_round(RUN, 2)
    global_bytes = world.store.get(summary["global_model"]["key"])
    model = card["model"]
    assert (model["run_id"], model["round"]) == (RUN, 2)
    assert model["version"] == keys.version_of_global(summary["global_model"]["key"])
    assert model["card_key"] == keys.card_key(RUN, 2, model["version"])
    assert model["global_model"]["sha256"] == tensors.sha256_hex(global_bytes)
    assert model["architecture"] == {
        "key": keys.model_key(RUN),
        "sha256": tensors.sha256_hex(ARCHITECTURE),
        "bytes": len(ARCHITECTURE),
    }
    # b sent nothing in round 2: its size is that of its latest update, round 1's
    assert card["data"]["clients"] == {"a": {"num_examples": 12, "round": 2}, "b": {"num_examples": 30, "round": 1}}
    assert card["data"]["total_examples"] == 42 and card["data"]["round_participants"] == ["a"]
    settings = card["settings"]
    assert settings["strategy"] == "fedavg" and settings["rounds"] == 2 and settings["clients"] == ["a", "b"]
    assert settings["training"]["learning_rate"] == 0.05 and settings["dp"] is None
    assert card["metrics"] == {"test_accuracy": pytest.approx(0.8)}
    assert card["evaluation_before"] == {"test_accuracy_before": pytest.approx(0.6)}
    assert card["privacy"] is None


@pytest.mark.parametrize("forged", [{"num_examples": "lots"}, {"num_examples": 10**120}, {"round": "two"}])
def test_a_client_rewriting_its_update_item_cannot_keep_the_card_from_being_written_or_inflate_its_size(forged):
    """The attack: after the run, a client rewrites its own latest update item (its role may)."""
    world = two_round_world()
    key = keys.update_item_key(RUN, 1, "b")
    world.table.items[(key["pk"], key["sk"])] = {**world.table.get(key), **forged}
    ref = model_card.write_card(RUN, 2, world.store, world)
    clients = json.loads(world.store.get(ref.key))["data"]["clients"]
    assert clients == {"a": {"num_examples": 12, "round": 2}}  # b's malformed item is left out, not trusted


def test_a_card_is_the_same_bytes_whoever_writes_it_and_is_written_once():
    world = two_round_world()
    first = model_card.write_card(RUN, 2, world.store, world)
    again = model_card.write_card(RUN, 2, world.store, world)
    assert first == again
    assert world.store.get(first.key) == model_card.card_bytes(model_card.compose_card(RUN, 2, world.store, world))
    assert json.loads(world.store.get(first.key))["kind"] == "model_card"


def test_a_replaced_global_model_or_architecture_fails_the_card_by_name():
    world = two_round_world()
    key = world.table.get_round(RUN, 2)["global_model"]["key"]
    world.store.put(key, tensors.encode({k: np.ones_like(v) for k, v in GLOBAL.items()}))
    with pytest.raises(ModelTampered, match=r"global model of round 2.*was replaced"):
        model_card.compose_card(RUN, 2, world.store, world)
    world = two_round_world()
    world.store.put(keys.model_key(RUN), b"another architecture")
    with pytest.raises(ModelTampered, match="architecture"):
        model_card.compose_card(RUN, 1, world.store, world)


def test_a_missing_run_or_a_round_never_aggregated_is_a_clear_error():
    world = two_round_world()
    with pytest.raises(ModelCardError, match="no run run-x in this stack"):
        model_card.compose_card("run-x", 1, world.store, world)
    with pytest.raises(ModelCardError, match=f"run {RUN} has no aggregated round 3"):
        model_card.compose_card(RUN, 3, world.store, world)


def test_the_approved_pointer_names_the_card_and_keeps_the_promotion_it_replaces():
    world = two_round_world()
    ref = model_card.write_card(RUN, 1, world.store, world)
    card = model_card.parse_card(world.store.get(ref.key), ref.key)
    first = model_card.approval(card, ref, "default", "2026-11-30T09:15:00.123+00:00", "good enough", None)
    assert first["history_key"] == keys.promotion_key("default", "20261130T091500123Z", RUN, 1)
    assert (first["run_id"], first["round"], first["card"]["sha256"]) == (RUN, 1, ref.sha256)
    second = model_card.approval(card, ref, "default", "2026-11-30T10:00:00.000+00:00", "", first)
    assert second["previous"]["history_key"] == first["history_key"]
    stored = model_card.parse_approval(json.dumps(second).encode(), "approved.json")
    assert stored["previous"]["approved_at"] == "2026-11-30T09:15:00.123+00:00"
    with pytest.raises(ModelCardError, match="at most 1000"):
        model_card.approval(card, ref, "default", "2026-11-30T10:00:00.000+00:00", "x" * 1001, None)


def test_something_that_is_not_a_card_or_a_pointer_is_named_as_such():
    with pytest.raises(ModelCardError, match=r"card\.json is not a model card"):
        model_card.parse_card(b'{"kind": "approved_model"}', "card.json")
    with pytest.raises(ModelCardError, match=r"approved\.json is not an approved-model pointer"):
        model_card.parse_approval(b"[1, 2]", "approved.json")


def test_cards_sit_beside_their_global_model_and_the_registry_outside_the_runs():
    card = keys.card_key("run-1", 3, "0f3a")
    assert card == "runs/run-1/rounds/00003/card-0f3a.json"
    assert fnmatch(card, keys.CARD_KEY_PATTERN) and not fnmatch(card, keys.GLOBAL_KEY_PATTERN)
    assert keys.version_of_global(keys.global_key("run-1", 3, "0f3a")) == "0f3a"
    assert not keys.approved_key().startswith("runs/") and not fnmatch(keys.approved_key(), keys.CARD_KEY_PATTERN)
    with pytest.raises(ValueError):
        keys.approved_key("../x")


# -- on the local cloud ---------------------------------------------------------------------------------

MODEL = "client_agent.models:digits_mlp"
SIZES = {"client-1": 10, "client-2": 30}


class EvaluatingTrainer:
    """Shifts every weight by `shift`; reports `n` examples and test metrics before and after."""

    def __init__(self, shift: float, n: int) -> None:
        self.shift, self.n = shift, n

    def fit(self, architecture, weights, training):
        metrics = {"test_accuracy": 0.5 + self.shift / 10, "test_accuracy_before": 0.4, "train_loss": 1 / self.shift}
        return TrainResult({k: v + self.shift / 100 for k, v in weights.items()}, self.n, metrics)


def finished_keras_run(cloud, tmp_path, rounds: int = 2) -> str:
    """A run of a real Keras architecture (digits MLP), served by two numpy agents, finished."""
    from fedstep.operator.model import build_model, keras_payload
    from fedstep.operator.settings import RunSettings
    from fedstep.operator.start import start_run

    drain_queues(cloud)
    architecture, weights = keras_payload(build_model(MODEL, 1))
    started = start_run(
        architecture,
        weights,
        RunSettings(rounds=rounds, round_timeout_s=120, min_participants=2),
        cloud.outputs,
        s3=cloud.client("s3"),
        dynamodb=cloud.client("dynamodb"),
        stepfunctions=cloud.client("stepfunctions"),
    )
    agents = [agent(cloud, c, tmp_path, EvaluatingTrainer(1.0 + i, n)) for i, (c, n) in enumerate(SIZES.items())]
    serve_run(agents, rounds=rounds)
    assert wait_for_execution(cloud, started.execution_arn, timeout_s=60)["status"] == "SUCCEEDED"
    return started.run_id


@pytest.fixture(scope="module")
def finished(local_cloud, tmp_path_factory) -> str:
    return finished_keras_run(local_cloud, tmp_path_factory.mktemp("card-run"))


def registry(cloud) -> S3ModelStore:
    return S3ModelStore(cloud.outputs.bucket, cloud.client("s3"))


def test_a_finished_run_has_its_card_in_s3_with_the_right_sha256s_and_each_clients_examples(local_cloud, finished):
    last = summaries(local_cloud, finished)[-1]
    key = keys.card_key(finished, last.round, keys.version_of_global(last.global_model.key))
    store = registry(local_cloud)
    card = model_card.parse_card(store.get(key), key)
    assert card["model"]["global_model"]["sha256"] == tensors.sha256_hex(store.get(last.global_model.key))
    architecture = store.get(keys.model_key(finished))
    assert card["model"]["architecture"]["sha256"] == tensors.sha256_hex(architecture)
    assert card["data"]["clients"] == {c: {"num_examples": n, "round": last.round} for c, n in SIZES.items()}
    assert card["metrics"]["test_accuracy"] == pytest.approx((0.6 * 10 + 0.7 * 30) / 40)
    assert card["evaluation_before"] == {"test_accuracy_before": pytest.approx(0.4)}
    execution = local_cloud.outputs.state_machine_arn.replace(":stateMachine:", ":execution:") + f":{finished}"
    output = json.loads(local_cloud.client("stepfunctions").describe_execution(executionArn=execution)["output"])
    assert output["model_card"] == {"key": key, "sha256": tensors.sha256_hex(store.get(key))}


def keras_weights(path) -> dict[str, np.ndarray]:
    from client_agent.keras_model import get_tensors, import_keras

    return get_tensors(import_keras().models.load_model(path, safe_mode=True))


def test_promote_then_download_approved_gives_the_model_of_download_round(local_cloud, finished, tmp_path):
    promoted = fedstep(local_cloud, "promote", finished, "--round", "1", "--note", "first look", "--name", "digits")
    assert promoted.returncode == 0, promoted.stderr
    assert f"approved run {finished} round 1 as model 'digits'" in promoted.stdout
    approved, by_round = tmp_path / "approved.keras", tmp_path / "round1.keras"
    result = fedstep_here(local_cloud, "download", "--approved", "--name", "digits", "-o", str(approved))
    assert result.returncode == 0, result.stderr
    assert "sha256 checked against its card" in result.stdout
    result = fedstep_here(local_cloud, "download", finished, "--round", "1", "-o", str(by_round))
    assert result.returncode == 0, result.stderr
    # The same architecture and weights; the .keras files differ only in Keras' save time stamp.
    with zipfile.ZipFile(approved) as a, zipfile.ZipFile(by_round) as b:
        assert a.read("config.json") == b.read("config.json")
    ours, theirs = keras_weights(approved), keras_weights(by_round)
    assert ours.keys() == theirs.keys() and all(np.array_equal(ours[k], theirs[k]) for k in ours)
    [round_1] = [s for s in summaries(local_cloud, finished) if s.round == 1]
    stored = tensors.decode(registry(local_cloud).get(round_1.global_model.key))
    assert all(np.array_equal(ours[k], stored[k]) for k in stored)

    again = fedstep(local_cloud, "promote", finished, "--round", "2", "--name", "digits")
    assert again.returncode == 0, again.stderr
    assert f"it replaces run {finished} round 1" in again.stdout
    pointer = model_card.parse_approval(registry(local_cloud).get(keys.approved_key("digits")), "approved")
    assert (pointer["round"], pointer["previous"]["round"], pointer["note"]) == (2, 1, "")
    history = local_cloud.client("s3").list_objects_v2(
        Bucket=local_cloud.outputs.bucket, Prefix=f"{keys.REGISTRY_PREFIX}digits/history/"
    )
    notes = [json.loads(registry(local_cloud).get(o["Key"]))["note"] for o in history["Contents"]]
    assert notes == ["first look", ""]  # oldest first: nothing was overwritten


def test_promoting_a_missing_run_a_round_never_aggregated_or_a_failed_runs_round_is_refused(
    local_cloud, finished, tmp_path
):
    from fedstep.operator.settings import RunSettings
    from fedstep.operator.start import start_run

    cases = {
        ("run-missing", "1"): "run-missing",
        (finished, "9"): f"run {finished} has no aggregated round 9; aggregated: 1, 2",
        (finished, "0"): "round 0 is the untrained initial model",
    }
    for (run, round_), message in cases.items():
        result = fedstep(local_cloud, "promote", run, "--round", round_)
        assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr, result
    drain_queues(local_cloud)
    failed = start_run(
        b"arch",
        tensors.decode(tensors.encode(GLOBAL)),
        RunSettings(rounds=1, round_timeout_s=1),
        local_cloud.outputs,
        s3=local_cloud.client("s3"),
        dynamodb=local_cloud.client("dynamodb"),
        stepfunctions=local_cloud.client("stepfunctions"),
    )
    assert wait_for_execution(local_cloud, failed.execution_arn, timeout_s=60)["status"] == "FAILED"
    result = fedstep(local_cloud, "promote", failed.run_id, "--round", "1")
    assert result.returncode != 0 and f"run {failed.run_id} failed; its models are not promoted" in result.stderr
    result = fedstep(local_cloud, "download", "--approved", "--name", "nothing-approved")
    assert result.returncode != 0 and "no approved model 'nothing-approved'" in result.stderr


def test_a_tampered_global_model_fails_promote_and_download_approved_with_a_clear_error(local_cloud, tmp_path):
    run_id = finished_keras_run(local_cloud, tmp_path, rounds=1)
    assert fedstep(local_cloud, "promote", run_id, "--round", "1", "--name", "tampered").returncode == 0
    [last] = summaries(local_cloud, run_id)
    forged = tensors.encode(
        {k: v + 1 for k, v in tensors.decode(registry(local_cloud).get(last.global_model.key)).items()}
    )
    registry(local_cloud).put(last.global_model.key, forged)  # the bucket's owner (or a leaked key) replaced it
    out = tmp_path / "m.keras"
    result = fedstep(local_cloud, "download", "--approved", "--name", "tampered", "-o", str(out))
    assert result.returncode != 0 and not out.exists()
    assert "(global model) does not match its record" in result.stderr and "Traceback" not in result.stderr
    result = fedstep(local_cloud, "promote", run_id, "--round", "1", "--name", "tampered")
    assert result.returncode != 0 and "does not match its record" in result.stderr


# -- a client cannot write a card or the approved pointer (the attack performed) -----------------------

DENIED = {"AccessDenied", "AccessDeniedException", "AuthorizationError", "403"}


def test_a_clients_credentials_cannot_write_a_model_card_or_the_approved_pointer(local_cloud, finished):
    last = summaries(local_cloud, finished)[-1]
    card_key = keys.card_key(finished, last.round, keys.version_of_global(last.global_model.key))
    targets = {
        "replace the run's card": card_key,
        "write a card for a forged version": keys.card_key(finished, last.round, "forged"),
        "point the approved model at its own card": keys.approved_key(),
        "forge a promotion": keys.promotion_key("default", "20261130T000000Z", finished, 1),
    }
    s3 = local_cloud.client("s3", "client-1")  # the client's own role: all an attacking organisation holds
    codes = {}
    for attack, key in targets.items():
        with pytest.raises(ClientError) as info:
            s3.put_object(Bucket=local_cloud.outputs.bucket, Key=key, Body=b'{"kind": "model_card"}')
        codes[attack] = error_code(info.value)
    assert set(codes.values()) <= DENIED, codes
    stored = model_card.parse_card(registry(local_cloud).get(card_key), card_key)
    assert stored["model"]["global_model"]["sha256"] == last.global_model.sha256


def test_only_the_operator_writes_the_approved_pointer_and_only_it_and_the_function_write_cards(local_cloud):
    """Each principal tries: a client and the aggregation function are refused the registry; the operator
    (`fedstep promote`) writes it; cards are the function's (a run's last round) and the operator's."""
    bucket = local_cloud.outputs.bucket
    card, pointer = keys.card_key("run-x", 1, "v1"), keys.approved_key()
    outcomes = {}
    for who in ("client-1", "aggregation", "operator"):
        s3 = local_cloud.client("s3", who)
        for what, key in (("card", card), ("pointer", pointer)):
            try:
                s3.put_object(Bucket=bucket, Key=key, Body=b"{}")
                outcomes[who, what] = "written"
            except ClientError as exc:
                outcomes[who, what] = "denied" if error_code(exc) in DENIED else error_code(exc)
    assert outcomes == {
        ("client-1", "card"): "denied",
        ("client-1", "pointer"): "denied",
        ("aggregation", "card"): "written",
        ("aggregation", "pointer"): "denied",
        ("operator", "card"): "written",
        ("operator", "pointer"): "written",
    }


def test_the_report_has_the_model_card_section(local_cloud, finished, tmp_path):
    result = fedstep(local_cloud, "report", finished, "-o", str(tmp_path))
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "report.html").read_text()
    assert '<table id="model-card">' in page and "client-2: 30" in page
    last = summaries(local_cloud, finished)[-1]
    assert last.global_model.sha256 in page


def test_the_round_table_gives_each_clients_latest_update_up_to_a_round(local_cloud, finished):
    table = DynamoRoundTable(local_cloud.outputs.table, local_cloud.client("dynamodb"))
    latest = table.latest_updates(finished, ["client-1", "client-2", "client-3"], 1)
    assert {c: (i["round"], i["num_examples"]) for c, i in latest.items()} == {"client-1": (1, 10), "client-2": (1, 30)}


class TamperingTrainer(EvaluatingTrainer):
    """Replaces the run's architecture file while it trains: after every client has read it, before
    the run ends (what a leaked operator key could do)."""

    def __init__(self, shift: float, n: int, tamper) -> None:
        super().__init__(shift, n)
        self.tamper = tamper

    def fit(self, architecture, weights, training):
        self.tamper()
        return super().fit(architecture, weights, training)


def test_a_card_the_server_cannot_write_is_named_in_the_output_and_the_finished_run_still_succeeds(
    local_cloud, tmp_path
):
    from tests.cloud_helpers import start

    drain_queues(local_cloud)
    run = start(local_cloud, rounds=1)
    replace = lambda: registry(local_cloud).put(keys.model_key(run.run_id), b"a replaced architecture")  # noqa: E731
    first = agent(local_cloud, "client-1", tmp_path, EvaluatingTrainer(1.0, 10))
    last = agent(local_cloud, "client-2", tmp_path, TamperingTrainer(2.0, 30, replace))
    serve_run([first, last], rounds=1)
    desc = wait_for_execution(local_cloud, run.execution_arn, timeout_s=60)
    output = json.loads(desc["output"])
    assert desc["status"] == "SUCCEEDED" and output["model_card"]["Error"] == "ModelTampered", output["model_card"]
    result = fedstep(local_cloud, "promote", run.run_id, "--round", "1")
    assert result.returncode != 0 and "(architecture) does not match its record" in result.stderr
