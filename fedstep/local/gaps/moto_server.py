"""The moto version the shims are written for, and the moto server's own API (reset, config)."""

from __future__ import annotations

import json
from typing import Any
from urllib.request import Request, urlopen

MOTO_VERSION = "5.2.5"


def check_patch_point() -> None:
    """Raise unless moto is the pinned version and still has the private method the Lambda shim replaces."""
    import moto
    from moto.awslambda.models import LambdaFunction

    if moto.__version__ != MOTO_VERSION or not callable(getattr(LambdaFunction, "_invoke_lambda", None)):
        raise RuntimeError(
            f"fedstep's local cloud needs moto=={MOTO_VERSION} (found {moto.__version__}); "
            "its in-process Lambda runner patches a private moto method. Re-run `make` to reinstall."
        )


MOTO_API_TIMEOUT_S = 120
"""How long a call of the moto server's own API may take: a reset clears every backend, which takes
seconds on a machine busy with other work (10 s was not always enough on a shared 2-core machine)."""


def moto_api(endpoint: str, path: str, body: dict[str, Any] | None = None) -> None:
    """POST to the moto server's own API (a loopback address)."""
    data = json.dumps(body or {}).encode()
    request = Request(f"{endpoint}/moto-api/{path}", data=data, headers={"Content-Type": "application/json"})
    with urlopen(request, timeout=MOTO_API_TIMEOUT_S) as resp:
        resp.read()


def moto_api_raw(endpoint: str, path: str, body: bytes) -> None:
    """POST a raw body to the moto server's own API (`reset-auth` takes the number of requests to let
    through unauthorized before IAM is enforced: `0` enforces it now, `inf` never)."""
    request = Request(f"{endpoint}/moto-api/{path}", data=body, headers={"Content-Type": "text/plain"})
    with urlopen(request, timeout=MOTO_API_TIMEOUT_S) as resp:
        resp.read()


def reset_backends(endpoint: str) -> None:
    """Clear all of moto's state (it is global to the process, shared by every server in it), and
    switch Step Functions execution off: that setting survives a reset, and CloudFormation's state
    machines are only visible while it is off."""
    moto_api(endpoint, "reset")
    moto_api(endpoint, "config", {"stepfunctions": {"execute_state_machine": False}})
