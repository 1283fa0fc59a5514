"""LocalCloud: start a moto server on 127.0.0.1 (a free port) and deploy fedstep's stack into it.

    with LocalCloud(DeploymentConfig(clients=...), workdir) as cloud:
        cloud.outputs.bucket, cloud.outputs.queues["client-1"], cloud.env()  # for client processes

The stack is the same synthesized template `cdk synth` produces, deployed with CloudFormation calls;
`fedstep.local.gaps` fills in what moto lacks, one shim per gap: its patches of moto are applied when the
cloud starts and undone when it stops. Lambda handlers run in this process.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3

from fedstep.aws import boto
from fedstep.aws.stack import StackOutputs
from fedstep.local import deploy, gaps

log = logging.getLogger(__name__)

REGION = "us-east-1"
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
    "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled",
}
CACHE = gaps.REPO / ".cache"


@contextlib.contextmanager
def assembly_lock(cache_dir: Path) -> Iterator[None]:
    """Hold `cache_dir`'s lock while synthesizing into its assembly and deploying from it: another
    process's local cloud (a parallel test worker, a second `fedstep local`) waits its turn."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / "assembly.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class LocalCloud:
    def __init__(self, config: Any, cache_dir: Path = CACHE, *, enforce_lambda_memory: bool = False) -> None:
        """`enforce_lambda_memory`: run each Lambda invocation in its own process and fail it, as Lambda
        does, when its peak memory passes the function's MemorySize (slower: each imports its handler)."""
        self.config = config
        self.enforce_lambda_memory = enforce_lambda_memory
        self.cache_dir = Path(cache_dir)
        self.server: Any = None
        self.endpoint = ""
        self.outputs: StackOutputs | None = None
        self._saved_env: dict[str, str | None] = {}

    def __enter__(self) -> LocalCloud:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def env(self) -> dict[str, str]:
        """Environment for processes that talk to this cloud (fake credentials, region, endpoint)."""
        return {**FAKE_CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint}

    def client(self, service: str) -> Any:
        return boto.client(service, boto3.Session(region_name=REGION), self.endpoint)

    def start(self) -> LocalCloud:
        import warnings

        from moto.server import ThreadedMotoServer

        gaps.check_patch_point()
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        logging.getLogger("moto").setLevel(logging.CRITICAL)  # the runner reports failures itself
        warnings.filterwarnings("ignore", message="Tried to parse AWS::", category=UserWarning)
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        _, port = self.server.get_host_and_port()
        self.endpoint = f"http://127.0.0.1:{port}"
        # MOTO_PORT: moto's Step Functions executor calls localhost:$MOTO_PORT.
        # AWS_ENDPOINT_URL: the in-process Lambda handlers talk to this cloud.
        self._set_env({**FAKE_CREDENTIALS, "MOTO_PORT": str(port), "AWS_ENDPOINT_URL": self.endpoint})
        gaps.reset_backends(self.endpoint)  # moto's state is per process: start from nothing
        gaps.apply_patches()
        gaps.LAMBDA_IN_PROCESS.enforce_memory = self.enforce_lambda_memory
        gaps.LAMBDA_IN_PROCESS.memory_uses.clear()
        self.outputs = self.deploy()
        return self

    def deploy(self) -> StackOutputs:
        from fedstep.local.synth_cache import synthesize

        started = time.monotonic()
        stack = self.config.stack_name
        cfn, s3, ssm = self.client("cloudformation"), self.client("s3"), self.client("ssm")
        account = self.client("sts").get_caller_identity()["Account"]
        with assembly_lock(self.cache_dir):  # local clouds in other processes share the assembly's directory
            assembly, reused = synthesize(self.config, self.cache_dir / "cdk.out")
            synthesized = time.monotonic()
            deploy.prune_stale_assets(assembly, stack)
            deploy.publish_assets(assembly, stack, s3, account, REGION)
            template = deploy.create_stack(assembly, stack, cfn, ssm)
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
        if self.server is not None:
            self.server.stop()
            self.server = None
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env.clear()
        gaps.undo_all()
