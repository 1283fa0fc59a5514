"""Building the aggregation Lambda's code without Docker.

The asset is an explicit list (`BUNDLE`): the numpy-only core, the boto3 adapters, the handlers in `lambdas/`,
and the wheels of `requirements-lambda.txt` for the Lambda platform (CPython 3.12, manylinux x86_64),
installed by pip with `--platform`. The asset hash is computed from exactly those sources, so CDK
rebuilds the bundle when and only when one of them changes.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import aws_cdk as cdk
import jsii
from aws_cdk import aws_lambda as lambda_

from infra.bundle_sources import PRUNED_TESTS, REQUIREMENTS, bundled_sources, source_hash

REPO = Path(__file__).resolve().parent.parent
# Lambda's Python 3.12 runtime runs on Amazon Linux 2023 (glibc 2.34): manylinux_2_17 and _2_28 wheels fit.
# pip does not widen one --platform to older tags, so name both (safetensors ships only _2_17).
PLATFORM = (
    *("--platform", "manylinux_2_17_x86_64", "--platform", "manylinux_2_28_x86_64"),
    *("--implementation", "cp", "--python-version", "3.12"),
)


@jsii.implements(cdk.ILocalBundling)
class PipBundling:
    """Runs on the synthesizing machine: pip install for the Lambda platform, then copy the sources."""

    def try_bundle(self, output_dir: str, options: cdk.BundlingOptions) -> bool:
        out = Path(output_dir)
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile"]
        cmd += PLATFORM
        cmd += ["--only-binary=:all:", "--target", str(out), "-r", str(REQUIREMENTS)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"bundling the aggregation Lambda failed:\n{result.stderr[-4000:]}")
        for package in PRUNED_TESTS:  # their own test suites: never imported, about 50 MB
            for tests in (out / package).rglob("tests"):
                if tests.is_dir():
                    shutil.rmtree(tests)
        for rel in bundled_sources():
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, out / rel)
        return True


def aggregation_code() -> lambda_.Code:
    """The Lambda code asset; `cdk synth` bundles it locally (no Docker image is ever pulled)."""
    return lambda_.Code.from_asset(
        str(REPO / "lambdas"),
        asset_hash=source_hash(),
        asset_hash_type=cdk.AssetHashType.CUSTOM,
        bundling=cdk.BundlingOptions(
            image=cdk.DockerImage.from_registry("unused-local-bundling-only"),
            local=PipBundling(),
        ),
    )
