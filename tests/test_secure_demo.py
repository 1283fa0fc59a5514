"""`fedstep local --secure-aggregation` end to end (issue 25's acceptance): five client agents on
digits, each round's sum unmasked from SecAgg+ with a k = 2 neighbourhood ring, reaching held-out
accuracy 0.75."""

from __future__ import annotations

import json

from tests.local_runs import fedstep_local


def test_a_secure_local_run_of_five_clients_on_digits_reaches_075(tmp_path):
    out = tmp_path / "secure"
    args = ("--dataset", "digits", "--clients", "5", "--rounds", "3", "--epochs", "3")
    proc = fedstep_local(out, *args, "--secure-aggregation", "--secagg-neighbours", "2", "--secagg-threshold", "3")
    text, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final"]["test_accuracy"] >= 0.75, text
    assert [r["participants"] for r in summary["rounds"]] == [5] * 3
