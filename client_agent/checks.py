"""`fedstep-client run --dry-run`: check config, data, credentials, permissions and connectivity, write nothing.

Each check prints one line (ok / FAIL / skip) and the run exits 0 if all passed, 1 otherwise.
Permission checks never write: an upload is probed with `If-Match` on an object that does not exist
(S3 answers NoSuchKey after authorizing the PutObject), an item with a condition that can never
hold (DynamoDB answers ConditionalCheckFailed after authorizing the PutItem). The last check,
"model fit", loads the run's model (a local `--model` file, `--run`'s model, or the model of a round
message waiting in the queue, read with a visibility timeout of 0 so that it stays there) and checks
the client's data against it (`client_agent.data_contract`), training one batch on the throwaway
copy. `preflight` is the subset `run` does before polling, raising the first failure as a FedstepError.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import boto3
from botocore.exceptions import ClientError, NoCredentialsError, ProfileNotFound

from client_agent import objects
from client_agent.config import AgentConfig
from client_agent.errors import clean_error
from client_agent.training import Split
from fedstep.aws import boto
from fedstep.aws.ddb import to_attributes
from fedstep.aws.errors import AWS_ERRORS, error_code, explain
from fedstep.core import keys
from fedstep.core.errors import FedstepError
from fedstep.core.schemas import InvalidMessage, ObjectRef, RoundMessage, parse_message

T = TypeVar("T")

PROBE_RUN = "dry-run-probe"
"""Run id in the keys the permission probes name; nothing is ever written under it."""

_QUEUE_REGION = re.compile(
    r"^https://sqs\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?/|^https://([a-z0-9-]+)\.queue\.amazonaws"
)


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # "ok", "FAIL" or "skip"
    detail: str

    def line(self) -> str:
        return f"  {self.status:<5} {self.name:<14} {self.detail}"


def queue_region(queue_url: str) -> str | None:
    """The region in an SQS queue URL (https://sqs.<region>.amazonaws.com/...), None for other endpoints."""
    match = _QUEUE_REGION.match(queue_url)
    return (match.group(1) or match.group(2)) if match else None


def check_region(config: AgentConfig, session_region: str | None) -> str:
    """The region to use; FedstepError if there is none or it differs from the queue's."""
    region = config.region or session_region
    if not region:
        raise FedstepError("no AWS region: set region in the config file, --region, or AWS_REGION")
    in_url = queue_region(config.queue_url)
    if in_url and in_url != region:
        raise FedstepError(
            f"wrong region: the agent uses {region} but the queue is in {in_url}; set region to {in_url} "
            "(the stack's region, as `fedstep client-config` writes it)"
        )
    return region


def credentials_of(session: boto3.Session) -> Any:
    """The session's credentials from the standard chain; FedstepError saying where to put them."""
    credentials = session.get_credentials()
    if credentials is None:
        raise FedstepError(explain(NoCredentialsError()))
    return credentials


def base_session(config: AgentConfig) -> boto3.Session:
    """The credentials the agent starts from: its `profile`'s, else the standard chain's."""
    try:
        return boto.new_session(region_name=config.region, profile_name=config.profile)
    except ProfileNotFound:
        raise FedstepError(
            f"profile {config.profile!r} is in neither the AWS shared credentials nor the config file "
            "(AWS_SHARED_CREDENTIALS_FILE, AWS_CONFIG_FILE; default ~/.aws/credentials, ~/.aws/config)"
        ) from None


def open_session(config: AgentConfig, fail_fast: bool = False) -> boto3.Session:
    """The agent's session: the standard credential chain, or the client's role assumed with it.
    `fail_fast` (for the dry run): give up on an unreachable STS endpoint in seconds."""
    session = base_session(config)
    credentials_of(session)
    if not config.role_arn:
        return session
    try:
        return boto.assumed_role_session(
            config.role_arn, config.region, config.endpoint_url, f"fedstep-{config.client_id}", fail_fast, session
        )
    except AWS_ERRORS as exc:
        raise FedstepError(f"cannot assume role {config.role_arn}: {explain(exc)}") from None


class Probes:
    """The AWS checks, each returning its detail line or raising FedstepError. Clients are made on
    first use (the run's preflight needs only SQS)."""

    def __init__(self, config: AgentConfig, session: boto3.Session, region: str) -> None:
        self.config, self.region, self.session = config, region, session

    def _client(self, service: str) -> Any:
        return boto.client(service, self.session, self.config.endpoint_url, fail_fast=True)

    def _call(self, what: str, call: Callable[[], Any], fine: tuple[str, ...] = ()) -> Any:
        try:
            return call()
        except AWS_ERRORS as exc:
            if isinstance(exc, ClientError) and error_code(exc) in fine:
                return None
            raise FedstepError(explain(exc, what=what, region=self.region)) from None

    def identity(self) -> str:
        return self._call("the AWS endpoint", self._client("sts").get_caller_identity)["Arn"]

    def queue(self) -> str:
        url = self.config.queue_url
        attrs = self._call(
            f"queue {url}",
            lambda: self._client("sqs").get_queue_attributes(
                QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"]
            ),
        )["Attributes"]
        waiting = int(attrs.get("ApproximateNumberOfMessages", 0))
        return f"{url} reachable, {waiting} message(s) waiting"

    def uploads(self) -> str:
        key = keys.update_key(PROBE_RUN, 0, self.config.client_id)
        bucket = self.config.bucket
        self._call(
            f"s3://{bucket}/{key}",
            lambda: self._client("s3").put_object(Bucket=bucket, Key=key, Body=b"", IfMatch='"0"'),
            fine=("NoSuchKey", "PreconditionFailed", "412", "404"),
        )
        return f"s3://{bucket}: PutObject on this client's update keys allowed (nothing written)"

    def item(self, key: dict[str, str], what: str) -> str:
        table = self.config.table
        self._call(
            f"table {table}",
            lambda: self._client("dynamodb").put_item(
                TableName=table,
                Item=to_attributes(key),
                ConditionExpression="attribute_exists(pk) AND attribute_not_exists(pk)",
            ),
            fine=("ConditionalCheckFailedException",),
        )
        return f"table {table}: PutItem of {what} allowed (nothing written)"

    def model(self, key: str, ref: ObjectRef | None) -> bytes:
        """The `.keras` file at `key` in the bucket; with a round message's `ref`, exactly its size
        and sha256 (`client_agent.objects`: a larger object is refused unread)."""
        bucket = self.config.bucket
        where = f"s3://{bucket}/{key}"
        try:
            if ref is not None:
                return objects.read(self._client("s3"), bucket, ref)
            return self._client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
        except AWS_ERRORS as exc:
            if isinstance(exc, ClientError) and error_code(exc) in ("NoSuchKey", "404"):
                raise FedstepError(
                    f"{where} does not exist: is the run id right? (`fedstep runs` lists them)"
                ) from None
            raise FedstepError(explain(exc, what=where, region=self.region)) from None

    def waiting_round(self) -> RoundMessage | None:
        """A round message waiting in the queue, read without taking it: received with a visibility
        timeout of 0, so it stays visible to the agent (the receive does count towards the queue's
        dead-letter limit of 5 receives). None when no round message is waiting."""
        url = self.config.queue_url
        resp = self._call(
            f"queue {url}",
            lambda: self._client("sqs").receive_message(
                QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0, WaitTimeSeconds=0
            ),
        )
        for message in resp.get("Messages", []):
            try:
                parsed = parse_message(json.loads(message["Body"]))
            except (InvalidMessage, ValueError, KeyError):
                continue
            if isinstance(parsed, RoundMessage) and parsed.model is not None:
                return parsed
        return None


class Skipped(Exception):
    """A check that cannot run here; the message says why and how to enable it."""


class Checklist:
    """The checks so far; `run` records one and returns its value (None when it failed or was skipped)."""

    def __init__(self) -> None:
        self.checks: list[Check] = []

    def run(self, name: str, step: Callable[[], tuple[T, str]]) -> T | None:
        try:
            value, detail = step()
        except FedstepError as exc:
            self.checks.append(Check(name, "FAIL", str(exc)))
            return None
        except Skipped as exc:
            self.checks.append(Check(name, "skip", str(exc)))
            return None
        except Exception as exc:  # a user's module (loader, trainer) failing in a way not foreseen
            self.checks.append(Check(name, "FAIL", clean_error(exc)))
            return None
        self.checks.append(Check(name, "ok", detail))
        return value

    def skip(self, names: tuple[str, ...], why: str = "needs the checks above") -> list[Check]:
        done = {c.name for c in self.checks}
        return self.checks + [Check(n, "skip", why) for n in names if n not in done]

    def add_skip(self, name: str, why: str) -> None:
        self.checks.append(Check(name, "skip", why))


CHECKS = (
    "config",
    "data",
    "credentials",
    "region",
    "role",
    "identity",
    "queue",
    "uploads",
    "update items",
    "heartbeats",
    "model fit",
)


@dataclass(frozen=True)
class ModelChoice:
    """Which model the dry run checks the data against: a local `.keras` file (`--model`), a run's
    model from the bucket (`--run`), else the run of a round message waiting in the queue."""

    path: str | None = None
    run_id: str | None = None


NO_MODEL = (
    "pass --run RUN (the run's id, from the operator) or --model FILE.keras to check the data against the run's model"
)


def dry_run(
    load_config: Callable[[], AgentConfig],
    load_data: Callable[[AgentConfig], tuple[Split, str]],
    model: ModelChoice | None = None,
) -> list[Check]:
    """Every check in `CHECKS` order; a check whose prerequisite failed is skipped. `load_data` loads the
    client's data as a run would and describes it in one line; `model` chooses the model the data is
    checked against ("model fit")."""
    c = Checklist()
    config = c.run("config", lambda: (cfg := load_config(), f"client {cfg.client_id}, queue {cfg.queue_url}"))
    if config is None:
        return c.skip(CHECKS)
    data = c.run("data", lambda: load_data(config))
    probes = _aws_checks(c, config)
    choice = model or ModelChoice()
    if data is None:
        c.add_skip("model fit", "needs the data check")
    elif probes is None and not choice.path:
        c.add_skip("model fit", f"needs the checks above, or a local model: {NO_MODEL}")
    else:
        c.run("model fit", lambda: model_fit(data, choice, probes))
    return sorted(c.skip(CHECKS), key=lambda check: CHECKS.index(check.name))


def _credentials(config: AgentConfig) -> tuple[boto3.Session, str]:
    session = base_session(config)
    return session, f"found ({credentials_of(session).method})"


def _aws_checks(c: Checklist, config: AgentConfig) -> Probes | None:
    """The credential, region, role, identity and permission checks; the probes when the identity
    check passed (the model check may read the queue and bucket), else None."""
    session = c.run("credentials", lambda: _credentials(config))
    if session is None:
        return None
    region = c.run("region", lambda: _region(config, session))
    if region is None:
        return None
    if config.role_arn:
        session = c.run("role", lambda: (open_session(config, fail_fast=True), f"assumed {config.role_arn}"))
        if session is None:
            return None
    else:
        c.add_skip("role", "no role_arn: the credentials are used as they are")
    probes = Probes(config, session, region)
    if c.run("identity", lambda: (True, probes.identity())) is None:
        return None
    c.run("queue", lambda: (True, probes.queue()))
    c.run("uploads", lambda: (True, probes.uploads()))
    update_key = keys.update_item_key(PROBE_RUN, 1, config.client_id)
    c.run("update items", lambda: (True, probes.item(update_key, "update items")))
    if config.heartbeat_s:
        c.run("heartbeats", lambda: (True, probes.item(keys.heartbeat_item_key(config.client_id), "its heartbeat")))
    else:
        c.add_skip("heartbeats", "heartbeat_s is 0 (heartbeats off)")
    return probes


def model_fit(data: Split, choice: ModelChoice, probes: Probes | None) -> tuple[bool, str]:
    """Load the model (safe mode) from `choice`, check the data against it (`client_agent.data_contract`)
    and train one batch on the throwaway copy; ok detail, FedstepError naming each problem and its
    fix, or `Skipped` when there is no model to check against."""
    from client_agent.keras_model import model_from_bytes

    source, architecture = _model_bytes(choice, probes)
    return True, check_fit(model_from_bytes(architecture), data, source)


def check_fit(model: Any, data: Split, source: str) -> str:
    """Check the data against `model` (`client_agent.data_contract`: input shape, labels against the
    output units and the compiled loss) and train one batch of it: what the "model fit" check of
    `fedstep-client check` and `fedstep local`'s pre-run model check do. `model` must be a throwaway
    copy (its weights change); `source` names it. The detail line, or FedstepError naming each
    problem and its fix."""
    from client_agent import data_contract
    from client_agent.keras_model import contract_of, one_batch

    contract = contract_of(model)
    problems = data_contract.model_problems(data, contract)
    if problems:
        raise FedstepError("; ".join(problems) + f" (checked against {source}: {contract.describe()})")
    (x_train, y_train), _ = data
    metrics = one_batch(model, x_train, y_train)
    loss = f", loss {metrics['loss']:.4g}" if "loss" in metrics else ""
    batch = min(len(x_train), 32)
    return f"{source}: {contract.describe()}; one batch of {batch} examples trained{loss} (nothing kept)"


def _model_bytes(choice: ModelChoice, probes: Probes | None) -> tuple[str, bytes]:
    """(what the model is, its `.keras` bytes)."""
    if choice.path:
        try:
            with open(choice.path, "rb") as f:
                return f"model file {choice.path}", f.read()
        except OSError as exc:
            raise FedstepError(f"cannot read model file {choice.path}: {exc.strerror}") from None
    if probes is None:
        raise Skipped(NO_MODEL)
    if choice.run_id:
        try:
            keys.check_id("run id", choice.run_id)
        except ValueError as exc:
            raise FedstepError(f"--run: {exc}") from None
        return f"run {choice.run_id}'s model", probes.model(keys.model_key(choice.run_id), None)
    waiting = probes.waiting_round()
    if waiting is None:
        raise Skipped(f"no round message waiting in the queue names a run: {NO_MODEL}")
    ref = waiting.model
    assert ref is not None  # waiting_round returns only messages that name the model
    data = probes.model(ref.key, ref)
    return f"run {waiting.run_id}'s model (its round {waiting.round} is waiting in the queue)", data


def _region(config: AgentConfig, session: boto3.Session) -> tuple[str, str]:
    region = check_region(config, session.region_name)
    return region, f"{region} (the queue's region)" if queue_region(config.queue_url) else region


def preflight(config: AgentConfig, session: boto3.Session) -> None:
    """Before polling: the region matches the queue and the queue is reachable with these credentials."""
    region = check_region(config, session.region_name)
    Probes(config, session, region).queue()
