"""cdk-nag's AwsSolutions pack on every synth: any finding not acknowledged (with a reason, next to
the construct it concerns) makes synthesis fail."""

from __future__ import annotations

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks


def enable(app: cdk.App) -> None:
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
