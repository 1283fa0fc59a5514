"""The synthesized CloudFormation template: resources, least privilege, encryption, nag and cfn-lint.

Every synth here runs the cdk-nag AwsSolutions pack (infra/nag.py): an unacknowledged finding
makes it raise, so each test also proves the template passes the pack.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from aws_cdk.assertions import Template

from fedstep import keys
from infra.client_access import HEARTBEAT_ATTRIBUTES, UPDATE_ITEM_ATTRIBUTES
from infra.config import MAX_CLIENTS, ClientConfig, ConfigError, DeploymentConfig
from infra.synth import build_app

PARTNER = "arn:aws:iam::111122223333:role/fl-agent"


def synth(clients: list[ClientConfig], outdir: Path | None = None, alarm_email: str | None = None) -> Template:
    config = DeploymentConfig(clients=tuple(clients), alarm_email=alarm_email)
    app = build_app(config, outdir, bundle=False)
    return Template.from_stack(app.node.find_child(config.stack_name))


@pytest.fixture(scope="module")
def template() -> Template:
    return synth([ClientConfig("org-a"), ClientConfig("org-b", principal_arn=PARTNER)])


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
    policies = [r["Properties"]["FilterPolicy"] for r in resources(template, "AWS::SNS::Subscription").values()]
    assert sorted(json.dumps(p) for p in policies) == ['{"clients": ["org-a"]}', '{"clients": ["org-b"]}']
    outputs = template.find_outputs("*")
    assert outputs["ClientIds"]["Value"] == "org-a,org-b"
    assert {keys.client_output_key("org-a"), keys.client_role_output_key("org-b")} <= set(outputs)


def test_client_a_cannot_touch_client_bs_queue_prefix_or_items(template):
    a_queue = logical_ids(template, "AWS::SQS::Queue", '"fedstep-org-a"')
    b_queue = logical_ids(template, "AWS::SQS::Queue", '"fedstep-org-b"')
    statements = {s["Sid"]: s for s in client_policy(template, "org-a")}
    assert statements["OwnQueue"]["Resource"] == {"Fn::GetAtt": [a_queue[0], "Arn"]}
    assert b_queue[0] not in json.dumps(statements)
    writes = json.dumps(statements["WriteOwnUpdates"]["Resource"])
    assert "/updates/*/*/org-a.safetensors" in writes and "org-b" not in writes
    assert statements["WriteOwnUpdates"]["Action"] == "s3:PutObject"
    reads = json.dumps(statements["ReadModels"]["Resource"])
    assert "/runs/*/model.keras" in reads and "/runs/*/rounds/*/global.safetensors" in reads and "org-b" not in reads
    items = statements["PutUpdateItems"]
    assert items["Action"] == "dynamodb:PutItem"  # no reads: other clients' items stay private
    assert items["Condition"]["ForAllValues:StringEquals"]["dynamodb:Attributes"] == UPDATE_ITEM_ATTRIBUTES
    assert items["Condition"]["StringEqualsIfExists"]["dynamodb:ReturnValues"] == "NONE"
    assert items["Condition"]["ForAllValues:StringNotLike"]["dynamodb:LeadingKeys"] == ["CLIENT#*"]
    actions = json.dumps([s["Action"] for s in statements.values()])
    assert "*" not in actions and "Delete" not in actions.replace("sqs:DeleteMessage", "")


def test_a_client_may_write_only_its_own_heartbeat(template):
    statements = {s["Sid"]: s for s in client_policy(template, "org-a")}
    beat = statements["PutOwnHeartbeat"]
    assert beat["Action"] == "dynamodb:PutItem"
    assert beat["Condition"]["ForAllValues:StringEquals"] == {
        "dynamodb:LeadingKeys": ["CLIENT#org-a"],
        "dynamodb:Attributes": HEARTBEAT_ATTRIBUTES,
    }
    assert "org-b" not in json.dumps(beat)
    # the update-item statement cannot reach any heartbeat partition, so none can be overwritten by it
    assert "CLIENT#*" in json.dumps(statements["PutUpdateItems"]["Condition"]["ForAllValues:StringNotLike"])


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
    assert "LoggingConfiguration" in props
    for policy in resources(template, "AWS::S3::BucketPolicy").values():
        assert "aws:SecureTransport" in json.dumps(policy)
    assert "aws:SecureTransport" in json.dumps(resources(template, "AWS::SNS::TopicPolicy"))


def test_stream_failures_go_to_a_dead_letter_queue_and_logs_are_retained(template):
    [mapping] = resources(template, "AWS::Lambda::EventSourceMapping").values()
    assert "OnFailure" in mapping["Properties"]["DestinationConfig"]
    assert mapping["Properties"]["MaximumRetryAttempts"] == 5
    for group in resources(template, "AWS::Logs::LogGroup").values():
        assert group["Properties"]["RetentionInDays"] == 90
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
    assert notify["Resource"].endswith(":states:::sns:publish.waitForTaskToken")
    assert notify["TimeoutSecondsPath"] == "$.run.round_timeout_s"
    assert notify["Parameters"]["Message"]["task_token.$"] == "$$.Task.Token"
    choices = {c["Next"]: c for c in states["More rounds?"]["Choices"]}
    assert choices["Prepare round"]["NumericLessThanPath"] == "$.run.rounds"
    assert choices["Target reached"]["BooleanEquals"] is True
    assert states["More rounds?"]["Default"] == "All rounds done"
    assert states["Notify clients: run ended"]["Parameters"]["Message"]["reason.$"] == "$.stop_reason"
    assert notify["Parameters"]["MessageAttributes"]["clients"]["DataType"] == "String.Array"
    assert states["Notify clients and wait for updates"]["Catch"][0]["Next"] == "Aggregate at deadline"
    assert states["Training failed"]["Type"] == "Fail"
    assert states["Retry round?"]["Choices"][0]["NumericLessThanPath"] == "$.run.round_retries"
    assert states["Retry round"]["Next"] == "Notify clients and wait for updates"
    assert states["Prepare round"]["Parameters"]["attempt"] == 0
    assert states["Notify clients and wait for updates"]["Next"] == "Report is for this round?"
    assert states["Report for another run"]["Error"] == "ForeignReport"
    assert states["Notify clients: run ended"]["Parameters"]["Message"]["type"] == "run_ended"
    assert states["Training finished"]["End"] is True
    assert states["Round aggregated"]["Parameters"]["round_summary.$"] == "$.result.summary"


def test_alarms_watch_failed_runs_and_every_dead_letter_queue_and_notify_the_alarm_topic(template):
    alarms = resources(template, "AWS::CloudWatch::Alarm")
    by_name = {a["Properties"]["AlarmName"]: a["Properties"] for a in alarms.values()}
    assert set(by_name) == {"fedstep-executions-failed", "fedstep-dead-letters-1"}
    failed = json.dumps(by_name["fedstep-executions-failed"]["Metrics"])
    assert "ExecutionsFailed" in failed and "ExecutionsTimedOut" in failed
    watched = json.dumps(by_name["fedstep-dead-letters-1"]["Metrics"])
    dlqs = [k for k, q in resources(template, "AWS::SQS::Queue").items() if "RedrivePolicy" not in q["Properties"]]
    assert len(dlqs) == 3 and all(d in watched for d in dlqs)  # both clients' and the aggregation failures'
    [topic] = [
        k for k, t in resources(template, "AWS::SNS::Topic").items() if t["Properties"]["TopicName"] == "fedstep-alarms"
    ]
    for alarm in by_name.values():
        assert alarm["AlarmActions"] == [{"Ref": topic}]
        assert alarm["TreatMissingData"] == "notBreaching"
    assert "KmsMasterKeyId" in resources(template, "AWS::SNS::Topic")[topic]["Properties"]


def test_dead_letter_alarms_cover_every_queue_ten_at_a_time():
    template = synth([ClientConfig(f"org-{i}") for i in range(25)])
    alarms = [a["Properties"] for a in resources(template, "AWS::CloudWatch::Alarm").values()]
    sums = [a for a in alarms if a["AlarmName"].startswith("fedstep-dead-letters-")]
    assert len(sums) == 3  # 26 dead-letter queues
    assert sum(len(a["Metrics"]) - 1 for a in sums) == 26  # each: up to 10 queue metrics and their sum


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
    [function] = resources(template, "AWS::Lambda::Function").values()
    env = function["Properties"]["Environment"]["Variables"]
    assert env["POWERTOOLS_METRICS_NAMESPACE"] == "fedstep" and env["PROJECT"] == "fedstep"


@pytest.mark.parametrize("n", [3, MAX_CLIENTS])
def test_nag_clean_and_cfn_lint_clean_for_3_clients_and_the_most_a_stack_holds(tmp_path, n):
    clients = [ClientConfig(f"org-{i}") for i in range(n)]
    template = synth(clients, tmp_path, alarm_email="ops@example.org")  # raises on any nag finding
    template.resource_count_is("AWS::SNS::Subscription", n + 1)  # the clients' queues and the alarm e-mail
    assert len(template.to_json()["Resources"]) <= 500  # CloudFormation's limit
    result = subprocess.run(
        [sys.executable, "-m", "cfnlint", "--format", "json", str(tmp_path / "fedstep.template.json")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    findings = json.loads(result.stdout or "[]")
    errors = [f for f in findings if f["Level"] == "Error"]
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
    ],
)
def test_deployment_config_mistakes_are_named(data, message):
    with pytest.raises(ConfigError, match=message):
        DeploymentConfig.from_dict(data)


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
    assert DeploymentConfig.load(tmp_path / "missing.json") == DeploymentConfig()
