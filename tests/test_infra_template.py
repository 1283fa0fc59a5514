"""The synthesized CloudFormation template (CDK assertions; the Lambda bundle is skipped here)."""

from __future__ import annotations

import json

import pytest
from aws_cdk.assertions import Match, Template

from infra.config import ClientConfig, ConfigError, DeploymentConfig
from infra.synth import build_app


def synth(n_clients: int) -> Template:
    config = DeploymentConfig(clients=tuple(ClientConfig(f"org-{i}") for i in range(n_clients)))
    app = build_app(config, bundle=False)
    return Template.from_stack(app.node.find_child(config.stack_name))


@pytest.fixture(scope="module")
def three() -> Template:
    return synth(3)


@pytest.mark.parametrize("n", [1, 3, 7])
def test_one_queue_and_one_raw_subscription_per_client(n):
    template = synth(n)
    template.resource_count_is("AWS::SQS::Queue", n)
    template.resource_count_is("AWS::SNS::Subscription", n)
    template.all_resources_properties("AWS::SNS::Subscription", {"Protocol": "sqs", "RawMessageDelivery": True})
    outputs = template.find_outputs("*")
    assert outputs["ClientIds"]["Value"] == ",".join(f"org-{i}" for i in range(n))


def test_table_streams_new_images_to_the_aggregation_function(three):
    three.has_resource_properties(
        "AWS::DynamoDB::Table",
        {
            "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
            "StreamSpecification": {"StreamViewType": "NEW_IMAGE"},
            "BillingMode": "PAY_PER_REQUEST",
        },
    )
    three.has_resource_properties(
        "AWS::Lambda::Function", {"Runtime": "python3.12", "Handler": "lambdas.aggregate.handler"}
    )
    three.has_resource_properties(
        "AWS::Lambda::EventSourceMapping",
        {"StartingPosition": "TRIM_HORIZON", "FilterCriteria": Match.object_like({"Filters": Match.any_value()})},
    )


def test_state_machine_loops_over_rounds_and_waits_for_the_task_token(three):
    machine = three.find_resources("AWS::StepFunctions::StateMachine")
    [props] = [r["Properties"] for r in machine.values()]
    definition = json.loads(
        "".join(p if isinstance(p, str) else "<ref>" for p in props["DefinitionString"]["Fn::Join"][1])
    )
    states = definition["States"]
    assert definition["StartAt"] == "Prepare round"
    notify = states["Notify clients and wait for updates"]
    assert notify["Resource"].endswith(":states:::sns:publish.waitForTaskToken")
    assert notify["TimeoutSecondsPath"] == "$.run.round_timeout_s"
    assert notify["Parameters"]["Message"]["task_token.$"] == "$$.Task.Token"
    assert states["More rounds?"]["Choices"][0]["Next"] == "Prepare round"
    assert states["Notify clients: run ended"]["Parameters"]["Message"]["type"] == "run_ended"
    assert states["Training finished"]["End"] is True


def test_bucket_is_private_and_requires_tls(three):
    three.has_resource_properties(
        "AWS::S3::Bucket",
        {
            "PublicAccessBlockConfiguration": {
                "BlockPublicAcls": True,
                "BlockPublicPolicy": True,
                "IgnorePublicAcls": True,
                "RestrictPublicBuckets": True,
            }
        },
    )
    policy = json.dumps(three.find_resources("AWS::S3::BucketPolicy"))
    assert "aws:SecureTransport" in policy


def test_aggregation_function_may_complete_only_its_own_state_machines_tasks(three):
    policies = three.find_resources("AWS::IAM::Policy")
    statements = [s for p in policies.values() for s in p["Properties"]["PolicyDocument"]["Statement"]]
    [task] = [s for s in statements if "states:SendTaskSuccess" in json.dumps(s["Action"])]
    assert task["Resource"] != "*" and "FederatedTraining" in json.dumps(task["Resource"])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"clients": [{"id": "a"}, {"id": "a"}]}, "duplicate client id"),
        ({"clients": [{"id": "bad/id"}]}, "invalid client id"),
        ({"clients": []}, "non-empty list"),
        ({"project": "Has Caps"}, "project"),
        ({"round_timeout_s": 5}, "round_timeout_s"),
        ({"colour": "blue"}, "unknown field"),
    ],
)
def test_deployment_config_mistakes_are_named(data, message):
    with pytest.raises(ConfigError, match=message):
        DeploymentConfig.from_dict(data)


def test_deployment_config_file_errors_are_clear(tmp_path):
    bad = tmp_path / "deploy.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        DeploymentConfig.load(bad)
    assert DeploymentConfig.load(tmp_path / "missing.json") == DeploymentConfig()
