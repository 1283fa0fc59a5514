"""`fedstep cost <run>`: a run's AWS cost, estimated from its metrics (fedstep/costs, docs/cost.md).

The model's figures are checked by hand on a small run (2 rounds x 3 clients); the price table on
its date and coverage; the command on a real run of the embedded local cloud, where the transitions
counted from the definition must equal those of the execution's history."""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from datetime import date

import pytest

from client_agent.agent import Outcome
from fedstep.costs import model
from fedstep.costs.model import Assumptions, RoundFacts, RunFacts, estimate, history_transitions
from fedstep.costs.prices import BY_KEY, PRICES, PRICES_READ, REGION, SERVICES, price
from fedstep.local import gaps
from tests.cloud_helpers import agent, drain_queues, fedstep, start, wait_for_execution

CLIENTS = ("client-1", "client-2", "client-3")


def small_run(**changes) -> RunFacts:
    """2 rounds x 3 clients, every update in (the stream path), 10 kB models, a 1 GB function."""
    rounds = tuple(
        RoundFacts(
            round=r,
            selected=CLIENTS,
            participants=CLIENTS,
            duration_s=10.0,
            aggregation_s=0.5,
            model_bytes=10_000,
            update_bytes=10_000,
            record_bytes=1500,
        )
        for r in (1, 2)
    )
    facts = {
        "run_id": "run-small",
        "clients": CLIENTS,
        "rounds": rounds,
        "run_s": 100.0,
        "lambda_memory_mb": 1024,
        "architecture_bytes": 5_000,
        "initial_model_bytes": 10_000,
    }
    return RunFacts(**{**facts, **changes})


def usd(key: str, quantity: float) -> float:
    return quantity * BY_KEY[key].usd


# -- the model, by hand ----------------------------------------------------------------------------


def test_transitions_are_seven_per_round_plus_four_to_finish_counted_from_the_definition():
    est = estimate(small_run())
    # a round: Prepare, Notify (wait), Next secure-aggregation phase?, Aggregated by slices?, Report is for
    # this round?, Round aggregated, More rounds?; the end: All rounds done, Notify clients: run ended, Write
    # model card, Training finished
    assert est.transitions == 2 * 7 + 4
    assert est.transitions_source == "state machine definition (fedstep's own)"
    assert est.usage["sfn.transition"] == pytest.approx(18)
    assert est.usage.by_service()["Step Functions"] == pytest.approx(18 * 0.025 / 1000)


def test_fedsteps_own_paths_match_the_synthesized_state_machine():
    from tests.synthesized import state_machine_definition

    paths = model.paths_from_definition(state_machine_definition())  # raises, naming the transition, if they drifted
    assert paths.round == model.ROUND_PATH and paths.end_invocations == 1
    assert paths.secure == model.SECURE_PATH


def test_a_round_aggregated_by_slices_counts_its_slices_invocations_transitions_and_reads():
    whole = estimate(small_run())
    sliced_run = small_run()
    sliced_run = replace(sliced_run, rounds=tuple(replace(r, slices=16) for r in sliced_run.rounds))
    sliced = estimate(sliced_run)
    rounds = len(sliced_run.rounds)
    assert sliced.transitions == whole.transitions + rounds * (2 + 2 * 16)
    assert sliced.usage["lambda.request"] == pytest.approx(whole.usage["lambda.request"] + rounds * 17)
    assert sliced.usage["lambda.gb_s"] > whole.usage["lambda.gb_s"]
    assert sliced.usage["s3.get"] > whole.usage["s3.get"] and sliced.usage["s3.put"] > whole.usage["s3.put"]


def test_lambda_requests_and_gb_seconds_come_from_the_memory_and_the_measured_aggregation():
    est = estimate(small_run())
    # per round: 1 publish + 3 stream invocations, each 0.2 s, plus 0.5 s aggregating; then the model card
    # (0.2 s) and 1 s of init per run
    assert est.usage["lambda.request"] == pytest.approx(2 * 4 + 1)
    assert est.usage["lambda.gb_s"] == pytest.approx(2 * (4 * 0.2 + 0.5) + 0.2 + 1.0)
    half = estimate(small_run(lambda_memory_mb=512))
    assert half.usage["lambda.gb_s"] == pytest.approx(est.usage["lambda.gb_s"] / 2)


def test_s3_requests_and_bytes_per_round_and_client():
    est = estimate(small_run())
    # server: the input model (header, body) and 3 updates (header, body) per round = 8; clients: their own
    # update of an earlier attempt, the global model, and the architecture once = 2 + 2 + 1 each
    assert est.usage["s3.get"] == pytest.approx(2 * 8 + 3 * 5)
    # server: one global model per round, the architecture and initial model at start; clients: one update a round
    assert est.usage["s3.put"] == pytest.approx(2 + 2 + 3 * 2)
    # each client downloads the architecture once and the global model each round
    assert est.usage["s3.transfer_out_gb"] == pytest.approx(3 * (5_000 + 2 * 10_000) / 1e9)
    stored = 2 * 10_000 + 5_000 + 10_000 + 3 * 2 * 10_000  # global models, start files, updates
    assert est.usage["s3.storage_gb_month"] == pytest.approx(stored / 1e9)


def test_sqs_requests_count_deliveries_receives_deletes_and_the_idle_long_polls():
    est = estimate(small_run())
    # per client: 2 deliveries, 2 x (receive + delete), (100 s - 20 s busy) / 20 s = 4 empty polls, the
    # run-ended message (delivered, received, deleted)
    assert est.clients["client-1"].direct["sqs.request"] == pytest.approx(2 + 4 + 4 + 3)
    assert est.usage["sqs.request"] == pytest.approx(3 * 13)
    longer = estimate(small_run(run_s=1000.0))
    assert longer.clients["client-1"].direct["sqs.request"] == pytest.approx(2 + 4 + math.ceil(980 / 20) + 3)


def test_sns_publishes_each_round_and_the_run_end_and_delivers_to_each_selected_queue():
    est = estimate(small_run())
    assert est.usage["sns.publish"] == pytest.approx(3)
    assert est.usage["sns.sqs_delivery"] == pytest.approx(2 * 3 + 3)
    assert est.usage.by_service()["SNS"] == pytest.approx(3 * 0.5 / 1e6)


def test_dynamodb_write_and_read_units_of_rounds_items_and_heartbeats():
    est = estimate(small_run())
    # server per round: open (2 KB: 2) + claim (2) + complete, a transaction (1.5 KB: 2 x 2) with the stop marker's
    # check (2), + mark reported (2) = 12; the run record 2
    # clients: per round an update item and 2 heartbeats = 3, plus floor(100 / 60) = 1 periodic heartbeat
    assert est.usage["ddb.wru"] == pytest.approx(2 * 12 + 2 + 3 * (2 * 3 + 1))
    # server: publish reads the run (1), the previous round (round 2: 1), the stop marker (1) and the 3 clients'
    # heartbeats (select_online: 3); each of the 3 stream invocations reads the round (1), the run (1), the stop
    # marker (1) and the 3 selected clients' updates (3); clients read the stop marker twice and their run's
    # feedback each round, and the feedback when the run ends
    assert est.usage["ddb.rru"] == pytest.approx((2 + 3 + 18) + (3 + 3 + 18) + 3 * (2 * 3 + 1))
    assert est.usage["ddb.stream_read_lambda"] == pytest.approx(6)
    assert est.usage.by_service()["DynamoDB"] == pytest.approx(
        usd("ddb.wru", 47) + usd("ddb.rru", 68) + usd("ddb.storage_gb_month", est.usage["ddb.storage_gb_month"])
    )
    waiting = estimate(small_run(select_online=False))  # no heartbeats read at publication
    assert waiting.usage["ddb.rru"] == pytest.approx(est.usage["ddb.rru"] - 2 * 3)


def test_kms_requests_are_one_per_principal_and_service_per_five_minutes():
    est = estimate(small_run())
    # each client: S3, SQS, DynamoDB and SNS's data key for its queue; the function: S3, DynamoDB, SNS; the start: 2
    assert est.usage["kms.request"] == pytest.approx(3 * 4 + 3 + 2)
    assert estimate(small_run(run_s=601.0)).usage["kms.request"] == pytest.approx(3 * 4 * 3 + 3 * 3 + 2)


def test_clients_split_the_rounds_they_took_part_in_and_the_parts_add_up_to_the_total():
    est = estimate(small_run())
    parts = [p.usd for p in est.clients.values()]
    assert parts[0] == pytest.approx(parts[1]) == pytest.approx(parts[2])
    assert sum(parts) + est.server.usd() == pytest.approx(est.usd)
    assert all(p.rounds == 2 for p in est.clients.values())
    # the server's own part: the run's end, a cold start, the start's files and records, its KMS calls
    assert est.server["sfn.transition"] == 4
    assert est.server["lambda.gb_s"] == pytest.approx(1.2)


def test_a_client_missing_from_a_round_pays_none_of_it_and_the_round_ends_at_its_deadline():
    rounds = list(small_run().rounds)
    rounds[1] = RoundFacts(**{**rounds[1].__dict__, "participants": ("client-1", "client-2"), "at_deadline": True})
    est = estimate(small_run(rounds=tuple(rounds)))
    assert est.clients["client-3"].rounds == 1
    assert est.clients["client-1"].rounds == 2
    assert est.clients["client-3"].share.usd() < est.clients["client-1"].share.usd()
    # the deadline path has one state more (Aggregate at deadline); the deadline invocation adds a request, a
    # missing update removes one
    assert est.transitions == 7 + 8 + 4
    assert est.usage["lambda.request"] == pytest.approx(9)
    # client-3 got the delivery but did not receive, train or upload in round 2
    assert est.clients["client-3"].direct["s3.put"] == pytest.approx(1)


def test_a_retried_round_adds_its_retry_path_and_publication():
    rounds = list(small_run().rounds)
    rounds[0] = RoundFacts(**{**rounds[0].__dict__, "retries": 1})
    est = estimate(small_run(rounds=tuple(rounds)))
    assert est.transitions == 18 + len(model.RETRY_PATH)
    assert est.usage["sns.publish"] == pytest.approx(4)


def test_a_secure_run_counts_its_phases_states_invocations_items_and_roster_and_a_plain_run_none_of_them():
    plain, secure = estimate(small_run()), estimate(small_run(secure_aggregation=True))
    rounds, members, k = 2, 3, 2  # every client shares its keys with the 2 others (neighbours 0: all)
    more = {key: secure.usage.get(key, 0.0) - plain.usage.get(key, 0.0) for key in secure.usage}
    # per round: Share keys, Upload masked inputs, Reveal shares, each followed by the Choice again
    assert len(model.SECURE_PATH) == 6 and secure.transitions == plain.transitions + rounds * 6
    # 3 phase publications, and a stream invocation per keys, share and reveal item: 1 + k + 1 per member
    assert more["lambda.request"] == pytest.approx(rounds * (3 + members * (1 + k + 1)))
    assert more["ddb.stream_read_lambda"] == pytest.approx(rounds * members * (1 + k + 1))
    # each phase's message to each member: published, delivered, received and deleted
    assert more["sns.publish"] == pytest.approx(rounds * 3) and more["sns.sqs_delivery"] == pytest.approx(18)
    assert more["sqs.request"] == pytest.approx(rounds * members * 3 * 3)
    # writes: per member its keys item, k shares and its reveal (1.2 KB: 2 units); the server's 3 phase
    # records (2 KB, with their tokens), the k shares of each member relayed into inboxes, the survivors
    assert more["ddb.wru"] == pytest.approx(rounds * (members * (1 + k + 2) + 3 * 2 + members * k + 1))
    assert more["ddb.rru"] > 0
    # the roster: written once a round, read by each member
    assert more["s3.put"] == pytest.approx(rounds) and more["s3.get"] == pytest.approx(rounds * members)
    assert secure.usd > plain.usd
    assert {key for key, extra in more.items() if extra < 0} == set()  # nothing is counted less
    # a plain run's settings for secure aggregation count nothing: it has none
    assert estimate(small_run(secagg_neighbours=2)).usage == plain.usage


def test_fewer_secure_aggregation_neighbours_write_fewer_shares():
    five = ("c1", "c2", "c3", "c4", "c5")
    rounds = tuple(replace(r, selected=five, participants=five) for r in small_run().rounds)
    everyone = estimate(small_run(clients=five, rounds=rounds, secure_aggregation=True))
    two = estimate(small_run(clients=five, rounds=rounds, secure_aggregation=True, secagg_neighbours=2))
    # each of 5 members shares with 4 others, or with 2: 2 fewer shares written and relayed apiece
    assert everyone.usage["ddb.wru"] - two.usage["ddb.wru"] == pytest.approx(2 * 5 * (2 + 2))
    assert everyone.usage["lambda.request"] - two.usage["lambda.request"] == pytest.approx(2 * 5 * 2)
    assert everyone.transitions == two.transitions


def test_the_audit_trail_records_a_secure_rounds_writes_and_roster_reads():
    plain = estimate(small_run(audit=True))
    secure = estimate(small_run(audit=True, secure_aggregation=True))
    # per round: the 3 phase records, 6 relayed shares, the survivors record and the roster's PUT; each of
    # the 3 members' keys item, 2 shares and reveal item, and its read of the roster (under runs/)
    extra = 2 * ((3 + 6 + 1 + 1) + 3 * (1 + 2 + 1 + 1))
    assert secure.usage["cloudtrail.data_event"] - plain.usage["cloudtrail.data_event"] == pytest.approx(extra)


def test_the_cost_command_reads_secure_aggregation_from_the_run_record():
    from fedstep.core.schemas import RunRecord, SecAggSettings, TrainingConfig
    from fedstep.operator.cost import run_facts
    from fedstep.operator.views import RunView

    record = RunRecord("run-s", list(CLIENTS), 2, TrainingConfig(), "fedavg", "2026-11-21T12:00:00Z")
    plain = run_facts(RunView("run-s", record, None, []), 1024)
    assert (plain.secure_aggregation, plain.secagg_neighbours) == (False, 0)
    secure = replace(record, secagg=SecAggSettings(threshold=2, neighbours=2))
    facts = run_facts(RunView("run-s", secure, None, []), 1024)
    assert (facts.secure_aggregation, facts.secagg_neighbours) == (True, 2)


def test_the_history_count_replaces_the_definition_and_is_spread_over_the_rounds():
    est = estimate(small_run(observed_transitions=28))
    assert est.transitions == 28
    assert est.transitions_source == "execution history"
    assert est.defined_transitions == 18
    assert est.usage["sfn.transition"] == pytest.approx(28)
    assert est.server["sfn.transition"] == pytest.approx(4 * 28 / 18)  # the end's 4 of the 18 defined


def test_history_transitions_count_states_entered_and_task_retries():
    events = [
        {"type": "ExecutionStarted"},
        {"type": "PassStateEntered"},
        {"type": "PassStateExited"},
        {"type": "TaskStateEntered"},
        {"type": "TaskScheduled"},
        {"type": "TaskFailed"},
        {"type": "TaskScheduled"},  # a retry of the same task
        {"type": "TaskSucceeded"},
        {"type": "ChoiceStateEntered"},
        {"type": "SucceedStateEntered"},
        {"type": "ExecutionSucceeded"},
    ]
    assert history_transitions(events) == 4 + 1


def definition(**changes) -> dict:
    """A definition with fedstep's paths (Amazon States Language, only what the walk reads)."""
    states = {
        "Prepare round": {"Type": "Pass", "Next": "Notify clients and wait for updates"},
        "Notify clients and wait for updates": {
            "Type": "Task",
            "Next": "Next secure-aggregation phase?",
            "Catch": [{"Next": "Aggregate at deadline"}, {"Next": "Retry round?"}],
        },
        "Next secure-aggregation phase?": {
            "Type": "Choice",
            "Choices": [{"Next": "Share keys"}, {"Next": "Upload masked inputs"}, {"Next": "Reveal shares"}],
            "Default": "Aggregated by slices?",
        },
        "Share keys": {"Type": "Task", "Next": "Next secure-aggregation phase?"},
        "Upload masked inputs": {"Type": "Task", "Next": "Next secure-aggregation phase?"},
        "Reveal shares": {"Type": "Task", "Next": "Next secure-aggregation phase?"},
        "Aggregated by slices?": {
            "Type": "Choice",
            "Choices": [{"Next": "Aggregate slices"}],
            "Default": "Report is for this round?",
        },
        "Report is for this round?": {"Type": "Choice", "Choices": [{"Next": "Round aggregated"}]},
        "Aggregate at deadline": {
            "Type": "Task",
            "Next": "Next secure-aggregation phase?",
            "Catch": [{"Next": "Retry round?"}],
        },
        "Round aggregated": {"Type": "Pass", "Next": "More rounds?"},
        "More rounds?": {"Type": "Choice", "Choices": [{"Next": "Prepare round"}], "Default": "All rounds done"},
        "Retry round?": {"Type": "Choice", "Choices": [{"Next": "Retry round"}], "Default": "Training failed"},
        "Retry round": {"Type": "Pass", "Next": "Notify clients and wait for updates"},
        "Training failed": {"Type": "Fail"},
        "All rounds done": {"Type": "Pass", "Next": "Notify clients: run ended"},
        "Notify clients: run ended": {"Type": "Task", "Resource": "arn:aws:states:::sns:publish", "Next": "Done"},
        "Done": {"Type": "Pass", "End": True},
    }
    return {"StartAt": "Prepare round", "States": {**states, **changes}}


def test_the_end_of_a_run_is_read_from_the_deployed_definition():
    paths = model.paths_from_definition(definition())
    assert paths.succeeded == ("All rounds done", "Notify clients: run ended", "Done")
    assert paths.end_invocations == 0
    with_card = definition(
        **{
            "Notify clients: run ended": {"Type": "Task", "Next": "Card"},
            "Card": {"Type": "Task", "Resource": "arn:aws:states:::lambda:invoke", "Next": "Done"},
        }
    )
    assert model.paths_from_definition(with_card).end_invocations == 1
    est = estimate(small_run(paths=paths))
    assert est.transitions == 2 * 7 + 3
    assert est.transitions_source == "deployed state machine definition"


def test_a_definition_without_fedsteps_round_path_is_refused_by_name():
    broken = definition(**{"Round aggregated": {"Type": "Pass", "Next": "All rounds done"}})
    with pytest.raises(ValueError, match="no transition 'Round aggregated' -> 'More rounds\\?'"):
        model.paths_from_definition(broken)


def test_a_large_update_is_uploaded_in_parts():
    a = Assumptions()
    assert model.put_requests(8 * 2**20, a) == 1
    assert model.put_requests(8 * 2**20 + 1, a) == 2 + 2
    assert model.put_requests(100 * 2**20, a) == 2 + 13


def test_the_json_form_has_every_line_participant_and_assumption():
    data = estimate(small_run()).to_dict()
    assert data["total_usd"] == pytest.approx(sum(line["usd"] for line in data["lines"]))
    assert set(data["participants"]) == set(CLIENTS)
    assert data["assumptions"]["poll_wait_s"] == 20
    json.dumps(data)


def test_the_audit_trail_adds_one_data_event_per_recorded_write_and_model_read():
    plain, audited = estimate(small_run()), estimate(small_run(audit=True))
    # each round: open, claim, complete (one transaction), mark reported; the global model's PUT; the input
    # model's header and body (the updates' reads are under updates/, which the trail does not select)
    rounds = 2 * (4 + 1 + 2)
    # each client: per round its update item and two heartbeats, its update's PUT and the global model's GET,
    # the architecture once; one periodic heartbeat (100 s at 60 s)
    clients = 3 * (2 * (3 + 1 + 1) + 1 + 1)
    start = 2 + 1  # the architecture's and the initial model's PUTs, the run record
    assert audited.usage["cloudtrail.data_event"] == pytest.approx(rounds + clients + start)
    assert audited.usd - plain.usd == pytest.approx(usd("cloudtrail.data_event", rounds + clients + start))
    assert "cloudtrail.data_event" not in plain.usage  # no trail, no events
    assert {k: v for k, v in audited.usage.items() if k != "cloudtrail.data_event"} == plain.usage
    assert audited.clients["client-1"].direct["cloudtrail.data_event"] == clients / 3
    assert price("cloudtrail.data_event").usd == pytest.approx(0.10 / 100_000)


def test_the_cost_command_counts_the_trail_when_the_stack_outputs_one():
    from fedstep.aws.stack import StackOutputs

    stack = {"BucketName": "b", "TableName": "t", "TopicArn": "a", "StateMachineArn": "m", "ClientIds": ""}
    assert StackOutputs.parse(stack).audit_trail_arn == ""
    trail = "arn:aws:cloudtrail:us-east-1:123456789012:trail/fedstep-audit"
    assert StackOutputs.parse({**stack, "AuditTrailArn": trail}).audit_trail_arn == trail


# -- the prices ------------------------------------------------------------------------------------


def test_the_price_table_is_dated_for_us_east_1_and_names_every_service_of_the_issue():
    assert date.fromisoformat(PRICES_READ) <= date.today()
    assert REGION == "us-east-1"
    assert set(SERVICES) >= {"Step Functions", "Lambda", "S3", "SQS", "SNS", "DynamoDB", "KMS"}
    for p in PRICES:
        assert p.usd >= 0 and p.source.startswith("https://"), p
        assert p.note, f"{p.key} says nothing of how it was confirmed"
    assert price("sfn.transition").usd == pytest.approx(0.025 / 1000)
    with pytest.raises(KeyError, match="no price 'nope'"):
        price("nope")


def test_every_quantity_the_model_produces_has_a_price():
    est = estimate(small_run())
    assert set(est.usage) <= set(BY_KEY)


# -- on the local cloud ----------------------------------------------------------------------------


def serve_patiently(a, expect: Outcome, timeout_s: float = 180.0) -> None:
    """Poll until a message arrives (generously: CI shares 2 cores), serve it, and let its stream batch run."""
    deadline = time.monotonic() + timeout_s
    while (outcome := a.poll_once()) is None:
        assert time.monotonic() < deadline, f"no message for {a.config.client_id} in {timeout_s} s"
    gaps.wait_for_stream_batches()
    assert outcome is expect


@pytest.fixture(scope="module")
def finished_run(local_cloud, tmp_path_factory) -> str:
    """A 2-round run of the module's two clients, finished."""
    drain_queues(local_cloud)
    tmp = tmp_path_factory.mktemp("cost")
    agents = [agent(local_cloud, c, tmp) for c in ("client-1", "client-2")]
    started = start(local_cloud, rounds=2)
    for expect in (Outcome.SERVED, Outcome.SERVED, Outcome.RUN_ENDED):
        for a in agents:
            serve_patiently(a, expect)
    assert wait_for_execution(local_cloud, started.execution_arn, 120)["status"] == "SUCCEEDED"
    return started.run_id


def test_fedstep_cost_prints_a_table_per_service_and_per_participant(local_cloud, finished_run):
    result = fedstep(local_cloud, "cost", finished_run)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith(f"cost estimate for run {finished_run}: $")
    assert f"prices read {PRICES_READ}" in out
    assert "counted from the execution history" in out
    for service in ("Step Functions", "Lambda", "S3", "SQS", "SNS", "DynamoDB", "KMS"):
        assert f"\n{service} " in out, service
    assert "\nclient-1 " in out and "\nclient-2 " in out and "\nserver (shared) " in out


def test_fedstep_cost_json_counts_the_transitions_of_the_history_and_of_the_definition(local_cloud, finished_run):
    result = fedstep(local_cloud, "cost", finished_run, "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["run_id"] == finished_run
    assert data["transitions_source"] == "execution history"
    assert data["transitions_from_definition"] == 2 * 7 + 4  # the deployed definition's paths (no fallback)
    # the history has every state of the definition's paths, plus any retried call (a slow machine's)
    assert data["transitions"] >= data["transitions_from_definition"]
    assert data["prices"] == {"region": "us-east-1", "read": PRICES_READ, "note": data["prices"]["note"]}
    assert data["lambda_memory_mb"] >= 512
    shares = sum(p["total_usd"] for p in data["participants"].values()) + data["server"]["usd"]
    assert shares == pytest.approx(data["total_usd"])
    assert {p["rounds"] for p in data["participants"].values()} == {2}


def test_fedstep_cost_of_an_unknown_run_says_there_is_no_such_run(local_cloud):
    result = fedstep(local_cloud, "cost", "run-that-never-was")
    assert result.returncode == 2
    assert "there is no run 'run-that-never-was'" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_report_has_a_cost_estimate_section(local_cloud, finished_run, tmp_path):
    result = fedstep(local_cloud, "report", finished_run, "-o", str(tmp_path))
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "report.html").read_text()
    assert "<h2>Cost estimate</h2>" in page
    assert f"cost estimate for run {finished_run}: $" in page
    assert 'id="cost-participants"' in page
