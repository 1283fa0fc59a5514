"""A secure-aggregation round on the client (SecAgg+, issue 25): the round's secrets, kept in the
agent's cache across restarts. The agent's side of each phase is `client_agent.agent.Agent`
(`serve_round` for the round message, `serve_phase` for the later phases; docs/client.md, "Secure
aggregation rounds").

What is kept, per run, round and attempt, in `<cache_dir>/secagg-<client id>/<run id>/round-<r>-attempt-<a>/`:
- `round.json`: the protocol's client state (`fedstep.privacy.secagg.protocol.Client.state`: its two
  X25519 private keys, its self-mask seed, the roster's public keys, its neighbours and the shares it
  holds for them), what the update item will say (examples, metrics, privacy figures), when its keys
  item was made, and, once it shared its keys, the sealed shares it sent (to send the same ones again);
- `input.npy`: its quantised input before masking (uint32, `np.save` without pickle);
- `reveal.json`: what it revealed, once it did (to answer a redelivered reveal message the same way).

The directory is the agent's user's only (0700) and each file too (0600), written atomically
(temporary file, fsync, rename); JSON and `.npy` only, no pickle. The secrets (`round.json` and
`input.npy`) are deleted once the client has revealed, when the run ends or is stopped, and when a
later round or attempt of the run starts (the server never goes back to an earlier one); `reveal.json`
stays until the run ends. Whoever reads the secrets and the masked update in the bucket can unmask
this client's update: the cache must be as private as the data.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from client_agent.atomic import write_atomically
from fedstep.core import keys
from fedstep.core.errors import FedstepError

VERSION = 1
STATE = "round.json"
INPUT = "input.npy"
REVEAL = "reveal.json"
_FOLDER = re.compile(r"^round-(\d{5})-attempt-(\d{2})$")

SUPERSEDES = "attribute_not_exists(pk) OR attempt < :attempt"
"""The condition a secure round's update item (or decline) is written under: nothing for the round yet,
or an earlier attempt's masked update (a retried round gets fresh keys and a new masked input). An
attempt's own masked update is never replaced."""


class Refused(Exception):
    """A secure round (or attempt) this client takes no further part in; the message says why."""


class Unreadable(FedstepError):
    """Round secrets in the cache that cannot be read back (the client takes no further part)."""


def protocol() -> ModuleType:
    """`fedstep.privacy.secagg.protocol`, or a clear error for an agent installed without secure
    aggregation's libraries (`cryptography`, `pycryptodome`)."""
    try:
        from fedstep.privacy.secagg import protocol as module
    except ImportError as exc:
        raise FedstepError(
            f"this run uses secure aggregation, which needs the packages cryptography and pycryptodome ({exc}): "
            "install the agent with its client extra again (pip install 'fedstep[client]' of the deployed release)"
        ) from None
    return module


@dataclass
class RoundSecrets:
    """What a client keeps of one attempt of a secure round between its phases (see the module doc)."""

    run_id: str
    round: int
    attempt: int
    client: dict[str, Any]
    """`protocol.Client.state()`: its private keys and seed among the rest."""
    num_examples: int
    """The update item's examples (capped at the round's `max_examples`)."""
    metrics: dict[str, float]
    privacy: dict[str, float]
    created_at: str
    """When its keys item was made (written again as it was)."""
    outbox: dict[str, str] = field(default_factory=dict)
    """Once it shared its keys: recipient -> the share pair sealed to it (hex)."""


@dataclass(frozen=True)
class Revealed:
    """What a client revealed in a round's attempt, and for which survivors and dropped clients."""

    created_at: str
    shares: dict[str, tuple[str, bytes]]
    members: list[str]
    dropped: list[str]


class SecretStore:
    """The secure rounds' secrets of one client, in `directory` (see the module doc)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    @classmethod
    def for_client(cls, cache_dir: Path, client_id: str) -> SecretStore:
        return cls(Path(cache_dir) / f"secagg-{keys.check_id('client id', client_id)}")

    def folder(self, run_id: str, round_number: int, attempt: int) -> Path:
        for name, value, top in (("round", round_number, 99_999), ("attempt", attempt, 99)):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
                raise ValueError(f"invalid {name} {value!r}: a whole number from 0 to {top}")
        return self.directory / keys.check_id("run id", run_id) / f"round-{round_number:05d}-attempt-{attempt:02d}"

    # -- writing ----------------------------------------------------------------------------------
    def save(self, secrets: RoundSecrets, quantised: np.ndarray | None = None) -> None:
        """Keep the attempt's state (and its quantised input, when given), replacing what was kept."""
        folder = self._private_folder(secrets.run_id, secrets.round, secrets.attempt)
        if quantised is not None:
            buffer = io.BytesIO()
            np.save(buffer, np.ascontiguousarray(quantised, dtype=np.uint32), allow_pickle=False)
            _write_private(folder / INPUT, buffer.getvalue())
        _write_private(folder / STATE, json.dumps({"version": VERSION, **asdict(secrets)}).encode())

    def save_reveal(self, run_id: str, round_number: int, attempt: int, revealed: Revealed) -> None:
        data = {
            "version": VERSION,
            "created_at": revealed.created_at,
            "shares": {owner: [kind, share.hex()] for owner, (kind, share) in revealed.shares.items()},
            "members": revealed.members,
            "dropped": revealed.dropped,
        }
        _write_private(self._private_folder(run_id, round_number, attempt) / REVEAL, json.dumps(data).encode())

    # -- reading ----------------------------------------------------------------------------------
    def load(self, run_id: str, round_number: int, attempt: int) -> RoundSecrets | None:
        """The attempt's kept state; None when none is kept. `Unreadable` for a damaged one."""
        path = self.folder(run_id, round_number, attempt) / STATE
        data = _read_json(path)
        if data is None:
            return None
        try:
            secrets = RoundSecrets(**{f.name: data[f.name] for f in fields(RoundSecrets)})
        except (KeyError, TypeError) as exc:
            raise Unreadable(f"the secure round's secrets {path} are unreadable: {exc}") from None
        if (secrets.run_id, secrets.round, secrets.attempt) != (run_id, round_number, attempt):
            raise Unreadable(f"the secure round's secrets {path} are another round's")
        return secrets

    def input(self, run_id: str, round_number: int, attempt: int) -> np.ndarray:
        """The attempt's quantised input (uint32, one dimension). `Unreadable` when it is missing or damaged."""
        path = self.folder(run_id, round_number, attempt) / INPUT
        try:
            with open(path, "rb") as f:
                values = np.load(f, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise Unreadable(f"the secure round's input {path} is unreadable: {exc}") from None
        if values.dtype != np.uint32 or values.ndim != 1:
            raise Unreadable(f"the secure round's input {path} is not a vector of uint32")
        return values

    def revealed(self, run_id: str, round_number: int, attempt: int) -> Revealed | None:
        """What the client revealed in the attempt; None if it has not. `Unreadable` for a damaged record."""
        path = self.folder(run_id, round_number, attempt) / REVEAL
        data = _read_json(path)
        if data is None:
            return None
        try:
            shares = {str(o): (str(kind), bytes.fromhex(share)) for o, (kind, share) in dict(data["shares"]).items()}
            return Revealed(str(data["created_at"]), shares, list(data["members"]), list(data["dropped"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise Unreadable(f"the secure round's reveal {path} is unreadable: {exc}") from None

    # -- forgetting -------------------------------------------------------------------------------
    def forget_secrets(self, run_id: str, round_number: int, attempt: int) -> None:
        """Delete the attempt's secrets (its state and input); what it revealed stays."""
        folder = self.folder(run_id, round_number, attempt)
        for name in (STATE, INPUT):
            with contextlib.suppress(FileNotFoundError):
                (folder / name).unlink()
        with contextlib.suppress(OSError):  # only once empty: a reveal record stays
            folder.rmdir()

    def forget_run(self, run_id: str) -> None:
        """Delete everything kept of the run's secure rounds (it ended, or was stopped)."""
        shutil.rmtree(self.directory / keys.check_id("run id", run_id), ignore_errors=True)

    def forget_before(self, run_id: str, round_number: int, attempt: int) -> None:
        """Delete what is kept of the run's earlier rounds and attempts (the server never goes back to one)."""
        run = self.directory / keys.check_id("run id", run_id)
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(run):
                m = _FOLDER.match(name)
                if m and (int(m.group(1)), int(m.group(2))) < (round_number, attempt):
                    shutil.rmtree(run / name, ignore_errors=True)

    def _private_folder(self, run_id: str, round_number: int, attempt: int) -> Path:
        folder = self.folder(run_id, round_number, attempt)
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        for directory in (self.directory, folder.parent, folder):  # whatever the umask made of them
            os.chmod(directory, 0o700)
        return folder


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise Unreadable(f"{path} is unreadable: {exc}") from None
    if not isinstance(data, dict) or data.get("version") != VERSION:
        raise Unreadable(f"{path} is not a version {VERSION} record of a secure round")
    return data


def _write_private(path: Path, data: bytes) -> None:
    """Write `path` atomically, readable and writable by this user only (0600)."""
    write_atomically(path, data)
