"""Writing a file of the agent's cache all at once: a reader (or a restarted agent) sees the old file
or the new one, never half of one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomically(path: Path, data: bytes, *, sync_directory: bool = False) -> None:
    """Write `data` to `path` through a temporary file in its folder (created 0600: readable by this
    user only), flushed to disk, then renamed over `path`. `sync_directory`: make the rename itself
    durable too (not on every platform)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if sync_directory:
        with contextlib.suppress(OSError):
            dirfd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dirfd)
            finally:
                os.close(dirfd)
