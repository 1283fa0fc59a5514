"""The deployment config: which organisations take part and how the stack is named.

A JSON file named by the CDK context key `fedstep:config` (default `fedstep.deploy.json`):

    {"project": "fedstep", "clients": [{"id": "hospital-a"}, {"id": "hospital-b"}], "round_timeout_s": 3600}

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


class ConfigError(ValueError):
    """The deployment config is wrong; the message names the field and the fix."""


@dataclass(frozen=True)
class ClientConfig:
    id: str


@dataclass(frozen=True)
class DeploymentConfig:
    project: str = "fedstep"
    clients: tuple[ClientConfig, ...] = field(
        default_factory=lambda: tuple(ClientConfig(f"client-{i}") for i in (1, 2, 3))
    )
    round_timeout_s: int = 3600

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
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a JSON object")
        unknown = set(data) - {"project", "clients", "round_timeout_s"}
        if unknown:
            raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}")
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
        ids = [c.id for c in clients]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ConfigError(f"{where}: duplicate client id(s) {dupes}")
        timeout = data.get("round_timeout_s", 3600)
        if isinstance(timeout, bool) or not isinstance(timeout, int) or not 60 <= timeout <= 7 * 24 * 3600:
            raise ConfigError(f"{where}: round_timeout_s must be whole seconds from 60 to 604800")
        return cls(project=project, clients=clients, round_timeout_s=timeout)

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


def _client(data: Any, where: str) -> ClientConfig:
    if isinstance(data, str):
        data = {"id": data}
    if not isinstance(data, dict) or "id" not in data:
        raise ConfigError(f'{where}: expected {{"id": "..."}}')
    try:
        return ClientConfig(keys.check_id("client id", data["id"]))
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
