"""The synthesized CloudFormation template: resources, least privilege, encryption, nag and cfn-lint.

Every synth here runs the cdk-nag AwsSolutions pack (infra/nag.py): an unacknowledged finding
makes it raise, so each test also proves the template passes the pack.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Template

from fedstep.core import keys
from fedstep.core.schemas import (
    DeclineItem,
    Feedback,
    Heartbeat,
    ObjectRef,
    RunRecord,
    RunStop,
    TrainingConfig,
    UpdateItem,
)
from fedstep.local.iam.policy import ALLOW, IMPLICIT_DENY, evaluate, put_item_context, resolve
from infra.client_group import CLIENTS_PER_GROUP
from infra.config import MAX_CLIENTS, ClientConfig, ConfigError, DeploymentConfig
from infra.synth import build_app

PARTNER = "arn:aws:iam::111122223333:role/fl-agent"


def synth(clients: list[ClientConfig], outdir: Path | None = None, alarm_email: str | None = None) -> Template:
    """The stack's template with its client groups' nested templates merged in (`flatten`); a trial
    deployment, so that clients may go without a principal."""
    config = DeploymentConfig(clients=tuple(clients), alarm_email=alarm_email, trial=True)
    app = build_app(config, outdir, bundle=False)
    return flatten(app.node.find_child(config.stack_name))


def nested_templates(stack: cdk.Stack) -> dict[str, dict]:
    """The templates of `stack`'s nested stacks (its client groups) by the logical id of their
    AWS::CloudFormation::Stack resource in `stack`'s template."""
    return {
        stack.get_logical_id(child.nested_stack_resource): Template.from_stack(child).to_json()
        for child in stack.node.children
        if isinstance(child, cdk.NestedStack)
    }


def substitute(value: object, parameters: dict[str, object]) -> object:
    """`value` with each `Ref` to one of `parameters` replaced by the parameter's value."""
    if isinstance(value, list):
        return [substitute(v, parameters) for v in value]
    if isinstance(value, dict):
        if set(value) == {"Ref"} and value["Ref"] in parameters:
            return parameters[value["Ref"]]
        return {k: substitute(v, parameters) for k, v in value.items()}
    return value


def flatten(stack: cdk.Stack) -> Template:
    """One template as if the nested stacks' resources and outputs were the stack's own: each nested
    template's parameters replaced by what the stack passes in (the stack's own references), its
    resources and outputs merged into the stack's (their `ClientIds` joined, as `StackOutputs` reads
    them). The nested stack resources themselves stay."""
    merged = Template.from_stack(stack).to_json()
    client_ids = []
    for logical_id, nested in nested_templates(stack).items():
        passed = merged["Resources"][logical_id]["Properties"]["Parameters"]
        assert set(passed) == set(nested["Parameters"]), logical_id  # every parameter is passed
        client_ids.append(nested["Outputs"].pop("ClientIds")["Value"])
        for kind in ("Resources", "Outputs"):
            clash = set(merged.get(kind, {})) & set(nested.get(kind, {}))
            assert not clash, f"{kind} {clash} in both the stack and {logical_id}"
            merged.setdefault(kind, {}).update(substitute(nested.get(kind, {}), passed))
    merged["Outputs"]["ClientIds"] = {"Value": ",".join(client_ids)}
    return Template.from_json(merged)


@pytest.fixture(scope="module")
def template() -> Template:
    return synth([ClientConfig("org-a"), ClientConfig("org-b", principal_arn=PARTNER)])


def aggregation_functions(template: Template) -> list[dict]:
    """The aggregation function (lambdas/aggregate.py; the stack's other function, the scheduled
    integrity check, is tested in tests/test_integrity_template.py)."""
    functions = template.find_resources("AWS::Lambda::Function").values()
    return [f for f in functions if f["Properties"]["Handler"] == "lambdas.aggregate.handler"]


def resources(template: Template, kind: str) -> dict[str, dict]:
    return template.find_resources(kind)


def client_policy(template: Template, client_id: str) -> list[dict]:
    """The inline policy statements of a client's role."""
    [role] = [
        r
        for r in resources(template, "AWS::IAM::Role").values()
        if r["Properties"].get("Description") == f"fedstep client agent of {client_id}"
    ]
    [policy] = role["Properties"]["Policies"]
    return policy["PolicyDocument"]["Statement"]


def logical_ids(template: Template, kind: str, name_part: str) -> list[str]:
    return [k for k, v in resources(template, kind).items() if name_part in json.dumps(v)]


def test_each_client_has_a_queue_with_a_dead_letter_queue_and_a_raw_subscription(template):
    queues = resources(template, "AWS::SQS::Queue")
    work = {k: v for k, v in queues.items() if "RedrivePolicy" in v["Properties"]}
    assert sorted(v["Properties"]["QueueName"] for v in work.values()) == ["fedstep-org-a", "fedstep-org-b"]
    dlq_names = {v["Properties"]["QueueName"] for v in queues.values()}
    assert {"fedstep-org-a-dlq", "fedstep-org-b-dlq", "fedstep-aggregation-failures"} <= dlq_names
    template.resource_count_is("AWS::SNS::Subscription", 2)
    template.all_resources_properties("AWS::SNS::Subscription", {"Protocol": "sqs", "RawMessageDelivery": True})
    [undelivered] = logical_ids(template, "AWS::SQS::Queue", '"fedstep-undelivered-messages"')
    for subscription in resources(template, "AWS::SNS::Subscription").values():  # undeliverable messages are kept
        assert subscription["Properties"]["RedrivePolicy"] == {
            "deadLetterTargetArn": {"Fn::GetAtt": [undelivered, "Arn"]}
        }
    policies = [r["Properties"]["FilterPolicy"] for r in resources(template, "AWS::SNS::Subscription").values()]
    assert sorted(json.dumps(p) for p in policies) == ['{"clients": ["org-a"]}', '{"clients": ["org-b"]}']
    outputs = template.find_outputs("*")
    assert outputs["ClientIds"]["Value"] == "org-a,org-b"  # the group's (nested stack's) output
    assert outputs["ClientGroups"]["Value"] == "1"
    assert {keys.client_output_key("org-a"), keys.client_role_output_key("org-b")} <= set(outputs)


ARN_OF = {"key": "arn:aws:kms:us-east-1:123456789012:key/k"}
TABLE_ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/fedstep-Updates"
BUCKET_ARN = "arn:aws:s3:::fedstep-modelregistry"


def evaluated_policy(template: Template, client_id: str) -> list[dict]:
    """A client role's statements with the template's references resolved to concrete ARNs."""
    arn_of = {}
    for logical_id, resource in template.to_json()["Resources"].items():
        kind = resource["Type"]
        if kind == "AWS::DynamoDB::Table":
            arn_of[logical_id] = TABLE_ARN
        elif kind == "AWS::S3::Bucket":
            arn_of[logical_id] = BUCKET_ARN if logical_id.startswith("ModelRegistry") else "arn:aws:s3:::logs"
        elif kind == "AWS::SQS::Queue":
            arn_of[logical_id] = f"arn:aws:sqs:us-east-1:123456789012:{resource['Properties']['QueueName']}"
        else:
            arn_of[logical_id] = f"arn:aws:{kind.split('::')[1].lower()}:us-east-1:123456789012:{logical_id}"
    return resolve(client_policy(template, client_id), arn_of)


def put_item(statements: list[dict], item: dict) -> str:
    return evaluate(statements, "dynamodb:PutItem", TABLE_ARN, put_item_context(item))


def _stream_record(item: dict, event: str = "INSERT") -> dict:
    """A stream record of `item` written, as JSON carries it (binary attributes base64-encoded)."""
    import base64

    from fedstep.aws.ddb import to_attributes

    image = to_attributes(item)
    record = {"eventName": event, "dynamodb": {"Keys": {k: image[k] for k in ("pk", "sk")}, "NewImage": image}}
    return json.loads(json.dumps(record, default=lambda value: base64.b64encode(value).decode()))


@pytest.mark.parametrize(
    ("what", "invokes"),
    [
        ("update", True),
        ("rewritten update", True),
        ("decline", True),  # a decline completes a round as an update does (found missing on AWS)
        ("heartbeat", False),
        ("evaluation", False),
        ("run record", False),
        # a secure round's client items (issue 25): each may complete one of its phases
        ("secure-aggregation keys", True),
        ("secure-aggregation share", True),
        ("secure-aggregation reveal", True),
        ("inbox item", False),  # the server's relay of a share: its own writes never invoke it
    ],
)
def test_the_stream_filter_passes_update_decline_and_secure_round_items_only(template, what, invokes):
    """Lambda's event filter on AWS (moto ignores filters): evaluated on the synthesized pattern with
    moto's EventBridge-style pattern matcher, which implements the same pattern syntax (the local
    cloud applies the deployed template's filter the same way: `fedstep.local.gaps.stream_filters`)."""
    from moto.events.models import EventPattern

    from fedstep.core.schemas import EvalItem, SecAggInboxItem, SecAggKeysItem, SecAggRevealItem, SecAggShareItem

    [mapping] = resources(template, "AWS::Lambda::EventSourceMapping").values()
    [criterion] = mapping["Properties"]["FilterCriteria"]["Filters"]
    update = UpdateItem("run-1", 1, "org-a", 10, ObjectRef(keys.update_key("run-1", 1, "org-a"), "0" * 64, 1), {}, "t")
    records = {
        "update": _stream_record(update.to_item()),
        "rewritten update": _stream_record(update.to_item(), "MODIFY"),
        "decline": _stream_record(DeclineItem("run-1", 1, "org-a", "privacy budget", "t", {}).to_item()),
        "heartbeat": _stream_record(Heartbeat("org-a", "0.1", "idle", "t", 60, {}).to_item()),
        "evaluation": _stream_record(EvalItem("run-1", 1, "abc123", "org-a", 5, {}, "t").to_item()),
        "run record": _stream_record(RunRecord("run-1", ["org-a"], 5, TrainingConfig(), "fedavg", "t").to_item()),
        "secure-aggregation keys": _stream_record(
            SecAggKeysItem("run-1", 1, 0, "org-a", b"a" * 32, b"b" * 32, b"c" * 32, "t").to_item()
        ),
        "secure-aggregation share": _stream_record(
            SecAggShareItem("run-1", 1, 0, "org-a", "org-b", b"s" * 96, "t").to_item()
        ),
        "secure-aggregation reveal": _stream_record(
            SecAggRevealItem("run-1", 1, 0, "org-a", "t", {"org-b": ("seed", b"r" * 34)}).to_item()
        ),
        "inbox item": _stream_record(SecAggInboxItem("run-1", 1, 0, "org-b", "org-a", b"s" * 96).to_item()),
    }
    assert EventPattern.load(criterion["Pattern"]).matches_event(records[what]) is invokes


def test_a_clients_role_may_put_items_only_in_its_own_partition(template):
    """What moto cannot check: the DynamoDB conditions, evaluated on the synthesized policy."""
    own = evaluated_policy(template, "org-a")
    update = UpdateItem("run-1", 1, "org-a", 10, ObjectRef(keys.update_key("run-1", 1, "org-a"), "0" * 64, 1), {}, "t")
    heartbeat = Heartbeat("org-a", "0.1", "idle", "t", 60, {})
    decline = DeclineItem("run-1", 1, "org-a", "privacy budget: epsilon would reach 3.2 > budget 3", "t", {})
    assert put_item(own, update.to_item()) == ALLOW
    assert put_item(own, heartbeat.to_item()) == ALLOW
    assert put_item(own, decline.to_item()) == ALLOW  # a client may decline a round (its privacy budget)
    forged = {
        "a run record": RunRecord("run-1", ["org-a"], 5, TrainingConfig(), "fedavg", "t").to_item(),
        "a round record": {**keys.round_item_key("run-1", 1), "status": "aggregated"},
        "another client's update": replace(update, client_id="org-b").to_item()
        | keys.update_item_key("run-1", 1, "org-b"),
        "another client's heartbeat": replace(heartbeat, client_id="org-b").to_item(),
        "another client's decline": replace(decline, client_id="org-b").to_item()
        | keys.update_item_key("run-1", 1, "org-b"),
        "its own feedback": Feedback("org-a", "run-1", 1, "0" * 64, "forged", "t").to_item(),
        "a run's stop marker": RunStop("run-1", "forged", "t").to_item(),
        "an update item with an extra attribute": {**update.to_item(), "status": "aggregated"},
    }
    for what, item in forged.items():
        assert put_item(own, item) == IMPLICIT_DENY, what
    with_old_values = put_item_context(update.to_item(), return_values="ALL_OLD")
    assert evaluate(own, "dynamodb:PutItem", TABLE_ARN, with_old_values) == IMPLICIT_DENY


def test_a_clients_role_may_read_only_its_own_feedback_and_the_runs_stop_markers_and_no_other_item(template):
    own = evaluated_policy(template, "org-a")

    def get(pk: str, action: str = "dynamodb:GetItem") -> str:
        return evaluate(own, action, TABLE_ARN, {"dynamodb:LeadingKeys": [pk]})

    stop_marker = keys.stop_item_key("run-1")[keys.PK]
    assert get(keys.feedback_pk("org-a")) == ALLOW
    assert get(stop_marker) == ALLOW  # whether run-1 was stopped: its agent neither trains nor uploads then
    assert get(keys.feedback_pk("org-b")) == IMPLICIT_DENY
    assert get("run-1") == IMPLICIT_DENY and get(keys.client_pk("org-b")) == IMPLICIT_DENY
    for action in ("dynamodb:Query", "dynamodb:Scan", "dynamodb:UpdateItem", "dynamodb:DeleteItem"):
        assert get(keys.feedback_pk("org-a"), action) == IMPLICIT_DENY
        assert get(stop_marker, action) == IMPLICIT_DENY
    assert evaluate(own, "dynamodb:GetItem", TABLE_ARN, {"dynamodb:LeadingKeys": [stop_marker, "run-1"]}) == (
        IMPLICIT_DENY
    )


def test_a_clients_role_reaches_only_its_own_queue_and_prefix(template):
    own = evaluated_policy(template, "org-a")
    objects = {
        keys.update_key("run-1", 1, "org-a"): ("s3:PutObject", ALLOW),
        keys.update_key("run-1", 1, "org-b"): ("s3:PutObject", IMPLICIT_DENY),
        "updates/run-1/00001/org-a.safetensors": ("s3:PutObject", IMPLICIT_DENY),  # outside its own prefix
        keys.global_key("run-1", 1, "abc"): ("s3:PutObject", IMPLICIT_DENY),
        keys.model_key("run-1"): ("s3:PutObject", IMPLICIT_DENY),
        keys.update_key("run-1", 1, "org-b") + " ": ("s3:GetObject", IMPLICIT_DENY),
    }
    for key, (action, expected) in objects.items():
        assert evaluate(own, action, f"{BUCKET_ARN}/{key}", {}) == expected, (action, key)
    assert evaluate(own, "s3:GetObject", f"{BUCKET_ARN}/{keys.global_key('run-1', 1, 'abc')}", {}) == ALLOW
    queue = "arn:aws:sqs:us-east-1:123456789012:fedstep-{}"
    assert evaluate(own, "sqs:ReceiveMessage", queue.format("org-a"), {}) == ALLOW
    assert evaluate(own, "sqs:ReceiveMessage", queue.format("org-b"), {}) == IMPLICIT_DENY
    actions = json.dumps([s["Action"] for s in own])
    assert "*" not in actions and "states:" not in actions and "sns:" not in actions


def test_a_client_without_principal_arn_is_refused_unless_a_trial_and_warned_about_in_one():
    for where, refuse in (
        ("deployment config", lambda: DeploymentConfig.from_dict({"clients": [{"id": "org-a"}, {"id": "org-b"}]})),
        ("deployment config", lambda: build_app(DeploymentConfig(clients=(ClientConfig("org-a"),)), bundle=False)),
    ):
        with pytest.raises(ConfigError) as info:
            refuse()
        message = str(info.value)
        assert message.startswith(f"{where}: client(s) org-a") and "have no principal_arn" in message
        assert "Set principal_arn for each" in message and '"trial": true' in message
    assert DeploymentConfig.from_dict({"clients": [{"id": "org-a"}], "trial": True}).trial
    app = build_app(DeploymentConfig(clients=(ClientConfig("org-a"),), trial=True), None, bundle=False)
    assembly = app.synth()
    warnings = [
        m.entry.data
        for artifact in assembly.stacks
        for m in artifact.messages
        if m.level.name == "WARNING" and "principal_arn" in str(m.entry.data)
    ]
    assert any("client org-a has no principal_arn" in w for w in warnings), warnings


def test_client_roles_trust_only_their_configured_principal(template):
    roles = {
        r["Properties"]["Description"]: r["Properties"]["AssumeRolePolicyDocument"]["Statement"]
        for r in resources(template, "AWS::IAM::Role").values()
        if "client agent" in r["Properties"].get("Description", "")
    }
    assert roles["fedstep client agent of org-b"][0]["Principal"] == {"AWS": PARTNER}
    assert "root" in json.dumps(roles["fedstep client agent of org-a"][0]["Principal"])


def test_everything_holding_data_is_encrypted_with_the_rotated_customer_key(template):
    [key_id] = resources(template, "AWS::KMS::Key")
    template.has_resource_properties("AWS::KMS::Key", {"EnableKeyRotation": True})
    uses_key = {"Fn::GetAtt": [key_id, "Arn"]}
    registry = next(v for k, v in resources(template, "AWS::S3::Bucket").items() if k.startswith("ModelRegistry"))
    sse = registry["Properties"]["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
    assert sse["ServerSideEncryptionByDefault"] == {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": uses_key}
    for queue in resources(template, "AWS::SQS::Queue").values():
        assert queue["Properties"]["KmsMasterKeyId"] == uses_key
    template.has_resource_properties("AWS::SNS::Topic", {"KmsMasterKeyId": uses_key})
    template.has_resource_properties(
        "AWS::DynamoDB::Table",
        {
            "SSESpecification": {"SSEEnabled": True, "SSEType": "KMS", "KMSMasterKeyId": uses_key},
            "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
            "StreamSpecification": {"StreamViewType": "NEW_IMAGE"},
        },
    )


def test_model_registry_is_private_versioned_tls_only_and_expires_old_updates(template):
    registry = next(v for k, v in resources(template, "AWS::S3::Bucket").items() if k.startswith("ModelRegistry"))
    props = registry["Properties"]
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    assert all(props["PublicAccessBlockConfiguration"].values())
    rules = {r["Id"]: r for r in props["LifecycleConfiguration"]["Rules"]}
    assert rules["expire-client-updates"]["Prefix"] == keys.UPDATES_PREFIX
    assert rules["expire-client-updates"]["ExpirationInDays"] == 30
    assert rules["abort-incomplete-uploads"]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 7}
    assert "LoggingConfiguration" in props
    for policy in resources(template, "AWS::S3::BucketPolicy").values():
        assert "aws:SecureTransport" in json.dumps(policy)
    assert "aws:SecureTransport" in json.dumps(resources(template, "AWS::SNS::TopicPolicy"))


def test_stream_failures_go_to_a_dead_letter_queue_and_logs_are_retained(template):
    [mapping] = resources(template, "AWS::Lambda::EventSourceMapping").values()
    assert "OnFailure" in mapping["Properties"]["DestinationConfig"]
    assert mapping["Properties"]["MaximumRetryAttempts"] == 5
    [key_id] = resources(template, "AWS::KMS::Key")
    for group in resources(template, "AWS::Logs::LogGroup").values():  # the state machine's holds round data
        assert group["Properties"]["RetentionInDays"] == 90
        assert group["Properties"]["KmsKeyId"] == {"Fn::GetAtt": [key_id, "Arn"]}
    key_policy = json.dumps(resources(template, "AWS::KMS::Key")[key_id]["Properties"]["KeyPolicy"])
    assert "logs.us-east-1.amazonaws.com" in key_policy or "logs." in key_policy
    template.has_resource_properties("AWS::Lambda::Function", {"TracingConfig": {"Mode": "Active"}})
    template.has_resource_properties("AWS::StepFunctions::StateMachine", {"TracingConfiguration": {"Enabled": True}})


def test_every_taggable_resource_carries_project_and_component_tags(template):
    untaggable = {
        "AWS::SNS::Subscription",
        "AWS::SQS::QueuePolicy",
        "AWS::S3::BucketPolicy",
        "AWS::SNS::TopicPolicy",
        "AWS::KMS::Alias",
        "AWS::IAM::Policy",
        "AWS::Lambda::EventSourceMapping",
        "AWS::Lambda::Permission",  # the integrity check's rule may invoke its function (no Tags property)
    }
    template_json = template.to_json()
    for logical_id, resource in template_json["Resources"].items():
        if resource["Type"] in untaggable:
            continue
        tags = resource["Properties"].get("Tags", [])
        names = {t["Key"] for t in tags} if isinstance(tags, list) else set(tags)
        assert {"project", "component"} <= names, f"{logical_id} ({resource['Type']}) lacks tags: {names}"


def test_aggregation_function_may_complete_only_its_own_state_machines_tasks(template):
    statements = [
        s
        for p in resources(template, "AWS::IAM::Policy").values()
        for s in p["Properties"]["PolicyDocument"]["Statement"]
    ]
    [task] = [s for s in statements if "states:SendTaskSuccess" in json.dumps(s["Action"])]
    assert task["Resource"] != "*" and "FederatedTraining" in json.dumps(task["Resource"])


def test_state_machine_loops_over_rounds_and_waits_for_the_task_token(template):
    [props] = [r["Properties"] for r in resources(template, "AWS::StepFunctions::StateMachine").values()]
    definition = json.loads(
        "".join(p if isinstance(p, str) else "<ref>" for p in props["DefinitionString"]["Fn::Join"][1])
    )
    states = definition["States"]
    assert definition["StartAt"] == "Prepare round"
    notify = states["Notify clients and wait for updates"]
    # the token goes to the aggregation function (which records it where no client can read it)
    assert notify["Resource"].endswith(":states:::lambda:invoke.waitForTaskToken")
    assert notify["TimeoutSecondsPath"] == "$.run.round_timeout_s"
    assert notify["Parameters"]["Payload"]["task_token.$"] == "$$.Task.Token"
    assert notify["Parameters"]["Payload"]["mode"] == "publish"
    choices = {c["Next"]: c for c in states["More rounds?"]["Choices"]}
    assert choices["Prepare round"]["NumericLessThanPath"] == "$.run.rounds"
    assert choices["Target reached"]["BooleanEquals"] is True
    assert states["More rounds?"]["Default"] == "All rounds done"
    assert states["Notify clients: run ended"]["Parameters"]["Message"]["reason.$"] == "$.stop_reason"
    assert states["Notify clients and wait for updates"]["Catch"][0]["Next"] == "Aggregate at deadline"
    for name in ("Notify clients and wait for updates", "Aggregate at deadline"):
        # a failed call is retried (not a timeout, not a round too small to aggregate), then fails the run
        no_retry, retry = states[name]["Retry"]
        assert (no_retry["MaxAttempts"], retry["ErrorEquals"], retry["MaxAttempts"]) == (0, ["States.ALL"], 3)
        assert set(no_retry["ErrorEquals"]) == {
            "States.Timeout",
            "QuorumNotMet",
            "TooFewParticipants",
            "InvalidAggregate",
            "SecAggThresholdNotMet",
            "StrategyFailed",
        }
        assert {"ErrorEquals": ["StrategyFailed"], "ResultPath": "$.failure", "Next": "Training failed"} in (
            states[name]["Catch"]
        )
        # a round that could not be aggregated, an aggregate that is not finite included, is retried
        not_aggregated = ["QuorumNotMet", "TooFewParticipants", "InvalidAggregate", "SecAggThresholdNotMet"]
        assert {"ErrorEquals": not_aggregated, "ResultPath": "$.failure", "Next": "Retry round?"} in (
            states[name]["Catch"]
        )
    assert states["Training failed"]["Type"] == "Fail"
    assert states["Retry round?"]["Choices"][0]["NumericLessThanPath"] == "$.run.round_retries"
    assert states["Retry round"]["Next"] == "Notify clients and wait for updates"
    assert states["Prepare round"]["Parameters"]["attempt"] == 0
    # a plain round's task output names no secure-aggregation phase: the Choice goes on to the slices' check
    assert states["Notify clients and wait for updates"]["Next"] == "Next secure-aggregation phase?"
    assert states["Aggregate at deadline"]["Next"] == "Next secure-aggregation phase?"
    assert states["Next secure-aggregation phase?"]["Default"] == "Aggregated by slices?"
    assert states["Aggregated by slices?"]["Default"] == "Report is for this round?"
    [sliced] = states["Aggregated by slices?"]["Choices"]
    assert (sliced["Variable"], sliced["IsPresent"], sliced["Next"]) == ("$.result.sliced", True, "Aggregate slices")
    fan_out = states["Aggregate slices"]
    assert fan_out["Type"] == "Map" and fan_out["ItemProcessor"]["ProcessorConfig"]["Mode"] == "DISTRIBUTED"
    assert fan_out["ItemsPath"] == "$.result.sliced.slices"
    assert fan_out["ItemSelector"]["index.$"] == "$$.Map.Item.Value"
    assert fan_out["Next"] == "Assemble global model"
    assert states["Assemble global model"]["Next"] == "Report is for this round?"
    assert states["Report for another run"]["Error"] == "ForeignReport"
    assert states["Notify clients: run ended"]["Parameters"]["Message"]["type"] == "run_ended"
    assert states["Training finished"]["End"] is True
    assert states["Round aggregated"]["Parameters"]["round_summary.$"] == "$.result.summary"
    assert "history" not in json.dumps(definition)  # no state carries a list that grows with the rounds
    assert states["Training finished"]["Parameters"]["round_summaries"]["pk.$"] == "$.run.run_id"


def _definition(template: Template) -> dict:
    [props] = [r["Properties"] for r in resources(template, "AWS::StepFunctions::StateMachine").values()]
    return json.loads("".join(p if isinstance(p, str) else "<ref>" for p in props["DefinitionString"]["Fn::Join"][1]))


def test_the_state_machines_payloads_are_built_from_the_message_definitions_in_the_core(template):
    from fedstep.core.schemas import RoundMessage, RunEndedMessage, state_machine_fields

    states = _definition(template)["States"]
    publish = states["Notify clients and wait for updates"]["Parameters"]["Payload"]
    supplied = {f"{name}.$": path for name, (path, _) in state_machine_fields(RoundMessage).items()}
    assert {k: v for k, v in publish.items() if k not in ("mode", "task_token.$")} == supplied
    assert set(supplied) == {"run_id.$", "round.$", "attempt.$", "global_model.$", "issued_at.$"}
    ended = states["Notify clients: run ended"]["Parameters"]["Message"]
    supplied = {f"{name}.$": path for name, (path, _) in state_machine_fields(RunEndedMessage).items()}
    assert {k: v for k, v in ended.items() if k not in ("schema", "type")} == supplied
    assert ended["type"] == "run_ended"


def test_a_secure_rounds_later_phases_each_wait_for_their_own_token_and_deadline_and_return_to_one_choice(template):
    """Issue 25: after a round's task (or its deadline call) and after each later phase, "Next
    secure-aggregation phase?" opens the phase the output names at $.result.secagg.phase; an output
    that names none (a plain round's summary, a slice plan) goes on as before. A Choice rule that
    reads a missing path fails the execution, so the absent phase is tested first."""
    from fedstep.core.machine import SECURE_PHASE_STATES

    states = _definition(template)["States"]
    choice = states["Next secure-aggregation phase?"]
    absent, *phases = choice["Choices"]
    assert absent == {"Not": {"Variable": "$.result.secagg.phase", "IsPresent": True}, "Next": "Aggregated by slices?"}
    assert {(rule["Variable"], rule["StringEquals"], rule["Next"]) for rule in phases} == {
        ("$.result.secagg.phase", phase, name) for phase, (name, _) in SECURE_PHASE_STATES.items()
    }
    assert choice["Default"] == "Aggregated by slices?"
    not_aggregated = ["QuorumNotMet", "TooFewParticipants", "InvalidAggregate", "SecAggThresholdNotMet"]
    failed = {"ErrorEquals": ["StrategyFailed"], "ResultPath": "$.failure", "Next": "Training failed"}
    retried = {"ErrorEquals": not_aggregated, "ResultPath": "$.failure", "Next": "Retry round?"}
    for phase, (name, deadline_name) in SECURE_PHASE_STATES.items():
        publish, at_deadline = states[name], states[deadline_name]
        # the token goes to the aggregation function only, as the round's does
        assert publish["Resource"].endswith(":states:::lambda:invoke.waitForTaskToken")
        assert publish["Parameters"]["Payload"] == {
            "mode": "secagg_publish",
            "phase": phase,
            "run_id.$": "$.run.run_id",
            "round.$": "$.round",
            "attempt.$": "$.attempt",
            "issued_at.$": "$$.State.EnteredTime",
            "task_token.$": "$$.Task.Token",
        }
        assert publish["TimeoutSecondsPath"] == "$.run.secagg_phase_timeout_s"
        timeout = {"ErrorEquals": ["States.Timeout"], "ResultPath": "$.timeout", "Next": deadline_name}
        assert publish["Catch"] == [timeout, retried, failed]
        assert at_deadline["Parameters"] == {
            "mode": "secagg_deadline",
            "phase": phase,
            "run_id.$": "$.run.run_id",
            "round.$": "$.round",
            "attempt.$": "$.attempt",
        }
        assert "TimeoutSecondsPath" not in at_deadline and at_deadline["Catch"] == [retried, failed]
        for state in (publish, at_deadline):
            assert state["ResultPath"] == "$.result" and state["Next"] == "Next secure-aggregation phase?"
            no_retry, retry = state["Retry"]  # a failed call is retried; a timeout or a small round is not
            assert set(no_retry["ErrorEquals"]) == {"States.Timeout", *not_aggregated, "StrategyFailed"}
            assert (no_retry["MaxAttempts"], retry["ErrorEquals"], retry["MaxAttempts"]) == (0, ["States.ALL"], 3)


def test_a_round_left_below_the_secure_aggregation_threshold_is_retried_as_the_memory_engine_retries_it():
    from fedstep.core.rounds import RoundNotAggregated, SecAggThresholdNotMet
    from fedstep.local.memory_engine import NOT_AGGREGATED as RETRIED_IN_MEMORY
    from infra.state_machine import NOT_AGGREGATED

    assert "SecAggThresholdNotMet" in NOT_AGGREGATED and issubclass(SecAggThresholdNotMet, RoundNotAggregated)
    assert [error.__name__ for error in RETRIED_IN_MEMORY] == NOT_AGGREGATED


def test_alarms_watch_failed_runs_and_every_dead_letter_queue_and_notify_the_alarm_topic(template):
    alarms = resources(template, "AWS::CloudWatch::Alarm")
    by_name = {a["Properties"]["AlarmName"]: a["Properties"] for a in alarms.values()}
    # the stack's own dead-letter queues' alarm, then its client group's (in the nested stack)
    assert set(by_name) == {
        "fedstep-executions-failed",
        "fedstep-dead-letters-1",
        "fedstep-dead-letters-2",
        "fedstep-integrity-mismatch",  # the scheduled integrity check's (test_the_integrity_check_runs_daily...)
        "fedstep-integrity-check-failed",
    }
    failed = json.dumps(by_name["fedstep-executions-failed"]["Metrics"])
    assert "ExecutionsFailed" in failed and "ExecutionsTimedOut" in failed
    watched = json.dumps([by_name[f"fedstep-dead-letters-{n}"]["Metrics"] for n in (1, 2)])
    dlqs = [k for k, q in resources(template, "AWS::SQS::Queue").items() if "RedrivePolicy" not in q["Properties"]]
    # both clients', the aggregation failures' and the round messages SNS could not deliver
    assert len(dlqs) == 4 and all(d in watched for d in dlqs)
    [topic] = [
        k for k, t in resources(template, "AWS::SNS::Topic").items() if t["Properties"]["TopicName"] == "fedstep-alarms"
    ]
    for alarm in by_name.values():
        assert alarm["AlarmActions"] == [{"Ref": topic}]
        assert alarm["TreatMissingData"] == "notBreaching"
    assert "KmsMasterKeyId" in resources(template, "AWS::SNS::Topic")[topic]["Properties"]


def test_alarm_mails_sns_cannot_deliver_go_to_an_encrypted_dead_letter_queue_watched_by_an_alarm():
    template = synth([ClientConfig("org-a")], alarm_email="ops@example.org")
    [key_id] = resources(template, "AWS::KMS::Key")
    queues = resources(template, "AWS::SQS::Queue")
    [(undelivered, queue)] = [
        (k, q) for k, q in queues.items() if q["Properties"]["QueueName"] == "fedstep-undelivered-alarms"
    ]
    assert queue["Properties"]["KmsMasterKeyId"] == {"Fn::GetAtt": [key_id, "Arn"]}
    [alarm_topic] = [
        k for k, t in resources(template, "AWS::SNS::Topic").items() if t["Properties"]["TopicName"] == "fedstep-alarms"
    ]
    [mail] = [
        s["Properties"]
        for s in resources(template, "AWS::SNS::Subscription").values()
        if s["Properties"]["Protocol"] == "email"
    ]
    assert mail["TopicArn"] == {"Ref": alarm_topic}
    assert mail["RedrivePolicy"] == {"deadLetterTargetArn": {"Fn::GetAtt": [undelivered, "Arn"]}}
    # SNS may send to it for the alarm topic only, and use the key to do so
    [queue_policy] = [
        p["Properties"]["PolicyDocument"]["Statement"]
        for p in resources(template, "AWS::SQS::QueuePolicy").values()
        if {"Ref": undelivered} in p["Properties"]["Queues"]
    ]
    assert any(
        s.get("Condition", {}).get("ArnEquals", {}).get("aws:SourceArn") == {"Ref": alarm_topic} for s in queue_policy
    )
    key_statements = resources(template, "AWS::KMS::Key")[key_id]["Properties"]["KeyPolicy"]["Statement"]
    [delivers] = [s for s in key_statements if s.get("Sid") == "AlarmTopicDeliversToEncryptedQueues"]
    assert json.dumps(delivers["Condition"]["ArnLike"]["aws:SourceArn"]).endswith(':fedstep-alarms"]]}')
    alarms = {
        a["Properties"]["AlarmName"]: a["Properties"] for a in resources(template, "AWS::CloudWatch::Alarm").values()
    }
    assert undelivered in json.dumps(alarms["fedstep-dead-letters-1"]["Metrics"])  # with the stack's other two
    assert len(alarms["fedstep-dead-letters-1"]["Metrics"]) == 3 + 1


def test_dead_letter_alarms_cover_every_queue_ten_at_a_time():
    template = synth([ClientConfig(f"org-{i}") for i in range(25)])
    alarms = [a["Properties"] for a in resources(template, "AWS::CloudWatch::Alarm").values()]
    sums = [a for a in alarms if a["AlarmName"].startswith("fedstep-dead-letters-")]
    # the stack's 2 dead-letter queues, then the group's 25 clients' in 10, 10 and 5
    assert sorted(len(a["Metrics"]) - 1 for a in sums) == [2, 5, 10, 10]  # each: its queue metrics and their sum
    watched = json.dumps([a["Metrics"] for a in sums])
    dlqs = [k for k, q in resources(template, "AWS::SQS::Queue").items() if "RedrivePolicy" not in q["Properties"]]
    assert len(dlqs) == 27 and all(d in watched for d in dlqs)


def test_the_dashboard_graphs_runs_dead_letters_and_every_round_metric(template):
    [dashboard] = resources(template, "AWS::CloudWatch::Dashboard").values()
    body = json.dumps(dashboard["Properties"]["DashboardBody"])
    for metric in (
        "Participants",
        "RejectedUpdates",
        "RoundDuration",
        "AggregationDuration",
        "BytesAggregated",
        "WeightedLoss",
        "WeightedAccuracy",
        "ExecutionsFailed",
        "ApproximateNumberOfMessagesVisible",
    ):
        assert metric in body, metric
    [function] = aggregation_functions(template)
    env = function["Properties"]["Environment"]["Variables"]
    assert env["POWERTOOLS_METRICS_NAMESPACE"] == "fedstep" and env["PROJECT"] == "fedstep"


def cfn_lint_errors(*paths: Path) -> list[dict]:
    """cfn-lint's error-level findings on the templates (its warnings, W3005 on CDK's DependsOn, are not)."""
    result = subprocess.run(
        [str(Path(sys.executable).parent / "cfn-lint"), "--format", "json", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    # it ran (the old `python -m cfnlint` does not: cfn-lint 1.x has no __main__, and an empty output passed)
    assert result.stdout.lstrip().startswith("["), f"cfn-lint exited {result.returncode}: {result.stderr[-2000:]}"
    return [f for f in json.loads(result.stdout) if f["Level"] == "Error"]


def test_nag_clean_and_cfn_lint_clean_for_3_clients(tmp_path):
    clients = [ClientConfig("org-0"), ClientConfig("org-1"), ClientConfig("org-2", revoked=True)]  # one offboarded
    template = synth(clients, tmp_path, alarm_email="ops@example.org")  # raises on any nag finding
    template.resource_count_is("AWS::SNS::Subscription", 3 + 1)  # the clients' queues (a revoked one's kept), alarms
    templates = sorted(tmp_path.glob("*.template.json"), key=lambda p: p.name != "fedstep.template.json")
    assert len(templates) == 2 and templates[0].name == "fedstep.template.json"
    errors = cfn_lint_errors(*templates)
    assert errors == [], errors[:5]


def _normalized(text: str) -> str:
    """A group's template with its clients' ids (org-NNN, in every form CDK writes them) numbered within
    the group, the group's name and CDK's hash suffixes blanked: the groups' templates are then the same."""
    first = min(int(n) for n in re.findall(r"org-(\d{3})", text))
    assert first % CLIENTS_PER_GROUP == 0, first  # groups of 50 in config order
    text = re.sub(r"([oO])rg(-|)(\d{3})", lambda m: f"{m[1]}rg{m[2]}#{int(m[3]) - first}", text)  # Org000: outputs
    text = re.sub(r"Clients\d+", "ClientsN", text)  # the group's own name, in its subscriptions' logical ids
    text = re.sub(r"(?:[0-9A-F]{8})+\b", "HASH", text)
    return re.sub(r"(DeadLetters|dead-letters-)\d+", r"\1N", text)  # its alarms' numbers


@pytest.mark.timeout(300)
def test_500_clients_fit_nested_stacks_each_within_cloudformations_limits_nag_and_cfn_lint_clean(tmp_path):
    """The most clients a deployment holds, in nested stacks of 50: every template within 500
    resources, 200 outputs and 200 parameters (and 1 MB, the largest template CloudFormation reads from
    S3). cfn-lint runs on the stack's template and on a group's; the other groups' templates are the
    same but for their clients' names (cfn-lint over all eleven takes minutes)."""
    clients = [ClientConfig(f"org-{i:03d}") for i in range(MAX_CLIENTS)]
    template = synth(clients, tmp_path, alarm_email="ops@example.org")  # raises on any nag finding
    template.resource_count_is("AWS::SNS::Subscription", MAX_CLIENTS + 1)
    # the functions' (aggregation, integrity check), the machine's, the operator's
    template.resource_count_is("AWS::IAM::Role", MAX_CLIENTS + 4)
    template.resource_count_is("AWS::CloudFormation::Stack", MAX_CLIENTS // CLIENTS_PER_GROUP)
    alarms = [a["Properties"]["AlarmName"] for a in resources(template, "AWS::CloudWatch::Alarm").values()]
    expected = [
        "fedstep-executions-failed",
        "fedstep-integrity-mismatch",
        "fedstep-integrity-check-failed",
        *(f"fedstep-dead-letters-{n}" for n in range(1, 52)),
    ]
    assert sorted(alarms) == sorted(expected)
    root = tmp_path / "fedstep.template.json"
    groups = sorted(tmp_path.glob("*.nested.template.json"))
    assert len(groups) == 10
    for path in (root, *groups):
        body = json.loads(path.read_text())
        counts = [len(body.get(k, {})) for k in ("Resources", "Outputs", "Parameters")]
        assert counts[0] <= 500 and counts[1] <= 200 and counts[2] <= 200, (path.name, counts)
        assert path.stat().st_size < 1_000_000, path.name
    first = _normalized(groups[0].read_text())
    for path in groups[1:]:
        assert _normalized(path.read_text()) == first, path.name
    errors = cfn_lint_errors(root, groups[0])
    assert errors == [], errors[:5]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"clients": [{"id": "a"}, {"id": "a"}]}, "duplicate client id"),
        ({"clients": [{"id": "bad/id"}]}, "invalid client id"),
        ({"clients": []}, "non-empty list"),
        ({"clients": [{"id": "a", "principal_arn": "arn:aws:iam::12:role/x"}]}, "not an IAM principal ARN"),
        ({"clients": [{"id": "a", "principal_arn": "arn:aws:s3:::bucket"}]}, "not an IAM principal ARN"),
        ({"clients": [{"id": "a", "role": "x"}]}, r"unknown field\(s\) \['role'\]"),
        ({"clients": [{"id": f"c{i}"} for i in range(MAX_CLIENTS + 1)]}, f"at most {MAX_CLIENTS}"),
        ({"alarm_email": "ops at example"}, "not an e-mail address"),
        ({"project": "p" * 32, "clients": [{"id": "x" * 64}]}, "longer than SQS.s 80 characters"),
        ({"project": "Has Caps"}, "project"),
        ({"round_timeout_s": 5}, "round_timeout_s"),
        ({"retention": {"log_days": 10}}, "log_days must be one of"),
        ({"retention": {"update_days": 0}}, "update_days"),
        ({"colour": "blue"}, "unknown field"),
        ({"max_model_mb": 6000}, "max_model_mb 6000 must be a whole number from 1 to 5120"),
        ({"slice_mb": 4}, "slice_mb 4 must be a whole number from 8"),
        ({"slice_mb": 4096}, "slice_mb 4096 must be a whole number from 8 .* to 1768"),
        ({"max_model_mb": 0}, "max_model_mb"),
        ({"trial": "yes"}, "trial must be true or false, got 'yes'"),
        ({"clients": [{"id": "a", "principal_arn": PARTNER}, {"id": "b"}]}, r"client\(s\) b have no principal_arn"),
    ],
)
def test_deployment_config_mistakes_are_named(data, message):
    with pytest.raises(ConfigError, match=message):
        DeploymentConfig.from_dict(data)


@pytest.mark.parametrize("max_model_mb", [64, 256, 1024, 1768])
def test_the_aggregation_function_is_sized_to_the_largest_model(max_model_mb):
    config = DeploymentConfig(
        clients=(ClientConfig("org-a"), ClientConfig("org-b")), max_model_mb=max_model_mb, trial=True
    )
    app = build_app(config, None, bundle=False)
    template = Template.from_stack(app.node.find_child(config.stack_name))
    [function] = aggregation_functions(template)
    memory, timeout = function["Properties"]["MemorySize"], function["Properties"]["Timeout"]
    # about 3x one model (bench/aggregation_memory.py), within one function's 10,240 MB
    assert 5.5 * max_model_mb + 512 <= memory <= 10_240 and memory % 64 == 0
    assert 120 <= timeout <= 900
    env = function["Properties"]["Environment"]["Variables"]
    assert int(env["LEASE_S"]) > timeout  # a live claim's holder never loses the round
    assert template.find_outputs("MaxModelBytes")["MaxModelBytes"]["Value"] == str(max_model_mb * 2**20)
    assert "SLICE_BYTES" not in env  # one function holds the largest model: nothing is sliced


@pytest.mark.parametrize(("max_model_mb", "slice_mb", "function_mb"), [(5120, None, 512), (1100, 64, 64)])
def test_a_model_larger_than_a_slice_is_aggregated_by_slices_with_memory_for_one_slice(
    max_model_mb, slice_mb, function_mb
):
    config = DeploymentConfig(
        clients=(ClientConfig("org-a"), ClientConfig("org-b")), max_model_mb=max_model_mb, slice_mb=slice_mb, trial=True
    )
    app = build_app(config, None, bundle=False)
    template = Template.from_stack(app.node.find_child(config.stack_name))
    [function] = aggregation_functions(template)
    memory = function["Properties"]["MemorySize"]
    assert 5.5 * function_mb + 512 <= memory < 5.5 * function_mb + 512 + 64
    assert memory < max_model_mb  # the function holds less than one model
    env = function["Properties"]["Environment"]["Variables"]
    assert env["SLICE_BYTES"] == str(function_mb * 2**20)
    assert template.find_outputs("SliceBytes")["SliceBytes"]["Value"] == str(function_mb * 2**20)


def test_cross_account_principals_are_accepted():
    config = DeploymentConfig.from_dict(
        {
            "clients": [
                {"id": "a", "principal_arn": PARTNER},
                {"id": "b", "principal_arn": "arn:aws:iam::111122223333:root"},
            ]
        }
    )
    assert config.clients[0].principal_arn == PARTNER


def test_deployment_config_file_errors_are_clear(tmp_path):
    bad = tmp_path / "deploy.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        DeploymentConfig.load(bad)
    assert DeploymentConfig.load(tmp_path / "missing.json", missing_ok=True) == DeploymentConfig()
    with pytest.raises(ConfigError, match=r"missing\.json' does not exist"):
        DeploymentConfig.load(tmp_path / "missing.json")


def test_the_state_machine_sends_only_the_modes_the_aggregation_function_handles_and_names_its_states_once(template):
    """The modes and state names are defined once (`fedstep.core.machine`): the definition's calls of the
    function carry those modes, which the handler dispatches, and its states are those names."""
    from fedstep.core.machine import MODES, State
    from lambdas.aggregate import MODES as HANDLED

    definition = _definition(template)

    def walk(node: object) -> list[dict]:
        if isinstance(node, dict):
            return [node, *(s for v in node.values() for s in walk(v))]
        if isinstance(node, list):
            return [s for v in node for s in walk(v)]
        return []

    sent = {n["mode"] for n in walk(definition) if isinstance(n.get("mode"), str)}
    assert sent == set(MODES) and tuple(HANDLED) == MODES
    names = {v for k, v in vars(State).items() if k.isupper()}
    states = set(definition["States"]) | {
        name for n in walk(definition) if isinstance(n.get("States"), dict) for name in n["States"]
    }
    assert states == names


def test_without_backup_or_audit_in_the_config_the_stack_has_no_backup_plan_and_no_trail(template):
    for kind in ("AWS::Backup::BackupPlan", "AWS::Backup::BackupVault", "AWS::CloudTrail::Trail"):
        template.resource_count_is(kind, 0)
    assert not {"BackupVaultName", "AuditTrailArn"} & set(template.find_outputs("*"))


def integrity_policy(template: Template) -> list[dict]:
    """The statements of the scheduled integrity check's role, references resolved (as `evaluated_policy`)."""
    [role_id] = [
        k
        for k, r in resources(template, "AWS::IAM::Role").items()
        if r["Properties"].get("Description", "").startswith("fedstep scheduled integrity check")
    ]
    statements = [
        s
        for p in resources(template, "AWS::IAM::Policy").values()
        if {"Ref": role_id} in p["Properties"]["Roles"]
        for s in p["Properties"]["PolicyDocument"]["Statement"]
    ]
    arn_of = {}
    for logical_id, resource in template.to_json()["Resources"].items():
        kind = resource["Type"]
        if kind == "AWS::DynamoDB::Table":
            arn_of[logical_id] = TABLE_ARN
        elif kind == "AWS::S3::Bucket":
            arn_of[logical_id] = BUCKET_ARN if logical_id.startswith("ModelRegistry") else "arn:aws:s3:::logs"
        else:
            arn_of[logical_id] = f"arn:aws:{kind.split('::')[1].lower()}:us-east-1:123456789012:{logical_id}"
    return resolve(statements, arn_of)


def test_the_integrity_check_runs_daily_and_its_mismatch_alarm_tells_the_alarm_topic(template):
    [function_id] = [
        k
        for k, f in resources(template, "AWS::Lambda::Function").items()
        if f["Properties"]["Handler"] == "lambdas.verify.handler"
    ]
    function = resources(template, "AWS::Lambda::Function")[function_id]["Properties"]
    assert function["FunctionName"] == "fedstep-integrity" and function["Timeout"] == 900
    env = function["Environment"]["Variables"]
    assert (env["LOOKBACK_DAYS"], env["SWEEP_EVERY_DAYS"], env["POWERTOOLS_SERVICE_NAME"]) == (
        "30",
        "7",
        "fedstep-integrity",
    )
    [rule] = resources(template, "AWS::Events::Rule").values()
    assert rule["Properties"]["ScheduleExpression"] == "rate(1 day)" and rule["Properties"]["State"] == "ENABLED"
    [target] = rule["Properties"]["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": [function_id, "Arn"]}
    [permission] = resources(template, "AWS::Lambda::Permission").values()
    assert permission["Properties"]["Principal"] == "events.amazonaws.com"
    assert permission["Properties"]["FunctionName"] == {"Fn::GetAtt": [function_id, "Arn"]}
    alarms = {a["Properties"]["AlarmName"]: a for a in resources(template, "AWS::CloudWatch::Alarm").values()}
    failed = alarms["fedstep-integrity-check-failed"]["Properties"]  # the check itself failing to run
    assert (failed["MetricName"], failed["Namespace"], failed["Statistic"]) == ("Errors", "AWS/Lambda", "Sum")
    assert failed["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": function_id}}]
    props = alarms["fedstep-integrity-mismatch"]["Properties"]
    assert (props["AlarmName"], props["MetricName"], props["Namespace"], props["Statistic"]) == (
        "fedstep-integrity-mismatch",
        "IntegrityMismatches",
        "fedstep",
        "Sum",
    )
    dimensions = {d["Name"]: d["Value"] for d in props["Dimensions"]}
    assert dimensions == {"service": "fedstep-integrity", "project": "fedstep"}
    assert (props["Threshold"], props["ComparisonOperator"]) == (1, "GreaterThanOrEqualToThreshold")
    [alarm_topic] = logical_ids(template, "AWS::SNS::Topic", '"fedstep-alarms"')
    assert props["AlarmActions"] == failed["AlarmActions"] == [{"Ref": alarm_topic}]


def test_the_integrity_check_reads_records_and_objects_and_writes_only_its_cursor(template):
    own = integrity_policy(template)
    model = f"{BUCKET_ARN}/{keys.global_key('run-1', 1, 'abc')}"
    for action, resource, expected in [
        ("s3:GetObject", model, ALLOW),
        ("s3:GetObjectVersion", model, ALLOW),  # a model over 16 MiB is hashed at one version
        ("s3:GetObject", f"{BUCKET_ARN}/{keys.manifest_key('run-1', 1, 'abc')}", ALLOW),
        ("s3:ListBucket", BUCKET_ARN, ALLOW),  # a missing object is NoSuchKey, reported as missing
        ("s3:PutObject", f"{BUCKET_ARN}/{keys.integrity_cursor_key()}", ALLOW),
        ("s3:PutObject", model, IMPLICIT_DENY),
        ("s3:DeleteObject", model, IMPLICIT_DENY),
        ("s3:GetObject", f"{BUCKET_ARN}/{keys.update_key('run-1', 1, 'org-a')}", IMPLICIT_DENY),
        ("s3:GetObject", f"{BUCKET_ARN}/{keys.approved_key()}", IMPLICIT_DENY),
        ("dynamodb:Scan", TABLE_ARN, ALLOW),
        ("dynamodb:Query", TABLE_ARN, ALLOW),
        ("dynamodb:GetItem", TABLE_ARN, ALLOW),
        ("dynamodb:PutItem", TABLE_ARN, IMPLICIT_DENY),
        ("dynamodb:UpdateItem", TABLE_ARN, IMPLICIT_DENY),
        ("cloudwatch:PutMetricData", "*", IMPLICIT_DENY),  # its metrics are embedded in its logs
    ]:
        assert evaluate(own, action, resource, {}) == expected, (action, resource)
