"""The agent's configuration: one JSON file, overridden by environment variables, overridden by flags.

    {"client_id": "client-1", "region": "us-east-1", "queue_url": "https://sqs...", "bucket": "...",
     "table": "...", "endpoint_url": null, "data": "digits", "partition": "1/3"}

Environment: FEDSTEP_CLIENT_ID, FEDSTEP_QUEUE_URL, FEDSTEP_BUCKET, FEDSTEP_TABLE, FEDSTEP_DATA,
FEDSTEP_PARTITION, FEDSTEP_ROLE_ARN, AWS_REGION / AWS_DEFAULT_REGION, AWS_ENDPOINT_URL.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from fedstep import keys
from fedstep.errors import FedstepError

ENV = {
    "client_id": "FEDSTEP_CLIENT_ID",
    "queue_url": "FEDSTEP_QUEUE_URL",
    "bucket": "FEDSTEP_BUCKET",
    "table": "FEDSTEP_TABLE",
    "data": "FEDSTEP_DATA",
    "partition": "FEDSTEP_PARTITION",
    "endpoint_url": "AWS_ENDPOINT_URL",
    "role_arn": "FEDSTEP_ROLE_ARN",
}


@dataclass(frozen=True)
class AgentConfig:
    client_id: str = ""
    queue_url: str = ""
    bucket: str = ""
    table: str = ""
    region: str | None = None
    endpoint_url: str | None = None
    role_arn: str | None = None
    """The client's IAM role (stack output RoleArn...); assumed with the standard credential chain."""
    data: str = ""
    partition: str | None = None
    poll_wait_s: int = 20
    """Long-poll wait per receive call, seconds (SQS allows 0-20)."""
    visibility_extend_s: int = 300
    """While training, extend the round message's visibility this often (to 3x this), seconds."""
    cache_dir: str = ""
    """Where downloaded architectures are kept; default ~/.cache/fedstep."""

    def validated(self) -> AgentConfig:
        missing = [name for name in ("client_id", "queue_url", "bucket", "table", "data") if not getattr(self, name)]
        if missing:
            hint = ", ".join(f"{m} (flag --{m.replace('_', '-')} or {ENV.get(m, '')})" for m in missing)
            raise FedstepError(f"client config is missing: {hint}")
        try:
            keys.check_id("client id", self.client_id)
        except ValueError as exc:
            raise FedstepError(str(exc)) from None
        if not 0 <= self.poll_wait_s <= 20:
            raise FedstepError(f"poll_wait_s must be 0-20 seconds, got {self.poll_wait_s}")
        if not 1 <= self.visibility_extend_s <= 14_400:
            raise FedstepError(f"visibility_extend_s must be 1-14400 seconds, got {self.visibility_extend_s}")
        return self


def load(path: str | None, overrides: dict[str, Any]) -> AgentConfig:
    """File, then environment, then non-None `overrides` (from flags); validated."""
    values: dict[str, Any] = {}
    known = {f.name for f in fields(AgentConfig)}
    if path:
        p = Path(path)
        if not p.exists():
            raise FedstepError(f"client config file {p} does not exist")
        try:
            values = json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            raise FedstepError(f"client config file {p} is not valid JSON: {exc}") from None
        if not isinstance(values, dict):
            raise FedstepError(f"client config file {p} must hold a JSON object")
        unknown = sorted(set(values) - known)
        if unknown:
            raise FedstepError(f"client config file {p}: unknown field(s) {unknown}; known: {sorted(known)}")
    for name, var in ENV.items():
        if os.environ.get(var):
            values[name] = os.environ[var]
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        values["region"] = region
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        config = replace(AgentConfig(), **values)
    except TypeError as exc:
        raise FedstepError(f"client config: {exc}") from None
    return config.validated()
