"""`cdk bootstrap` + `cdk deploy` with the project's CDK CLI (npm aws-cdk@2) into a moto server, offline.

The CLI runs as a subprocess with fake credentials and AWS_ENDPOINT_URL pointing at a moto server
started by the test. The endpoint must name `localhost`: with `127.0.0.1`, moto reads the first label
("127") of a virtual-host S3 request as a bucket name.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any
from urllib.request import Request, urlopen

import boto3
import pytest

from fedstep.aws.stack import StackOutputs
from fedstep.local import gaps

REPO = Path(__file__).resolve().parent.parent
CDK = REPO / "node_modules" / ".bin" / "cdk"
STACK = "fedstep"
CLIENTS = ("org-a", "org-b")
ACCOUNT = "123456789012"
REGION = "us-east-1"
TIMEOUT_S = 600
# Resource types moto's CloudFormation creates; every one of them in the template must get a physical
# resource. Others (SNS subscriptions, queue/bucket/topic policies, alarms, ...) moto accepts and skips.
CREATED_BY_MOTO = {
    "AWS::DynamoDB::Table",
    "AWS::IAM::Role",
    "AWS::KMS::Alias",
    "AWS::KMS::Key",
    "AWS::Lambda::EventSourceMapping",
    "AWS::Lambda::Function",
    "AWS::Logs::LogGroup",
    "AWS::S3::Bucket",
    "AWS::SNS::Topic",
    "AWS::SQS::Queue",
    "AWS::StepFunctions::StateMachine",
}
FAKE_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "aws_session_token": "testing"}


@pytest.fixture
def moto_endpoint(monkeypatch):
    """A moto server on a free port, reset to empty; yields `http://localhost:PORT`."""
    from moto.core.config import default_user_config
    from moto.server import ThreadedMotoServer

    gaps.KMS_FROM_CLOUDFORMATION.apply()  # moto's AWS::KMS::Key bugs, see gaps/kms_from_cloudformation.py
    # Also process-global and not cleared by a reset: the local cloud switches Step Functions execution on,
    # which serves the API from a second backend where CloudFormation's state machines do not exist.
    monkeypatch.setitem(default_user_config, "stepfunctions", {"execute_state_machine": False})

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        _, port = server.get_host_and_port()
        endpoint = f"http://localhost:{port}"
        # moto's backends are global to the process, shared with other tests' servers: start from nothing.
        with urlopen(Request(f"{endpoint}/moto-api/reset", data=b"", method="POST"), timeout=10) as resp:
            resp.read()
        yield endpoint
    finally:
        server.stop()
        gaps.KMS_FROM_CLOUDFORMATION.undo()


def cli_env(endpoint: str) -> dict[str, str]:
    """The CLI's environment: fake credentials, the moto endpoint, no profile."""
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ROLE_ARN")}
    env.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled",
            "CDK_DISABLE_VERSION_CHECK": "1",
            "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
        }
    )
    return env


def run_cdk(env: dict[str, str], *args: str, cwd: Path = REPO) -> None:
    result = subprocess.run(
        [str(CDK), *args, "--no-notices"], cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert result.returncode == 0, f"`cdk {' '.join(args)}` exited {result.returncode}:\n{result.stderr[-4000:]}"


def physical_ids(cfn: Any, stack_name: str) -> dict[str, str]:
    pages = cfn.get_paginator("list_stack_resources").paginate(StackName=stack_name)
    return {r["LogicalResourceId"]: r.get("PhysicalResourceId", "") for p in pages for r in p["StackResourceSummaries"]}


@pytest.mark.timeout(TIMEOUT_S)
@pytest.mark.skipif(not CDK.exists(), reason="run `make test`: it installs the CDK CLI into node_modules")
def test_cdk_deploy_creates_the_stack_in_a_moto_server(tmp_path, moto_endpoint):
    config = tmp_path / "deploy.json"
    config.write_text(json.dumps({"project": STACK, "clients": [{"id": c} for c in CLIENTS], "trial": True}))
    out = tmp_path / "cdk.out"
    env = cli_env(moto_endpoint)
    common = ("-o", str(out), "-c", f"fedstep:config={config}")

    # the environment is named, so the bootstrap needs no app: in the repository the CLI would synthesize the
    # whole app first (about 8 s of CPU) only to find the environments
    run_cdk(env, "bootstrap", f"aws://{ACCOUNT}/{REGION}", cwd=tmp_path)
    run_cdk(env, "deploy", STACK, "--method", "direct", "--require-approval", "never", *common)

    def client(service: str) -> Any:
        return boto3.client(service, region_name=REGION, endpoint_url=moto_endpoint, **FAKE_CREDENTIALS)

    cfn = client("cloudformation")
    [stack] = cfn.describe_stacks(StackName=STACK)["Stacks"]
    assert stack["StackStatus"] in ("CREATE_COMPLETE", "UPDATE_COMPLETE"), stack.get("StackStatusReason")
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    expected = {"BucketName", "TableName", "TopicArn", "StateMachineArn", "ClientGroups"}
    assert expected <= set(outputs), f"missing outputs {sorted(expected - set(outputs))}"
    # the clients' queues and roles: in the nested stack of their group, read as the operator CLI does
    clients = StackOutputs.of_stack(cfn, STACK)
    assert sorted(clients.queues) == sorted(clients.roles) == sorted(CLIENTS)

    # Every resource of the synthesized templates (the stack's and its nested stacks') that moto creates
    # has a physical resource. Keys: (stack, logical id).
    root = json.loads((out / f"{STACK}.template.json").read_text())["Resources"]
    root_ids = physical_ids(cfn, STACK)
    resources = {(STACK, lid): r for lid, r in root.items()}
    ids = {(STACK, lid): pid for lid, pid in root_ids.items()}
    for lid in (lid for lid, r in root.items() if r["Type"] == "AWS::CloudFormation::Stack"):
        nested = root_ids[lid]
        body = cfn.get_template(StackName=nested)["TemplateBody"]
        body = json.loads(body) if isinstance(body, str) else body
        resources.update({(nested, n): r for n, r in body["Resources"].items()})
        ids.update({(nested, n): pid for n, pid in physical_ids(cfn, nested).items()})
    assert len(resources) > len(root)  # the client group's
    missing = {lid: r["Type"] for lid, r in resources.items() if r["Type"] in CREATED_BY_MOTO and not ids.get(lid)}
    assert not missing, f"template resources without a physical resource: {missing}"

    def created(type_: str) -> list[str]:
        return [ids[lid] for lid, r in resources.items() if r["Type"] == type_]

    s3 = client("s3")
    assert outputs["BucketName"] in created("AWS::S3::Bucket")
    for bucket in created("AWS::S3::Bucket"):
        s3.head_bucket(Bucket=bucket)

    assert outputs["TableName"] in created("AWS::DynamoDB::Table")
    table = client("dynamodb").describe_table(TableName=outputs["TableName"])["Table"]
    assert table["StreamSpecification"]["StreamEnabled"], table.get("StreamSpecification")
    assert table.get("LatestStreamArn")

    sns = client("sns")
    assert outputs["TopicArn"] in created("AWS::SNS::Topic")
    assert sns.get_topic_attributes(TopicArn=outputs["TopicArn"])["Attributes"]["TopicArn"] == outputs["TopicArn"]

    sqs = client("sqs")
    for client_id, queue_url in clients.queues.items():
        url = sqs.get_queue_url(QueueName=f"{STACK}-{client_id}")["QueueUrl"]
        # The output names moto's canonical host (sqs.us-east-1.amazonaws.com), the lookup the endpoint's.
        assert queue_url.endswith(f"/{ACCOUNT}/{STACK}-{client_id}"), queue_url
        assert url.endswith(f"/{ACCOUNT}/{STACK}-{client_id}"), url
        sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
    for queue_url in created("AWS::SQS::Queue"):
        assert sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]

    lambda_ = client("lambda")
    handlers = {
        ids[lid]: r["Properties"].get("Handler", "")
        for lid, r in resources.items()
        if r["Type"] == "AWS::Lambda::Function"
    }
    aggregation = [name for name, handler in handlers.items() if handler.startswith("lambdas.")]
    assert aggregation, f"no function with a handler in lambdas/: {handlers}"
    for name in handlers:
        configuration = lambda_.get_function(FunctionName=name)["Configuration"]
        if name in aggregation:
            assert configuration["Runtime"] == "python3.12", configuration["Runtime"]

    machine = client("stepfunctions").describe_state_machine(stateMachineArn=outputs["StateMachineArn"])
    assert machine["name"] == f"{STACK}-FederatedTraining"
    assert outputs["StateMachineArn"] in created("AWS::StepFunctions::StateMachine")

    iam = client("iam")
    for role in created("AWS::IAM::Role"):
        iam.get_role(RoleName=role.rsplit("/", 1)[-1])
    kms = client("kms")
    for key in created("AWS::KMS::Key"):
        assert kms.describe_key(KeyId=key)["KeyMetadata"]["Enabled"]
    aliases = {a["AliasName"] for a in kms.list_aliases()["Aliases"]}
    for alias in created("AWS::KMS::Alias"):
        assert alias in aliases, alias
    log_groups = client("logs")
    for group in created("AWS::Logs::LogGroup"):
        found = log_groups.describe_log_groups(logGroupNamePrefix=group)["logGroups"]
        assert group in {g["logGroupName"] for g in found}, group
