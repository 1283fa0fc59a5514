"""Shared fixtures. No test reaches real AWS: fake credentials are set for the whole session and every
AWS call goes to moto (decorator mode or a moto server on 127.0.0.1)."""

from __future__ import annotations

import os

import pytest

for _name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_ROLE_ARN"):
    os.environ.pop(_name, None)
os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled",
        "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
        "CDK_DISABLE_VERSION_CHECK": "1",
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
)


@pytest.fixture(scope="module")
def local_cloud():
    """The real stack (two clients) deployed into a moto server on 127.0.0.1, for one test module."""
    from fedstep.local.cloud import LocalCloud
    from infra.config import ClientConfig, DeploymentConfig

    # trial: the local cloud's clients have no principal of their own yet
    config = DeploymentConfig(clients=(ClientConfig("client-1"), ClientConfig("client-2")), round_timeout_s=120)
    with LocalCloud(config) as cloud:
        yield cloud


@pytest.fixture
def cloud(local_cloud):
    """The module's local cloud with empty client queues (nothing left over from an earlier test)."""
    from tests.cloud_helpers import drain_queues

    drain_queues(local_cloud)
    return local_cloud
