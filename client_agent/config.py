"""The agent's configuration: one JSON file, overridden by environment variables, overridden by flags.

    {"client_id": "client-1", "region": "us-east-1", "queue_url": "https://sqs...", "bucket": "...",
     "table": "...", "role_arn": "arn:aws:iam::...:role/...", "data": "mysite.data:load",
     "trainer": null, "heartbeat_s": 60}

Environment: FEDSTEP_CLIENT_ID, FEDSTEP_QUEUE_URL, FEDSTEP_BUCKET, FEDSTEP_TABLE, FEDSTEP_DATA,
FEDSTEP_PARTITION, FEDSTEP_PARTITION_SCHEME, FEDSTEP_DATA_SEED, FEDSTEP_TRAINER, FEDSTEP_ROLE_ARN,
FEDSTEP_DP_EPSILON_BUDGET, FEDSTEP_DP_MAX_DELTA;
AWS_REGION / AWS_DEFAULT_REGION and AWS_ENDPOINT_URL where the file sets no region or endpoint.
Values in the file must have their field's JSON type (a number without quotes); an error names the
source, the field, the value and the type expected. Every field is described in docs/client.md.
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
MAX_VISIBILITY_TIMEOUT_S = 43_200
"""SQS's longest visibility timeout (12 hours)."""

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
    "profile": "FEDSTEP_PROFILE",
    "trainer": "FEDSTEP_TRAINER",
    "dp_epsilon_budget": "FEDSTEP_DP_EPSILON_BUDGET",
    "dp_max_delta": "FEDSTEP_DP_MAX_DELTA",
}

FLOAT_FIELDS = ("dp_epsilon_budget", "dp_max_delta")
"""Optional numbers (None: not set)."""

PLACEHOLDER = "module:function"
"""What `fedstep client-config` writes into `data` until the organisation fills in its loader."""
_PLACEHOLDER_PARTS = {"module", "my_module", "mymodule", "your_module", "package.module", "function", "func"}
"""Module or function names that are a template's words, not a user's (`my_module:load`, `my_site:function`)."""
_FILL_IN = {
    "data": (
        'set it to your data loader, e.g. "data": "my_site:load" for a function load() in ./my_site.py '
        'that returns ((x_train, y_train), (x_test, y_test)) as numpy arrays (docs/client.md, "Your data"); '
        "or a built-in set: digits, mnist, heart, heart-raw"
    ),
    "trainer": (
        'set it to your train function, e.g. "trainer": "my_site:train" (docs/client.md, "Your training"), '
        "or remove it to train with Keras fit"
    ),
}


def placeholder_problem(name: str, spec: str | None) -> str | None:
    """The error for a `data` or `trainer` value that looks like a placeholder, None otherwise:
    `module:function` as `fedstep client-config` writes it, or a template's words such as
    `my_module:load`, `<module>:<function>` or `my_site:function`. (`client_agent.data.user_callable`
    refuses the first always, the others only when they cannot be imported.)"""
    if not spec:
        return None
    module, _, attr = spec.partition(":")
    if spec == PLACEHOLDER:
        origin = "the placeholder `fedstep client-config` writes" if name == "data" else "a placeholder"
    elif "<" in spec or ">" in spec or module.lower() in _PLACEHOLDER_PARTS or attr.lower() in _PLACEHOLDER_PARTS:
        origin = "a placeholder, not a real module and function"
    else:
        return None
    return f"{name} is {spec!r}, {origin}: {_FILL_IN.get(name, 'fill in your module:function')}"


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
    profile: str | None = None
    """A named profile of the AWS shared credentials and config files whose credentials the agent uses
    (or assumes `role_arn` with) instead of the standard chain's; None: the standard chain."""
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
    visibility_timeout_s: int = 60
    """How long a received message stays hidden from the queue's other receives, seconds (2-43200).
    While the agent serves it, it renews this every `visibility_extend_s`; an agent killed mid-round
    (SIGKILL, a power cut) stops renewing, so its round is back in the queue after at most this."""
    visibility_extend_s: int = 20
    """While serving a message, renew its visibility this often, seconds (1 to half of
    `visibility_timeout_s`)."""
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
        for name in ("queue_url", "endpoint_url"):
            url = getattr(self, name)
            if url and not url.startswith(("https://", "http://")):
                raise FedstepError(f"{name} must be a URL starting with https:// (or http://), got {url!r}")
        if self.role_arn and not self.role_arn.startswith("arn:"):
            raise FedstepError(
                f"role_arn must be an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME), got {self.role_arn!r}"
            )
        if not 0 <= self.poll_wait_s <= 20:
            raise FedstepError(f"poll_wait_s must be 0-20 seconds, got {self.poll_wait_s}")
        if not 2 <= self.visibility_timeout_s <= MAX_VISIBILITY_TIMEOUT_S:
            raise FedstepError(
                f"visibility_timeout_s must be 2-{MAX_VISIBILITY_TIMEOUT_S} seconds, got {self.visibility_timeout_s}"
            )
        if not 1 <= self.visibility_extend_s <= self.visibility_timeout_s // 2:
            raise FedstepError(
                f"visibility_extend_s must be 1 to half of visibility_timeout_s ({self.visibility_timeout_s} s), "
                f"got {self.visibility_extend_s}: a message's visibility must be renewed before it runs out"
            )
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

    Values in the file must have their field's JSON type (`"poll_wait_s": "20"` is refused: a number
    is written without quotes); environment variables are text, so numbers there are converted.
    The generic AWS variables (AWS_REGION, AWS_DEFAULT_REGION, AWS_ENDPOINT_URL) fill in only what the
    file leaves out: a shell's default region must not silently move the agent away from its stack.
    """
    values: dict[str, Any] = {}
    known = {f.name for f in fields(AgentConfig)}
    if path:
        source = f"client config file {path}"
        values = {k: _typed(k, v, source, strict=True) for k, v in load_json_object(path, source, known).items()}
    for name, var in ENV.items():
        if os.environ.get(var):
            values[name] = _typed(name, os.environ[var], f"environment variable {var}")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region and not values.get("region"):
        values["region"] = region
    if os.environ.get("AWS_ENDPOINT_URL") and not values.get("endpoint_url"):
        values["endpoint_url"] = os.environ["AWS_ENDPOINT_URL"]
    values.update({k: _typed(k, v, "client config") for k, v in overrides.items() if v is not None})
    return replace(AgentConfig(), **values).validated()


_OPTIONAL = {f.name for f in fields(AgentConfig) if f.default is None}
"""Fields that may be null (not set)."""


def _expected(name: str) -> str:
    """The field's type in words, e.g. "a whole number of seconds"."""
    if name in FLOAT_FIELDS:
        kind = "a number"
    elif isinstance(getattr(AgentConfig(), name), int):
        kind = "a whole number" + (" of seconds" if name.endswith("_s") else "")
    else:
        kind = "a string"
    return kind


def _json_kind(value: Any) -> str:
    """A JSON value's type as a user wrote it: "a string", "true/false", "a list" ..."""
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, str):
        return "a string" + (f"; write {value.strip()} without quotes" if _is_number(value) else "")
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return "a fractional number" if isinstance(value, float) and not value.is_integer() else "a number"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _typed(name: str, value: Any, source: str, strict: bool = False) -> Any:
    """`value` as the field's type, or a FedstepError naming `source`, the field, the value and the
    type expected. `strict` (the JSON file): numbers must be JSON numbers, not strings."""

    def wrong() -> FedstepError:
        shown = "null" if value is None else ("true" if value else "false") if isinstance(value, bool) else repr(value)
        return FedstepError(f"{source}: {name} must be {_expected(name)}, got {shown} ({_json_kind(value)})")

    if value is None:
        if name in _OPTIONAL or not strict or isinstance(getattr(AgentConfig(), name), str):
            return None if name in _OPTIONAL else getattr(AgentConfig(), name)
        raise wrong()
    if isinstance(value, bool | dict | list):
        raise wrong()
    if name in FLOAT_FIELDS:
        if strict and not isinstance(value, int | float):
            raise wrong()
        try:
            return float(value)
        except (TypeError, ValueError):
            raise wrong() from None
    if isinstance(getattr(AgentConfig(), name), int):
        if strict and not isinstance(value, int | float):
            raise wrong()
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise wrong() from None
    if not isinstance(value, str):
        raise wrong()
    return value
