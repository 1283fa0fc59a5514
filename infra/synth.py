"""Synthesize the stack in-process (what `cdk synth` runs via app.py), for the local cloud and tests."""

from __future__ import annotations

import json
from pathlib import Path

import aws_cdk as cdk

from infra import nag
from infra.config import DeploymentConfig
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
