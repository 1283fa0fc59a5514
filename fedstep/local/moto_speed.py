"""Work moto's server repeats on every request, done once per process (no change in what it answers).

moto's request dispatcher (`DomainDispatcherApplication.get_backend_for_host`) lists moto's package
folder, with a `stat` per entry, on every request to find the service a Host header names: about
a quarter of the server thread's time in a `fedstep local` round. The folder does not change while
the process runs, so its listing is kept.

One process also serves every service, in threads: the server's (one per connection), the Lambda
invocations', the state machine's. A thread that gets its answer back waits for the interpreter's
lock for up to the switch interval (5 ms by default) while another thread computes; with some 60
requests a round that is a tenth of a second of waiting. The local cloud's process switches every
millisecond instead (`SWITCH_INTERVAL_S`; a digits round: 0.84 -> 0.59 s, the same numbers).
"""

from __future__ import annotations

import functools
import sys

SWITCH_INTERVAL_S = 0.001
"""How often (s) the local cloud's process hands the interpreter lock between its threads."""


def apply() -> None:
    """Keep moto's list of its service modules and switch threads every `SWITCH_INTERVAL_S` (idempotent)."""
    from moto import backends

    sys.setswitchinterval(SWITCH_INTERVAL_S)
    if getattr(backends.list_of_moto_modules, "kept_by_fedstep", False):
        return
    kept = functools.cache(lambda listing=backends.list_of_moto_modules: tuple(listing()))
    kept.kept_by_fedstep = True  # type: ignore[attr-defined]
    backends.list_of_moto_modules = kept
