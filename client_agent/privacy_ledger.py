"""The client's privacy ledger: for every run, the DP-SGD rounds it trained and whose update may have
left the premises, so that the record-level epsilon of the data owner's data in that run is known
and survives a restart of the agent.

One entry per trained round: its steps, sampling rate q, noise multiplier z and delta. A run's
epsilon is `fedstep.privacy.accounting.epsilon_poisson(z, q, total steps, delta)` (dp-accounting's
RDP accountant). When the rounds of a run differ in q or z, the ledger composes the worst of them
(largest q, smallest z) over all the steps, an upper bound (the sampled Gaussian's RDP grows with q
and shrinks with z); the delta is the smallest any round asked for, so the epsilon never goes down.

When a round counts (the conservative choice): from the moment its update may leave the premises.
The agent records the round after training and *before* it uploads the update - not once the
update item is written - because an upload that failed, or an agent that died before writing the
item, may still have put the file where the server (or anyone who can read the bucket) sees it.
A round that fails during training is not counted: nothing trained on the data left. A round
trained again (its message came back after a failed upload; the server rejected its update and
retried the round) is counted again: both updates may have been seen.

The file is JSON, `privacy-ledger-<client id>.json` in the agent's cache directory, rewritten
atomically (a temporary file in the same directory, fsync, rename). An unreadable ledger stops the
DP-SGD rounds with an error instead of starting again from zero.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from client_agent.atomic import write_atomically
from fedstep.core.errors import FedstepError

VERSION = 1


@dataclass(frozen=True)
class Spend:
    """One DP-SGD round that may have left the premises."""

    round: int
    steps: int
    rate: float
    noise_multiplier: float
    delta: float | None
    """The delta the round's instructions named (None: none; the round still counts its steps)."""
    attempt: int = 0
    recorded_at: str = ""


@dataclass(frozen=True)
class RunPrivacy:
    """A run's record-level privacy so far: its DP-SGD steps and (epsilon, delta), when known."""

    steps: int
    epsilon: float | None
    delta: float | None

    def report(self) -> dict[str, float]:
        """{"epsilon", "delta"} for an update item or a heartbeat; empty when unknown or infinite
        (no noise: there is no guarantee to report)."""
        if self.epsilon is None or self.delta is None or not math.isfinite(self.epsilon):
            return {}
        return {"epsilon": self.epsilon, "delta": self.delta}


def run_privacy(spends: list[Spend]) -> RunPrivacy:
    """The privacy of a run's DP-SGD rounds (see the module docstring)."""
    steps = sum(s.steps for s in spends)
    deltas = [s.delta for s in spends if s.delta is not None]
    if not spends or not deltas:
        return RunPrivacy(steps, None, None)
    try:
        from fedstep.privacy.accounting import epsilon_poisson
    except ImportError as exc:
        raise FedstepError(f"accounting DP-SGD rounds needs dp-accounting (pip install dp-accounting): {exc}") from None

    delta = min(deltas)
    z = min(s.noise_multiplier for s in spends)
    q = max(s.rate for s in spends)
    return RunPrivacy(steps, epsilon_poisson(z, q, steps, delta), delta)


class PrivacyLedger:
    """The ledger file of one client (loaded on first use)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._runs: dict[str, list[Spend]] | None = None

    @classmethod
    def for_client(cls, cache_dir: Path, client_id: str) -> PrivacyLedger:
        return cls(Path(cache_dir) / f"privacy-ledger-{client_id}.json")

    def spends(self, run_id: str) -> list[Spend]:
        return list(self._load().get(run_id, []))

    def privacy(self, run_id: str, extra: Spend | None = None) -> RunPrivacy:
        """The run's privacy so far; with `extra`, what it would be after that round too."""
        return run_privacy(self.spends(run_id) + ([extra] if extra else []))

    def epsilon_of_other_runs(self, run_id: str) -> float:
        """The epsilon the client's data has spent in every other run in the ledger, added up (basic
        composition, an upper bound whatever the runs' deltas): a resumed run (`<run>-r1`) or a new
        run on the same data counts against the data owner's budget too."""
        spent = (run_privacy(spends).epsilon for run, spends in self._load().items() if run != run_id)
        return sum(e for e in spent if e is not None)

    def record(self, run_id: str, spend: Spend) -> RunPrivacy:
        """Add the round to the run and write the ledger (atomically); the run's privacy after it."""
        runs = self._load()
        runs.setdefault(run_id, []).append(spend)
        self._write(runs)
        return self.privacy(run_id)

    def _load(self) -> dict[str, list[Spend]]:
        if self._runs is None:
            self._runs = self._read()
        return self._runs

    def _read(self) -> dict[str, list[Spend]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise self._unreadable(exc) from None
        try:
            if data.get("version") != VERSION:
                raise ValueError(f"version {data.get('version')!r}, this agent reads version {VERSION}")
            return {str(run): [_spend(e) for e in entries] for run, entries in data["runs"].items()}
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise self._unreadable(exc) from None

    def _unreadable(self, exc: Exception) -> FedstepError:
        return FedstepError(
            f"the privacy ledger {self.path} is unreadable ({exc}); DP-SGD rounds stop until it is restored "
            "(moving it aside restarts the privacy accounting from zero)"
        )

    def _write(self, runs: dict[str, list[Spend]]) -> None:
        data = {"version": VERSION, "runs": {run: [asdict(s) for s in spends] for run, spends in runs.items()}}
        write_atomically(self.path, json.dumps(data, indent=1).encode(), sync_directory=True)


def _spend(entry: Any) -> Spend:
    names = {f.name for f in fields(Spend)}
    if not isinstance(entry, dict) or not {"round", "steps", "rate", "noise_multiplier"} <= set(entry):
        raise ValueError(f"malformed entry {entry!r:.80}")
    spend = Spend(**{k: v for k, v in entry.items() if k in names})
    numbers = (spend.steps, spend.rate, spend.noise_multiplier, 0.0 if spend.delta is None else spend.delta)
    if any(isinstance(v, bool) or not isinstance(v, int | float) or not v >= 0 for v in numbers):
        raise ValueError(f"malformed entry {entry!r:.80}")
    return spend
