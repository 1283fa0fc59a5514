"""The round protocol (fedstep.core.rounds) against in-memory ports: the core without AWS."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from fedstep.core import keys, strategies
from fedstep.core.errors import RunStopped
from fedstep.core.rounds import (
    AggregationSettings,
    QuorumNotMet,
    RoundBusy,
    TooFewParticipants,
)
from fedstep.core.schemas import Feedback, RoundSummary, RunStop, Target, headline_metric
from fedstep.memory import MemoryTable
from tests.round_world import GLOBAL, RUN, World, make_world


@pytest.fixture
def world() -> World:
    return make_world()


def test_publishing_opens_the_round_and_sends_the_message_to_the_selected_clients(world):
    [(message, clients)] = world.publisher.messages
    assert clients == ["a", "b"] and message["round"] == 1 and message["attempt"] == 0
    assert "task_token" not in message  # the token stays with the server
    assert message["global_model"]["key"] == keys.global_key(RUN, 0, "initial")
    record = world.table.get_round(RUN, 1)
    assert (record["status"], record["task_token"]) == ("open", "tok-1")


def test_round_waits_until_every_client_has_reported(world):
    world.report("a", 1.0, 10)
    assert world.complete() is None
    assert world.reporter.successes == [] and world.table.get_round(RUN, 1)["status"] == "open"


def test_round_is_aggregated_with_example_weights_and_reported(world):
    world.report("a", 1.0, 10)
    world.report("b", 4.0, 30)
    summary = world.complete()
    assert summary is not None and summary.participants == ["a", "b"] and summary.num_examples == 40
    np.testing.assert_allclose(world.new_global()["001/d/bias"], (1.0 * 10 + 4.0 * 30) / 40)
    assert summary.metrics["test_accuracy"] == pytest.approx((0.1 * 10 + 0.4 * 30) / 40)
    [(token, output)] = world.reporter.successes
    assert token == "tok-1"  # the token the server recorded when it published the round
    assert output["global_model"]["key"].startswith(keys.round_prefix(RUN, 1))
    assert output["summary"]["participants"] == 2 and "history" not in output
    assert world.table.get_round(RUN, 1)["status"] == "reported"


def test_a_round_whose_participants_have_no_local_test_split_is_aggregated_with_no_test_metrics():
    """Clients of one example train on it and have no local test split: they report train metrics only.
    A target (judged on test_accuracy_before) is then not reached, and the run goes on."""
    world = make_world(target=Target.parse_text("test_accuracy>=0.5"))
    world.report("a", 1.0, 1, metrics={"train_loss": 0.5, "train_accuracy": 1.0})
    world.report("b", 4.0, 1, metrics={"train_loss": 1.5, "train_accuracy": 0.0})
    summary = world.complete()
    assert summary is not None and summary.participants == ["a", "b"] and summary.num_examples == 2
    assert summary.metrics == {"train_accuracy": 0.5, "train_loss": 1.0}  # absent, not 0 or NaN
    assert headline_metric(summary.metrics, "accuracy") == 0.5  # the round's figure: the train split's
    [(_, output)] = world.reporter.successes
    assert output["target_reached"] is False and world.table.get_round(RUN, 1)["status"] == "reported"


def test_test_metrics_are_weighted_means_over_the_participants_that_have_a_local_test_split(world):
    world.report("a", 1.0, 1, metrics={"train_accuracy": 1.0})  # one example: no test split
    world.report("b", 4.0, 3, metrics={"train_accuracy": 0.0, "test_accuracy": 0.5, "test_accuracy_before": 0.25})
    summary = world.complete()
    assert summary.metrics == {"train_accuracy": 0.25, "test_accuracy": 0.5, "test_accuracy_before": 0.25}


def test_duplicate_invocation_aggregates_and_reports_once(world):
    world.report("a", 1.0, 10)
    world.report("b", 4.0, 30)
    assert world.complete() is not None
    puts = len(world.store.puts)
    assert world.complete() is None
    assert world.complete() is None
    assert len(world.reporter.successes) == 1 and len(world.store.puts) == puts


def test_a_crash_between_writing_and_reporting_is_repaired_by_the_next_invocation():
    world = make_world()
    world.reporter.fail_first = True
    world.report("a", 1.0, 10)
    world.report("b", 4.0, 30)
    with pytest.raises(ConnectionError):
        world.complete()
    assert world.table.get_round(RUN, 1)["status"] == "aggregated"
    assert world.complete() is None  # the retry reports the stored summary
    [(token, output)] = world.reporter.successes
    assert token == "tok-1" and output["summary"]["participants"] == 2
    assert world.table.get_round(RUN, 1)["status"] == "reported"


def test_a_round_claimed_by_another_invocation_is_left_to_it_until_its_lease_runs_out(world):
    world.report("a", 1.0, 10)
    world.report("b", 4.0, 30)
    assert world.table.claim_round(RUN, 1, "crashed", now=0, lease_until=10**12)  # a holder that never returns
    assert world.complete() is None and world.table.get_round(RUN, 1)["status"] == "claimed"
    world.table.expire_lease(RUN, 1)  # its holder crashed, and its lease ran out
    summary = world.complete()
    assert summary is not None and world.table.get_round(RUN, 1)["status"] == "reported"


def test_the_deadline_waits_for_the_claims_holder_and_then_says_so_by_name():
    world = make_world()
    world.report("a", 1.0, 10)
    assert world.table.claim_round(RUN, 1, "busy", now=0, lease_until=10**12)
    with pytest.raises(RoundBusy, match="still being aggregated"):
        world.at_deadline(settings=AggregationSettings(wait_s=0.0), sleep=lambda s: None)


def test_an_invalid_update_is_rejected_with_its_reason_the_client_is_told_and_the_round_goes_on():
    world = make_world(clients=("a", "b", "c"), min_participants=2)
    world.report("a", 1.0, 10)
    world.report("c", 3.0, 10)
    nan = {k: np.full(v.shape, np.nan, np.float32) for k, v in GLOBAL.items()}
    bad = world.report("b", 0.0, 30, delta=nan)
    summary = world.complete()
    assert summary.participants == ["a", "c"]
    assert [(r.client_id, "non-finite" in r.reason) for r in summary.rejected] == [("b", True)]
    np.testing.assert_allclose(world.new_global()["001/d/bias"], 2.0)
    told = Feedback.parse(world.table.get(keys.last_rejection_item_key("b")))
    assert (told.run_id, told.round, told.update_sha256) == (RUN, 1, bad.update.sha256)
    assert "non-finite" in told.reason


def test_a_round_with_no_valid_update_fails_with_a_named_error(world):
    for client in ("a", "b"):
        world.report(client, 0.0, 5, delta={"wrong": np.zeros(1, np.float32)})
    assert world.complete() is None
    [(token, error, cause)] = world.reporter.failures
    assert (token, error) == ("tok-1", "QuorumNotMet")
    assert cause.startswith("0 of 2 updates in round 1") and "tensors" in cause
    assert world.table.get_round(RUN, 1)["status"] == "open"  # given back: a retry may aggregate it


def test_a_retried_round_counts_earlier_attempts_and_reports_to_the_newest_token(world):
    world.report("a", 1.0, 10)  # in the round's first attempt
    world.publish(attempt=1, token="attempt-2")  # the state machine retried the round
    world.report("b", 4.0, 30)
    summary = world.complete()
    assert summary.participants == ["a", "b"] and summary.attempt == 1
    [(token, _)] = world.reporter.successes
    assert token == "attempt-2"


def test_an_item_pointing_at_another_clients_file_is_rejected(world):
    world.report("a", 1.0, 10)
    world.report("b", 4.0, 30)
    item = world.table.get(keys.update_item_key(RUN, 1, "b"))
    item["update"]["key"] = keys.update_key(RUN, 1, "a")
    world.table.put(item)
    summary = world.complete()
    assert summary.participants == ["a"]
    [rejection] = summary.rejected
    assert rejection.client_id == "b" and "is not this client's key" in rejection.reason


def test_an_item_whose_file_says_otherwise_is_rejected(world):
    world.report("a", 1.0, 10)
    item = world.report("b", 4.0, 30)
    world.table.put({**item.to_item(), "num_examples": 3000})  # the item claims more than its file
    summary = world.complete()
    assert summary.participants == ["a"]
    [rejection] = summary.rejected
    assert rejection.client_id == "b" and "metadata differs" in rejection.reason and "num_examples" in rejection.reason


def test_at_the_deadline_the_updates_that_arrived_are_aggregated_when_the_quorum_is_met():
    world = make_world(quorum=2, clients=("a", "b", "c"))
    world.report("a", 1.0, 10)
    world.report("b", 4.0, 30)
    assert world.complete() is None  # c is missing: the round waits for its deadline
    output = world.at_deadline()
    assert output["summary"]["participants"] == 2
    np.testing.assert_allclose(world.new_global()["001/d/bias"], 3.25)
    assert world.reporter.successes == []  # the timed-out token is not used: the output goes back directly
    assert world.table.get_round(RUN, 1)["status"] == "reported"


def test_at_the_deadline_below_the_quorum_the_round_fails_with_a_named_error():
    world = make_world(quorum=2, clients=("a", "b", "c"))
    world.report("a", 1.0, 10)
    with pytest.raises(QuorumNotMet, match=r"^1 of 3 updates by the deadline of round 1 \(quorum 2\)"):
        world.at_deadline()
    assert world.table.get_round(RUN, 1)["status"] == "open"
    assert not any(k.startswith(keys.round_prefix(RUN, 1)) for k in world.store.objects)


def test_a_round_with_fewer_participants_than_the_run_allows_is_not_published():
    world = make_world(quorum=1, clients=("a", "b", "c"), min_participants=2)
    world.report("a", 1.0, 10)
    with pytest.raises(TooFewParticipants, match=r"1 of 3 updates .*min_participants 2"):
        world.at_deadline()
    assert not any(k.startswith(keys.round_prefix(RUN, 1)) for k in world.store.objects)


def test_a_late_update_after_the_deadline_changes_nothing():
    world = make_world(quorum=1)
    world.report("a", 1.0, 10)
    first = world.at_deadline()
    model = world.new_global()
    world.report("b", 9.0, 30)  # the straggler arrives after the deadline aggregation
    assert world.complete() is None and world.reporter.successes == []
    np.testing.assert_array_equal(world.new_global()["001/d/bias"], model["001/d/bias"])
    assert world.at_deadline() == first


def test_rejections_that_leave_fewer_valid_updates_than_the_quorum_fail_the_round():
    world = make_world(quorum=2)
    world.report("a", 1.0, 10)
    world.report("b", 0.0, 30, delta={k: np.full(v.shape, np.inf, np.float32) for k, v in GLOBAL.items()})
    assert world.complete() is None
    [(_, error, cause)] = world.reporter.failures
    assert error == "QuorumNotMet" and "1 of 2 updates in round 1" in cause and "non-finite" in cause


def test_a_round_already_aggregated_when_it_is_published_again_is_reported_to_the_new_token(world):
    world.report("a", 1.0, 10)
    world.report("b", 4.0, 30)
    world.complete()
    assert world.publish(attempt=1, token="late-retry") is None
    assert [t for t, _ in world.reporter.successes] == ["tok-1", "late-retry"]
    assert len(world.publisher.messages) == 1  # not sent to the clients again


def _beat(client: str, state: str, seconds_ago: float = 0.0) -> dict:
    from datetime import UTC, datetime, timedelta

    from fedstep.core.schemas import Heartbeat

    seen = (datetime.now(UTC) - timedelta(seconds=seconds_ago)).isoformat()
    return Heartbeat(client, "0.1.0", state, seen, 60, {}).to_item()


def test_a_client_whose_heartbeat_says_stopped_is_not_sent_the_round_and_not_waited_for():
    from tests.round_world import make_run

    world = World(make_run(clients=("a", "b", "c"), quorum=2, min_participants=2))
    for client, state, ago in (("a", "idle", 0), ("b", "training", 0), ("c", "stopped", 0)):
        world.table.put(_beat(client, state, ago))
    world.publish()
    [(_, clients)] = world.publisher.messages
    record = world.table.get_round(RUN, 1)
    assert clients == record["selected"] == ["a", "b"] and record["skipped"] == {"c": "stopped"}
    world.report("a", 1.0, 10)
    world.report("b", 3.0, 30)
    summary = world.complete()  # the stream path: every selected client is in, no deadline to wait for
    assert summary is not None and summary.selected == ["a", "b"] and summary.participants == ["a", "b"]


def test_a_silent_client_counts_offline_and_one_never_seen_or_claiming_online_is_selected():
    from tests.round_world import make_run

    world = World(make_run(clients=("a", "b", "c", "d"), quorum=2, min_participants=2))
    world.table.put(_beat("a", "idle", seconds_ago=3600))  # heartbeats stopped an hour ago: offline
    world.table.put(_beat("b", "idle"))  # says it is online: believed
    world.table.put({**_beat("c", "idle"), "state": "sleeping"})  # unreadable: not counted away
    world.publish()  # d: never seen (heartbeats off)
    record = world.table.get_round(RUN, 1)
    assert record["selected"] == ["b", "c", "d"] and record["skipped"] == {"a": "offline"}


def test_with_select_online_off_every_sampled_client_is_selected_whatever_its_heartbeat():
    from dataclasses import replace

    from tests.round_world import make_run

    world = World(replace(make_run(clients=("a", "b", "c"), quorum=2), select_online=False))
    world.table.put(_beat("c", "stopped"))
    world.publish()
    assert world.table.get_round(RUN, 1)["selected"] == ["a", "b", "c"]


# -- a stopped run (`fedstep stop` writes the stop marker first) ------------------------------------


def stop(world: World) -> None:
    world.table.put_stop(RunStop(RUN, "wrong learning rate", "2026-11-21T00:05:00+00:00"))


def test_updates_that_arrive_after_the_stop_are_never_aggregated(world):
    stop(world)
    world.report("a", 1.0, 10)
    world.report("b", 4.0, 30)
    assert world.complete() is None
    record = world.table.get_round(RUN, 1)
    assert record["status"] == "open" and "global_model" not in record
    assert world.reporter.successes == [] and world.reporter.failures == []
    assert not [k for k in world.store.objects if k.startswith(keys.round_prefix(RUN, 1))]


def test_a_round_being_aggregated_when_the_stop_comes_is_not_committed_and_leaves_no_model():
    """The stop lands between the claim and the commit: the commit (one transaction with the marker's
    check) is refused, the model and state it wrote are deleted, the claim goes back, nobody is told."""

    class StoppedMidway(MemoryTable):
        def claim_round(self, *args, **kwargs):
            claimed = super().claim_round(*args, **kwargs)
            self.put_stop(RunStop(RUN, "stopped mid-aggregation", "2026-11-21T00:05:00+00:00"))
            return claimed

    world = make_world()
    world.table = StoppedMidway(world.run)
    world.publish()
    world.report("a", 1.0, 10)
    world.report("b", 4.0, 30)
    assert world.complete() is None
    record = world.table.get_round(RUN, 1)
    assert record["status"] == "open" and "claim_id" not in record and "global_model" not in record
    written = [k for k in world.store.puts if k.startswith(keys.round_prefix(RUN, 1))]
    assert written and not [k for k in written if k in world.store.objects]  # deleted: nothing readable
    assert world.reporter.successes == [] and world.reporter.failures == []


def test_after_the_stop_no_round_is_published_and_the_deadline_aggregates_nothing(world):
    world.report("a", 1.0, 10)
    stop(world)
    with pytest.raises(RunStopped, match="wrong learning rate"):
        world.at_deadline()
    assert world.table.get_round(RUN, 1)["status"] == "open"
    sent = len(world.publisher.messages)
    with pytest.raises(RunStopped, match="round 2 is not published"):
        world.publish(2, token="tok-2")
    assert len(world.publisher.messages) == sent and world.table.get_round(RUN, 2) is None


def test_the_round_record_names_the_clients_krum_kept():
    world = make_world(quorum=3, clients=("a", "b", "c"), min_participants=3, strategy="krum")
    for client, value in (("a", 1.0), ("b", 1.5), ("c", 40.0)):
        world.report(client, value, 10)
    summary = world.complete()
    assert summary.kept == ["a"] and summary.measurements["selected"] == 1  # a and b tie: by client id
    assert RoundSummary.parse(world.table.get_round(RUN, 1)).kept == ["a"]  # as `fedstep status` reads it


class KeepsAStranger(strategies.FedAvg):
    name = "keeps_a_stranger"

    def aggregate(self, round_number, global_model, state, updates):
        return replace(super().aggregate(round_number, global_model, state, updates), kept=["a", "mallory"])


def test_a_strategy_naming_a_client_that_sent_no_update_fails_the_round_before_any_write(monkeypatch):
    monkeypatch.setitem(strategies.STRATEGIES, KeepsAStranger.name, KeepsAStranger)
    world = make_world(strategy=KeepsAStranger.name)
    world.report("a", 1.0, 10)
    world.report("b", 2.0, 10)
    assert world.complete() is None
    [(_, error, cause)] = world.reporter.failures
    assert error == "StrategyFailed" and "'mallory' is not a participant" in cause
    assert world.table.get_round(RUN, 1)["status"] != "reported"
