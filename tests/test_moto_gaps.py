"""Canaries for the shims in fedstep/local/gaps/, one per gap in moto.

Each `test_moto_still_...` runs moto without the shim and fails, naming the shim to remove, once moto has
fixed the gap. Each `test_the_..._shim_...` shows the shim filling it. moto runs in-process (`mock_aws`),
or as a server on 127.0.0.1 where a shim talks to the server's own API; the templates are tiny, one
resource type each.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import boto3
import pytest

from fedstep.aws.errors import error_code
from fedstep.local import gaps
from fedstep.local.gaps.shim import Shim

REGION = "us-east-1"
ACCOUNT = "123456789012"
STACK = "canary"
DEADLINE_S = 60.0  # generous: the machine may be busy
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/canary"
ASSUME_ROLE = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}],
}
ALLOW_GET = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}]}
KEY_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}, "Action": "kms:*", "Resource": "*"}
    ],
}
TAGS = [{"Key": "project", "Value": "fedstep"}]
PASS_DEFINITION = json.dumps(
    {"StartAt": "Done", "States": {"Done": {"Type": "Pass", "Result": {"done": 1}, "End": True}}}
)
VARIABLE = "FEDSTEP_CANARY_VARIABLE"


def remove(shim: Shim, moto_now: str) -> str:
    return f"moto now {moto_now}: remove the shim {shim.module}"


def client(service: str, endpoint: str | None = None) -> Any:
    return boto3.client(service, region_name=REGION, endpoint_url=endpoint)


def deploy(cfn: Any, resources: dict[str, Any]) -> dict[str, Any]:
    """Create the stack `canary` from a template of `resources`; returns the template."""
    template = {"Resources": resources}
    cfn.create_stack(StackName=STACK, TemplateBody=json.dumps(template))
    return template


def deploys(cfn: Any, resources: dict[str, Any]) -> bool:
    """Whether moto creates the stack (in-process, a handler's exception reaches the caller)."""
    try:
        deploy(cfn, resources)
    except Exception:
        return False
    return cfn.describe_stacks(StackName=STACK)["Stacks"][0]["StackStatus"] == "CREATE_COMPLETE"


def physical_id(cfn: Any, logical_id: str) -> str:
    return gaps.StackShim.physical_ids(cfn, STACK)[logical_id]


def raised(call: Callable[[], Any]) -> Exception | None:
    try:
        call()
    except Exception as exc:
        return exc
    return None


def wait_until(condition: Callable[[], Any], what: str) -> Any:
    """Poll `condition` until it returns something true (returned), for up to DEADLINE_S."""
    deadline = time.monotonic() + DEADLINE_S
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"still waiting for {what} after {DEADLINE_S} s")
        time.sleep(0.05)
    return result


@pytest.fixture
def unpatched(monkeypatch) -> Iterator[None]:
    """No shim applied and Step Functions execution off, before and after the test."""
    from moto.core.config import default_user_config

    gaps.undo_all()
    monkeypatch.setitem(default_user_config, "stepfunctions", {"execute_state_machine": False})
    yield
    gaps.undo_all()


@pytest.fixture
def moto(unpatched) -> Iterator[None]:
    """moto in-process (`mock_aws`: reset, every boto3 call goes to it), without the shims."""
    from moto import mock_aws

    with mock_aws():
        yield


@pytest.fixture
def moto_server(unpatched) -> Iterator[str]:
    """A moto server on 127.0.0.1 (a free port), reset, without the shims; yields its endpoint."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        _, port = server.get_host_and_port()
        endpoint = f"http://127.0.0.1:{port}"
        gaps.reset_backends(endpoint)
        yield endpoint
    finally:
        server.stop()


def test_there_is_one_shim_per_gap_each_with_its_module_and_description():
    assert list(gaps.SHIMS) == [
        "sns_subscriptions",
        "step_functions_execution",
        "lambda_in_process",
        "stream_delivery",
        "kms_from_cloudformation",
        "iam_role_policies",
        "stop_execution",
        "task_failure_cause",
        "sns_fanout",
        "s3_ranged_get",
        "iam_enforcement",
        "step_functions_role",
        "s3_versioning",
        "stream_filters",
    ]
    for shim in gaps.SHIMS.values():
        assert (gaps.REPO / shim.module).is_file()
        assert "moto" in shim.gap and "AWS" in shim.gap


@pytest.mark.parametrize("shim", gaps.PATCHES, ids=lambda shim: shim.name)
def test_undoing_a_patch_puts_back_exactly_what_it_replaced(unpatched, shim):
    targets = [(owner, attribute) for owner, attribute, _ in shim.replacements()]
    moto_own = [owner.__dict__.get(attribute) for owner, attribute in targets]
    shim.apply()
    try:
        assert shim.applied
        assert all(owner.__dict__.get(a) is not own for (owner, a), own in zip(targets, moto_own, strict=True))
    finally:
        shim.undo()
    assert not shim.applied
    assert all(owner.__dict__.get(a) is own for (owner, a), own in zip(targets, moto_own, strict=True))


# -- 1. SNS subscriptions --------------------------------------------------------------------------

SUBSCRIBED_QUEUE = {
    "Topic": {"Type": "AWS::SNS::Topic"},
    "Queue": {"Type": "AWS::SQS::Queue"},
    "DeadLetters": {"Type": "AWS::SQS::Queue"},
    "Subscription": {
        "Type": "AWS::SNS::Subscription",
        "Properties": {
            "TopicArn": {"Ref": "Topic"},
            "Protocol": "sqs",
            "Endpoint": {"Fn::GetAtt": ["Queue", "Arn"]},
            "RawMessageDelivery": True,
            "FilterPolicy": {"client": ["a"]},
            "RedrivePolicy": {"deadLetterTargetArn": {"Fn::GetAtt": ["DeadLetters", "Arn"]}},
        },
    },
}


def test_moto_still_skips_sns_subscriptions_in_cloudformation(moto):
    cfn, sns = client("cloudformation"), client("sns")
    deploy(cfn, SUBSCRIBED_QUEUE)
    subscriptions = sns.list_subscriptions_by_topic(TopicArn=physical_id(cfn, "Topic"))["Subscriptions"]
    assert subscriptions == [], remove(gaps.SNS_SUBSCRIPTIONS, "creates AWS::SNS::Subscription from CloudFormation")


def test_the_sns_shim_subscribes_the_queue_with_raw_delivery_filter_and_dead_letter_queue(moto):
    cfn, sns, sqs = client("cloudformation"), client("sns"), client("sqs")
    template = deploy(cfn, SUBSCRIBED_QUEUE)
    assert gaps.SNS_SUBSCRIPTIONS.apply(cfn, sns, sqs, STACK, template) == 1
    topic, queue = physical_id(cfn, "Topic"), physical_id(cfn, "Queue")
    [subscription] = sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]
    attributes = sns.get_subscription_attributes(SubscriptionArn=subscription["SubscriptionArn"])["Attributes"]
    dead_letters = sqs.get_queue_attributes(QueueUrl=physical_id(cfn, "DeadLetters"), AttributeNames=["QueueArn"])
    assert attributes["RawMessageDelivery"] == "true"
    assert json.loads(attributes["FilterPolicy"]) == {"client": ["a"]}
    assert json.loads(attributes["RedrivePolicy"]) == {"deadLetterTargetArn": dead_letters["Attributes"]["QueueArn"]}
    for name in ("a", "b"):
        sns.publish(
            TopicArn=topic,
            Message=f"for {name}",
            MessageAttributes={"client": {"DataType": "String", "StringValue": name}},
        )
    messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)["Messages"]
    assert [m["Body"] for m in messages] == ["for a"]  # raw: the body is the message itself


NESTED_QUEUE = {
    "Parameters": {"TopicArn": {"Type": "String"}, "DeadLettersArn": {"Type": "String"}},
    "Resources": {
        "Queue": {"Type": "AWS::SQS::Queue"},
        "Subscription": {
            "Type": "AWS::SNS::Subscription",
            "Properties": {
                "TopicArn": {"Ref": "TopicArn"},
                "Protocol": "sqs",
                "Endpoint": {"Fn::GetAtt": ["Queue", "Arn"]},
                "RawMessageDelivery": True,
                "FilterPolicy": {"client": ["a"]},
                "RedrivePolicy": {"deadLetterTargetArn": {"Ref": "DeadLettersArn"}},
            },
        },
    },
    "Outputs": {"QueueUrl": {"Value": {"Ref": "Queue"}}},
}


def test_moto_creates_nested_stacks_and_the_sns_shim_subscribes_their_queues(moto):
    """Not a gap: moto creates AWS::CloudFormation::Stack from the template CDK publishes to the bootstrap
    bucket (TemplateURL as CDK writes it), with the parent's parameters; the client groups rely on it
    (infra/client_group.py). The SNS shim creates the nested templates' subscriptions too."""
    cfn, sns, sqs, s3 = client("cloudformation"), client("sns"), client("sqs"), client("s3")
    bucket = f"cdk-hnb659fds-assets-{ACCOUNT}-{REGION}"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="nested.json", Body=json.dumps(NESTED_QUEUE).encode())
    url = ["https://s3.", {"Ref": "AWS::Region"}, ".", {"Ref": "AWS::URLSuffix"}, "/", bucket, "/nested.json"]
    parameters = {"TopicArn": {"Ref": "Topic"}, "DeadLettersArn": {"Fn::GetAtt": ["DeadLetters", "Arn"]}}
    template = deploy(
        cfn,
        {
            "Topic": {"Type": "AWS::SNS::Topic"},
            "DeadLetters": {"Type": "AWS::SQS::Queue"},
            "Group": {
                "Type": "AWS::CloudFormation::Stack",
                "Properties": {"TemplateURL": {"Fn::Join": ["", url]}, "Parameters": parameters},
            },
        },
    )
    [nested] = cfn.describe_stacks(StackName=physical_id(cfn, "Group"))["Stacks"]
    assert nested["StackStatus"] == "CREATE_COMPLETE"
    [output] = nested["Outputs"]
    assert output["OutputKey"] == "QueueUrl" and "/" in output["OutputValue"]
    assert gaps.SNS_SUBSCRIPTIONS.apply(cfn, sns, sqs, STACK, template) == 1
    [subscription] = sns.list_subscriptions_by_topic(TopicArn=physical_id(cfn, "Topic"))["Subscriptions"]
    attributes = sns.get_subscription_attributes(SubscriptionArn=subscription["SubscriptionArn"])["Attributes"]
    dead_letters = sqs.get_queue_attributes(QueueUrl=physical_id(cfn, "DeadLetters"), AttributeNames=["QueueArn"])
    assert json.loads(attributes["RedrivePolicy"]) == {"deadLetterTargetArn": dead_letters["Attributes"]["QueueArn"]}
    sns.publish(
        TopicArn=physical_id(cfn, "Topic"),
        Message="for a",
        MessageAttributes={"client": {"DataType": "String", "StringValue": "a"}},
    )
    [message] = sqs.receive_message(QueueUrl=output["OutputValue"])["Messages"]
    assert message["Body"] == "for a"


# -- 2. Step Functions execution -------------------------------------------------------------------

STATE_MACHINE = {
    "Machine": {
        "Type": "AWS::StepFunctions::StateMachine",
        "Properties": {"DefinitionString": PASS_DEFINITION, "RoleArn": ROLE_ARN},
    }
}


def finished(sfn: Any, execution_arn: str) -> dict[str, Any] | None:
    description = sfn.describe_execution(executionArn=execution_arn)
    return None if description["status"] == "RUNNING" else description


def test_moto_still_keeps_cloudformations_state_machines_out_of_its_executing_backend(moto, monkeypatch):
    from moto.core.config import default_user_config

    cfn, sfn = client("cloudformation"), client("stepfunctions")
    deploy(cfn, STATE_MACHINE)
    monkeypatch.setitem(default_user_config, "stepfunctions", {"execute_state_machine": True})
    error = raised(lambda: sfn.describe_state_machine(stateMachineArn=physical_id(cfn, "Machine")))
    assert "StateMachineDoesNotExist" in str(error), remove(
        gaps.STEP_FUNCTIONS_EXECUTION, "executes the state machines its CloudFormation creates"
    )


def test_the_step_functions_shim_makes_cloudformations_state_machines_execute_under_the_same_arn(moto_server):
    from moto.core.config import default_user_config

    cfn, sfn = client("cloudformation", moto_server), client("stepfunctions", moto_server)
    template = deploy(cfn, STATE_MACHINE)
    arn = physical_id(cfn, "Machine")
    assert gaps.STEP_FUNCTIONS_EXECUTION.apply(cfn, sfn, moto_server, STACK, template) == [arn]
    execution = sfn.start_execution(stateMachineArn=arn)["executionArn"]
    ended = wait_until(lambda: finished(sfn, execution), "the execution to end")
    assert ended["status"] == "SUCCEEDED" and json.loads(ended["output"]) == {"done": 1}
    gaps.STEP_FUNCTIONS_EXECUTION.undo()
    assert default_user_config["stepfunctions"] == {"execute_state_machine": False}
    assert sfn.describe_state_machine(stateMachineArn=arn)["definition"] == PASS_DEFINITION  # CloudFormation's


# -- 3. Lambda code in process ---------------------------------------------------------------------


def echo(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The canary function's handler: what it received, and where it ran; with `allocate_mb` in the
    event it first holds that much memory (touched, so it is resident)."""
    held = bytearray(int(event.get("allocate_mb", 0)) * 2**20)
    held[::4096] = b"x" * len(held[::4096])
    time.sleep(float(event.get("then_sleep_s", 0)))  # holding it
    return {"event": event, "function": context.function_name, "variable": os.environ.get(VARIABLE), "pid": os.getpid()}


def create_function(environment: dict[str, str] | None = None) -> str:
    """A function named `canary` whose handler is `echo` above; returns its ARN."""
    role = client("iam").create_role(RoleName="canary", AssumeRolePolicyDocument=json.dumps(ASSUME_ROLE))
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as zf:
        zf.writestr("README", "the handler is imported from the checkout")
    return client("lambda").create_function(
        FunctionName="canary",
        Runtime="python3.12",
        Role=role["Role"]["Arn"],
        Handler=f"{__name__}.echo",
        Code={"ZipFile": code.getvalue()},
        Environment={"Variables": environment or {}},
    )["FunctionArn"]


def test_moto_still_cannot_run_lambda_code_without_docker(moto, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")  # no Docker, whatever this machine has
    create_function()
    response = client("lambda").invoke(FunctionName="canary", Payload=b"{}")
    payload = response["Payload"].read().decode()
    assert response.get("FunctionError") and "docker" in payload, remove(
        gaps.LAMBDA_IN_PROCESS, "runs Lambda code without Docker"
    )


def test_the_lambda_shim_runs_the_handler_in_this_process_with_the_functions_environment(moto, monkeypatch):
    monkeypatch.setenv(VARIABLE, "unset")  # the handler's environment is this process's: restored after the test
    gaps.LAMBDA_IN_PROCESS.apply()
    create_function({VARIABLE: "from the function"})
    response = client("lambda").invoke(FunctionName="canary", Payload=json.dumps({"n": 1}))
    assert "FunctionError" not in response
    assert json.loads(response["Payload"].read()) == {
        "event": {"n": 1},
        "function": "canary",
        "variable": "from the function",
        "pid": os.getpid(),
    }


def test_with_memory_enforced_each_invocation_runs_in_its_own_process_and_fails_past_its_memory(moto, monkeypatch):
    monkeypatch.setenv(VARIABLE, "unset")
    gaps.LAMBDA_IN_PROCESS.apply()
    monkeypatch.setattr(gaps.LAMBDA_IN_PROCESS, "enforce_memory", True)
    gaps.LAMBDA_IN_PROCESS.memory_uses.clear()
    here = os.path.dirname(__file__)  # the handler's module, as pytest imported it
    create_function({VARIABLE: "from the function", "PYTHONPATH": here})  # MemorySize 128 MB, moto's default
    response = client("lambda").invoke(FunctionName="canary", Payload=json.dumps({"n": 1}))
    assert "FunctionError" not in response, response["Payload"].read()
    answer = json.loads(response["Payload"].read())
    assert answer["variable"] == "from the function" and answer["pid"] != os.getpid()
    response = client("lambda").invoke(FunctionName="canary", Payload=json.dumps({"allocate_mb": 300}))
    assert response.get("FunctionError")
    error = json.loads(response["Payload"].read())
    assert error["errorType"] == "Runtime.OutOfMemory" and "of the function's 128 MB" in error["errorMessage"]
    small, large = gaps.LAMBDA_IN_PROCESS.memory_uses
    assert small.peak_mb < 128 < large.peak_mb and small.memory_mb == 128 and not small.killed


def test_with_memory_enforced_an_invocation_is_stopped_the_moment_it_passes_its_memory(moto, monkeypatch):
    """Lambda stops an invocation at its MemorySize; it is not judged after it finishes: this one would
    hold 300 MB for 30 s, and is stopped while it holds it."""
    gaps.LAMBDA_IN_PROCESS.apply()
    monkeypatch.setattr(gaps.LAMBDA_IN_PROCESS, "enforce_memory", True)
    gaps.LAMBDA_IN_PROCESS.memory_uses.clear()
    create_function({"PYTHONPATH": os.path.dirname(__file__)})  # MemorySize 128 MB, moto's default
    response = client("lambda").invoke(
        FunctionName="canary", Payload=json.dumps({"allocate_mb": 300, "then_sleep_s": 30})
    )
    error = json.loads(response["Payload"].read())
    assert error["errorType"] == "Runtime.OutOfMemory" and error["errorMessage"].startswith("stopped at")
    [use] = gaps.LAMBDA_IN_PROCESS.memory_uses
    assert use.killed and use.peak_mb > 128


# -- 4. DynamoDB stream delivery -------------------------------------------------------------------


def table_streaming_to_a_function(**mapping: Any) -> Any:
    """A table `canary` whose stream feeds the function `canary` (`mapping`: more of the event source
    mapping's settings, e.g. FilterCriteria); returns a DynamoDB client."""
    ddb = client("dynamodb")
    table = ddb.create_table(
        TableName="canary",
        KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_IMAGE"},
    )
    create_function()
    client("lambda").create_event_source_mapping(
        FunctionName="canary",
        EventSourceArn=table["TableDescription"]["LatestStreamArn"],
        StartingPosition="LATEST",
        **mapping,
    )
    return ddb


def test_moto_still_delivers_dynamodb_stream_records_inside_the_write(moto, monkeypatch):
    from moto.awslambda.models import LambdaFunction

    delivered_on: list[int] = []

    def record_thread(function: Any, event: Any = None) -> tuple[str, bool, str]:
        delivered_on.append(threading.get_ident())
        return "{}", False, ""

    monkeypatch.setattr(LambdaFunction, "_invoke_lambda", record_thread)  # stands for the function's code
    ddb = table_streaming_to_a_function()
    ddb.put_item(TableName="canary", Item={"k": {"S": "a"}})
    assert delivered_on == [threading.get_ident()], remove(
        gaps.STREAM_DELIVERY, "delivers DynamoDB stream records after the write returns"
    )


def test_the_stream_shim_delivers_batches_after_the_write_returns_one_at_a_time_in_order(moto, monkeypatch):
    """A batch runs after the write returns, on the function's own thread; the records written while it
    ran reach the function together in the next batch, in order (as Lambda's stream poller batches)."""
    from moto.awslambda.models import LambdaFunction

    entered, release = threading.Event(), threading.Event()
    delivered: list[tuple[int, list[str]]] = []

    def wait_for_release(function: Any, event: Any = None) -> tuple[str, bool, str]:
        entered.set()
        release.wait(DEADLINE_S)
        delivered.append((threading.get_ident(), [r["dynamodb"]["Keys"]["k"]["S"] for r in event["Records"]]))
        return "{}", False, ""

    monkeypatch.setattr(LambdaFunction, "_invoke_lambda", wait_for_release)  # stands for the function's code
    gaps.STREAM_DELIVERY.apply()
    try:
        ddb = table_streaming_to_a_function()
        ddb.put_item(TableName="canary", Item={"k": {"S": "a"}})
        assert entered.wait(DEADLINE_S)  # the first batch runs, and waits
        for key in ("b", "c", "d"):
            ddb.put_item(TableName="canary", Item={"k": {"S": key}})  # returns while the first batch waits
        assert delivered == []
        release.set()
        gaps.wait_for_stream_batches(DEADLINE_S)
        assert [keys for _, keys in delivered] == [["a"], ["b", "c", "d"]]
        assert threading.get_ident() not in {thread for thread, _ in delivered}
    finally:
        release.set()
        gaps.STREAM_DELIVERY.undo()
    assert LambdaFunction._invoke_lambda is wait_for_release


def test_a_stream_batch_holds_at_most_the_mappings_batch_size(monkeypatch):
    from fedstep.local.gaps import stream_delivery

    monkeypatch.setattr(stream_delivery, "STREAM_BATCH_SIZE", 2)
    entered, release = threading.Event(), threading.Event()
    sizes: list[int] = []

    def invoke(function: Any, event: Any) -> tuple[str, bool, str]:
        entered.set()
        release.wait(DEADLINE_S)
        sizes.append(len(event["Records"]))
        return "{}", False, ""

    worker = stream_delivery._StreamWorker(SimpleNamespace(function_name="f"), invoke)
    record = {"eventSource": "aws:dynamodb"}
    worker.queue.put({"Records": [record]})
    assert entered.wait(DEADLINE_S)
    for _ in range(5):
        worker.queue.put({"Records": [record]})
    worker.queue.put(None)  # stop once the queue is done
    release.set()
    worker.thread.join(DEADLINE_S)
    assert sizes == [1, 2, 2, 1]
    assert worker.queue.unfinished_tasks == 0


# -- 5. KMS keys from CloudFormation ---------------------------------------------------------------


def kms_key(**properties: Any) -> dict[str, Any]:
    return {"Key": {"Type": "AWS::KMS::Key", "Properties": properties}}


def test_moto_still_fails_on_cloudformation_style_tags_of_a_kms_key(moto):
    deployed = deploys(client("cloudformation"), kms_key(KeyPolicy=json.dumps(KEY_POLICY), Tags=TAGS))
    assert not deployed, remove(gaps.KMS_FROM_CLOUDFORMATION, "accepts CloudFormation-style tags on AWS::KMS::Key")


def test_moto_still_stores_a_kms_key_policy_object_unconverted(moto):
    cfn = client("cloudformation")
    deploy(cfn, kms_key(KeyPolicy=KEY_POLICY))
    error = raised(lambda: client("kms").describe_key(KeyId=physical_id(cfn, "Key")))
    assert error is not None, remove(gaps.KMS_FROM_CLOUDFORMATION, "reads back a key policy given as an object")


def test_the_kms_shim_deploys_a_key_with_cloudformation_tags_and_a_policy_object(moto):
    gaps.KMS_FROM_CLOUDFORMATION.apply()
    cfn, kms = client("cloudformation"), client("kms")
    deploy(cfn, kms_key(KeyPolicy=KEY_POLICY, Tags=TAGS))
    key_id = physical_id(cfn, "Key")
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["Enabled"]
    assert kms.list_resource_tags(KeyId=key_id)["Tags"] == [{"TagKey": "project", "TagValue": "fedstep"}]
    assert json.loads(kms.get_key_policy(KeyId=key_id, PolicyName="default")["Policy"]) == KEY_POLICY


# -- 6. IAM role policies from CloudFormation ------------------------------------------------------

ROLE_WITH_INLINE_POLICY = {
    "Role": {
        "Type": "AWS::IAM::Role",
        "Properties": {
            "RoleName": "canary",
            "AssumeRolePolicyDocument": ASSUME_ROLE,
            "Policies": [{"PolicyName": "read", "PolicyDocument": ALLOW_GET}],
        },
    }
}


def inline_policy_as_enforced() -> Any:
    """The role's inline policy as moto's IAM enforcement reads it."""
    from moto.iam.access_control import IAMPolicy
    from moto.iam.models import iam_backends

    return IAMPolicy(iam_backends[ACCOUNT]["aws"].get_role("canary").policies["read"])


def test_moto_still_stores_cloudformations_inline_role_policies_as_objects_its_enforcement_cannot_read(moto):
    deploy(client("cloudformation"), ROLE_WITH_INLINE_POLICY)
    assert isinstance(raised(inline_policy_as_enforced), KeyError), remove(
        gaps.IAM_ROLE_POLICIES, "stores CloudFormation's inline role policies as its IAM enforcement reads them"
    )


def test_the_iam_shim_stores_inline_role_policies_as_json_its_enforcement_reads(moto):
    from moto.iam.access_control import PermissionResult

    gaps.IAM_ROLE_POLICIES.apply()
    deploy(client("cloudformation"), ROLE_WITH_INLINE_POLICY)
    policy = inline_policy_as_enforced()
    assert policy.is_action_permitted("s3:GetObject") == PermissionResult.PERMITTED
    assert policy.is_action_permitted("s3:PutObject") == PermissionResult.NEUTRAL


# -- 7. StopExecution during a task-token wait -----------------------------------------------------


def execution_waiting_for_a_task_token(monkeypatch: pytest.MonkeyPatch, timeout_s: int) -> str:
    """Start an execution whose task sends its token to a queue and waits (`timeout_s` at most); returns its
    ARN once the token has arrived."""
    return execution_and_token(monkeypatch, timeout_s)[0]


def execution_and_token(monkeypatch: pytest.MonkeyPatch, timeout_s: int) -> tuple[str, str]:
    """As `execution_waiting_for_a_task_token`, with the task token."""
    from moto.core.config import default_user_config

    monkeypatch.setitem(default_user_config, "stepfunctions", {"execute_state_machine": True})
    sqs, sfn = client("sqs"), client("stepfunctions")
    queue = sqs.create_queue(QueueName="tokens")["QueueUrl"]
    wait = {
        "Type": "Task",
        "Resource": "arn:aws:states:::sqs:sendMessage.waitForTaskToken",
        "Parameters": {"QueueUrl": queue, "MessageBody": {"token.$": "$$.Task.Token"}},
        "TimeoutSeconds": timeout_s,
        "End": True,
    }
    definition = json.dumps({"StartAt": "Wait", "States": {"Wait": wait}})
    machine = sfn.create_state_machine(name="canary", definition=definition, roleArn=ROLE_ARN)["stateMachineArn"]
    execution = sfn.start_execution(stateMachineArn=machine)["executionArn"]
    [message] = wait_until(lambda: sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=1).get("Messages"), "the token")
    return execution, json.loads(message["Body"])["token"]


def test_moto_still_lets_a_stopped_execution_wait_for_its_task_token_until_the_deadline(moto, monkeypatch):
    sfn = client("stepfunctions")
    execution = execution_waiting_for_a_task_token(monkeypatch, timeout_s=2)
    sfn.stop_execution(executionArn=execution)
    ended = wait_until(lambda: finished(sfn, execution), "the execution to end")
    assert (ended["status"], ended.get("error")) == ("FAILED", "States.Timeout"), remove(
        gaps.STOP_EXECUTION, "aborts an execution waiting for a task token when it is stopped"
    )


def test_the_stop_execution_shim_aborts_an_execution_waiting_for_a_task_token_at_once(moto, monkeypatch):
    gaps.STOP_EXECUTION.apply()
    sfn = client("stepfunctions")
    execution = execution_waiting_for_a_task_token(monkeypatch, timeout_s=int(2 * DEADLINE_S))
    sfn.stop_execution(executionArn=execution)
    ended = wait_until(lambda: finished(sfn, execution), "the execution to end")
    assert ended["status"] == "ABORTED"


# -- 8. SendTaskFailure's cause ---------------------------------------------------------------------


def failed_through_its_token(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    sfn = client("stepfunctions")
    execution, token = execution_and_token(monkeypatch, timeout_s=int(2 * DEADLINE_S))
    sfn.send_task_failure(taskToken=token, error="StrategyFailed", cause="why it failed")
    return wait_until(lambda: finished(sfn, execution), "the execution to end")


def test_moto_still_drops_the_cause_of_a_task_failure(moto, monkeypatch):
    ended = failed_through_its_token(monkeypatch)
    assert ended["error"] == "StrategyFailed"
    assert "cause" not in ended, remove(gaps.TASK_FAILURE_CAUSE, "keeps the cause of SendTaskFailure")


def test_the_task_failure_shim_passes_the_cause_on(moto, monkeypatch):
    gaps.TASK_FAILURE_CAUSE.apply()
    ended = failed_through_its_token(monkeypatch)
    assert (ended["error"], ended["cause"]) == ("StrategyFailed", "why it failed")


def test_an_expected_quorum_not_met_is_one_console_line_not_a_traceback(caplog):
    """Observed: a run that missed its quorum printed a 25-line Lambda traceback on the --keep-running console."""
    from fedstep.core.rounds import QuorumNotMet
    from fedstep.local.gaps.lambda_in_process import log_failure

    with caplog.at_level(logging.WARNING, logger="fedstep.local.gaps.lambda_in_process"):
        log_failure("fedstep-Aggregation", QuorumNotMet("1 of 2 updates by the deadline (quorum 2) in run r"))
    [record] = caplog.records
    assert record.levelno == logging.WARNING and "Traceback" not in record.getMessage()
    assert record.getMessage() == (
        "Lambda fedstep-Aggregation: QuorumNotMet: 1 of 2 updates by the deadline (quorum 2) in run r"
    )


def test_an_unexpected_lambda_error_keeps_its_traceback(caplog):
    from fedstep.local.gaps.lambda_in_process import log_failure

    try:
        raise KeyError("bug")
    except KeyError as exc:
        with caplog.at_level(logging.WARNING, logger="fedstep.local.gaps.lambda_in_process"):
            log_failure("fedstep-Aggregation", exc)
    [record] = caplog.records
    assert record.levelno == logging.ERROR and "Traceback" in record.getMessage()


# -- 9. SNS fan-out past 100 subscriptions -----------------------------------------------------------


def delivered_to_101_queues() -> list[bool]:
    """A topic with 101 subscribed queues and one message published: which queues received it."""
    sns, sqs = client("sns"), client("sqs")
    topic = sns.create_topic(Name="rounds")["TopicArn"]
    urls = [sqs.create_queue(QueueName=f"q{i:03d}")["QueueUrl"] for i in range(101)]
    for url in urls:
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn, Attributes={"RawMessageDelivery": "true"})
    sns.publish(TopicArn=topic, Message="round 1")
    return [bool(sqs.receive_message(QueueUrl=url).get("Messages")) for url in urls]


def test_moto_still_delivers_a_message_to_a_topics_first_100_subscriptions_only(moto):
    received = delivered_to_101_queues()
    assert all(received[:100])
    assert not received[100], remove(gaps.SNS_FANOUT, "delivers to every subscription of a topic")


def test_the_sns_fanout_shim_delivers_to_every_subscription(moto):
    gaps.SNS_FANOUT.apply()
    assert all(delivered_to_101_queues())


# -- 10. ranged reads of large objects -----------------------------------------------------------------


def ranged_reads(monkeypatch) -> tuple[list[bytes], int]:
    """Ranged GETs of a versioned object (first version by id, open-ended, past the end): what came
    back, and how many times moto read a whole object to answer them."""
    from moto.s3.models import FakeKey

    s3 = client("s3")
    s3.create_bucket(Bucket="models")
    s3.put_bucket_versioning(Bucket="models", VersioningConfiguration={"Status": "Enabled"})
    first = s3.put_object(Bucket="models", Key="m", Body=bytes(range(256)) * 4)["VersionId"]
    s3.put_object(Bucket="models", Key="m", Body=b"replaced")
    whole_reads = []
    value = FakeKey.value
    monkeypatch.setattr(FakeKey, "value", property(lambda key: whole_reads.append(1) or value.fget(key), value.fset))
    got = [
        s3.get_object(Bucket="models", Key="m", Range="bytes=3-5", VersionId=first)["Body"].read(),
        s3.get_object(Bucket="models", Key="m", Range="bytes=1020-", VersionId=first)["Body"].read(),
        s3.get_object(Bucket="models", Key="m", Range="bytes=2-4")["Body"].read(),
    ]
    with pytest.raises(Exception, match="InvalidRange"):
        s3.get_object(Bucket="models", Key="m", Range="bytes=100-200")
    return got, len(whole_reads)


def test_moto_still_reads_a_whole_object_for_a_ranged_get(moto, monkeypatch):
    got, whole_reads = ranged_reads(monkeypatch)
    assert got == [bytes([3, 4, 5]), bytes([252, 253, 254, 255]), b"pla"]
    assert whole_reads >= 3, remove(gaps.S3_RANGED_GET, "reads only the range of a ranged GET")


def test_the_s3_ranged_get_shim_reads_only_the_range(moto, monkeypatch):
    gaps.S3_RANGED_GET.apply()
    got, whole_reads = ranged_reads(monkeypatch)
    assert got == [bytes([3, 4, 5]), bytes([252, 253, 254, 255]), b"pla"]
    assert whole_reads == 0  # not even for the range past the end: InvalidRange without reading it


MALFORMED_RANGES = ("bytes=0--1", "bytes=5-2", "bytes=abc", "bytes=0-1,4-5")


def test_moto_still_answers_a_malformed_range_with_the_whole_object(moto):
    s3 = client("s3")
    s3.create_bucket(Bucket="models")
    s3.put_object(Bucket="models", Key="m", Body=b"0123456789")
    answers = [s3.get_object(Bucket="models", Key="m", Range=r)["Body"].read() for r in MALFORMED_RANGES[:2]]
    assert answers == [b"0123456789"] * 2, remove(gaps.S3_RANGED_GET, "refuses a malformed range")


def test_the_s3_ranged_get_shim_refuses_a_malformed_or_empty_range(moto):
    gaps.S3_RANGED_GET.apply()
    s3 = client("s3")
    s3.create_bucket(Bucket="models")
    s3.put_object(Bucket="models", Key="m", Body=b"0123456789")
    for requested in MALFORMED_RANGES:
        with pytest.raises(Exception, match="InvalidRange"):
            s3.get_object(Bucket="models", Key="m", Range=requested)
    assert s3.get_object(Bucket="models", Key="m", Range="bytes=-3")["Body"].read() == b"789"  # a suffix: moto's


# -- 11. IAM enforcement ---------------------------------------------------------------------------

TABLE_ARN = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/canary"


def role_session(endpoint: str, statements: list[dict[str, Any]]) -> boto3.Session:
    """A role allowed `statements` (and trusting the account), assumed: its session."""
    iam = client("iam", endpoint)
    trust = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"AWS": ACCOUNT}, "Action": "sts:AssumeRole"}],
    }
    role = iam.create_role(RoleName="caller", AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    iam.put_role_policy(
        RoleName="caller", PolicyName="p", PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": statements})
    )
    c = client("sts", endpoint).assume_role(RoleArn=role, RoleSessionName="caller")["Credentials"]
    return boto3.Session(c["AccessKeyId"], c["SecretAccessKey"], c["SessionToken"], region_name=REGION)


def own_partition_writes(endpoint: str) -> dict[str, str]:
    """A role allowed PutItem on the table in its own partition (`dynamodb:LeadingKeys`) writes its own
    partition and another's, with IAM enforced: what each write got."""
    ddb = client("dynamodb", endpoint)
    ddb.create_table(
        TableName="canary",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    statement = {
        "Effect": "Allow",
        "Action": "dynamodb:PutItem",
        "Resource": TABLE_ARN,
        "Condition": {"ForAllValues:StringEquals": {"dynamodb:LeadingKeys": ["own"]}},
    }
    caller = role_session(endpoint, [statement]).client("dynamodb", endpoint_url=endpoint)
    gaps.moto_server.moto_api_raw(endpoint, "reset-auth", b"0")
    outcomes = {}
    try:
        for partition in ("own", "another"):
            error = raised(lambda p=partition: caller.put_item(TableName="canary", Item={"pk": {"S": p}}))
            outcomes[partition] = "written" if error is None else f"{error_code(error)}: {str(error)[:200]}"
    finally:
        gaps.moto_server.moto_api_raw(endpoint, "reset-auth", b"inf")
    return outcomes


def test_moto_still_refuses_a_dynamodb_write_its_role_is_granted_on_the_table(moto_server):
    outcomes = own_partition_writes(moto_server)
    assert "AccessDenied" in outcomes["own"] or outcomes["own"].startswith("403"), remove(
        gaps.IAM_ENFORCEMENT, "authorizes DynamoDB requests on their table with their condition keys"
    )


def test_the_iam_shim_evaluates_the_table_and_the_partition_a_request_writes(moto_server):
    gaps.IAM_ENFORCEMENT.apply()
    outcomes = own_partition_writes(moto_server)
    assert outcomes["own"] == "written" and "AccessDeniedException" in outcomes["another"]
    [denial] = gaps.IAM_ENFORCEMENT.denials
    assert (denial.action, denial.resource) == ("dynamodb:PutItem", TABLE_ARN)


def test_the_iam_shim_asks_each_item_of_a_transaction_as_its_own_action(moto_server):
    """TransactWriteItems has no IAM action of its own: each item is asked as PutItem, UpdateItem,
    DeleteItem or ConditionCheckItem on its partition (the aggregation function commits a round in
    one transaction with the check of the run's stop marker)."""
    gaps.IAM_ENFORCEMENT.apply()
    own_partition_writes(moto_server)  # the table, and the role "caller" allowed PutItem in "own" only
    role = client("iam", moto_server).get_role(RoleName="caller")["Role"]["Arn"]
    c = client("sts", moto_server).assume_role(RoleArn=role, RoleSessionName="caller")["Credentials"]
    session = boto3.Session(c["AccessKeyId"], c["SecretAccessKey"], c["SessionToken"], region_name=REGION)
    caller = session.client("dynamodb", endpoint_url=moto_server)

    def put(pk: str) -> dict[str, Any]:
        return {"Put": {"TableName": "canary", "Item": {"pk": {"S": pk}, "n": {"N": "1"}}}}

    check = {
        "ConditionCheck": {
            "TableName": "canary",
            "Key": {"pk": {"S": "own"}},
            "ConditionExpression": "attribute_exists(pk)",
        }
    }
    gaps.moto_server.moto_api_raw(moto_server, "reset-auth", b"0")
    try:
        outcomes = {
            what: raised(lambda items=items: caller.transact_write_items(TransactItems=items))
            for what, items in {"own": [put("own")], "another": [put("own"), put("another")], "check": [check]}.items()
        }
    finally:
        gaps.moto_server.moto_api_raw(moto_server, "reset-auth", b"inf")
    assert outcomes["own"] is None
    assert "AccessDeniedException" in str(outcomes["another"]) and "AccessDeniedException" in str(outcomes["check"])
    refused = [(d.action, d.resource) for d in gaps.IAM_ENFORCEMENT.denials[-2:]]
    assert refused == [("dynamodb:PutItem", TABLE_ARN), ("dynamodb:ConditionCheckItem", TABLE_ARN)]


# -- 12. Step Functions' role ----------------------------------------------------------------------


def interpreter_credentials(role_arn: str) -> str:
    """The access key moto's Step Functions interpreter signs a state's service call with, under `role_arn`."""
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.credentials import StateCredentials
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import state_task_service_sns

    sns = state_task_service_sns.boto_client_for(REGION, "sns", StateCredentials(role_arn=role_arn))
    return sns._request_signer._credentials.get_frozen_credentials().access_key


def test_moto_still_calls_a_states_services_with_fixed_credentials(moto):
    assert interpreter_credentials(ROLE_ARN) == "ak", remove(
        gaps.STEP_FUNCTIONS_ROLE, "calls a state's services under the state machine's role"
    )


def test_the_step_functions_role_shim_calls_them_under_the_role_the_service_assumed(moto):
    trust = {
        "Statement": [{"Effect": "Allow", "Principal": {"Service": "states.amazonaws.com"}, "Action": "sts:AssumeRole"}]
    }
    role = client("iam").create_role(RoleName="machine", AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    gaps.STEP_FUNCTIONS_ROLE.apply()
    key = interpreter_credentials(role)
    from moto.sts.models import sts_backends

    [session] = [r for r in sts_backends[ACCOUNT]["aws"].assumed_roles if r.access_key_id == key]
    assert session.role_arn == role
    lambda_role = client("iam").create_role(RoleName="fn", AssumeRolePolicyDocument=json.dumps(ASSUME_ROLE))
    with pytest.raises(Exception, match=r"does not trust states\.amazonaws\.com"):
        interpreter_credentials(lambda_role["Role"]["Arn"])


# -- 13. S3 versioning from CloudFormation ---------------------------------------------------------

VERSIONED_BUCKET = {
    "Bucket": {"Type": "AWS::S3::Bucket", "Properties": {"VersioningConfiguration": {"Status": "Enabled"}}}
}


def test_moto_still_creates_a_versioned_buckets_without_versioning(moto):
    cfn = client("cloudformation")
    deploy(cfn, VERSIONED_BUCKET)
    status = client("s3").get_bucket_versioning(Bucket=physical_id(cfn, "Bucket")).get("Status")
    assert status is None, remove(gaps.S3_VERSIONING, "versions a bucket as its template says")


def test_the_s3_versioning_shim_versions_the_bucket_so_every_write_has_its_version_id(moto):
    gaps.S3_VERSIONING.apply()
    cfn, s3 = client("cloudformation"), client("s3")
    deploy(cfn, VERSIONED_BUCKET)
    bucket = physical_id(cfn, "Bucket")
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    first = s3.put_object(Bucket=bucket, Key="k", Body=b"1")["VersionId"]
    s3.put_object(Bucket=bucket, Key="k", Body=b"2")
    assert first != "null" and s3.get_object(Bucket=bucket, Key="k", VersionId=first)["Body"].read() == b"1"


# -- 14. Stream filters ----------------------------------------------------------------------------

ONLY_UPDATES = {"Filters": [{"Pattern": json.dumps({"dynamodb": {"NewImage": {"kind": {"S": ["update"]}}}})}]}


def filtered_deliveries(monkeypatch) -> list[list[str]]:
    """Items of kinds `update` and `heartbeat` written to a table whose stream feeds a function through a
    mapping that filters on kind `update`: the keys of each batch the function got."""
    from moto.awslambda.models import LambdaFunction

    delivered: list[list[str]] = []

    def record(function: Any, event: Any = None) -> tuple[str, bool, str]:
        delivered.append([r["dynamodb"]["Keys"]["k"]["S"] for r in event["Records"]])
        return "{}", False, ""

    monkeypatch.setattr(LambdaFunction, "_invoke_lambda", record)  # stands for the function's code
    ddb = table_streaming_to_a_function(FilterCriteria=ONLY_UPDATES)
    for key, kind in (("a", "heartbeat"), ("b", "update"), ("c", "heartbeat")):
        ddb.put_item(TableName="canary", Item={"k": {"S": key}, "kind": {"S": kind}})
    return delivered


def test_moto_still_ignores_an_event_source_mappings_filters(moto, monkeypatch):
    delivered = filtered_deliveries(monkeypatch)
    assert ["a"] in delivered, remove(gaps.STREAM_FILTERS, "applies an event source mapping's FilterCriteria")


def test_the_stream_filters_shim_delivers_only_the_records_a_filter_passes(moto, monkeypatch):
    gaps.STREAM_FILTERS.apply()
    assert filtered_deliveries(monkeypatch) == [["b"]]


# -- resource types the local cloud cannot create --------------------------------------------------


def assembly_of(tmp_path, resources: dict[str, Any]):
    """A cloud assembly holding the stack `canary`'s template of `resources`."""
    (tmp_path / f"{STACK}.template.json").write_text(json.dumps({"Resources": resources}))
    return tmp_path


def test_a_resource_type_moto_skips_fails_the_deployment_unless_the_allow_list_names_it(moto, tmp_path):
    from fedstep.local import deploy

    allowed = {"Queue": {"Type": "AWS::SQS::Queue"}, "Alarm": {"Type": "AWS::CloudWatch::Alarm", "Properties": {}}}
    cfn = client("cloudformation")
    deploy_template = {**allowed, "Rule": {"Type": "AWS::WAFv2::RuleGroup", "Properties": {}}}
    cfn.create_stack(StackName=STACK, TemplateBody=json.dumps({"Resources": deploy_template}))
    created = {r["ResourceType"] for r in cfn.list_stack_resources(StackName=STACK)["StackResourceSummaries"]}
    assert "AWS::WAFv2::RuleGroup" not in created  # skipped without a word
    with pytest.raises(RuntimeError, match=r"did not create the stack's AWS::WAFv2::RuleGroup.*UNSUPPORTED_RESOURCES"):
        deploy.check_created(assembly_of(tmp_path, deploy_template), STACK, cfn)
    deploy.check_created(assembly_of(tmp_path, allowed), STACK, cfn)  # the alarm is allow-listed, with its reason
    assert all(len(reason) > 40 for reason in deploy.UNSUPPORTED_RESOURCES.values())


def test_the_lambda_shim_refuses_a_request_or_a_response_past_lambdas_6_mb_payload_limit(moto, monkeypatch):
    gaps.LAMBDA_IN_PROCESS.apply()
    create_function()
    lam = client("lambda")
    big = lam.invoke(FunctionName="canary", Payload=json.dumps({"pad": "x" * (6 * 2**20)}))
    error = json.loads(big["Payload"].read())
    assert big.get("FunctionError") and error["errorType"] == "RequestEntityTooLargeException"
    monkeypatch.setattr(gaps.lambda_in_process, "PAYLOAD_LIMIT_BYTES", 1000)  # its echo is larger
    echoed = lam.invoke(FunctionName="canary", Payload=json.dumps({"pad": "x" * 960}))  # 972 bytes in
    assert json.loads(echoed["Payload"].read())["errorType"] == "Function.ResponseSizeTooLarge"


def test_moto_s_module_listing_is_kept_and_threads_switch_every_millisecond():
    from moto import backends

    from fedstep.local import moto_speed

    before = list(backends.list_of_moto_modules())
    moto_speed.apply()
    moto_speed.apply()  # idempotent
    assert list(backends.list_of_moto_modules()) == before
    assert "dynamodb" in backends.list_of_moto_modules()
    assert backends.list_of_moto_modules() is backends.list_of_moto_modules()  # listed once
    assert sys.getswitchinterval() == moto_speed.SWITCH_INTERVAL_S


def _item_operation_answers(ddb: Any) -> list[Any]:
    """Every item operation fedstep's code uses, on items holding every attribute type, as boto3 parses them."""
    ddb.create_table(
        TableName="t",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    every_type = {
        "s": {"S": "text é"},
        "n": {"N": "1.5e-7"},
        "b": {"B": b"\x00\xffbytes"},
        "ss": {"SS": ["a", "b"]},
        "ns": {"NS": ["1", "2"]},
        "bs": {"BS": [b"\x01", b"\x02"]},
        "l": {"L": [{"S": "x"}, {"N": "3"}, {"NULL": True}]},
        "m": {"M": {"inner": {"BOOL": False}, "deep": {"M": {"b": {"B": b"\x03"}}}}},
        "empty": {"M": {}},
    }
    answers: list[Any] = []
    for sk in ("a", "b", "c"):
        answers.append(ddb.put_item(TableName="t", Item={"pk": {"S": "p"}, "sk": {"S": sk}, **every_type}))
    key = {"pk": {"S": "p"}, "sk": {"S": "a"}}
    answers.append(ddb.put_item(TableName="t", Item={**key, "s": {"S": "new"}}, ReturnValues="ALL_OLD"))
    answers.append(ddb.get_item(TableName="t", Key={"pk": {"S": "p"}, "sk": {"S": "b"}}, ConsistentRead=True))
    answers.append(ddb.get_item(TableName="t", Key={"pk": {"S": "none"}, "sk": {"S": "b"}}))
    answers.append(
        ddb.update_item(
            TableName="t",
            Key=key,
            UpdateExpression="SET #n = if_not_exists(#n, :zero) + :one",
            ExpressionAttributeNames={"#n": "count"},
            ExpressionAttributeValues={":zero": {"N": "0"}, ":one": {"N": "1"}},
            ReturnValues="ALL_NEW",
        )
    )
    answers.append(
        ddb.query(TableName="t", KeyConditionExpression="pk = :p", ExpressionAttributeValues={":p": {"S": "p"}})
    )
    answers.append(
        ddb.query(
            TableName="t", KeyConditionExpression="pk = :p", ExpressionAttributeValues={":p": {"S": "p"}}, Limit=1
        )
    )
    answers.append(ddb.scan(TableName="t", ProjectionExpression="pk, sk, m.deep"))
    keys = [{"pk": {"S": "p"}, "sk": {"S": sk}} for sk in ("b", "c", "z")]
    answers.append(ddb.batch_get_item(RequestItems={"t": {"Keys": keys}}))
    answers.append(ddb.transact_get_items(TransactItems=[{"Get": {"TableName": "t", "Key": k}} for k in keys]))
    answers.append(
        ddb.transact_write_items(
            TransactItems=[{"Put": {"TableName": "t", "Item": {"pk": {"S": "q"}, "sk": {"S": "1"}}}}]
        )
    )
    answers.append(ddb.batch_write_item(RequestItems={"t": [{"DeleteRequest": {"Key": keys[0]}}]}))
    answers.append(ddb.delete_item(TableName="t", Key=keys[1], ReturnValues="ALL_OLD"))
    for answer in answers:
        answer.pop("ResponseMetadata", None)
    return answers


def test_dynamodb_item_answers_are_the_same_without_moto_s_serializer(moto_server, monkeypatch):
    from moto.dynamodb.responses import DynamoResult

    from fedstep.local import moto_speed

    if "execute_result" in vars(DynamoResult):  # an earlier test's local cloud applied it
        monkeypatch.delattr(DynamoResult, "execute_result")
    serialized = _item_operation_answers(client("dynamodb", moto_server))
    gaps.reset_backends(moto_server)
    moto_speed.apply()
    assert "execute_result" in vars(DynamoResult)
    assert _item_operation_answers(client("dynamodb", moto_server)) == serialized
    assert moto_speed.plain_json_result({"Item": {"b": {"B": b"\x00"}}, "ConsumedCapacity": None}) == (
        '{"Item": {"b": {"B": "AA=="}}}'
    )


def _s3_sqs_dynamodb_answers(endpoint: str, session: Any = None) -> list[Any]:
    """S3 (odd keys, metadata with an underscore, a range, HEAD, a listing), SQS and DynamoDB answers,
    without what differs between two runs (dates, ids, request ids)."""
    session = session or boto3.Session(region_name="us-east-1")
    s3, sqs, ddb = (session.client(s, endpoint_url=endpoint) for s in ("s3", "sqs", "dynamodb"))
    s3.create_bucket(Bucket="bucket-b")
    keys = ["runs/r 1/round#1+x=y.safetensors", "unicodé/ключ", "plain"]
    for key in keys:
        s3.put_object(Bucket="bucket-b", Key=key, Body=key.encode() * 100, Metadata={"client_id": "c-1", "n": "3"})
    answers: list[Any] = []
    for key in keys:
        got = s3.get_object(Bucket="bucket-b", Key=key)
        answers.append((got["Body"].read(), got["Metadata"], got["ContentLength"]))
        ranged = s3.get_object(Bucket="bucket-b", Key=key, Range="bytes=3-9")
        answers.append((ranged["Body"].read(), ranged["ContentRange"]))
        answers.append(s3.head_object(Bucket="bucket-b", Key=key)["ContentLength"])
    answers.append([o["Key"] for o in s3.list_objects_v2(Bucket="bucket-b", Prefix="runs/")["Contents"]])
    answers.append(error_code(raised(lambda: s3.get_object(Bucket="bucket-b", Key="missing"))))
    s3.delete_object(Bucket="bucket-b", Key="plain")
    answers.append(sorted(o["Key"] for o in s3.list_objects_v2(Bucket="bucket-b")["Contents"]))
    url = sqs.create_queue(QueueName="q")["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="hello é")
    answers.append([m["Body"] for m in sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1)["Messages"]])
    answers.append(_item_operation_answers(ddb))
    return answers


@pytest.fixture
def second_server(moto_server) -> Iterator[tuple[Any, str]]:
    """Another moto server in this process (its WSGI application for an in-process transport), and
    its endpoint; moto's state is the process's, reset by `moto_server`."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        _, port = server.get_host_and_port()
        yield server._server.app, f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@contextlib.contextmanager
def in_process(app: Any, endpoint: str) -> Iterator[Any]:
    from fedstep.local.in_process import InProcessTransport

    transport = InProcessTransport(app, endpoint)
    transport.install()
    try:
        yield transport
    finally:
        transport.uninstall()


def test_requests_in_process_get_the_answers_the_server_gives_over_http(moto_server, second_server):
    over_http = _s3_sqs_dynamodb_answers(moto_server)
    gaps.reset_backends(moto_server)
    app, endpoint = second_server
    with in_process(app, endpoint) as transport:
        assert _s3_sqs_dynamodb_answers(endpoint) == over_http
        answered = transport.requests
        assert answered > 30
        transport.pid = -1  # as in a forked agent: the request goes over the socket
        assert client("sts", endpoint).get_caller_identity()["Account"]
        assert transport.requests == answered


def test_requests_in_process_are_authorized_as_over_http(second_server):
    from fedstep.local.gaps.moto_server import moto_api_raw

    app, endpoint = second_server
    with in_process(app, endpoint) as transport:
        iam = client("iam", endpoint)
        iam.create_user(UserName="nobody")
        key = iam.create_access_key(UserName="nobody")["AccessKey"]
        client("s3", endpoint).create_bucket(Bucket="bucket-b")
        nobody = boto3.Session(key["AccessKeyId"], key["SecretAccessKey"], region_name="us-east-1")
        forged = boto3.Session(key["AccessKeyId"], "not-its-secret", region_name="us-east-1")
        moto_api_raw(endpoint, "reset-auth", b"0")
        try:
            before = transport.requests
            for session, refusal in ((nobody, "AccessDenied"), (forged, "SignatureDoesNotMatch")):
                s3 = session.client("s3", endpoint_url=endpoint)
                assert error_code(raised(lambda s3=s3: s3.list_objects_v2(Bucket="bucket-b"))) == refusal
            assert transport.requests == before + 2
        finally:
            moto_api_raw(endpoint, "reset-auth", b"inf")


def test_a_request_the_application_fails_in_process_is_a_500_the_sdk_retries(second_server):
    app, endpoint = second_server
    calls: list[int] = []

    def flaky(environ, start_response):  # moto racing itself once, as a Query beside an UpdateItem can
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("dictionary changed size during iteration")
        return app(environ, start_response)

    with in_process(flaky, endpoint):
        assert client("dynamodb", endpoint).list_tables()["TableNames"] == []
    assert len(calls) == 2  # the 500, then the retry
