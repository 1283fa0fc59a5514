"""The principals of the local cloud. Each acts under its own credentials, as on AWS:

- the account's **administrator** (IAM user `fedstep-local-admin`, every action): deploys the stack;
  the test harness inspects the cloud with it, as an account owner would;
- the **operator** (user `fedstep-local-operator`, allowed only `sts:AssumeRole` on the stack's
  operator role): `fedstep` commands, and `fedstep local`'s runner, act under the operator role;
- one **organisation** per client (user `fedstep-local-<client id>`, allowed only `sts:AssumeRole` on
  its client role): the principal its client role trusts (`principal_arn`); its agent assumes the
  client role with these keys;
- the **services**: Lambda acts under the aggregation function's role and Step Functions under the
  state machine's, with credentials the local cloud obtains for them as those services do
  (`service_credentials`): only when the role's trust policy names the service.

Users and their keys are created through IAM's API; roles are assumed through STS's, so every trust
policy and every identity policy is evaluated (`fedstep.local.gaps.iam_enforcement`).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

import boto3

from fedstep.aws import boto
from fedstep.core.errors import FedstepError
from fedstep.local.iam.policy import ALLOW, evaluate, statements_of

ACCOUNT = "123456789012"
"""moto's default account: the local cloud's only one."""
PARTITION = "aws"
ADMIN = "admin"
OPERATOR = "operator"
AGGREGATION = "aggregation"
"""The aggregation function, acting under its role (as Lambda runs it)."""
STATE_MACHINE = "state-machine"
"""The training state machine, acting under its role (as Step Functions runs it)."""
USER_PREFIX = "fedstep-local-"


def user_name(principal: str) -> str:
    """The IAM user of a local principal: `admin`, `operator` or a client id."""
    return f"{USER_PREFIX}{principal}"


def user_arn(principal: str) -> str:
    return f"arn:aws:iam::{ACCOUNT}:user/{user_name(principal)}"


@dataclass(frozen=True)
class Keys:
    """A principal's credentials (a user's long-term keys, or a role session's with its token)."""

    access_key: str
    secret_key: str
    token: str | None = None

    def session(self, region: str) -> boto3.Session:
        return boto.new_session(
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            aws_session_token=self.token,
            region_name=region,
        )

    def env(self) -> dict[str, str]:
        """As the standard credential chain reads them from the environment (a user's keys come with an
        empty session token, which botocore reads as none, so that an inherited one never mixes in)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_SESSION_TOKEN": self.token or "",
        }


def _policy(statements: list[dict[str, Any]]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": statements})


POLICY_NAME = "local-principal"


def _user(iam: Any, principal: str) -> Keys:
    name = user_name(principal)
    iam.create_user(UserName=name)
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return Keys(key["AccessKeyId"], key["SecretAccessKey"])


def create_admin(iam: Any) -> Keys:
    """The account's administrator, allowed everything (created while IAM is not yet enforced)."""
    keys = _user(iam, ADMIN)
    statement = {"Effect": "Allow", "Action": "*", "Resource": "*"}
    iam.put_user_policy(UserName=user_name(ADMIN), PolicyName=POLICY_NAME, PolicyDocument=_policy([statement]))
    return keys


@dataclass
class Principals:
    """The local cloud's users' keys, by principal (`admin`, `operator`, client ids)."""

    users: dict[str, Keys] = field(default_factory=dict)

    def create(self, iam: Any, principals: list[str]) -> None:
        """A user for each principal, allowed nothing yet (`grant_assume`, once the roles exist)."""
        for principal in principals:
            self.users[principal] = _user(iam, principal)

    def grant_assume(self, iam: Any, roles: dict[str, str]) -> None:
        """Each principal may assume its role (`roles`: principal -> role ARN), and do nothing else."""
        for principal, role_arn in roles.items():
            statement = {"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": role_arn}
            document = _policy([statement])
            iam.put_user_policy(UserName=user_name(principal), PolicyName=POLICY_NAME, PolicyDocument=document)

    def keys(self, principal: str) -> Keys:
        if principal not in self.users:
            raise FedstepError(f"the local cloud has no principal {principal!r}; it has {sorted(self.users)}")
        return self.users[principal]


def assume(keys: Keys, role_arn: str, region: str, endpoint: str, session_name: str) -> Keys:
    """`keys` assume `role_arn` through STS's API (its trust policy and their own policy are evaluated)."""
    sts = boto.client("sts", keys.session(region), endpoint)
    creds = sts.assume_role(RoleArn=role_arn, RoleSessionName=session_name)["Credentials"]
    return Keys(creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"])


_service_sessions: dict[tuple[str, str], Keys] = {}
_service_lock = threading.Lock()


def service_credentials(role_arn: str, service: str, source_arn: str, region: str = "us-east-1") -> Keys:
    """Credentials of `role_arn` as the AWS service `service` (`lambda.amazonaws.com`) obtains them for
    the resource `source_arn` it runs (a function, a state machine): refused unless the role's trust
    policy lets the service assume it for that resource (`aws:SourceArn`, `aws:SourceAccount`). Kept
    per role while moto still knows them (a reset forgets every session)."""
    from moto.iam.models import iam_backends
    from moto.sts.models import sts_backends

    sts = sts_backends[ACCOUNT][PARTITION]
    with _service_lock:
        known = _service_sessions.get((role_arn, source_arn))
        if known is not None and any(r.access_key_id == known.access_key for r in sts.assumed_roles):
            return known
        role = iam_backends[ACCOUNT][PARTITION].get_role_by_arn(role_arn)
        trust = statements_of(role.assume_role_policy_document)
        context = {"aws:SourceArn": source_arn, "aws:SourceAccount": ACCOUNT}
        if evaluate(trust, "sts:AssumeRole", "*", context, principal=service) != ALLOW:
            raise FedstepError(
                f"the role {role_arn} does not trust {service} for {source_arn}: the service cannot act under it"
            )
        session = sts.assume_role(region, service.split(".")[0], role_arn, "", 3600, "")
        keys = Keys(session.access_key_id, session.secret_access_key, session.session_token)
        _service_sessions[(role_arn, source_arn)] = keys
        return keys


__all__ = [
    "ACCOUNT",
    "ADMIN",
    "AGGREGATION",
    "OPERATOR",
    "STATE_MACHINE",
    "Keys",
    "Principals",
    "assume",
    "create_admin",
    "service_credentials",
    "user_arn",
    "user_name",
]
