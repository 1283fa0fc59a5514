"""The client's error-feedback residuals: for a codec that does not send every element exactly
(`fedstep.core.codecs`, `error_feedback`), what a round did not send - (delta + residual) - decoded -
is kept on the client and added to the next round's delta, so nothing the client learned is lost,
only delayed (error feedback, as in Seide et al. 2014 and Karimireddy et al. 2019).

One safetensors file (float32, the model's tensor names; no pickle) per run and round:
`residuals-<client id>/<run id>/round-<round>.safetensors` in the agent's cache directory, written
atomically (temporary file, fsync, rename) BEFORE the update is uploaded. A restarted agent that
encodes round r again uses the residual of the latest round before r (never r's own) and overwrites
round r's; saving round r prunes the run's rounds before the latest one under r, so the directory
holds at most two residuals per run. An unreadable or mismatched residual is skipped with a warning
(the round then starts from its own delta: nothing is amplified, only the carried error is lost).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from pathlib import Path

from client_agent.atomic import write_atomically
from fedstep.core import keys, tensors
from fedstep.core.errors import InvalidUpdate

log = logging.getLogger("fedstep.client")

_ROUND_FILE = re.compile(r"^round-(\d{5})\.safetensors$")


class ResidualStore:
    """The residuals of one client, in `directory` (one subdirectory per run)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    @classmethod
    def for_client(cls, cache_dir: Path, client_id: str) -> ResidualStore:
        return cls(Path(cache_dir) / f"residuals-{client_id}")  # the config checked the id

    def path(self, run_id: str, round_number: int) -> Path:
        if isinstance(round_number, bool) or not isinstance(round_number, int) or not 0 <= round_number <= 99_999:
            raise ValueError(f"invalid round {round_number!r}: a whole number from 0 to 99999")
        return self.directory / keys.check_id("run id", run_id) / f"round-{round_number:05d}.safetensors"

    def rounds(self, run_id: str) -> list[int]:
        """The run's rounds with a residual, ascending."""
        folder = self.directory / keys.check_id("run id", run_id)
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return []
        return sorted(int(m.group(1)) for m in map(_ROUND_FILE.match, names) if m)

    def latest_before(self, run_id: str, round_number: int, spec: tensors.TensorSpec) -> tensors.Tensors | None:
        """The residual of the run's latest round before `round_number`, if one is kept and readable
        as float32 tensors of `spec` (else None, with a warning for an unreadable one)."""
        earlier = [r for r in self.rounds(run_id) if r < round_number]
        if not earlier:
            return None
        path = self.path(run_id, earlier[-1])
        try:
            data = path.read_bytes()
            return tensors.decode(data, expected=spec, max_bytes=len(data))
        except (OSError, InvalidUpdate) as exc:
            log.warning("round %d of %s: residual %s unreadable, not used (%s)", round_number, run_id, path, exc)
            return None

    def save(self, run_id: str, round_number: int, residual: tensors.Tensors, codec: str) -> Path:
        """Write round `round_number`'s residual (atomically, replacing one written before), then
        prune the run's residuals older than the latest one before this round."""
        path = self.path(run_id, round_number)
        data = tensors.encode(residual, {"kind": "residual", "run_id": run_id, "round": round_number, "codec": codec})
        write_atomically(path, data)
        self.prune(run_id, round_number)
        return path

    def prune(self, run_id: str, round_number: int) -> None:
        """Delete the run's residuals of rounds before the latest one under `round_number` (that one
        stays: a restarted agent encoding `round_number` again needs it)."""
        earlier = [r for r in self.rounds(run_id) if r < round_number]
        for old in earlier[:-1]:
            with contextlib.suppress(FileNotFoundError):
                self.path(run_id, old).unlink()
