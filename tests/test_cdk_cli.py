"""`cdk synth` with the CDK CLI the project installs (npm aws-cdk@2), offline, with the real bundle."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CDK = REPO / "node_modules" / ".bin" / "cdk"


@pytest.mark.skipif(not CDK.exists(), reason="run `make test`: it installs the CDK CLI into node_modules")
def test_cdk_synth_works_offline_and_bundles_numpy_for_lambda(tmp_path):
    config = tmp_path / "deploy.json"
    config.write_text(json.dumps({"project": "fedstep", "clients": [{"id": "a"}, {"id": "b"}], "trial": True}))
    out = tmp_path / "cdk.out"
    env = {**os.environ, "CDK_DISABLE_VERSION_CHECK": "1", "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20"}
    result = subprocess.run(
        [str(CDK), "synth", "--quiet", "--no-notices", "-o", str(out), "-c", f"fedstep:config={config}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "fedstep.template.json").exists()
    # nothing but the warnings: no jsii source location above each, no error CDK caught left in error.txt
    assert "program.js" not in result.stderr and "WARNING client a has no principal_arn" in result.stderr
    assert not (out / "error.txt").exists(), (out / "error.txt").read_text()
    templates = [json.loads(p.read_text()) for p in out.glob("*.template.json")]  # and its client group's
    assert len(templates) == 2
    queues = [r["Properties"] for t in templates for r in t["Resources"].values() if r["Type"] == "AWS::SQS::Queue"]
    assert sum("RedrivePolicy" in q for q in queues) == 2  # one work queue per client, each with its DLQ
    [asset] = [p for p in out.glob("asset.*") if p.is_dir()]
    assert (asset / "lambdas" / "aggregate.py").exists()
    for module in ("rounds/__init__.py", "rounds/complete.py", "schemas/__init__.py", "machine.py"):
        assert (asset / "fedstep" / "core" / module).exists(), f"fedstep/core/{module} must ship in the bundle"
    assert (asset / "fedstep" / "aws" / "adapters.py").exists()
    for tool in ("local", "cli", "report.py"):  # the bundle is an explicit list: the core, aws, the handlers
        assert not (asset / "fedstep" / tool).exists(), f"fedstep/{tool} must not ship in the Lambda bundle"
    assert not (asset / "client_agent").exists()
    assert not any(asset.glob("tensorflow*")), "TensorFlow must never ship in the Lambda bundle"
    assert list(asset.glob("numpy/_core/_multiarray_umath.cpython-312-x86_64-linux-gnu.so"))
    assert (asset / "dp_accounting").is_dir() and (asset / "fedstep" / "privacy" / "accounting.py").exists()
    unzipped = sum(f.stat().st_size for f in asset.rglob("*") if f.is_file())
    assert unzipped < 200 * 2**20, f"the bundle is {unzipped / 2**20:.0f} MiB; Lambda takes 250 MB unzipped"
    shutil.rmtree(out)


def test_bad_deployment_config_fails_synth_with_a_clear_message(tmp_path):
    config = tmp_path / "deploy.json"
    config.write_text(json.dumps({"clients": [{"id": "a"}, {"id": "a"}]}))
    result = subprocess.run(
        [str(REPO / ".venv" / "bin" / "python"), "app.py"],
        cwd=REPO,
        env={**os.environ, "CDK_CONTEXT_JSON": json.dumps({"fedstep:config": str(config)})},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "duplicate client id(s) ['a']" in result.stderr
    assert "Traceback" not in result.stderr


def _run_app(context: dict[str, str], outdir: Path, drop: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`python app.py` as the CDK CLI runs cdk.json's `app` command: cdk.json's context, then `-c`'s."""
    env = {k: v for k, v in os.environ.items() if k not in drop}
    merged = {**json.loads((REPO / "cdk.json").read_text())["context"], **context}
    env.update({"CDK_OUTDIR": str(outdir), "CDK_CONTEXT_JSON": json.dumps(merged)})
    return subprocess.run(
        [str(REPO / ".venv" / "bin" / "python"), "app.py"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_synth_with_a_named_deployment_config_that_is_missing_fails_naming_the_file(tmp_path):
    # `npx cdk synth -c fedstep:config=missing.json` used to synthesize the default client-1..3
    missing = tmp_path / "missing.json"
    result = _run_app({"fedstep:config": str(missing)}, tmp_path / "out")
    assert result.returncode != 0
    assert f"fedstep: deployment config '{missing}' does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "fedstep.template.json").exists()


def test_synth_without_a_named_config_prints_no_node_end_of_life_banner(tmp_path):
    # the README's plain `npx cdk …` commands run app.py without the Makefile's JSII_SILENCE_… variable;
    # (cdk.json names the default file fedstep.deploy.json; without it, the default clients)
    out = tmp_path / "out"
    result = _run_app({}, out, drop=("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION",))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "b'!!" not in result.stdout + result.stderr
    assert "end-of-life" not in result.stdout + result.stderr
    assert list(out.glob("*.template.json"))
