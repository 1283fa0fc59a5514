"""Where fedstep writes on the operator's machine when no folder or file is given: everything of a run
under `runs/<run>/` (relative to the working directory), so nothing lands in a checkout's root.

    runs/<run>/                    fedstep local's run (summary.json, clients/, logs/, cache/, ...)
    runs/<run>/report/             fedstep report
    runs/<run>/<run>-round<r>.keras   fedstep download (also --approved: the approved model's run)
    runs/latest -> <run>           the last run fedstep local started
"""

from __future__ import annotations

import os
from pathlib import Path

RUNS = Path("runs")
LATEST = "latest"


def run_folder(run_id: str) -> Path:
    """`runs/<run>`: a run's own folder."""
    return RUNS / run_id


def report_folder(run_id: str) -> Path:
    """`runs/<run>/report`: where `fedstep report` writes by default."""
    return run_folder(run_id) / "report"


def model_file(run_id: str, round_number: int) -> Path:
    """`runs/<run>/<run>-round<r>.keras`: where `fedstep download` writes by default."""
    return run_folder(run_id) / f"{run_id}-round{round_number}.keras"


def point_latest_at(folder: Path) -> Path | None:
    """Make `runs/latest` (beside `folder`) a relative symlink to it; the link, or None where the file
    system has no symlinks (then `runs/latest` is left as it was)."""
    link = folder.parent / LATEST
    temporary = folder.parent / f".{LATEST}.{os.getpid()}"
    try:
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(folder.name, target_is_directory=True)
        temporary.replace(link)  # atomic: a reader never sees no `latest`
    except OSError:
        temporary.unlink(missing_ok=True)
        return None
    return link
