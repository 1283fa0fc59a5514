"""Synthesize the stack in-process (what `cdk synth` runs via app.py), for the local cloud and tests."""

from __future__ import annotations

from pathlib import Path

import aws_cdk as cdk

from infra.config import DeploymentConfig
from infra.stack import FedstepStack


def build_app(config: DeploymentConfig, outdir: str | Path | None = None, bundle: bool = True) -> cdk.App:
    """The CDK app with one FedstepStack. `bundle=False` skips building the Lambda bundle (template tests)."""
    context = {} if bundle else {"aws:cdk:bundling-stacks": []}
    app = cdk.App(outdir=str(outdir) if outdir else None, context=context)
    FedstepStack(app, config.stack_name, config=config)
    return app
