"""The deployment config: which organisations take part, how long things are kept, how the stack is named.

A JSON file named by the CDK context key `fedstep:config` (default `fedstep.deploy.json`; override
with `cdk deploy -c fedstep:config=other.json`):

    {
      "project": "fedstep",
      "clients": [
        {"id": "hospital-a"},
        {"id": "hospital-b", "principal_arn": "arn:aws:iam::111122223333:role/fl-agent"}
      ],
      "round_timeout_s": 3600,
      "retention": {"update_days": 30, "log_days": 90, "message_days": 4}
    }

`principal_arn` is who may assume that client's role (a role, user or account root, in this account
or another one); without it, principals of the deploying account that are allowed `sts:AssumeRole`.
Without a file, the default is project "fedstep" with three clients client-1..client-3.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedstep import keys

_PROJECT = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
_PRINCIPAL = re.compile(r"^arn:aws(-[a-z]+)*:iam::\d{12}:(root|role/[\w+=,.@/-]{1,512}|user/[\w+=,.@/-]{1,512})$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MAX_CLIENTS = 77
"""CloudFormation allows 500 resources per stack; the stack has 24, plus 6 per client, plus one
dead-letter alarm per 10 dead-letter queues, plus the alarm e-mail subscription: 495 for 77 clients."""
LOG_RETENTION_DAYS = (
    1,
    3,
    5,
    7,
    14,
    30,
    60,
    90,
    120,
    150,
    180,
    365,
    400,
    545,
    731,
    1096,
    1461,
    1827,
    2192,
    2557,
    2922,
    3288,
    3653,
)


class ConfigError(ValueError):
    """The deployment config is wrong; the message names the field and the fix."""


@dataclass(frozen=True)
class ClientConfig:
    id: str
    principal_arn: str | None = None


@dataclass(frozen=True)
class Retention:
    """How long things are kept. Defaults: updates 30 days, logs 90 days, queued messages 4 days."""

    update_days: int = 30
    log_days: int = 90
    message_days: int = 4


@dataclass(frozen=True)
class DeploymentConfig:
    project: str = "fedstep"
    clients: tuple[ClientConfig, ...] = field(
        default_factory=lambda: tuple(ClientConfig(f"client-{i}") for i in (1, 2, 3))
    )
    round_timeout_s: int = 3600
    retention: Retention = field(default_factory=Retention)
    alarm_email: str | None = None
    """An address the alarm topic mails (it must confirm the subscription); None: no subscription."""

    @property
    def stack_name(self) -> str:
        return self.project

    @property
    def state_machine_name(self) -> str:
        return f"{self.project}-FederatedTraining"

    def queue_name(self, client_id: str) -> str:
        return f"{self.project}-{client_id}"

    @classmethod
    def from_dict(cls, data: Any, where: str = "deployment config") -> DeploymentConfig:
        _only(data, {"project", "clients", "round_timeout_s", "retention", "alarm_email"}, where)
        project = data.get("project", "fedstep")
        if not isinstance(project, str) or not _PROJECT.match(project):
            raise ConfigError(
                f"{where}: project {project!r} must be 1-32 lowercase letters, digits or '-', starting with a letter"
            )
        raw_clients = data.get("clients")
        if raw_clients is None:
            clients = cls().clients
        else:
            if not isinstance(raw_clients, list) or not raw_clients:
                raise ConfigError(f'{where}: clients must be a non-empty list of {{"id": ...}}')
            clients = tuple(_client(c, f"{where}: clients[{i}]") for i, c in enumerate(raw_clients))
            if len(clients) > MAX_CLIENTS:
                raise ConfigError(
                    f"{where}: {len(clients)} clients; one stack holds at most {MAX_CLIENTS} "
                    "(CloudFormation's limit of 500 resources)"
                )
        ids = [c.id for c in clients]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ConfigError(f"{where}: duplicate client id(s) {dupes}")
        too_long = [i for i in ids if len(f"{project}-{i}-dlq") > 80]
        if too_long:
            raise ConfigError(f"{where}: client id(s) {too_long} make queue names longer than SQS's 80 characters")
        timeout = _whole(data, "round_timeout_s", 3600, 60, 7 * 24 * 3600, where)
        email = data.get("alarm_email")
        if email is not None and (not isinstance(email, str) or not _EMAIL.match(email)):
            raise ConfigError(f"{where}: alarm_email {email!r} is not an e-mail address")
        return cls(
            project=project,
            clients=clients,
            round_timeout_s=timeout,
            retention=_retention(data, where),
            alarm_email=email,
        )

    @classmethod
    def load(cls, path: str | Path) -> DeploymentConfig:
        p = Path(path)
        if not p.exists():
            return cls()
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{p}: not valid JSON ({exc})") from exc
        return cls.from_dict(data, str(p))


def _only(data: Any, allowed: set[str], where: str) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object")
    unknown = set(data) - allowed
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}; known: {sorted(allowed)}")


def _whole(data: dict[str, Any], name: str, default: int, low: int, high: int, where: str) -> int:
    value = data.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{where}: {name} must be a whole number from {low} to {high}, got {value!r}")
    return value


def _retention(data: dict[str, Any], where: str) -> Retention:
    raw = data.get("retention", {})
    where = f"{where}: retention"
    _only(raw, {"update_days", "log_days", "message_days"}, where)
    defaults = Retention()
    log_days = _whole(raw, "log_days", defaults.log_days, 1, 3653, where)
    if log_days not in LOG_RETENTION_DAYS:
        raise ConfigError(f"{where}: log_days must be one of CloudWatch's values {list(LOG_RETENTION_DAYS)}")
    return Retention(
        update_days=_whole(raw, "update_days", defaults.update_days, 1, 3650, where),
        log_days=log_days,
        message_days=_whole(raw, "message_days", defaults.message_days, 1, 14, where),
    )


def _client(data: Any, where: str) -> ClientConfig:
    if isinstance(data, str):
        data = {"id": data}
    if not isinstance(data, dict) or "id" not in data:
        raise ConfigError(f'{where}: expected {{"id": "..."}}')
    _only(data, {"id", "principal_arn"}, where)
    try:
        client_id = keys.check_id("client id", data["id"])
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    principal = data.get("principal_arn")
    if principal is not None and (not isinstance(principal, str) or not _PRINCIPAL.match(principal)):
        raise ConfigError(
            f"{where}: principal_arn {principal!r} is not an IAM principal ARN "
            "(arn:aws:iam::<12-digit account>:root, :role/<name> or :user/<name>)"
        )
    return ClientConfig(client_id, principal)
