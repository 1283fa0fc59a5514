"""AWS errors as messages that say what is wrong and what to do (both CLIs print these, never a traceback).

try:
    sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
except AWS_ERRORS as exc:
    raise FedstepError(explain(exc, what=f"queue {url}", region=region)) from None
"""

from __future__ import annotations

import re

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ProxyConnectionError,
    ReadTimeoutError,
)

AWS_ERRORS = (ClientError, BotoCoreError)

# Operations whose IAM action is not "<service>:<operation>".
_IAM_ACTION = {"HeadObject": "s3:GetObject", "HeadBucket": "s3:ListBucket"}

_DENIED = {"AccessDenied", "AccessDeniedException", "AuthorizationError", "Forbidden", "403"}
_BAD_CREDENTIALS = {
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "SignatureDoesNotMatch",
    "InvalidAccessKeyId",
    "InvalidSignatureException",
    "IncompleteSignature",
}
_EXPIRED = {"ExpiredToken", "ExpiredTokenException", "RequestExpired", "TokenRefreshRequired"}
_NO_QUEUE = {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}
_THROTTLED = {
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "ProvisionedThroughputExceededException",
    "SlowDown",
    "RequestLimitExceeded",
    "ServiceUnavailable",
    "InternalError",
    "InternalFailure",
}
_UNREACHABLE = (EndpointConnectionError, ConnectTimeoutError, ConnectionClosedError, ProxyConnectionError)


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


MISSING_OBJECT = {"NoSuchKey", "404", "NotFound"}


def missing_object(exc: BaseException) -> bool:
    """Whether an S3 error says the object is not there (what a principal allowed `s3:ListBucket`
    is told; one that is not is told AccessDenied, which is not this)."""
    return isinstance(exc, ClientError) and error_code(exc) in MISSING_OBJECT


def message_of(exc: ClientError) -> str:
    """The error's message as one line of text, also when a proxy or emulator answered with XML or HTML."""
    message = str(exc.response.get("Error", {}).get("Message", "") or error_code(exc))
    inner = re.search(r"<Message>(.*?)</Message>", message, re.S)
    if inner:
        message = inner.group(1)
    elif message.lstrip().startswith("<"):
        message = re.sub(r"<[^>]*>", " ", message)
    message = " ".join(message.split())
    return message if len(message) <= 300 else message[:297] + "..."


def iam_action(exc: ClientError) -> str:
    """The IAM action behind a failed call, e.g. `sqs:ReceiveMessage` (from the error's operation)."""
    operation = exc.operation_name
    if operation in _IAM_ACTION:
        return _IAM_ACTION[operation]
    # AWS often names the action itself: "... is not authorized to perform: sqs:receivemessage on ..."
    named = re.search(r"perform: ([a-z0-9-]+:[A-Za-z0-9*]+)", message_of(exc))
    if named:
        return named.group(1)
    service = getattr(getattr(exc, "service_model", None), "endpoint_prefix", None)
    return f"{service or 'aws'}:{operation}"


def is_transient(exc: BaseException) -> bool:
    """Worth retrying later: the network, throttling, or a 5xx from AWS."""
    if isinstance(exc, (*_UNREACHABLE, ReadTimeoutError)):
        return True
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return error_code(exc) in _THROTTLED or status >= 500
    return False


AGENT = "agent"
OPERATOR = "operator"
_REGION_FIX = {
    AGENT: "set region in the agent's config file, --region, or AWS_REGION",
    OPERATOR: "pass --region, or set AWS_REGION (or a region in your AWS profile)",
}
_DENIED_FIX = {
    AGENT: "check that the agent uses the client's role (role_arn) and that the config names this client's resources",
    OPERATOR: "check that you act as the stack's operator role (stack output OperatorRoleArn, the README's "
    "operator policy) and --stack and --region name the stack",
}


def explain(exc: BaseException, *, what: str = "", region: str | None = None, who: str = AGENT) -> str:
    """One sentence naming the problem (credentials, region, endpoint, permission, missing resource)
    and what to check, for `who` (AGENT: a client agent and its config file; OPERATOR: the `fedstep`
    commands and their flags). `what` names the resource the call was about, e.g. "queue https://...".
    """
    on = f" on {what}" if what else ""
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return (
            "no AWS credentials found: set AWS_PROFILE (a profile in ~/.aws), or AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or run where an instance or container role provides them"
        )
    if isinstance(exc, NoRegionError):
        return f"no AWS region: {_REGION_FIX[who]}"
    if isinstance(exc, _UNREACHABLE):
        endpoint = getattr(exc, "kwargs", {}).get("endpoint_url", "the AWS endpoint")
        return (
            f"cannot reach {endpoint}: check the network, the proxy (HTTPS_PROXY), that the firewall allows "
            "outbound HTTPS to AWS, and endpoint_url"
        )
    if isinstance(exc, ReadTimeoutError):
        return f"AWS did not answer in time{on}; the network may be slow or a proxy may be dropping long polls"
    if not isinstance(exc, ClientError):
        return f"AWS call failed{on}: {exc}"
    code = error_code(exc)
    message = message_of(exc)
    where = f" in region {region}" if region else ""
    if code in _DENIED:
        return (
            f"access denied: {iam_action(exc)}{on} is not allowed for these credentials ({message}); {_DENIED_FIX[who]}"
        )
    if code in _BAD_CREDENTIALS:
        return f"AWS rejected the credentials ({code}): check the access key, the profile, or the role's session"
    if code in _EXPIRED:
        return f"the AWS credentials have expired ({code}): refresh them (e.g. `aws sso login`), or use role_arn"
    if code in _NO_QUEUE:
        return f"queue not found{where}: {what or 'the queue'} does not exist; check queue_url and region"
    if code == "NoSuchBucket":
        return f"bucket not found: {what or 'the bucket'} does not exist; check bucket"
    if code == "ResourceNotFoundException":
        return f"not found{where}: {what or 'the resource'} does not exist; check the name and region"
    return f"{exc.operation_name} failed{on}: {code}: {message}"
