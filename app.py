#!/usr/bin/env python3
"""The CDK app: reads the deployment config (context `fedstep:config`) and instantiates the stack."""

import sys

import aws_cdk as cdk

from infra import nag
from infra.config import ConfigError, DeploymentConfig
from infra.stack import FedstepStack

app = cdk.App()
nag.enable(app)
config_path = app.node.try_get_context("fedstep:config") or "fedstep.deploy.json"
try:
    config = DeploymentConfig.load(config_path)
except ConfigError as exc:
    sys.exit(f"fedstep: {exc}")
FedstepStack(app, config.stack_name, config=config)
app.synth()
