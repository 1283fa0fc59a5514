#!/usr/bin/env python3
"""The CDK app: reads the deployment config (context `fedstep:config`) and instantiates the stack."""

import os
import sys

# jsii prints Node 20's end-of-life banner through Python as byte strings (b'!!!…') on every `npx cdk`
# command; the Makefile silences it, and so must the app when cdk.json runs it directly.
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

import aws_cdk as cdk

from infra import nag
from infra.config import DEFAULT_CONFIG_PATH, ConfigError, DeploymentConfig
from infra.stack import FedstepStack

# No construct stack traces: from Python they all point into jsii's bundled program.js, and `cdk synth`
# printed that location (`/tmp/.../lib/program.js:1:5591`) above every warning.
app = cdk.App(stack_traces=False)
nag.enable(app)
config_path = app.node.try_get_context("fedstep:config") or DEFAULT_CONFIG_PATH
try:
    # cdk.json names the default file, which may be absent (the default clients); any other must exist
    config = DeploymentConfig.load(config_path, missing_ok=config_path == DEFAULT_CONFIG_PATH)
except ConfigError as exc:
    sys.exit(f"fedstep: {exc}")
FedstepStack(app, config.stack_name, config=config)
app.synth()
