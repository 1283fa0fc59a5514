"""`fedstep verify`'s output: one line per mismatch (run, round, what, key, expected and found), then a
verdict; or the report as JSON."""

from __future__ import annotations

import json

from fedstep.core.integrity import IntegrityReport
from fedstep.render.text import lines


def render_text(report: IntegrityReport) -> str:
    covered = report.run_id if len(report.runs) < 2 else f"{report.run_id} (and {', '.join(report.runs[1:])})"
    checked = f"{report.objects} objects, {report.bytes_hashed / 2**20:.1f} MiB hashed"
    if report.ok:
        return lines([f"run {covered}: every object matches its record ({checked})"])
    mismatched = [f"MISMATCH {m.line()}" for m in report.mismatches]
    verdict = (
        f"run {covered}: {len(report.mismatches)} object(s) do not match their records ({checked}); "
        "see docs/operations.md, Integrity"
    )
    return lines([*mismatched, verdict])


def render_json(report: IntegrityReport) -> str:
    return json.dumps(report.to_dict(), indent=2, sort_keys=True)
