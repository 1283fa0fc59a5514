"""Acceptance (issue 23): `fedstep verify` passes on a clean run and fails, naming the round and key, after a
global model or a strategy state is replaced in the local cloud; the scheduled check, invoked as its
EventBridge rule invokes it, finds the same under its own role and emits its metric."""

from __future__ import annotations

import json

import fedstep
from tests.cloud_helpers import (
    SHIFTS,
    agent,
    environ,
    fedstep_here,
    serve_run,
    start,
    summaries,
    wait_for_execution,
)


def test_verify_passes_on_a_clean_run_and_names_a_replaced_global_model_and_strategy_state(cloud, tmp_path, capfd):
    run = start(cloud, rounds=2, strategy="fedadam", strategy_params={"eta": 0.05})
    serve_run([agent(cloud, c, tmp_path) for c in SHIFTS], 2)
    assert wait_for_execution(cloud, run.execution_arn)["status"] == "SUCCEEDED"
    clean = fedstep_here(cloud, "verify", run.run_id)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert f"run {run.run_id}: every object matches its record" in clean.stdout

    first, second = summaries(cloud, run.run_id)
    assert first.manifest is not None and second.state is not None
    s3, bucket = cloud.client("s3"), cloud.outputs.bucket  # the account's administrator
    for ref in (first.global_model, second.state):
        s3.put_object(Bucket=bucket, Key=ref.key, Body=b"replaced after it was written")
    tampered = fedstep_here(cloud, "verify", run.run_id)
    assert tampered.returncode == 1, tampered.stdout + tampered.stderr
    assert f"round 1: global model {first.global_model.key}: expected sha256 {first.global_model.sha256}" in (
        tampered.stdout
    )
    assert f"round 2: strategy state {second.state.key}: expected sha256 {second.state.sha256}" in tampered.stdout
    assert "Traceback" not in tampered.stderr
    report = json.loads(fedstep_here(cloud, "verify", run.run_id, "--json").stdout)
    assert {(m["round"], m["what"], m["key"]) for m in report["mismatches"]} == {
        (1, "global model", first.global_model.key),
        (2, "strategy state", second.state.key),
    }
    with environ(cloud.env()):  # the Python API, as the operator
        assert fedstep.Operator(endpoint_url=cloud.endpoint).verify(run.run_id)["mismatches"] == report["mismatches"]
    unknown = fedstep_here(cloud, "verify", "no-such-run")
    assert unknown.returncode == 2 and "no run no-such-run in this stack" in unknown.stderr
    assert "Traceback" not in unknown.stderr

    # the scheduled check: a new sweep over the recent runs, under the function's own role
    s3.delete_object(Bucket=bucket, Key="integrity/cursor.json")
    capfd.readouterr()
    answer = cloud.client("lambda").invoke(FunctionName="fedstep-integrity", Payload=b"{}")
    result = json.loads(answer["Payload"].read())
    assert "FunctionError" not in answer, result
    assert result["started_sweep"] and run.run_id in result["runs_checked"] and result["remaining"] == []
    ours = {(m["round"], m["what"], m["key"]) for m in result["mismatches"] if m["run_id"] == run.run_id}
    assert ours == {(1, "global model", first.global_model.key), (2, "strategy state", second.state.key)}
    metrics = [json.loads(line) for line in capfd.readouterr().out.splitlines() if '"IntegrityMismatches"' in line]
    assert metrics, "no IntegrityMismatches metric in the function's output (embedded metric format)"
    emitted = metrics[-1]["IntegrityMismatches"]  # Powertools writes a metric's values as a list
    assert (emitted[0] if isinstance(emitted, list) else emitted) == len(result["mismatches"]) >= 2
    assert metrics[-1]["service"] == "fedstep-integrity"
