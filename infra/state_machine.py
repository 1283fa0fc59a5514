"""The "FederatedTraining" state machine: one loop iteration per round.

Execution input (written by `fedstep start`):

    {"run": {"run_id", "rounds", "clients", "training": {...}, "model": {key, sha256, bytes},
             "round_timeout_s"},
     "round": 0, "selected": [clients of round 1], "global_model": {key, sha256, bytes}, "history": []}

Each round message carries a String.Array attribute `clients` (the round's selection); every
client's subscription filters on its own id, so only selected clients are woken.

Prepare round -> Notify clients and wait for updates (SNS publish with a task token; the aggregation
function completes the task) -> Round aggregated -> More rounds? -> loop, or Notify clients: run ended
-> Training finished (output: run id, stop reason, final global model, per-round history). The loop
ends early, with stop reason "target_reached", when a round's weighted metrics meet the run's target.

At the round's deadline (the task's TimeoutSecondsPath) -> Aggregate at deadline (the aggregation
function, invoked directly: it aggregates what arrived if the quorum is met) -> Round aggregated.
Fewer valid updates than the quorum -> Retry round? -> Retry round (the same round, published again
with a new token, up to run.round_retries times) or Training failed (error QuorumNotMet, the counts
as cause).
"""

from __future__ import annotations

from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct

SCHEMA = 1


def _carry(constants: dict[str, str] | None = None, **paths: str) -> dict[str, str]:
    """Pass-state parameters that carry the loop state forward, some fields replaced by other paths
    (`paths`) or set to fixed values (`constants`)."""
    fields = {
        "run.$": "$.run",
        "round.$": "$.round",
        "attempt.$": "$.attempt",
        "selected.$": "$.selected",
        "global_model.$": "$.global_model",
        "history.$": "$.history",
    }
    fields.update({f"{k}.$": v for k, v in paths.items()})
    for name, value in (constants or {}).items():
        fields.pop(f"{name}.$", None)
        fields[name] = value
    return fields


def _client_list(path: str) -> tasks.MessageAttribute:
    """A String.Array message attribute holding the client ids at `path`."""
    return tasks.MessageAttribute(
        value=sfn.JsonPath.json_to_string(sfn.JsonPath.list_at(path)),
        data_type=tasks.MessageAttributeDataType.STRING_ARRAY,
    )


def training_definition(scope: Construct, topic: sns.ITopic, aggregate: lambda_.IFunction) -> sfn.IChainable:
    prepare = sfn.Pass(scope, "Prepare round", parameters=_carry({"attempt": 0}, round="States.MathAdd($.round, 1)"))
    notify = tasks.SnsPublish(
        scope,
        "Notify clients and wait for updates",
        topic=topic,
        integration_pattern=sfn.IntegrationPattern.WAIT_FOR_TASK_TOKEN,
        message=sfn.TaskInput.from_object(
            {
                "schema": SCHEMA,
                "type": "round",
                "run_id": sfn.JsonPath.string_at("$.run.run_id"),
                "round": sfn.JsonPath.number_at("$.round"),
                "model": sfn.JsonPath.object_at("$.run.model"),
                "global_model": sfn.JsonPath.object_at("$.global_model"),
                "training": sfn.JsonPath.object_at("$.run.training"),
                "deadline_s": sfn.JsonPath.number_at("$.run.round_timeout_s"),
                "issued_at": sfn.JsonPath.string_at("$$.State.EnteredTime"),
                "task_token": sfn.JsonPath.task_token,
            }
        ),
        message_attributes={
            "kind": tasks.MessageAttribute(value="round"),
            "clients": _client_list("$.selected"),  # only the selected clients' subscriptions match
        },
        task_timeout=sfn.Timeout.at("$.run.round_timeout_s"),
        result_path="$.result",
    )
    aggregated = sfn.Pass(
        scope,
        "Round aggregated",
        parameters=_carry(
            global_model="$.result.global_model",
            history="$.result.history",
            target_reached="$.result.target_reached",
            selected="$.result.next_selected",
            round_summary="$.result.summary",  # shown in the console as this state's output
        ),
    )
    at_deadline = tasks.LambdaInvoke(
        scope,
        "Aggregate at deadline",
        lambda_function=aggregate,
        payload=sfn.TaskInput.from_object(
            {
                "mode": "deadline",
                "run_id": sfn.JsonPath.string_at("$.run.run_id"),
                "round": sfn.JsonPath.number_at("$.round"),
            }
        ),
        result_selector={
            "summary.$": "$.Payload.summary",
            "global_model.$": "$.Payload.global_model",
            "history.$": "$.Payload.history",
            "target_reached.$": "$.Payload.target_reached",
            "next_selected.$": "$.Payload.next_selected",
        },
        result_path="$.result",
    )
    failed = sfn.Fail(scope, "Training failed", error_path="$.failure.Error", cause_path="$.failure.Cause")
    retry = sfn.Pass(scope, "Retry round", parameters=_carry(attempt="States.MathAdd($.attempt, 1)"))
    retry.next(notify)
    retry_or_fail = sfn.Choice(scope, "Retry round?")
    retry_or_fail.when(sfn.Condition.number_less_than_json_path("$.attempt", "$.run.round_retries"), retry)
    retry_or_fail.otherwise(failed)
    notify.add_catch(at_deadline, errors=["States.Timeout"], result_path="$.timeout")
    notify.add_catch(retry_or_fail, errors=["QuorumNotMet"], result_path="$.failure")
    at_deadline.add_catch(retry_or_fail, errors=["QuorumNotMet"], result_path="$.failure")
    at_deadline.next(aggregated)
    # A report sent with this round's task token must be about this run and round. A client could
    # write another run's token into an item; its report then fails here instead of steering the run.
    foreign = sfn.Fail(
        scope, "Report for another run", error="ForeignReport", cause="a round report named another run or round"
    )
    is_ours = sfn.Choice(scope, "Report is for this round?")
    is_ours.when(
        sfn.Condition.and_(
            sfn.Condition.string_equals_json_path("$.result.summary.run_id", "$.run.run_id"),
            sfn.Condition.number_equals_json_path("$.result.summary.round", "$.round"),
        ),
        aggregated,
    )
    is_ours.otherwise(foreign)
    run_ended = tasks.SnsPublish(
        scope,
        "Notify clients: run ended",
        topic=topic,
        message=sfn.TaskInput.from_object(
            {
                "schema": SCHEMA,
                "type": "run_ended",
                "run_id": sfn.JsonPath.string_at("$.run.run_id"),
                "reason": sfn.JsonPath.string_at("$.stop_reason"),
                "rounds_completed": sfn.JsonPath.number_at("$.round"),
            }
        ),
        message_attributes={
            "kind": tasks.MessageAttribute(value="run_ended"),
            "clients": _client_list("$.run.clients"),
        },
        result_path=sfn.JsonPath.DISCARD,
    )
    finished = sfn.Pass(
        scope,
        "Training finished",
        parameters={
            "run_id.$": "$.run.run_id",
            "stop_reason.$": "$.stop_reason",
            "rounds_completed.$": "$.round",
            "global_model.$": "$.global_model",
            "history.$": "$.history",
        },
    )
    run_ended.next(finished)
    target_reached = sfn.Pass(scope, "Target reached", parameters=_carry({"stop_reason": "target_reached"}))
    all_rounds = sfn.Pass(scope, "All rounds done", parameters=_carry({"stop_reason": "max_rounds"}))
    more = sfn.Choice(scope, "More rounds?")
    more.when(sfn.Condition.boolean_equals("$.target_reached", True), target_reached.next(run_ended))
    more.when(sfn.Condition.number_less_than_json_path("$.round", "$.run.rounds"), prepare)
    more.otherwise(all_rounds.next(run_ended))
    prepare.next(notify).next(is_ours)
    aggregated.next(more)
    return prepare
