"""The "FederatedTraining" state machine: one loop iteration per round.

Execution input (written by `fedstep start`); nothing in it grows with the number of rounds:

    {"run": {"run_id", "rounds", "clients", "round_timeout_s", "round_retries", "secagg_phase_timeout_s"},
     "round": 0, "attempt": 0, "global_model": {key, sha256, bytes}, "round_summary": {}}

Prepare round -> Notify clients and wait for updates (the aggregation function, invoked with the task
token: it records the token in the round record, where no client can read or write it, and publishes
the round message to the selected clients; it later completes the task) -> Next secure-aggregation
phase? -> Aggregated by slices? -> Report is for this round? -> Round aggregated -> More rounds? ->
loop, or Notify clients: run ended -> Write model card (the aggregation function: the card of the
final global model, `fedstep.core.model_card`) -> Training finished (output: run id, stop
reason, final global model, the last round in brief, the card's key and sha256 (or the error that
kept it from being written), and where the round summaries are: the table's partition of the run).
The loop ends early, with stop reason "target_reached", when a round's weighted metrics meet the
run's target, or "privacy_budget" when one more round would take the run's epsilon past its budget
(`--dp-epsilon`).

A secure round (a run with `secagg`; docs/privacy.md) runs three more phases after its first (in
which the clients train and advertise their keys): its task's output is not a round summary but the
next phase, `{"secagg": {"phase": "share"}}`, and "Next secure-aggregation phase?" opens it: Share keys
-> Upload masked inputs -> Reveal shares (`fedstep.core.machine.SECURE_PHASE_STATES`), each the
aggregation function with mode "secagg_publish", invoked with its own task token, which it records in
the phase's record (as the round's: never where a client can read it) before it publishes the phase's
message; each waits up to `$.run.secagg_phase_timeout_s`, then "<phase> at deadline" (mode
"secagg_deadline") closes the phase with what arrived. Each phase's output names the next one, and
the reveal's (or its deadline's) is the round's task output, which goes on to "Aggregated by slices?"
as a plain round's does. A plain round's output names no phase: it passes the Choice and nothing
else. A phase left with fewer clients than the run's threshold fails the attempt as
SecAggThresholdNotMet, which the round's retries handle as they handle a missed quorum (a retried
round starts again from its first phase, with fresh keys).

A round whose model is larger than the deployment's slice size comes back from its task (or from
"Aggregate at deadline") as a slice plan instead of a model (`fedstep.core.sliced`) -> Aggregated by
slices? -> Aggregate slices (a Distributed Map: one child execution per slice, each the aggregation
function with mode "slice", at most `SLICE_CONCURRENCY` at once, each retried 3 times) -> Assemble
global model (mode "assemble": the parts joined, the summary committed; its output is the round's)
-> Report is for this round?

At the round's deadline (the task's TimeoutSecondsPath) -> Aggregate at deadline (the aggregation
function, invoked directly: it aggregates what arrived if the quorum is met) -> Round aggregated.
Too few valid updates (QuorumNotMet, TooFewParticipants), an aggregate that is not finite
(InvalidAggregate), or too few clients left in a secure round (SecAggThresholdNotMet) -> Retry
round? -> Retry round (the same round, published again with a new token, up to run.round_retries
times) or Training failed. Any other error of a function call (a crash, a throttle, RoundBusy) is
retried 3 times before it fails the run, except StrategyFailed (the strategy raised: it would raise
again), which fails it at once.

The publish call's payload and the run-ended message are built from their definitions in
`fedstep.core.schemas` (the fields marked `from_state`), so the state machine and the core cannot
disagree on a field; a secure phase's call carries the same run id, round, attempt and issued_at.
"""

from __future__ import annotations

from typing import Any

from aws_cdk import Duration
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct

from fedstep.core import keys
from fedstep.core.machine import SECURE_PHASE_STATES, Mode, State
from fedstep.core.model_card import ModelCardError, ModelTampered
from fedstep.core.rounds import (
    InvalidAggregate,
    QuorumNotMet,
    SecAggThresholdNotMet,
    StrategyFailed,
    TooFewParticipants,
)
from fedstep.core.schemas import RoundMessage, RunEndedMessage, state_machine_fields
from fedstep.core.version import SCHEMA_VERSION

SLICE_CONCURRENCY = 40
"""Slices aggregated at once: each reads its range of every update, so this bounds the S3 read rate."""

NOT_AGGREGATED = [
    error.__name__ for error in (QuorumNotMet, TooFewParticipants, InvalidAggregate, SecAggThresholdNotMet)
]
"""Errors that mean a round could not be aggregated (a retry of the round may help, not of the call):
too few valid updates, for the run or its strategy, an aggregate that is not finite, or fewer clients
than a secure round's threshold left in one of its phases (`fedstep.core.rounds.RoundNotAggregated`)."""
PHASE_PATH = "$.result.secagg.phase"
"""Where a secure round's task output (and each of its phases' output) names the phase to open next."""


def _carry(constants: dict[str, object] | None = None, **paths: str) -> dict[str, object]:
    """Pass-state parameters that carry the loop state forward, some fields replaced by other paths
    (`paths`) or set to fixed values (`constants`)."""
    fields: dict[str, object] = {
        "run.$": "$.run",
        "round.$": "$.round",
        "attempt.$": "$.attempt",
        "global_model.$": "$.global_model",
        "round_summary.$": "$.round_summary",
    }
    fields.update({f"{k}.$": v for k, v in paths.items()})
    for name, value in (constants or {}).items():
        fields.pop(f"{name}.$", None)
        fields[name] = value
    return fields


def _payload(message: type, **extra: object) -> dict[str, object]:
    """The fields of `message` that the state machine supplies, each read from the JSONPath the schema
    declares (`fedstep.core.schemas.state_machine_fields`) as ASL writes it, `"name.$": "$.path"`,
    plus `extra`. (Not `JsonPath.string_at` tokens: under a task token CDK's check parses such a
    token as an intrinsic function, fails, and, though it catches that, leaves
    `InvalidJsonPathExpression` in `cdk.out/error.txt`.)"""
    fields = {f"{name}.$": path for name, (path, _kind) in state_machine_fields(message).items()}
    return {**fields, **extra}


def _retry_calls(task: sfn.TaskStateBase) -> None:
    """Retry a failed function call (3 times: after 5, 10 and 20 s), but not a timeout or a round
    that could not be aggregated: those have their own paths."""
    task.add_retry(errors=["States.Timeout", *NOT_AGGREGATED, StrategyFailed.__name__], max_attempts=0)
    task.add_retry(errors=["States.ALL"], max_attempts=3, interval=Duration.seconds(5), backoff_rate=2)


def _call(
    scope: Construct, name: str, function: lambda_.IFunction, payload: dict[str, object], **options: Any
) -> tasks.LambdaInvoke:
    """A call of the aggregation function whose result is what the function returns (the round's task
    output, or a slice plan), at `$.result` unless `options` say otherwise."""
    return tasks.LambdaInvoke(
        scope,
        name,
        lambda_function=function,
        payload=sfn.TaskInput.from_object(payload),
        payload_response_only=True,
        retry_on_service_exceptions=False,
        **{"result_path": "$.result", **options},
    )


def _sliced_aggregation(scope: Construct, aggregate: lambda_.IFunction, failed: sfn.Fail) -> sfn.Chain:
    """A planned round's slices, aggregated in parallel child executions, then joined: the chain
    whose output's `$.result` is the round's task output (as the wait for the round's task gives it)."""
    one_slice = tasks.LambdaInvoke(
        scope,
        State.AGGREGATE_ONE_SLICE,
        lambda_function=aggregate,
        payload_response_only=True,  # the event is the item: {"mode": "slice", "plan", "index"}
        retry_on_service_exceptions=False,
    )
    one_slice.add_retry(errors=[StrategyFailed.__name__], max_attempts=0)
    one_slice.add_retry(errors=["States.ALL"], max_attempts=3, interval=Duration.seconds(5), backoff_rate=2)
    fan_out = sfn.DistributedMap(
        scope,
        State.AGGREGATE_SLICES,
        items_path="$.result.sliced.slices",
        item_selector={
            "mode": Mode.SLICE,
            "plan.$": "$.result.sliced.plan",
            "index.$": "$$.Map.Item.Value",
        },
        max_concurrency=SLICE_CONCURRENCY,
        result_path="$.slice_results",
    )
    fan_out.item_processor(one_slice)
    assemble = _call(
        scope,
        State.ASSEMBLE_GLOBAL_MODEL,
        aggregate,
        {
            "mode": Mode.ASSEMBLE,
            "plan": sfn.JsonPath.object_at("$.result.sliced.plan"),
            "results": sfn.JsonPath.list_at("$.slice_results"),
        },
    )
    _retry_calls(assemble)
    for state in (fan_out, assemble):
        state.add_catch(failed, errors=["States.ALL"], result_path="$.failure")
    return fan_out.next(assemble)


def _secure_phases(
    scope: Construct,
    aggregate: lambda_.IFunction,
    after: sfn.IChainable,
    retry_or_fail: sfn.IChainable,
    failed: sfn.IChainable,
) -> sfn.Choice:
    """A secure round's later phases (`fedstep.core.machine.SECURE_PHASE_STATES`; none for a plain run):
    the Choice "Next secure-aggregation phase?" opens the phase the last output names at `PHASE_PATH`
    (share, input, reveal), or goes on to `after` when it names none (a round summary or a slice plan).
    Each phase publishes its message with its own task token and waits for it, up to the run's
    `secagg_phase_timeout_s`; at that deadline its "at deadline" call closes it with what arrived. Both
    come back to the Choice. A phase left with fewer clients than the threshold fails the attempt
    (`SecAggThresholdNotMet`, in `NOT_AGGREGATED`): the round is retried, with fresh keys, or the run fails."""
    next_phase = sfn.Choice(scope, State.NEXT_SECURE_PHASE)
    # The absent phase is tested first: a Choice rule that reads a missing path fails the execution.
    next_phase.when(sfn.Condition.not_(sfn.Condition.is_present(PHASE_PATH)), after)
    for phase, (name, deadline_name) in SECURE_PHASE_STATES.items():
        publish = tasks.LambdaInvoke(
            scope,
            name,
            lambda_function=aggregate,
            integration_pattern=sfn.IntegrationPattern.WAIT_FOR_TASK_TOKEN,
            # "name.$" paths, as `_payload` writes them (no JsonPath.string_at tokens under a task token)
            payload=sfn.TaskInput.from_object(
                {
                    "mode": Mode.SECAGG_PUBLISH,
                    "phase": phase,
                    "run_id.$": "$.run.run_id",
                    "round.$": "$.round",
                    "attempt.$": "$.attempt",
                    "issued_at.$": "$$.State.EnteredTime",
                    "task_token": sfn.JsonPath.task_token,
                }
            ),
            task_timeout=sfn.Timeout.at("$.run.secagg_phase_timeout_s"),
            retry_on_service_exceptions=False,
            result_path="$.result",
        )
        at_deadline = _call(
            scope,
            deadline_name,
            aggregate,
            {
                "mode": Mode.SECAGG_DEADLINE,
                "phase": phase,
                "run_id": sfn.JsonPath.string_at("$.run.run_id"),
                "round": sfn.JsonPath.number_at("$.round"),
                "attempt": sfn.JsonPath.number_at("$.attempt"),
            },
        )
        publish.add_catch(at_deadline, errors=["States.Timeout"], result_path="$.timeout")
        for task in (publish, at_deadline):
            _retry_calls(task)
            task.add_catch(retry_or_fail, errors=NOT_AGGREGATED, result_path="$.failure")
            task.add_catch(failed, errors=[StrategyFailed.__name__], result_path="$.failure")
            task.next(next_phase)
        next_phase.when(sfn.Condition.string_equals(PHASE_PATH, phase), publish)
    next_phase.otherwise(after)
    return next_phase


def training_definition(
    scope: Construct, topic: sns.ITopic, aggregate: lambda_.IFunction, table_name: str
) -> sfn.IChainable:
    prepare = sfn.Pass(
        scope, State.PREPARE_ROUND, parameters=_carry({"attempt": 0}, round="States.MathAdd($.round, 1)")
    )
    notify = tasks.LambdaInvoke(
        scope,
        State.NOTIFY_AND_WAIT,
        lambda_function=aggregate,
        integration_pattern=sfn.IntegrationPattern.WAIT_FOR_TASK_TOKEN,
        payload=sfn.TaskInput.from_object(
            _payload(RoundMessage, mode=Mode.PUBLISH, task_token=sfn.JsonPath.task_token)
        ),
        task_timeout=sfn.Timeout.at("$.run.round_timeout_s"),
        retry_on_service_exceptions=False,
        result_path="$.result",
    )
    _retry_calls(notify)
    aggregated = sfn.Pass(
        scope,
        State.ROUND_AGGREGATED,
        parameters=_carry(
            global_model="$.result.global_model",
            target_reached="$.result.target_reached",
            privacy_budget_spent="$.result.privacy_budget_spent",
            round_summary="$.result.summary",  # shown in the console as this state's output
        ),
    )
    at_deadline = _call(
        scope,
        State.AGGREGATE_AT_DEADLINE,
        aggregate,
        {
            "mode": Mode.DEADLINE,
            "run_id": sfn.JsonPath.string_at("$.run.run_id"),
            "round": sfn.JsonPath.number_at("$.round"),
        },
    )
    _retry_calls(at_deadline)
    failed = sfn.Fail(scope, State.TRAINING_FAILED, error_path="$.failure.Error", cause_path="$.failure.Cause")
    retry = sfn.Pass(scope, State.RETRY_ROUND, parameters=_carry(attempt="States.MathAdd($.attempt, 1)"))
    retry.next(notify)
    retry_or_fail = sfn.Choice(scope, State.RETRY_ROUND_CHOICE)
    retry_or_fail.when(sfn.Condition.number_less_than_json_path("$.attempt", "$.run.round_retries"), retry)
    retry_or_fail.otherwise(failed)
    notify.add_catch(at_deadline, errors=["States.Timeout"], result_path="$.timeout")
    notify.add_catch(retry_or_fail, errors=NOT_AGGREGATED, result_path="$.failure")
    at_deadline.add_catch(retry_or_fail, errors=NOT_AGGREGATED, result_path="$.failure")
    for task in (notify, at_deadline):  # the cause names the strategy, the round and the exception
        task.add_catch(failed, errors=[StrategyFailed.__name__], result_path="$.failure")
    by_slices = _sliced_aggregation(scope, aggregate, failed)
    # Only the aggregation function holds the task token, and it reports the round it was asked
    # for; this check is defence in depth against a report about another run or round.
    foreign = sfn.Fail(
        scope, State.REPORT_FOR_ANOTHER_RUN, error="ForeignReport", cause="a round report named another run or round"
    )
    is_ours = sfn.Choice(scope, State.REPORT_IS_OURS)
    is_ours.when(
        sfn.Condition.and_(
            sfn.Condition.string_equals_json_path("$.result.summary.run_id", "$.run.run_id"),
            sfn.Condition.number_equals_json_path("$.result.summary.round", "$.round"),
        ),
        aggregated,
    )
    is_ours.otherwise(foreign)
    sliced_or_not = sfn.Choice(scope, State.AGGREGATED_BY_SLICES)
    sliced_or_not.when(sfn.Condition.is_present("$.result.sliced"), by_slices.next(is_ours))
    sliced_or_not.otherwise(is_ours)
    # a secure round's task output names its next phase; any other output goes on to the slices' check
    next_phase = _secure_phases(scope, aggregate, sliced_or_not, retry_or_fail, failed)
    at_deadline.next(next_phase)
    run_ended = tasks.SnsPublish(
        scope,
        State.NOTIFY_RUN_ENDED,
        topic=topic,
        message=sfn.TaskInput.from_object(_payload(RunEndedMessage, schema=SCHEMA_VERSION, type=RunEndedMessage.type)),
        message_attributes={
            "kind": tasks.MessageAttribute(value="run_ended"),
            "clients": tasks.MessageAttribute(
                value=sfn.JsonPath.json_to_string(sfn.JsonPath.list_at("$.run.clients")),
                data_type=tasks.MessageAttributeDataType.STRING_ARRAY,
            ),
        },
        result_path=sfn.JsonPath.DISCARD,
    )
    finished = sfn.Pass(
        scope,
        State.TRAINING_FINISHED,
        parameters={
            "run_id.$": "$.run.run_id",
            "stop_reason.$": "$.stop_reason",
            "rounds_completed.$": "$.round",
            "global_model.$": "$.global_model",
            "last_round.$": "$.round_summary",
            "model_card.$": "$.model_card",
            "round_summaries": {
                "table": table_name,
                "pk.$": "$.run.run_id",
                "sk_prefix": keys.ROUND_PREFIX,
                "read_with": "fedstep status <run id>",
            },
        },
    )
    # The model card of the final global model, written by the server (beside the model, once); a
    # failure to write it is recorded in the output but does not fail a finished training
    # (`fedstep promote` writes a missing card).
    card = _call(
        scope,
        State.WRITE_MODEL_CARD,
        aggregate,
        {
            "mode": Mode.CARD,
            "run_id": sfn.JsonPath.string_at("$.run.run_id"),
            "round": sfn.JsonPath.number_at("$.round"),
        },
        result_selector={"key.$": "$.key", "sha256.$": "$.sha256"},
        result_path="$.model_card",
    )
    card.add_retry(errors=[ModelCardError.__name__, ModelTampered.__name__], max_attempts=0)
    card.add_retry(errors=["States.ALL"], max_attempts=2, interval=Duration.seconds(2), backoff_rate=2)
    card.add_catch(finished, errors=["States.ALL"], result_path="$.model_card")
    run_ended.next(card).next(finished)
    target_reached = sfn.Pass(scope, State.TARGET_REACHED, parameters=_carry({"stop_reason": "target_reached"}))
    all_rounds = sfn.Pass(scope, State.ALL_ROUNDS_DONE, parameters=_carry({"stop_reason": "max_rounds"}))
    more = sfn.Choice(scope, State.MORE_ROUNDS)
    budget_spent = sfn.Pass(scope, State.PRIVACY_BUDGET_SPENT, parameters=_carry({"stop_reason": "privacy_budget"}))
    more.when(sfn.Condition.boolean_equals("$.target_reached", True), target_reached.next(run_ended))
    rounds_left = sfn.Condition.number_less_than_json_path("$.round", "$.run.rounds")
    # the budget stops a run only when a round was left to run: one that ran all its rounds ended by them
    budget_hit = sfn.Condition.and_(sfn.Condition.boolean_equals("$.privacy_budget_spent", True), rounds_left)
    more.when(budget_hit, budget_spent.next(run_ended))
    more.when(rounds_left, prepare)
    more.otherwise(all_rounds.next(run_ended))
    prepare.next(notify).next(next_phase)
    aggregated.next(more)
    return prepare
