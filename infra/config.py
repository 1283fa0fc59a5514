"""The deployment config: which organisations take part, how long things are kept, how the stack is named.

A JSON file named by the CDK context key `fedstep:config` (default `fedstep.deploy.json`; override
with `cdk deploy -c fedstep:config=other.json`):

    {
      "project": "fedstep",
      "clients": [
        {"id": "hospital-a", "principal_arn": "arn:aws:iam::444455556666:role/fl-agent"},
        {"id": "hospital-b", "principal_arn": "arn:aws:iam::111122223333:role/fl-agent"},
        {"id": "hospital-c", "principal_arn": "arn:aws:iam::777788889999:role/fl-agent", "revoked": true}
      ],
      "round_timeout_s": 3600,
      "max_model_mb": 256,
      "slice_mb": 512,
      "retention": {"update_days": 30, "log_days": 90, "message_days": 4},
      "backup": {"schedule": "cron(0 5 * * ? *)", "retention_days": 35, "copy_to": "eu-west-1"},
      "audit": {"retention_days": 365, "lock_mode": "governance"}
    }

`principal_arn` is who may assume that client's role (a role, user or account root, in this account
or another one); changing it and deploying rotates the trust in place (same role ARN).
`"revoked": true` offboards a client: its role trusts nobody and holds no permission, no run selects
it, its queue and data stay (`docs/operations.md`). Every client needs one, unless the config says
`"trial": true` (a single-account trial): then a client without one may be assumed by principals of
the deploying account that are allowed `sts:AssumeRole`, and synth warns about each. `max_model_mb` is the largest model
(safetensors file, MiB) the stack aggregates; it sizes the aggregation function's memory and time
(`aggregation_memory_mb`, `aggregation_timeout_s`), and a size one function cannot hold is
aggregated by slices: a model larger than `slice_mb` (MiB; default 512 when `max_model_mb` is over
what one function holds, else no slicing) is aggregated by a fan-out of slices
(`fedstep.core.sliced`), and the function is then sized for one slice. Without the default file
(and no other file named), the default is project "fedstep" with three clients client-1..client-3
and no principals, which only a trial allows, so synth refuses it; a file that is named but
missing is an error.

`backup` (optional, off by default) backs the round table and the model registry up with AWS Backup
(`BackupConfig`, `infra.backup`); `audit` (optional, off by default) records who wrote and who read
what in a CloudTrail trail of its own (`AuditConfig`, `infra.audit`). Each is an object of its
settings, or `true` for the defaults.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedstep.core import keys
from fedstep.core.sliced import MIN_SLICE_MB
from fedstep.core.tensors import DEFAULT_MAX_BYTES

_PROJECT = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
_PRINCIPAL = re.compile(r"^arn:aws(-[a-z]+)*:iam::\d{12}:(root|role/[\w+=,.@/-]{1,512}|user/[\w+=,.@/-]{1,512})$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MAX_CLIENTS = 500
"""The most clients one deployment holds. Their resources sit in nested stacks of 50 clients
(`infra.client_group`), well within CloudFormation's 500 resources per template; the bound is IAM's
default quota of 1,000 roles per account (one role per client), leaving room for the account's others."""
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


LAMBDA_MAX_MEMORY_MB = 10_240
LAMBDA_MAX_TIMEOUT_S = 900
AGGREGATION_BASE_MB = 512
"""The aggregation function's memory besides models: Python, numpy, boto3 and Powertools (about
180 MB resident), and the robust strategies' slices (`fedstep.core.update_source.SLICE_BUDGET_BYTES`,
32 MiB of rows and their sorted float64 copies: about 160 MiB), with room to spare."""
AGGREGATION_MODELS_IN_MEMORY = 5.5
"""Its peak, in models, whatever the strategy (`bench/aggregation_memory.py --strategy NAME`
measures it): FedAvg 3.2x (a float64 accumulator, one update, then the global model); FedAvgM 4.0x
and FedAdam/FedYogi/FedAdagrad 5.0x (their state: 1 or 2 models more); median, trimmed mean and
Krum 3x plus their slices. 5.5 leaves a margin."""
AGGREGATION_MB_PER_S = 50
"""A conservative rate at which one function reads, checks and adds updates (MiB of update per s)."""
DEFAULT_MAX_MODEL_MB = DEFAULT_MAX_BYTES // 2**20
MAX_MODEL_MB = math.floor((LAMBDA_MAX_MEMORY_MB - AGGREGATION_BASE_MB) / AGGREGATION_MODELS_IN_MEMORY)
"""The largest model one aggregation function can hold (1768 MiB); larger ones are aggregated by slices."""
MAX_SLICED_MODEL_MB = 5 * 1024
"""The largest model a deployment accepts (5 GiB): the size of one S3 PUT, and a plan's checks of
every update run in one function (`fedstep.core.sliced`)."""
DEFAULT_SLICE_MB = 512
"""Slice size when `max_model_mb` is over `MAX_MODEL_MB` and the config names none."""


def aggregation_memory_mb(max_model_mb: int) -> int:
    """The aggregation function's memory for models up to `max_model_mb` MiB (a multiple of 64 MB)."""
    needed = AGGREGATION_BASE_MB + AGGREGATION_MODELS_IN_MEMORY * max_model_mb
    return max(512, 64 * math.ceil(needed / 64))


def aggregation_timeout_s(max_model_mb: int, clients: int) -> int:
    """Time for one function to aggregate a round of every client at the largest model, at
    `AGGREGATION_MB_PER_S`; at least 2 minutes, at most Lambda's 15."""
    estimate = 60 + clients * max_model_mb / AGGREGATION_MB_PER_S
    return int(min(LAMBDA_MAX_TIMEOUT_S, max(120, math.ceil(estimate))))


DEFAULT_BACKUP_SCHEDULE = "cron(0 5 * * ? *)"
"""Daily at 05:00 UTC (AWS Backup's own default)."""
_CRON = re.compile(r"^cron\((\S+ ){5}\S+\)$")
_RATE = re.compile(r"^rate\((\d+) (hour|hours|day)\)$")
_REGION = re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-\d$")
_VAULT_ARN = re.compile(
    r"^arn:aws(-[a-z]+)*:backup:([a-z]{2}(-gov)?-[a-z]+-\d):\d{12}:backup-vault:[A-Za-z0-9_.-]{2,50}$"
)
MAX_BACKUP_DAYS = 36_500
"""The longest a recovery point is kept (100 years, AWS Backup's own bound on a lifecycle)."""
LOCK_MODES = ("governance", "compliance")
MAX_AUDIT_DAYS = 3_650
"""The longest audit log files are locked (10 years)."""


def backup_schedule(expression: str, where: str = "backup") -> str:
    """AWS Backup's cron expression for `expression`: a cron expression (6 fields, UTC) whose minute
    field is one number (AWS Backup starts jobs at least an hour apart), or `rate(N hours)` (N
    dividing 24) or `rate(1 day)`, which become the cron expressions AWS Backup takes (it takes no
    rate expressions). ConfigError otherwise."""
    if not isinstance(expression, str):
        raise ConfigError(f"{where}: schedule must be a text such as {DEFAULT_BACKUP_SCHEDULE!r}, got {expression!r}")
    rate = _RATE.match(expression)
    if rate:
        n, unit = int(rate[1]), rate[2]
        if unit == "day" and n == 1:
            return DEFAULT_BACKUP_SCHEDULE
        if unit == "hour" and n == 1:
            return "cron(0 * * * ? *)"
        if unit == "hours" and 1 < n < 24 and 24 % n == 0:
            return f"cron(0 0/{n} * * ? *)"
        if unit == "hours" and n == 24:
            return DEFAULT_BACKUP_SCHEDULE
    elif _CRON.match(expression):
        fields = expression[len("cron(") : -1].split(" ")
        if fields[0].isdigit() and int(fields[0]) < 60 and "?" in (fields[2], fields[4]):
            return expression
    raise ConfigError(
        f"{where}: schedule {expression!r} is not one AWS Backup takes: use a cron expression in UTC with 6 fields, "
        "one minute and ? for the day of month or of week (e.g. 'cron(0 5 * * ? *)', daily at 05:00; AWS Backup "
        "starts jobs at least 60 minutes apart), 'rate(1 day)', 'rate(1 hour)' or 'rate(N hours)' with N dividing 24"
    )


@dataclass(frozen=True)
class BackupConfig:
    """An AWS Backup plan for the round table and the model registry (`infra.backup`)."""

    schedule: str = DEFAULT_BACKUP_SCHEDULE
    """When backups start: an AWS Backup cron expression in UTC (`backup_schedule`); default daily 05:00."""
    retention_days: int = 35
    """Days each recovery point (and each copy) is kept, 1-36500."""
    copy_to: str | None = None
    """Another region's backup vault each recovery point is copied to: a vault ARN, or a region (its vault
    `<project>-backup-copy`, which must exist: docs/operations.md). None: no copy."""

    def copy_vault_arn(self, project: str, account: str, partition: str = "aws") -> str | None:
        """The ARN of the vault copies go to (a region names its vault `<project>-backup-copy`)."""
        if self.copy_to is None or self.copy_to.startswith("arn:"):
            return self.copy_to
        return f"arn:{partition}:backup:{self.copy_to}:{account}:backup-vault:{project}-backup-copy"

    @property
    def copy_region(self) -> str | None:
        if self.copy_to is None:
            return None
        match = _VAULT_ARN.match(self.copy_to)
        return match[2] if match else self.copy_to


@dataclass(frozen=True)
class AuditConfig:
    """A CloudTrail trail of the stack's data events into a locked bucket of its own (`infra.audit`)."""

    retention_days: int = 365
    """Days each log file is locked (S3 Object Lock default retention) and kept, 1-3650."""
    lock_mode: str = "governance"
    """Object Lock mode: `governance` (a principal allowed s3:BypassGovernanceRetention may delete a
    locked file) or `compliance` (no one, not even the account's root, until the days are over)."""


DEFAULT_CONFIG_PATH = "fedstep.deploy.json"
"""The deployment config when none is named; unlike a named file, it may be absent."""


class ConfigError(ValueError):
    """The deployment config is wrong; the message names the field and the fix."""


@dataclass(frozen=True)
class ClientConfig:
    id: str
    principal_arn: str | None = None
    revoked: bool = False
    """Offboarded (`docs/operations.md`): its role trusts nobody and holds no permission, runs never
    select it; its queue, updates and items stay. False: a member of the consortium."""


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
    max_model_mb: int = DEFAULT_MAX_MODEL_MB
    """The largest model file (MiB) the stack accepts and aggregates; sizes the aggregation function."""
    slice_mb: int | None = None
    """Models larger than this (MiB) are aggregated by slices; None: `DEFAULT_SLICE_MB` when
    `max_model_mb` is over `MAX_MODEL_MB`, else never."""
    operator_principal_arn: str | None = None
    """Who may assume the operator role (`infra.operator_access`): a role, user or account root; None:
    principals of the deploying account whose own policies allow `sts:AssumeRole` on it."""
    trial: bool = False
    """A single-account trial: clients may go without `principal_arn`, and their roles then trust the
    deploying account (synth warns about each). False: every client must name its principal."""
    backup: BackupConfig | None = None
    """The AWS Backup plan of the table and the registry; None: no plan (the table's own point-in-time
    recovery and the bucket's versions only)."""
    audit: AuditConfig | None = None
    """The CloudTrail audit trail; None: no trail."""

    def check_principals(self, where: str = "deployment config") -> None:
        """ConfigError naming the clients without `principal_arn`, the field and the fix, unless `trial`."""
        missing = [c.id for c in self.clients if not c.principal_arn and not c.revoked]
        if self.trial or not missing:
            return
        named = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ConfigError(
            f"{where}: client(s) {named} have no principal_arn, so their roles would trust every principal of the "
            "deploying account allowed sts:AssumeRole. Set principal_arn for each to the IAM role, user or account "
            'root its agent runs as (e.g. "arn:aws:iam::111122223333:role/fl-agent"), or set "trial": true for a '
            "single-account trial"
        )

    @property
    def slice_bytes(self) -> int | None:
        """Models larger than this are aggregated by slices; None when no model the stack accepts is."""
        mb = self.slice_mb
        if mb is None and self.max_model_mb > MAX_MODEL_MB:
            mb = DEFAULT_SLICE_MB
        return None if mb is None or mb >= self.max_model_mb else mb * 2**20

    @property
    def function_model_mb(self) -> int:
        """The most model one aggregation invocation holds (MiB): a slice, or the largest model."""
        return self.max_model_mb if self.slice_bytes is None else self.slice_bytes // 2**20

    @property
    def max_model_bytes(self) -> int:
        return self.max_model_mb * 1024 * 1024

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
        fields = {
            "project",
            "clients",
            "round_timeout_s",
            "retention",
            "alarm_email",
            "max_model_mb",
            "slice_mb",
            "operator_principal_arn",
            "trial",
            "backup",
            "audit",
        }
        _only(data, fields, where)
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
                    f"{where}: {len(clients)} clients; one deployment holds at most {MAX_CLIENTS} "
                    "(one IAM role each; IAM's default quota is 1,000 roles per account)"
                )
        if all(c.revoked for c in clients):
            raise ConfigError(
                f"{where}: every client is revoked; a deployment needs at least one client that takes part "
                "(to tear the stack down instead, see docs/operations.md)"
            )
        ids = [c.id for c in clients]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ConfigError(f"{where}: duplicate client id(s) {dupes}")
        by_output: dict[str, list[str]] = {}
        for i in ids:
            by_output.setdefault(keys.output_suffix(i), []).append(i)
        clashes = [same for same in by_output.values() if len(same) > 1]
        if clashes:
            raise ConfigError(
                f"{where}: client ids {clashes[0]} give the same stack output names (QueueUrl"
                f"{keys.output_suffix(clashes[0][0])}): they differ only in case, - or _; rename one"
            )
        too_long = [i for i in ids if len(f"{project}-{i}-dlq") > 80]
        if too_long:
            raise ConfigError(f"{where}: client id(s) {too_long} make queue names longer than SQS's 80 characters")
        timeout = _whole(data, "round_timeout_s", 3600, 60, 7 * 24 * 3600, where)
        max_model_mb = data.get("max_model_mb", DEFAULT_MAX_MODEL_MB)
        if (
            isinstance(max_model_mb, bool)
            or not isinstance(max_model_mb, int)
            or not 1 <= max_model_mb <= MAX_SLICED_MODEL_MB
        ):
            raise ConfigError(
                f"{where}: max_model_mb {max_model_mb!r} must be a whole number from 1 to {MAX_SLICED_MODEL_MB} "
                f"(one S3 PUT); models over {MAX_MODEL_MB} MiB are aggregated by slices (`slice_mb`)"
            )
        slice_mb = data.get("slice_mb")
        if slice_mb is not None and (
            isinstance(slice_mb, bool) or not isinstance(slice_mb, int) or not MIN_SLICE_MB <= slice_mb <= MAX_MODEL_MB
        ):
            raise ConfigError(
                f"{where}: slice_mb {slice_mb!r} must be a whole number from {MIN_SLICE_MB} (S3's 5 MiB parts) to "
                f"{MAX_MODEL_MB}: a slice of S MiB needs {AGGREGATION_BASE_MB} + {AGGREGATION_MODELS_IN_MEMORY} x S MB "
                f"of aggregation function memory, and one function holds at most {LAMBDA_MAX_MEMORY_MB} MB"
            )
        email = data.get("alarm_email")
        if email is not None and (not isinstance(email, str) or not _EMAIL.match(email)):
            raise ConfigError(f"{where}: alarm_email {email!r} is not an e-mail address")
        trial = data.get("trial", False)
        if not isinstance(trial, bool):
            raise ConfigError(f"{where}: trial must be true or false, got {trial!r}")
        config = cls(
            project=project,
            clients=clients,
            round_timeout_s=timeout,
            retention=_retention(data, where),
            alarm_email=email,
            max_model_mb=max_model_mb,
            slice_mb=slice_mb,
            operator_principal_arn=_principal(data.get("operator_principal_arn"), f"{where}: operator_principal_arn"),
            trial=trial,
            backup=_backup(data.get("backup"), f"{where}: backup"),
            audit=_audit(data.get("audit"), f"{where}: audit"),
        )
        config.check_principals(where)
        return config

    @classmethod
    def load(cls, path: str | Path, *, missing_ok: bool = False) -> DeploymentConfig:
        """The config in `path`; a missing file is the default config only with `missing_ok` (the
        default path, no file named), otherwise an error naming it."""
        p = Path(path)
        if not p.exists():
            if missing_ok:
                return cls()
            raise ConfigError(
                f"deployment config {str(p)!r} does not exist (named by the CDK context fedstep:config); "
                f"check the path, which is relative to {Path.cwd()}"
            )
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


def _switch(data: Any, where: str) -> dict[str, Any] | None:
    """An optional feature's settings: None when absent or false, {} (the defaults) when true."""
    if data is None or data is False:
        return None
    if data is True:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected true, false or an object of settings, got {data!r}")
    return data


def _backup(data: Any, where: str) -> BackupConfig | None:
    raw = _switch(data, where)
    if raw is None:
        return None
    _only(raw, {"schedule", "retention_days", "copy_to"}, where)
    defaults = BackupConfig()
    schedule = backup_schedule(raw.get("schedule", defaults.schedule), where)
    days = _whole(raw, "retention_days", defaults.retention_days, 1, MAX_BACKUP_DAYS, where)
    copy_to = raw.get("copy_to")
    if copy_to is not None and (
        not isinstance(copy_to, str) or not (_REGION.match(copy_to) or _VAULT_ARN.match(copy_to))
    ):
        raise ConfigError(
            f"{where}: copy_to {copy_to!r} must be a region (e.g. 'eu-west-1') or a backup vault ARN "
            "(arn:aws:backup:<region>:<12-digit account>:backup-vault:<name>)"
        )
    return BackupConfig(schedule=schedule, retention_days=days, copy_to=copy_to)


def _audit(data: Any, where: str) -> AuditConfig | None:
    raw = _switch(data, where)
    if raw is None:
        return None
    _only(raw, {"retention_days", "lock_mode"}, where)
    defaults = AuditConfig()
    mode = raw.get("lock_mode", defaults.lock_mode)
    if mode not in LOCK_MODES:
        raise ConfigError(f"{where}: lock_mode must be one of {list(LOCK_MODES)}, got {mode!r}")
    days = _whole(raw, "retention_days", defaults.retention_days, 1, MAX_AUDIT_DAYS, where)
    return AuditConfig(retention_days=days, lock_mode=mode)


def _client(data: Any, where: str) -> ClientConfig:
    if isinstance(data, str):
        data = {"id": data}
    if not isinstance(data, dict) or "id" not in data:
        raise ConfigError(f'{where}: expected {{"id": "..."}}')
    _only(data, {"id", "principal_arn", "revoked"}, where)
    try:
        client_id = keys.check_id("client id", data["id"])
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    revoked = data.get("revoked", False)
    if not isinstance(revoked, bool):
        raise ConfigError(f"{where}: revoked must be true or false, got {revoked!r}")
    return ClientConfig(client_id, _principal(data.get("principal_arn"), f"{where}: principal_arn"), revoked)


def _principal(value: Any, where: str) -> str | None:
    """An IAM principal ARN (or None), else a ConfigError naming the field."""
    if value is not None and (not isinstance(value, str) or not _PRINCIPAL.match(value)):
        raise ConfigError(
            f"{where} {value!r} is not an IAM principal ARN "
            "(arn:aws:iam::<12-digit account>:root, :role/<name> or :user/<name>)"
        )
    return value
