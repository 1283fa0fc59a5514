"""Work moto's server repeats on every request, done once per process (no change in what it answers).

moto's request dispatcher (`DomainDispatcherApplication.get_backend_for_host`) lists moto's package
folder, with a `stat` per entry, on every request to find the service a Host header names: about
a quarter of the server thread's time in a `fedstep local` round. The folder does not change while
the process runs, so its listing is kept.
"""

from __future__ import annotations

import functools


def apply() -> None:
    """Keep moto's list of its service modules (idempotent)."""
    from moto import backends

    if getattr(backends.list_of_moto_modules, "kept_by_fedstep", False):
        return
    kept = functools.cache(lambda listing=backends.list_of_moto_modules: tuple(listing()))
    kept.kept_by_fedstep = True  # type: ignore[attr-defined]
    backends.list_of_moto_modules = kept
