"""Gap 12: moto's Step Functions interpreter calls services with fixed fake credentials; call them under the
state machine's role."""

from __future__ import annotations

import sys
from typing import Any

from fedstep.local.gaps.shim import PatchShim
from fedstep.local.iam.identities import service_credentials


def machine_of(role_arn: str, region: str) -> str:
    """The ARN of the state machine that runs under `role_arn` (the service assumes it for that machine)."""
    from moto.stepfunctions.parser.models import stepfunctions_parser_backends

    from fedstep.local.iam.identities import ACCOUNT

    machines = stepfunctions_parser_backends[ACCOUNT][region].state_machines
    return next((str(m.arn) for m in machines if m.roleArn == role_arn), "")


class StepFunctionsRole(PatchShim):
    name = "step_functions_role"
    gap = (
        "moto's Step Functions interpreter makes a state's service calls (lambda:invoke, sns:publish, the "
        "Distributed Map's child executions' calls) with the fixed credentials 'ak'/'sk' (its "
        "`boto_client_for`), so with IAM enforced every call is refused, and without it the state machine's role "
        "is never evaluated. AWS makes them under the state machine's role (or the state's own `Credentials`). "
        "The shim gives each call the credentials of the role the interpreter names for it, obtained as Step "
        "Functions obtains them (`fedstep.local.iam.identities.service_credentials`: only if the role trusts "
        "states.amazonaws.com)."
    )

    def replacements(self) -> list[tuple[type, str, Any]]:
        import moto.stepfunctions.parser.models  # noqa: F401  (imports every module that calls boto_client_for)
        from moto.stepfunctions.parser.asl.utils import boto_client

        original = boto_client.boto_client_for

        def boto_client_for(region: str, service: str, state_credentials: Any = None) -> Any:
            client = original(region=region, service=service, state_credentials=state_credentials)
            role_arn = getattr(state_credentials, "role_arn", None)
            if not role_arn:
                return client
            keys = service_credentials(role_arn, "states.amazonaws.com", machine_of(role_arn, region), region)
            session = keys.session(region)
            return session.client(service, endpoint_url=client.meta.endpoint_url, config=client.meta.config)

        users = [
            module
            for name, module in sorted(sys.modules.items())
            if name.startswith("moto.stepfunctions.parser") and getattr(module, "boto_client_for", None) is original
        ]
        return [(module, "boto_client_for", boto_client_for) for module in users]  # type: ignore[misc]


SHIM = StepFunctionsRole()
