"""Gap 11: moto's IAM enforcement authorizes most requests on resource `*` without condition keys; ask IAM
what AWS asks it, and evaluate that with fedstep's policy evaluator."""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from fedstep.local.gaps.shim import PatchShim
from fedstep.local.iam.policy import ALLOW, evaluate, statements_of, trust_allows
from fedstep.local.iam.requests import Access, Call, accesses, json_params

log = logging.getLogger(__name__)

_JSON_SERVICES = {"dynamodb", "states", "kms", "lambda", "logs", "monitoring", "sqs"}


@dataclass(frozen=True)
class Decision:
    """One action IAM was asked for: who asked, for what, on what, and whether it was allowed."""

    principal: str
    action: str
    resource: str
    allowed: bool


class MotoLookups:
    """`fedstep.local.iam.requests.Lookups` answered from moto's backends (this process's)."""

    def __init__(self, account: str, region: str) -> None:
        self.account, self.region = account, region

    def exists(self, call: Call) -> bool:
        """Whether the bucket, table or queue `call` names exists (True for anything else): a request to
        one that does not is answered "not found" by the service (the agent's dry run names it)."""
        from moto.dynamodb.models import dynamodb_backends
        from moto.s3.models import s3_backends
        from moto.sqs.models import sqs_backends

        try:
            if call.service == "s3" and call.moto_resource.startswith("arn:aws:s3:::"):
                bucket = call.moto_resource.removeprefix("arn:aws:s3:::").split("/", 1)[0]
                return bucket in ("", "*") or bucket in s3_backends[self.account]["aws"].buckets
            if call.service == "dynamodb" and call.params.get("TableName"):
                dynamodb_backends[self.account][self.region].get_table(call.params["TableName"])
            if call.service == "sqs" and call.params.get("QueueUrl"):  # moto names no resource for a missing one
                sqs_backends[self.account][self.region].get_queue(str(call.params["QueueUrl"]).rsplit("/", 1)[1])
        except Exception:  # moto's "not found": the service answers it
            return False
        return True

    def partition_key(self, table: str) -> str:
        from moto.dynamodb.models import dynamodb_backends

        return str(dynamodb_backends[self.account][self.region].get_table(table).hash_key_attr)

    def token_state_machine(self, token: str) -> str | None:
        from moto.stepfunctions.parser.models import stepfunctions_parser_backends

        for machine in stepfunctions_parser_backends[self.account][self.region].state_machines:
            for execution in machine.executions:
                worker = getattr(execution, "exec_worker", None)
                if worker is not None and worker.env.callback_pool_manager.get(token) is not None:
                    return str(machine.arn)
        return None

    def stack_arn(self, name_or_arn: str) -> str:
        from moto.cloudformation.models import cloudformation_backends

        try:
            return str(cloudformation_backends[self.account][self.region].get_stack(name_or_arn).stack_id)
        except Exception:  # no such stack: CloudFormation answers that after authorization
            return f"arn:aws:cloudformation:{self.region}:{self.account}:stack/{name_or_arn}/*"

    def key_arn(self, key_id: str) -> str:
        from moto.kms.models import kms_backends

        backend = kms_backends[self.account][self.region]
        try:
            return str(backend.describe_key(backend.any_id_to_key_id(key_id)).arn)
        except Exception:  # an unknown key: KMS answers that after authorization
            return key_id

    def bucket_key(self, bucket: str) -> str | None:
        from moto.s3.models import s3_backends

        try:
            encryption = s3_backends[self.account]["aws"].get_bucket(bucket).encryption or {}
        except Exception:
            return None
        default = (encryption.get("Rule") or {}).get("ApplyServerSideEncryptionByDefault") or {}
        if default.get("SSEAlgorithm") != "aws:kms":
            return None
        return self.key_arn(default["KMSMasterKeyID"]) if default.get("KMSMasterKeyID") else None

    def topic_key(self, topic_arn: str) -> str | None:
        from moto.sns.models import sns_backends

        try:
            key = sns_backends[self.account][self.region].get_topic(topic_arn).kms_master_key_id
        except Exception:
            return None
        return self.key_arn(key) if key else None

    def queue_key(self, queue_arn: str) -> str | None:
        from moto.sqs.models import sqs_backends

        try:
            key = sqs_backends[self.account][self.region].get_queue(queue_arn.rsplit(":", 1)[1]).kms_master_key_id
        except Exception:
            return None
        return self.key_arn(key) if key else None


def identity_statements(access_key: Any) -> list[dict[str, Any]]:
    """Every statement of the caller's identity policies (inline and attached; a user's groups')."""
    from moto.iam.models import Policy

    statements: list[dict[str, Any]] = []
    for policy in access_key.collect_policies():
        if isinstance(policy, Policy):
            document: Any = next(v.document for v in policy.versions if v.is_default)
        elif isinstance(policy, dict) and "policy_document" in policy:
            document = policy["policy_document"]
        else:
            document = policy
        statements += statements_of(document)
    return statements


def describe_call(response: Any, service: str, moto_resource: str) -> Call:
    """The request `response` (moto's handler of it) is serving, as `fedstep.local.iam.requests` reads it."""
    query = {k: (v[0] if isinstance(v, list) and v else v) for k, v in (response.querystring or {}).items()}
    if service == "s3":
        operation = str(response.data.get("Action", ""))
        params: dict[str, Any] = {}
    else:
        operation = response._get_action()
        params = json_params(response.body) if service in _JSON_SERVICES else dict(query)
    return Call(
        service=service,
        operation=operation,
        region=response.region,
        account=response.current_account,
        params=params,
        method=response.method,
        path=response.path,
        query={str(k): str(v) for k, v in query.items()},
        headers=dict(response.headers),
        moto_resource=moto_resource,
    )


_JSON_ERRORS = {"dynamodb": 400, "states": 400, "kms": 400, "logs": 400, "lambda": 403}
"""Services that answer a refusal as JSON (`AccessDeniedException`, with this status), as AWS does."""


def refuse(request: Any, call: Call, access: Access) -> None:
    """Raise the refusal AWS answers: AccessDeniedException naming the caller, the action and the resource
    (JSON services), or moto's own AccessDenied (S3, SNS, SQS, STS...) naming the action."""
    from moto.core.exceptions import JsonRESTError

    if call.service in _JSON_ERRORS:
        message = (
            f"User: {request._access_key.arn} is not authorized to perform: {access.action} on resource: "
            f"{access.resource} because no identity-based policy allows the {access.action} action"
        )
        error = JsonRESTError("AccessDeniedException", message)
        error.code = _JSON_ERRORS[call.service]
        raise error
    request._action = access.action
    request._raise_access_denied()


class IamEnforcement(PatchShim):
    name = "iam_enforcement"
    gap = (
        "moto's IAM enforcement (on after `/moto-api/reset-auth`) authorizes most requests on resource `*` (only "
        "S3, SQS, STS and IAM name theirs) and knows no condition keys: a role granted a DynamoDB table, an SNS "
        "topic, a state machine or a function is refused, DynamoDB's dynamodb:LeadingKeys and dynamodb:Attributes "
        "cannot be checked, a condition that does not hold counts as an explicit deny, trust policies compare "
        "principals as strings (an account root names nobody) and S3 objects encrypted with KMS need no KMS "
        "permission. AWS evaluates each action on its resource with its condition keys. The shim keeps moto's "
        "signature check and its principal (user or role session), then asks what AWS asks "
        "(`fedstep.local.iam.requests`) and evaluates it with fedstep's evaluator (`fedstep.local.iam.policy`), "
        "trust policies included; a refusal is moto's own AccessDenied, naming the action."
    )

    def __init__(self) -> None:
        super().__init__()
        self.decisions: collections.deque[Decision] = collections.deque(maxlen=5000)
        """The latest decisions (newest last): what a failing test was refused, or who wrote an object."""

    @property
    def denials(self) -> list[Decision]:
        """The latest refusals (newest last)."""
        return [d for d in self.decisions if not d.allowed]

    def replacements(self) -> list[tuple[type, str, Any]]:
        from moto import settings
        from moto.core.authorization import ActionAuthenticatorMixin

        shim = self

        def authorize(response: Any, iam_request_cls: type, resource: str = "*") -> None:
            if ActionAuthenticatorMixin.request_count < settings.INITIAL_NO_AUTH_ACTION_COUNT:
                ActionAuthenticatorMixin.request_count += 1
                return
            if response.headers.get("X-Amz-Target") in ActionAuthenticatorMixin.PUBLIC_OPERATIONS:
                return
            query = urlparse(response.uri).query
            path = response.raw_path + (f"?{query}" if query else "")
            # A request without a body is signed over an empty payload: moto's parsed parameters (a REST
            # service's path and query) must not stand in for it, or its signature never matches.
            bodiless = response.method in ("GET", "HEAD", "DELETE") and iam_request_cls.__name__ == "IAMRequest"
            request = iam_request_cls(
                account_id=response.current_account,
                method=response.method,
                path=path,
                data={} if bodiless else response.data,
                body=response.raw_body,
                headers=response.headers,
                action=response._get_action(),
            )
            request.check_signature()
            if request._action == "sts:GetCallerIdentity":
                return
            call = describe_call(response, request._service, resource)
            lookups = MotoLookups(call.account, call.region)
            if not lookups.exists(call):
                return
            statements = identity_statements(request._access_key)
            principal = request._access_key.arn
            for access in accesses(call, lookups):
                allowed = shim.allows(request, statements, access)
                shim.decisions.append(Decision(principal, access.action, access.resource, allowed))
                if not allowed:
                    log.info("IAM refused %s %s on %s", principal, access.action, access.resource)
                    refuse(request, call, access)

        return [(ActionAuthenticatorMixin, "_authenticate_and_authorize_action", authorize)]

    @staticmethod
    def allows(request: Any, statements: list[dict[str, Any]], access: Access) -> bool:
        """Whether the caller's policies allow `access` (and, to assume a role, its trust policy)."""
        allowed = evaluate(statements, access.action, access.resource, access.context) == ALLOW
        if access.action != "sts:AssumeRole" or ":role/" not in access.resource:
            return allowed
        from moto.iam.models import iam_backends

        try:
            role = iam_backends[request.account_id]["aws"].get_role_by_arn(access.resource)
        except Exception:  # no such role: STS answers that
            return allowed
        return trust_allows(role.assume_role_policy_document, request._access_key.arn, allowed)

    def undo(self) -> None:
        super().undo()
        self.decisions.clear()


SHIM = IamEnforcement()
