"""The agent's configuration: one JSON file, overridden by environment variables, overridden by flags.

    {"client_id": "client-1", "region": "us-east-1", "queue_url": "https://sqs...", "bucket": "...",
     "table": "...", "role_arn": "arn:aws:iam::...:role/...", "data": "mysite.data:load",
     "trainer": null, "heartbeat_s": 60}

Environment: FEDSTEP_CLIENT_ID, FEDSTEP_QUEUE_URL, FEDSTEP_BUCKET, FEDSTEP_TABLE, FEDSTEP_DATA,
FEDSTEP_PARTITION, FEDSTEP_PARTITION_SCHEME, FEDSTEP_DATA_SEED, FEDSTEP_TRAINER, FEDSTEP_ROLE_ARN,
FEDSTEP_DP_EPSILON_BUDGET, FEDSTEP_DP_MAX_DELTA;
AWS_REGION / AWS_DEFAULT_REGION and AWS_ENDPOINT_URL where the file sets no region or endpoint.
Every field is described in docs/client.md.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields, replace
from typing import Any

from client_agent import partitions
from fedstep.core import keys
from fedstep.core.errors import FedstepError
from fedstep.core.json_files import load_json_object

MAX_SEED = 2**32 - 1
"""The largest data seed (numpy and scikit-learn take seeds up to 2**32 - 1)."""

ENV = {
    "client_id": "FEDSTEP_CLIENT_ID",
    "queue_url": "FEDSTEP_QUEUE_URL",
    "bucket": "FEDSTEP_BUCKET",
    "table": "FEDSTEP_TABLE",
    "data": "FEDSTEP_DATA",
    "partition": "FEDSTEP_PARTITION",
    "partition_scheme": "FEDSTEP_PARTITION_SCHEME",
    "data_seed": "FEDSTEP_DATA_SEED",
    "role_arn": "FEDSTEP_ROLE_ARN",
    "trainer": "FEDSTEP_TRAINER",
    "dp_epsilon_budget": "FEDSTEP_DP_EPSILON_BUDGET",
    "dp_max_delta": "FEDSTEP_DP_MAX_DELTA",
}

FLOAT_FIELDS = ("dp_epsilon_budget", "dp_max_delta")
"""Optional numbers (None: not set)."""


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
    """i/n: this client's part of the data set (built-in, or a loader's whole data set); None: all of it."""
    partition_scheme: str | None = None
    """How the data set is divided among the n parts: iid (None), dirichlet:ALPHA, shards:K or quantity:ALPHA."""
    data_seed: int = 0
    """Seed of the held-out split, the partition and the local train/test split; the same for every client."""
    trainer: str | None = None
    """The train function, module:function; default Keras fit (client_agent.training:keras_fit)."""
    poll_wait_s: int = 20
    """Long-poll wait per receive call, seconds (SQS allows 0-20)."""
    visibility_extend_s: int = 300
    """While training, extend the round message's visibility this often (to 3x this), seconds."""
    cache_dir: str = ""
    """Where downloaded architectures are kept; default ~/.cache/fedstep."""
    heartbeat_s: int = 60
    """Write a heartbeat item this often, seconds (10-3600); 0 turns heartbeats off."""
    dp_epsilon_budget: float | None = None
    """The data owner's record-level privacy budget per run: a DP-SGD round that would take the run's
    epsilon past it is declined, not trained. None: no budget."""
    dp_max_delta: float | None = None
    """The largest `dp_delta` a DP-SGD round may name (a larger one is declined). None: any."""

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
        if self.heartbeat_s != 0 and not 10 <= self.heartbeat_s <= 3600:
            raise FedstepError(f"heartbeat_s must be 0 (off) or 10-3600 seconds, got {self.heartbeat_s}")
        if not 0 <= self.data_seed <= MAX_SEED:
            raise FedstepError(f"data_seed must be 0-{MAX_SEED}, got {self.data_seed}")
        if self.dp_epsilon_budget is not None and not 0 < self.dp_epsilon_budget < math.inf:
            raise FedstepError(f"dp_epsilon_budget must be a number > 0, got {self.dp_epsilon_budget}")
        if self.dp_max_delta is not None and not 0 < self.dp_max_delta < 1:
            raise FedstepError(f"dp_max_delta must be a number between 0 and 1 (exclusive), got {self.dp_max_delta}")
        try:
            scheme = partitions.parse_scheme(self.partition_scheme)
        except ValueError as exc:
            raise FedstepError(f"partition_scheme: {exc}") from None
        if not scheme.is_iid and not self.partition:
            raise FedstepError(
                f"partition_scheme {scheme} needs a partition (i/n, flag --partition or FEDSTEP_PARTITION): "
                "which part of the divided data set is this client's"
            )
        return self


def load(path: str | None, overrides: dict[str, Any]) -> AgentConfig:
    """File, then FEDSTEP_* environment variables, then non-None `overrides` (from flags); validated.

    The generic AWS variables (AWS_REGION, AWS_DEFAULT_REGION, AWS_ENDPOINT_URL) fill in only what the
    file leaves out: a shell's default region must not silently move the agent away from its stack.
    """
    values: dict[str, Any] = {}
    known = {f.name for f in fields(AgentConfig)}
    if path:
        values = load_json_object(path, "client config file", known)
    for name, var in ENV.items():
        if os.environ.get(var):
            values[name] = os.environ[var]
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region and not values.get("region"):
        values["region"] = region
    if os.environ.get("AWS_ENDPOINT_URL") and not values.get("endpoint_url"):
        values["endpoint_url"] = os.environ["AWS_ENDPOINT_URL"]
    values.update({k: v for k, v in overrides.items() if v is not None})
    return replace(AgentConfig(), **{k: _typed(k, v) for k, v in values.items()}).validated()


def _typed(name: str, value: Any) -> Any:
    """`value` as the field's type (numbers may come as strings from the environment), or a clear error."""
    if name in FLOAT_FIELDS:
        if value is None:
            return None
        try:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        except (TypeError, ValueError):
            raise FedstepError(f"client config: {name} must be a number, got {value!r}") from None
    if isinstance(getattr(AgentConfig(), name), int):
        try:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            unit = " of seconds" if name.endswith("_s") else ""
            raise FedstepError(f"client config: {name} must be a whole number{unit}, got {value!r}") from None
    if value is not None and not isinstance(value, str):
        raise FedstepError(f"client config: {name} must be a string, got {value!r}")
    return value
