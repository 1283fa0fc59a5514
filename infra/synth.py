"""Synthesize the stack in-process (what `cdk synth` runs via app.py), for the local cloud and tests.

`python -m infra.synth` synthesizes one deployment config read on stdin and prints the assembly's
directory: the local cloud runs it in a process of its own (`fedstep.local.synth_cache.run_synth`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import aws_cdk as cdk

from infra import nag
from infra.config import AuditConfig, BackupConfig, ClientConfig, DeploymentConfig, Retention
from infra.stack import FedstepStack


def _cdk_json_context() -> dict[str, object]:
    """The context (feature flags) of cdk.json, so that this synth equals `cdk synth`'s."""
    return json.loads((Path(__file__).resolve().parent.parent / "cdk.json").read_text()).get("context", {})


def build_app(config: DeploymentConfig, outdir: str | Path | None = None, bundle: bool = True) -> cdk.App:
    """The CDK app with one FedstepStack. `bundle=False` skips building the Lambda bundle (template tests)."""
    context = {k: v for k, v in _cdk_json_context().items() if not k.startswith("fedstep:")}
    if not bundle:
        context["aws:cdk:bundling-stacks"] = []
    app = cdk.App(outdir=str(outdir) if outdir else None, context=context)
    nag.enable(app)
    FedstepStack(app, config.stack_name, config=config)
    return app


def config_of(data: dict[str, Any]) -> DeploymentConfig:
    """The DeploymentConfig of `dataclasses.asdict(config)` (after a JSON round trip), as it was: built
    field by field, not re-validated (`DeploymentConfig.from_dict` checks what a file may say)."""
    return DeploymentConfig(
        **{
            **data,
            "clients": tuple(ClientConfig(**c) for c in data["clients"]),
            "retention": Retention(**data["retention"]),
            "backup": BackupConfig(**data["backup"]) if data.get("backup") else None,
            "audit": AuditConfig(**data["audit"]) if data.get("audit") else None,
        }
    )


def main() -> int:
    """Read {"config": asdict(DeploymentConfig), "outdir": path} on stdin, synthesize, and print the
    assembly's directory as the last line on stdout."""
    request = json.loads(sys.stdin.read())
    assembly = build_app(config_of(request["config"]), request["outdir"]).synth()
    print(assembly.directory, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
