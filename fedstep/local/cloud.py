"""LocalCloud: start a moto server on 127.0.0.1 (a free port) and deploy fedstep's stack into it.

    with LocalCloud(DeploymentConfig(clients=...), workdir) as cloud:
        cloud.outputs.bucket, cloud.outputs.queues["client-1"]
        cloud.client("s3")                     # the account's administrator (deploys, inspects)
        cloud.client("s3", "operator")         # the operator role, as `fedstep` commands act
        cloud.session("client-1")              # client-1's role, as its agent acts
        cloud.env("operator"), cloud.agent_env("client-1")  # for processes (credentials, endpoint)

The stack is the same synthesized template `cdk synth` produces, deployed with CloudFormation calls;
`fedstep.local.gaps` fills in what moto lacks, one shim per gap: its patches of moto are applied when the
cloud starts and undone when it stops. Lambda handlers run in this process.

IAM is enforced as on AWS (`enforce_iam`, default on; `FEDSTEP_LOCAL_IAM=off` switches it off for a
diagnosis): every principal acts under its own credentials (`fedstep.local.iam.identities`) and every
request is evaluated against its policies (`fedstep.local.gaps.iam_enforcement`). Clients without a
`principal_arn` are given the local organisation user `fedstep-local-<id>`, the operator role the local
user `fedstep-local-operator`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3

from fedstep.aws import boto
from fedstep.aws.stack import StackOutputs
from fedstep.core.errors import FedstepError
from fedstep.local import deploy, gaps, moto_speed
from fedstep.local.gaps.moto_server import moto_api_raw
from fedstep.local.iam import identities
from fedstep.local.iam.identities import ADMIN, AGGREGATION, OPERATOR, STATE_MACHINE, Keys, Principals
from fedstep.local.in_process import InProcessTransport

log = logging.getLogger(__name__)

REGION = "us-east-1"
REGION_ENV = {"AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION, "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled"}
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    **REGION_ENV,
}
"""This process's environment while the cloud runs: keys no principal has (IAM refuses them once it
is enforced), so nothing here acts without naming its principal."""
CACHE = gaps.REPO / ".cache"


@contextlib.contextmanager
def assembly_lock(cache_dir: Path) -> Iterator[Path]:
    """Hold `cache_dir`'s lock while synthesizing into its assembly and deploying from it: another
    process's local cloud of the same config (a parallel test worker, a second `fedstep local`) waits
    its turn. Yields `cache_dir`."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / "assembly.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield cache_dir
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def in_process_transport_by_default() -> bool:
    """Whether this process's requests to its own local cloud skip the socket (`fedstep.local.in_process`):
    yes, but for `FEDSTEP_LOCAL_TRANSPORT=http` (every request over 127.0.0.1, for a diagnosis)."""
    return os.environ.get("FEDSTEP_LOCAL_TRANSPORT", "in-process").lower() != "http"


def iam_enforced_by_default() -> bool:
    """Whether a local cloud enforces IAM unless told otherwise: yes, but for `FEDSTEP_LOCAL_IAM=off`."""
    return os.environ.get("FEDSTEP_LOCAL_IAM", "on").lower() not in ("off", "0", "false", "no")


def config_file_of(credentials_path: Path) -> Path:
    """The (empty) AWS config file the local cloud writes beside its credentials file: a user's own
    profiles of the same names never mix in."""
    return credentials_path.with_name(credentials_path.name + ".config")


def agent_credentials_env(credentials_path: Path) -> dict[str, str | None]:
    """Environment changes for an agent process started before its local cloud: no credentials of its
    own, the cloud's credentials and config files (`credentials_path`; its config's `profile` picks
    its organisation's keys once the cloud has written them)."""
    unset: dict[str, str | None] = dict.fromkeys(("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"))
    return {
        **unset,
        "AWS_SHARED_CREDENTIALS_FILE": str(credentials_path.resolve()),
        "AWS_CONFIG_FILE": str(config_file_of(credentials_path.resolve())),
    }


def with_local_principals(config: Any) -> Any:
    """`config` with the local users as the principals its client roles and operator role trust, where it
    names none (a named principal of another account could not act in the local cloud)."""
    clients = tuple(
        dataclasses.replace(c, principal_arn=c.principal_arn or identities.user_arn(c.id)) for c in config.clients
    )
    operator = config.operator_principal_arn or identities.user_arn(OPERATOR)
    return dataclasses.replace(config, clients=clients, operator_principal_arn=operator)


class LocalCloud:
    def __init__(
        self,
        config: Any,
        cache_dir: Path = CACHE,
        *,
        enforce_lambda_memory: bool = False,
        enforce_iam: bool | None = None,
        credentials_path: Path | None = None,
    ) -> None:
        """`enforce_lambda_memory`: run each Lambda invocation in its own process and kill it, as Lambda
        does, when its memory passes the function's MemorySize (slower: each imports its handler).
        `enforce_iam`: evaluate every request against its caller's IAM policies, as AWS does (default:
        on, unless FEDSTEP_LOCAL_IAM=off). `credentials_path`: where to write the principals' shared
        credentials file (default: a temporary folder, removed when the cloud stops)."""
        self.config = with_local_principals(config)
        self.enforce_lambda_memory = enforce_lambda_memory
        self.enforce_iam = iam_enforced_by_default() if enforce_iam is None else enforce_iam
        self.cache_dir = Path(cache_dir)
        self.server: Any = None
        self.transport: InProcessTransport | None = None
        self.endpoint = ""
        self.outputs: StackOutputs | None = None
        self.principals = Principals()
        self._acting: dict[str, Keys] = {}
        self._sessions: dict[str, boto3.Session] = {}
        self._clients: dict[tuple[str, str], Any] = {}
        self._lock = threading.RLock()
        # absolute: the env file that exports it is sourced from any folder (`fedstep local` without --out
        # names runs/<run>, relative to where it was typed)
        self.credentials_path = credentials_path.resolve() if credentials_path is not None else None
        self._credentials_dir: Path | None = None
        self._saved_env: dict[str, str | None] = {}

    def __enter__(self) -> LocalCloud:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def keys(self, principal: str = ADMIN) -> Keys:
        """The credentials `principal` acts with: the administrator's keys; the operator role's session
        (`operator`); a client role's session (a client id), assumed through STS as its principal would
        (the trust policies are evaluated), once; the aggregation function's (`aggregation`) or the
        state machine's (`state-machine`) role, as their services obtain them."""
        if principal == ADMIN:
            return self.principals.keys(ADMIN)
        if principal in (AGGREGATION, STATE_MACHINE):
            if principal not in self._acting:
                self._acting[principal] = self._service_keys(principal)
            return self._acting[principal]
        if principal not in self._acting:
            if self.outputs is None:
                raise FedstepError("the local cloud is not started")
            roles = {OPERATOR: self.outputs.operator_role_arn, **self.outputs.roles}
            if principal not in roles or not roles[principal]:
                raise FedstepError(f"the local cloud has no principal {principal!r}; it has {sorted(roles)}")
            own = self.principals.keys(principal)
            self._acting[principal] = identities.assume(
                own, roles[principal], REGION, self.endpoint, f"local-{principal}"
            )
        return self._acting[principal]

    def _service_keys(self, principal: str) -> Keys:
        """The aggregation function's or the state machine's role credentials, as its service obtains them."""
        assert self.outputs is not None
        if principal == STATE_MACHINE:
            arn = self.outputs.state_machine_arn
            role = self.client("stepfunctions").describe_state_machine(stateMachineArn=arn)["roleArn"]
            return identities.service_credentials(role, "states.amazonaws.com", arn, REGION)
        resources = self.client("cloudformation").list_stack_resources(StackName=self.config.stack_name)
        [name] = [
            r["PhysicalResourceId"]
            for r in resources["StackResourceSummaries"]
            if r["ResourceType"] == "AWS::Lambda::Function" and "Aggregation" in r["LogicalResourceId"]
        ]
        function = self.client("lambda").get_function(FunctionName=name)["Configuration"]
        return identities.service_credentials(function["Role"], "lambda.amazonaws.com", function["FunctionArn"], REGION)

    def session(self, principal: str = ADMIN) -> boto3.Session:
        """A boto3 session acting as `principal` (see `keys`), one per principal."""
        with self._lock:
            if principal not in self._sessions:
                self._sessions[principal] = self.keys(principal).session(REGION)
            return self._sessions[principal]

    def client(self, service: str, principal: str = ADMIN) -> Any:
        """A client of this cloud acting as `principal` (default: the account's administrator), one per
        service and principal (a boto3 client takes about 80 ms to build, and is thread-safe)."""
        with self._lock:
            if (service, principal) not in self._clients:
                self._clients[service, principal] = boto.client(service, self.session(principal), self.endpoint)
            return self._clients[service, principal]

    def env(self, principal: str = OPERATOR) -> dict[str, str]:
        """Environment for processes that act as `principal` (default: the operator, as `fedstep` commands
        do) against this cloud: its credentials, region and endpoint, and the credentials file with every
        principal's profile (a client config's `profile` picks its organisation's keys)."""
        return {**REGION_ENV, **self.keys(principal).env(), **self._files_env(), "AWS_ENDPOINT_URL": self.endpoint}

    def agent_env(self, client_id: str) -> dict[str, str]:
        """Environment for a client agent process: its organisation's own keys (the agent assumes its
        client role with them, `role_arn` in its config), region and endpoint."""
        return {
            **REGION_ENV,
            **self.principals.keys(client_id).env(),
            **self._files_env(),
            "AWS_ENDPOINT_URL": self.endpoint,
        }

    def _files_env(self) -> dict[str, str]:
        """The credentials and config files with every principal's profile (`admin`, `operator`, client ids)."""
        if self.credentials_path is None:
            return {}
        return {
            "AWS_SHARED_CREDENTIALS_FILE": str(self.credentials_path),
            "AWS_CONFIG_FILE": str(config_file_of(self.credentials_path)),
        }

    def _write_credentials(self) -> None:
        """The shared credentials file (and an empty config file beside it) with one profile per local
        principal, as each acts: `admin`, `operator` (the role session) and each client id (the
        organisation's own keys; its agent assumes its role: `profile` and `role_arn` in its config).
        This process's environment names both files until the cloud stops; agents started before the
        cloud were given its path (`credentials_path`)."""
        assert self.outputs is not None
        if self.credentials_path is None:
            self._credentials_dir = Path(tempfile.mkdtemp(prefix="fedstep-local-cloud-"))
            self.credentials_path = self._credentials_dir / "credentials"
        profiles = {ADMIN: self.keys(ADMIN), OPERATOR: self.keys(OPERATOR)}
        profiles.update({cid: self.principals.keys(cid) for cid in self.outputs.roles})
        lines = []
        for name, keys in profiles.items():
            lines += [
                f"[{name}]",
                f"aws_access_key_id = {keys.access_key}",
                f"aws_secret_access_key = {keys.secret_key}",
            ]
            lines += [f"aws_session_token = {keys.token}"] if keys.token else []
        config = config_file_of(self.credentials_path)
        self.credentials_path.parent.mkdir(parents=True, exist_ok=True)
        config.write_text("")
        staged = self.credentials_path.with_suffix(".tmp")
        staged.write_text("\n".join(lines) + "\n")
        staged.chmod(0o600)
        staged.replace(self.credentials_path)  # whole, for agents waiting to read it
        self._set_env(self._files_env())

    def start(self) -> LocalCloud:
        import warnings

        from moto.server import ThreadedMotoServer

        gaps.check_patch_point()
        moto_speed.apply()
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        logging.getLogger("moto").setLevel(logging.CRITICAL)  # the runner reports failures itself
        # moto's own word on a type it skips; `deploy.check_template` has named each, with its reason, or refused it
        warnings.filterwarnings("ignore", message="Tried to parse AWS::", category=UserWarning)
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        _, port = self.server.get_host_and_port()
        self.endpoint = f"http://127.0.0.1:{port}"
        if in_process_transport_by_default():
            self.transport = InProcessTransport(self.server._server.app, self.endpoint)
            self.transport.install()
        # MOTO_PORT: moto's Step Functions executor calls localhost:$MOTO_PORT.
        # AWS_ENDPOINT_URL: the in-process Lambda handlers talk to this cloud.
        self._set_env({**FAKE_CREDENTIALS, "MOTO_PORT": str(port), "AWS_ENDPOINT_URL": self.endpoint})
        gaps.reset_backends(self.endpoint)  # moto's state is per process: start from nothing
        gaps.apply_patches()
        gaps.LAMBDA_IN_PROCESS.enforce_memory = self.enforce_lambda_memory
        gaps.LAMBDA_IN_PROCESS.memory_uses.clear()
        self._create_principals()
        self.outputs = self.deploy()
        self._grant_principals()
        self._write_credentials()
        if self.enforce_iam:
            moto_api_raw(self.endpoint, "reset-auth", b"0")  # from now on, every request is authorized
        return self

    def _create_principals(self) -> None:
        """The administrator (while IAM is not yet enforced), then the operator's and each organisation's
        user, whose ARNs the stack's roles trust."""
        unauthenticated = boto.client("iam", boto.new_session(region_name=REGION), self.endpoint)
        self.principals = Principals({ADMIN: identities.create_admin(unauthenticated)})
        self._forget_credentials()
        iam = self.client("iam")
        self.principals.create(iam, [OPERATOR, *(c.id for c in self.config.clients)])

    def _forget_credentials(self) -> None:
        """Drop the role sessions, sessions and clients of an earlier start (moto forgot their keys)."""
        with self._lock:
            self._acting.clear()
            self._sessions.clear()
            self._clients.clear()

    def _grant_principals(self) -> None:
        """Each local user may assume its own role, and nothing else. A revoked client's organisation
        keeps its own permission, as it would on AWS: its role's trust policy is what refuses it."""
        assert self.outputs is not None
        roles = {OPERATOR: self.outputs.operator_role_arn, **self.outputs.roles, **self.outputs.revoked_roles}
        self.principals.grant_assume(self.client("iam"), {p: r for p, r in roles.items() if r})

    def deploy(self) -> StackOutputs:
        from fedstep.local import synth_cache
        from fedstep.local.synth_cache import synthesize

        started = time.monotonic()
        stack = self.config.stack_name
        cfn, s3, ssm = self.client("cloudformation"), self.client("s3"), self.client("ssm")
        account = self.client("sts").get_caller_identity()["Account"]
        assemblies = self.cache_dir / "cdk.out"
        with assembly_lock(synth_cache.slot(assemblies, self.config)) as directory:  # other processes' clouds wait
            synth_cache.seed_bundles(directory, assemblies)
            assembly, reused = synthesize(self.config, directory)
            synthesized = time.monotonic()
            deploy.prune_stale_assets(assembly, stack)
            deploy.check_template(assembly, stack)  # refuses a type it would skip unlisted; logs those it skips
            deploy.publish_assets(assembly, stack, s3, account, REGION)
            template = deploy.create_stack(assembly, stack, cfn, ssm)
            deploy.check_created(assembly, stack, cfn)
        synth_cache.prune(assemblies)
        gaps.SNS_SUBSCRIPTIONS.apply(cfn, self.client("sns"), self.client("sqs"), stack, template)
        gaps.STEP_FUNCTIONS_EXECUTION.apply(cfn, self.client("stepfunctions"), self.endpoint, stack, template)
        log.info(
            "local cloud at %s: %s in %.1f s, deployed in %.1f s",
            self.endpoint,
            "reused the synthesized template (nothing changed)" if reused else "synthesized",
            synthesized - started,
            time.monotonic() - synthesized,
        )
        return StackOutputs.of_stack(cfn, stack)

    def _set_env(self, values: dict[str, str]) -> None:
        for key, value in values.items():
            self._saved_env.setdefault(key, os.environ.get(key))
            os.environ[key] = value

    def stop(self) -> None:
        """Stop the server, restore the environment variables `start` changed and give moto back its own
        behaviour (moto is global to the process: one local cloud runs at a time)."""
        gaps.stop_stream_workers()
        if self.transport is not None:
            self.transport.uninstall()
            self.transport = None
        if self.server is not None:
            moto_api_raw(self.endpoint, "reset-auth", b"inf")  # moto's settings are the process's
            self.server.stop()
            self.server = None
        self._forget_credentials()
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env.clear()
        if self._credentials_dir is not None:
            shutil.rmtree(self._credentials_dir, ignore_errors=True)
            self._credentials_dir = self.credentials_path = None
        gaps.undo_all()
