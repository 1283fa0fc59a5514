"""`fedstep local --engine memory` (fedstep issue 24, point 3): the state machine's loop on the in-memory
ports, with the client pool replaced by a numpy stand-in (no TensorFlow, no worker process), and one
real run of bench task B's shape. Its match with the cloud engine, metric for metric, is
tests/test_kept_cloud.py's test_memory_engine_matches_cloud_engine_per_round."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fedstep.core import codecs, keys, tensors
from fedstep.core.errors import FedstepError
from fedstep.core.schemas import MASKED_TENSOR, ObjectRef, RoundMessage, SecAggSettings
from fedstep.core.updates import encode_update
from fedstep.local.demo import demo_config, partition_data
from fedstep.local.engines import run_local
from fedstep.local.memory_engine import RoundLoop, worker_count
from fedstep.local.memory_workers import ClientResult, ClientTask
from fedstep.local.secure_clients import decode_delta
from fedstep.memory import MemoryStore, MemoryTable
from fedstep.memory.run import store_initial
from fedstep.operator.settings import RunSettings
from fedstep.operator.start import plan_run
from fedstep.privacy.secagg.inputs import InputCodec

REPO = Path(__file__).resolve().parents[1]
INITIAL = {"000/dense/kernel": np.zeros((4, 2), np.float32), "001/dense/bias": np.zeros(2, np.float32)}


class NumpyPool:
    """The client pool's interface: each client sends a delta of ones times its partition index;
    the clients in `failing` fail their rounds."""

    def __init__(self, failing: tuple[str, ...] = ()) -> None:
        self.rounds: list[list[str]] = []
        self.failing = failing
        self.metrics = {"test_accuracy": 0.5, "test_accuracy_before": 0.5}

    def run_round(
        self,
        tasks: list[ClientTask],
        on_result: Callable[[ClientResult], None],
        meanwhile: Callable[[], None] = lambda: None,
    ) -> None:
        meanwhile()
        self.rounds.append([t.client_id for t in tasks])
        for task in tasks:
            if task.client_id in self.failing:
                on_result(ClientResult(task.client_id, None, None, "ValueError: no data here"))
                continue
            msg = RoundMessage.parse(task.message)
            delta = {name: np.full(w.shape, task.index, np.float32) for name, w in INITIAL.items()}
            file, item = encode_update(
                delta,
                run_id=msg.run_id,
                round_number=msg.round,
                client_id=task.client_id,
                num_examples=2,
                metrics=self.metrics,
                created_at="2026-12-01T00:00:00Z",
            )
            on_result(ClientResult(task.client_id, file, item.to_item()))


class Evaluator:
    def evaluate(self, weights: tensors.Tensors) -> dict[str, float]:
        return {"test_accuracy": 0.5, "test_loss": float(weights["001/dense/bias"][0])}


def _loop(
    settings: RunSettings,
    clients: int,
    tmp_path: Path,
    failing: tuple[str, ...] = (),
    echo=lambda line: None,
    secagg: SecAggSettings | None = None,
) -> tuple[RoundLoop, NumpyPool, ObjectRef]:
    ids = sorted(f"client-{i}" for i in range(1, clients + 1))
    record = plan_run(settings.validated(), ids, "run-memory")
    record = replace(record, model=ObjectRef(keys.model_key("run-memory"), "0" * 64, 1), secagg=secagg)
    store, table, pool = MemoryStore(), MemoryTable(record), NumpyPool(failing)
    initial = store_initial(store, "run-memory", INITIAL)
    loop = RoundLoop(record, store, table, pool, b"architecture", tmp_path, settings, echo)
    return loop, pool, initial


def test_sampling_1000_clients_selects_clients_per_round_in_every_round_by_the_cloud_selection(tmp_path):
    from fedstep.core.selection import select

    settings = RunSettings(rounds=3, clients_per_round="20", seed=7)
    loop, pool, initial = _loop(settings, 1000, tmp_path)
    entries, reason, _ = loop.run(initial, Evaluator())
    assert reason == "max_rounds" and [e["participants"] for e in entries] == [20, 20, 20]
    clients = [f"client-{i}" for i in range(1, 1001)]
    assert pool.rounds == [select(clients, 20, 7, r) for r in (1, 2, 3)]
    assert len({tuple(r) for r in pool.rounds}) == 3  # a new sample each round


def test_a_rounds_update_files_are_deleted_once_it_is_aggregated(tmp_path):
    loop, _, initial = _loop(RunSettings(rounds=2), 3, tmp_path)
    entries, _, last = loop.run(initial, Evaluator())
    updates = [k for k in loop.store.puts if k.startswith(keys.UPDATES_PREFIX)]
    assert updates, loop.store.puts
    assert all(k not in loop.store.objects for k in updates) and sorted(loop.store.deleted) == sorted(updates)
    assert last.key in loop.store.objects  # the global models stay (summary.json names them)
    # FedAvg of deltas 1, 2, 3 on equal examples: +2 per round
    assert [e["heldout_loss"] for e in entries] == [2.0, 4.0]


def test_a_target_met_stops_the_run_as_the_state_machine_does(tmp_path):
    loop, _, initial = _loop(RunSettings(rounds=5, target="test_accuracy>=0.5"), 3, tmp_path)
    entries, reason, _ = loop.run(initial, Evaluator())
    assert reason == "target_reached" and len(entries) == 1


def test_a_client_that_fails_is_named_and_its_round_aggregated_without_it_as_at_the_deadline(tmp_path):
    lines: list[str] = []
    loop, _, initial = _loop(RunSettings(rounds=1), 3, tmp_path, failing=("client-2",), echo=lines.append)
    entries, _, _ = loop.run(initial, Evaluator())
    assert lines[0].startswith("client client-2: round 1 failed") and "ValueError: no data here" in lines[0]
    assert entries[0]["participants"] == 2 and entries[0]["heldout_loss"] == 2.0  # deltas 1 and 3


def test_a_round_below_its_quorum_fails_the_run_by_name_after_its_retries(tmp_path):
    settings = RunSettings(rounds=2, round_retries=1)
    loop, pool, initial = _loop(settings, 3, tmp_path, failing=("client-1", "client-2"))
    with pytest.raises(FedstepError, match=r"^run run-memory FAILED: QuorumNotMet: "):
        loop.run(initial, Evaluator())
    assert len(pool.rounds) == 2  # round 1, published again once


SECURE = SecAggSettings(threshold=3, clip=100.0)  # the stand-in's deltas (up to 5 x sqrt(10)) are never clipped


def _final_bias(loop: RoundLoop, last: ObjectRef) -> np.ndarray:
    return tensors.decode(loop.store.get(last.key))["001/dense/bias"]


def test_a_secure_run_gives_plain_fedavgs_model_within_the_quantisation_error(tmp_path):
    plain, _, initial = _loop(RunSettings(rounds=1), 5, tmp_path / "plain")
    _, _, plain_last = plain.run(initial, Evaluator())
    secure, pool, initial = _loop(RunSettings(rounds=1), 5, tmp_path / "secure", secagg=SECURE)
    entries, reason, secure_last = secure.run(initial, Evaluator())
    assert reason == "max_rounds" and entries[0]["participants"] == 5
    assert pool.rounds == [[f"client-{i}" for i in range(1, 6)]]
    expected = _final_bias(plain, plain_last)
    np.testing.assert_allclose(expected, 3.0)  # FedAvg of deltas 1..5 on equal examples
    codec = InputCodec(SECURE.clip, secure.record.bounds.max_examples, 5)
    w_sum = 5 * 2 / codec.max_examples  # five clients of 2 examples
    error = 5 * codec.values.step / w_sum + 3.0 * 5 * codec.weights.step / w_sum
    got = _final_bias(secure, secure_last)
    assert np.max(np.abs(got - expected)) <= error and not np.array_equal(got, expected)  # quantised, not copied


def test_a_secure_rounds_clients_upload_only_masked_inputs_deleted_after_the_round(tmp_path):
    loop, _, initial = _loop(RunSettings(rounds=2), 5, tmp_path, secagg=SECURE)
    uploads: list[bytes] = []
    put = loop.store.put

    def recording(key: str, data: bytes) -> None:
        if key.startswith(keys.UPDATES_PREFIX):
            uploads.append(data)
        put(key, data)

    loop.store.put = recording  # type: ignore[method-assign]
    entries, _, _ = loop.run(initial, Evaluator())
    assert [e["participants"] for e in entries] == [5, 5]
    # each file one uint32 tensor of the 10 parameters and the weight: never a client's float delta
    assert len(uploads) == 10 and all(tensors.spec_of_header(d).shapes == {MASKED_TENSOR: (11,)} for d in uploads)
    updates = [k for k in loop.store.puts if k.startswith(keys.UPDATES_PREFIX)]
    assert sorted(loop.store.deleted) == sorted(updates) and not any(k in loop.store.objects for k in updates)


def test_a_secure_run_is_repeatable_for_the_same_seed(tmp_path):
    first, _, initial = _loop(RunSettings(rounds=2, seed=3), 5, tmp_path / "a", secagg=SECURE)
    _, _, a = first.run(initial, Evaluator())
    second, _, initial = _loop(RunSettings(rounds=2, seed=3), 5, tmp_path / "b", secagg=SECURE)
    _, _, b = second.run(initial, Evaluator())
    first_model, second_model = (tensors.decode(loop.store.get(ref.key)) for loop, ref in ((first, a), (second, b)))
    assert all(np.array_equal(first_model[name], second_model[name]) for name in INITIAL)


def test_a_secure_round_with_a_failing_client_aggregates_the_survivors(tmp_path):
    lines: list[str] = []
    loop, _, initial = _loop(
        RunSettings(rounds=1), 5, tmp_path, failing=("client-2",), echo=lines.append, secagg=SECURE
    )
    entries, _, last = loop.run(initial, Evaluator())
    assert lines[0].startswith("client client-2: round 1 failed") and "ValueError: no data here" in lines[0]
    assert entries[0]["participants"] == 4
    np.testing.assert_allclose(_final_bias(loop, last), (1 + 3 + 4 + 5) / 4, atol=1e-2)


def test_a_secure_round_of_fewer_than_t_clients_fails_the_run_by_name_after_its_retries(tmp_path):
    settings = RunSettings(rounds=1, round_retries=1, quorum=1, min_participants=1)
    loop, pool, initial = _loop(settings, 5, tmp_path, failing=("client-1", "client-2", "client-3"), secagg=SECURE)
    with pytest.raises(
        FedstepError,
        match=r"^run run-memory FAILED: SecAggThresholdNotMet: 2 of 5 clients completed the advertise phase of "
        r"round 1 \(attempt 1\)",
    ):
        loop.run(initial, Evaluator())
    assert len(pool.rounds) == 2  # round 1, published again once (attempt 1, fresh keys)


@pytest.mark.parametrize("codec", ["float32", "float16", "int8", "topk:0.5", "topk:0.5+int8"])
def test_a_secure_client_reads_back_the_delta_its_update_file_carries_under_any_codec(codec):
    delta = {"000/a": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4), "001/b": np.array([0.5, -2], np.float32)}
    data, item = encode_update(
        delta, run_id="run-1", round_number=1, client_id="c", num_examples=3, metrics={},
        created_at="2026-12-01T00:00:00Z", codec=codec,
    )  # fmt: skip
    got = decode_delta(data, item.encoding, tensors.TensorSpec.of(delta))
    _, sent = codecs.get(codec).encode(delta, codecs.seed_for("run-1", 1, "c"))  # what the server would decode
    assert all(np.array_equal(got[name], sent[name]) for name in delta)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"engine": "memory", "workers": 0}, "--workers must be 1 to 256, got 0"),
        ({"engine": "memory", "workers": 1000}, "--workers must be 1 to 256, got 1000"),
        ({"engine": "cloud", "workers": 2}, "--workers sets the memory engine's worker processes"),
        ({"engine": "memory", "keep_running": True}, "--keep-running keeps the local cloud up"),
        ({"engine": "lambda"}, "--engine must be one of cloud, memory"),
        ({"engine": "memory", "clients": 1001}, "--clients must be 1 to 1000, got 1001"),
        ({"engine": "cloud", "clients": 51}, "--clients must be 1 to 50, got 51 (up to 1000 with --engine memory)"),
        ({"engine": "memory", "settings": {"standardize": "federated"}}, "standardize federated asks the clients"),
    ],
)
def test_options_one_engine_cannot_take_are_refused_by_name_before_anything_starts(options, message, tmp_path):
    with pytest.raises(FedstepError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        run_local(demo_config(out=tmp_path, **options))
    assert not (tmp_path / "summary.json").exists()


def test_workers_default_to_one_per_core_and_never_exceed_a_rounds_clients():
    assert worker_count(None, 1000) >= 1
    assert worker_count(8, 3) == 3 and worker_count(2, 20) == 2


def test_1000_digits_clients_take_part_with_one_or_two_examples_and_1500_are_refused_clearly():
    """digits' pool of 1,437 examples over 1,000 clients (bench task B): 563 hold 1 example (to train
    on, no local test split), 437 hold 2; a client of 0 is refused by the same check for either engine."""
    ids = [f"client-{i}" for i in range(1, 1501)]
    _, counts = partition_data("digits", ids[:1000], "iid", 0)
    sizes = [sum(c) for c in counts.clients.values()]
    assert (sizes.count(1), sizes.count(2), len(sizes)) == (563, 437, 1000)
    with pytest.raises(FedstepError, match=r"client-\d+ would get 0 example\(s\) of a pool of 1437; .*use fewer"):
        partition_data("digits", ids, "iid", 0)
    _, counts = partition_data("digits", ids[:700], "iid", 0)  # 700 clients: 2 or 3 examples each
    assert min(sum(c) for c in counts.clients.values()) == 2


def test_a_round_whose_clients_report_no_test_metrics_completes_and_shows_their_train_metrics(tmp_path):
    lines: list[str] = []
    loop, _, initial = _loop(RunSettings(rounds=1), 3, tmp_path, echo=lines.append)
    loop.pool.metrics = {"train_accuracy": 0.25, "train_loss": 1.5}  # clients of one example
    entries, reason, _ = loop.run(initial, Evaluator())
    [entry] = entries
    assert reason == "max_rounds" and entry["metrics"] == {"train_accuracy": 0.25, "train_loss": 1.5}
    assert (entry["accuracy"], entry["loss"], entry["heldout_accuracy"]) == (0.25, 1.5, 0.5)
    [line] = [line for line in lines if line.startswith("round 1/1")]
    assert "participants 3  loss 1.5000  accuracy 0.2500  held-out accuracy 0.5000" in line


@pytest.mark.e2e  # it runs `fedstep local` as a user does (tests/conftest.py)
def test_the_memory_engine_runs_1000_digits_clients_20_a_round_with_one_example_clients_among_them(tmp_path):
    """Bench task B's shape, one round: TensorFlow in one worker (about 8 s, nearly all of it start-up)."""
    args = ("--dataset", "digits", "--clients", "1000", "--clients-per-round", "20", "--rounds", "1", "--workers", "1")
    result = subprocess.run(
        [sys.executable, "-m", "fedstep", "local", "--out", str(tmp_path), "--engine", "memory", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [r["participants"] for r in summary["rounds"]] == [20] and summary["stop_reason"] == "max_rounds"
    assert all(math.isfinite(r["heldout_accuracy"]) for r in summary["rounds"])
    assert 0 <= summary["final"]["test_accuracy"] <= 1 and math.isfinite(summary["final"]["test_loss"])
    assert all(math.isfinite(v) for r in summary["rounds"] for v in r["metrics"].values())
    assert "client-1000  1 examples" in result.stdout and "final global model on the held-out test set" in result.stdout
