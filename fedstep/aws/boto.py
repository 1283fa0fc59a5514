"""boto3 clients and sessions for fedstep: endpoint, retries and S3 addressing in one place.

Every client is built by `client()`, which applies the endpoint (`AWS_ENDPOINT_URL` or an explicit
one, e.g. the embedded local cloud), standard retries with backoff, and path-style S3 addressing
for custom endpoints. The client agent uses this module too: it holds no server logic.
"""

from __future__ import annotations

from typing import Any

import boto3
import botocore.loaders
import botocore.session
from botocore.config import Config
from botocore.credentials import RefreshableCredentials

RETRIES = {"max_attempts": 8, "mode": "standard"}


FAIL_FAST = {"max_attempts": 2, "mode": "standard"}

_LOADER = botocore.loaders.create_loader()
"""The service models (JSON files of botocore's data), parsed once per process and shared by every session:
a new botocore session parses each service's model again (about 0.1 s of CPU per client), and a principal
needs a session of its own."""


def _botocore_session() -> botocore.session.Session:
    core = botocore.session.get_session()
    core.register_component("data_loader", _LOADER)
    return core


def _session_on(core: botocore.session.Session, **kwargs: Any) -> boto3.Session:
    session = boto3.Session(botocore_session=core, **kwargs)
    # boto3 appends its data folder to the loader's search paths for every session: keep each path once, or
    # the shared loader's list would grow with every session a long-lived process makes (a warm Lambda)
    _LOADER.search_paths[:] = dict.fromkeys(_LOADER.search_paths)
    return session


def new_session(**kwargs: Any) -> boto3.Session:
    """A new boto3 Session (`kwargs`: boto3.Session's, e.g. keys, `region_name`, `profile_name`) whose
    credentials are its own and whose service models come from the process's one loader."""
    return _session_on(_botocore_session(), **kwargs)


def client(
    service: str, session: boto3.Session | None = None, endpoint_url: str | None = None, fail_fast: bool = False
) -> Any:
    """A boto3 client with retries; `endpoint_url` overrides AWS_ENDPOINT_URL (None: the AWS default).

    `fail_fast`: 2 attempts and a 5 s connect timeout instead of 8 attempts and 10 s, for checks that
    should report an unreachable endpoint in seconds rather than minutes.
    """
    config = Config(
        retries=FAIL_FAST if fail_fast else RETRIES,
        s3={"addressing_style": "path"},
        connect_timeout=5 if fail_fast else 10,
        read_timeout=70,
    )
    return (session or new_session()).client(service, endpoint_url=endpoint_url, config=config)


def assumed_role_session(
    role_arn: str,
    region: str | None,
    endpoint_url: str | None = None,
    session_name: str = "fedstep",
    fail_fast: bool = False,
    source: boto3.Session | None = None,
) -> boto3.Session:
    """A session whose credentials come from assuming `role_arn` (also in another account) with
    `source`'s credentials (default: the standard credential chain's), refreshed automatically
    before they expire (1 hour)."""
    source = source or new_session(region_name=region)
    sts = client("sts", source, endpoint_url, fail_fast=fail_fast)

    def fetch() -> dict[str, str]:
        creds = sts.assume_role(RoleArn=role_arn, RoleSessionName=session_name)["Credentials"]
        return {
            "access_key": creds["AccessKeyId"],
            "secret_key": creds["SecretAccessKey"],
            "token": creds["SessionToken"],
            "expiry_time": creds["Expiration"].isoformat(),
        }

    core = _botocore_session()
    core._credentials = RefreshableCredentials.create_from_metadata(
        metadata=fetch(), refresh_using=fetch, method="sts-assume-role"
    )
    return _session_on(core, region_name=source.region_name)
