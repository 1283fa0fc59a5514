"""Each AWS failure a user can cause is named with its cause and what to check."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError, ReadTimeoutError

from client_agent.checks import check_region, queue_region
from client_agent.config import AgentConfig
from fedstep.aws.errors import explain, iam_action, is_transient
from fedstep.core.errors import FedstepError


def client_error(code: str, operation: str, message: str = "", status: int = 400) -> ClientError:
    response = {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, operation)


def test_access_denied_names_the_iam_action_and_the_resource():
    exc = client_error("AccessDenied", "ReceiveMessage", "User: arn:x is not authorized to perform: sqs:receivemessage")
    text = explain(exc, what="queue https://sqs.us-east-1.amazonaws.com/1/q")
    assert text.startswith("access denied: sqs:receivemessage on queue https://sqs.us-east-1.amazonaws.com/1/q")
    assert "role_arn" in text


def test_iam_action_falls_back_to_the_operation_and_maps_head_object():
    assert iam_action(client_error("403", "HeadObject")) == "s3:GetObject"
    assert iam_action(client_error("AccessDeniedException", "PutItem")).endswith(":PutItem")


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (NoCredentialsError(), "no AWS credentials found"),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), "cannot reach http://127.0.0.1:1"),
        (client_error("AWS.SimpleQueueService.NonExistentQueue", "GetQueueAttributes"), "queue not found in region"),
        (client_error("NoSuchBucket", "PutObject"), "bucket not found"),
        (client_error("ResourceNotFoundException", "PutItem"), "does not exist; check the name and region"),
        (client_error("InvalidClientTokenId", "GetCallerIdentity"), "AWS rejected the credentials"),
        (client_error("ExpiredToken", "ReceiveMessage"), "credentials have expired"),
    ],
)
def test_each_misconfiguration_has_its_own_message(exc, expected):
    assert expected in explain(exc, region="eu-west-1")


def test_network_throttling_and_server_errors_are_transient_but_access_denied_is_not():
    assert is_transient(EndpointConnectionError(endpoint_url="https://sqs"))
    assert is_transient(ReadTimeoutError(endpoint_url="https://sqs"))
    assert is_transient(client_error("ThrottlingException", "ReceiveMessage"))
    assert is_transient(client_error("Whatever", "ReceiveMessage", status=503))
    assert not is_transient(client_error("AccessDenied", "ReceiveMessage", status=403))


def test_the_region_is_read_from_an_sqs_queue_url():
    assert queue_region("https://sqs.eu-central-1.amazonaws.com/123456789012/q") == "eu-central-1"
    assert queue_region("https://eu-west-1.queue.amazonaws.com/123456789012/q") == "eu-west-1"
    assert queue_region("http://127.0.0.1:5000/123456789012/q") is None


def test_a_region_other_than_the_queues_is_refused():
    config = AgentConfig(queue_url="https://sqs.us-east-1.amazonaws.com/1/q", region="eu-west-1")
    with pytest.raises(FedstepError, match="wrong region: the agent uses eu-west-1 but the queue is in us-east-1"):
        check_region(config, None)
    assert check_region(AgentConfig(queue_url="https://sqs.us-east-1.amazonaws.com/1/q"), "us-east-1") == "us-east-1"
    with pytest.raises(FedstepError, match="no AWS region"):
        check_region(AgentConfig(queue_url="http://localhost/1/q"), None)


def test_an_xml_or_html_error_body_is_reduced_to_its_message():
    xml = "<?xml version='1.0'?><ErrorResponse><Error><Message>not authorized</Message></Error></ErrorResponse>"
    assert explain(client_error("AccessDenied", "GetQueueAttributes", xml)).count("not authorized") == 1
    html = "<!doctype html><html><body><h1>Proxy error</h1><p>upstream unavailable</p></body></html>"
    assert "Proxy error upstream unavailable" in explain(client_error("502", "ReceiveMessage", html))


def test_the_operator_without_a_region_is_told_the_flags_not_an_agent_config_file(tmp_path):
    """`fedstep runs` with no region anywhere: the operator has no agent config file to set it in."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE")}
    env.update(AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    env.update(AWS_ACCESS_KEY_ID="local", AWS_SECRET_ACCESS_KEY="local")
    result = subprocess.run(
        [sys.executable, "-m", "fedstep", "runs"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert (
        result.stderr
        == "fedstep: error: no AWS region: pass --region, or set AWS_REGION (or a region in your AWS profile)\n"
    )


def test_an_operator_denied_is_pointed_at_the_operator_role_not_an_agents_role_arn():
    from fedstep.aws.errors import OPERATOR

    denied = client_error("AccessDeniedException", "StartExecution", "not authorized")
    assert "operator role (stack output OperatorRoleArn" in explain(denied, who=OPERATOR)
    assert "role_arn" in explain(denied)  # an agent's
