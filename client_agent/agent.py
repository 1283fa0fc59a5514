"""The agent's loop: long-poll the client's own queue and serve each round message.

Serving a round: download the architecture and global weights (sha256-checked), train locally,
upload the update (the trained weights minus the global ones) under the client's own prefix, write
the update item into the client's own partition, and only then delete the message (DESIGN
invariant 2). A message is received with a short visibility timeout (`visibility_timeout_s`), which
the agent renews while it serves the message: an agent killed mid-round stops renewing, so its round
is back in the queue within that timeout. A failure before the item is written releases the message
at once (visibility 0), and the agent polls again after a back-off, so it (or a restarted agent)
serves the round well within the round's deadline. Each failed round is also reported to the operator
at once: the run's failure item in the client's own partition (`FailureItem`: the round, the attempt
and the error on one line), shown by `fedstep status`, `fedstep local` and a QuorumNotMet cause.

The server tells the agent when it rejected an update: its feedback item for the run (which only
the server writes) names the round, the file's sha256 and the reason. The agent logs it, and when a
round is published again (a retried round) after its update was rejected, it trains again and
replaces it. Each run has its own feedback item, so a rejection in one run never hides another's.

A stopped run (`fedstep stop`) is never served: the agent reads the run's stop marker (a server item
its role may read, no client may write) before it trains and again before it uploads, and skips the
round (the message deleted, nothing uploaded) once the marker is there. The server refuses the run's
rounds after the stop anyway; the checks spare the site the training and keep its update at home.

A secure round (the round message's `secagg`, `--secure-aggregation`) is served in four phases, each
its own message: the round message (trained as any round, then the client's keys advertised instead
of an upload), then `SecAggPhaseMessage`s for the share, input and reveal phases (`serve_phase`). The
round's secrets are kept in the cache between them (`client_agent.secure_round`), so a restarted agent
finishes its round; a phase whose secrets it does not hold is logged and deleted (the server counts
the client as dropped). Under secure aggregation a masked update is written once per attempt: the
"replace a rejected update" path is refused (a retried round, the next attempt, gets fresh keys).

Every object a message references is read with a ranged GET of exactly its `bytes`: an object larger
than its reference is refused before its body is read (`client_agent.objects`).

What the agent does to the trained weights before the upload is its list of client steps
(`client_agent.steps`): delta, clip, privacy accounting, encode, as the round's instructions choose.

Privacy (the round's `dp_mode` instructions, `client_agent.dp_sgd`): under "client-clip" the agent
clips the update to the round's `dp_clip` before upload and reports `within_clip`; under "dp-sgd"
the trainer trains with DP-SGD and the agent accounts the round in its privacy ledger
(`client_agent.privacy_ledger`) and reports the run's epsilon and delta. Before a DP-SGD round it
checks the data owner's limits (`dp_epsilon_budget`, `dp_max_delta`): a round that would break
them, or whose privacy instructions are unusable, is declined - a `DeclineItem` in place of the
update item, the message deleted as if served, the heartbeat state "declined" - and never trained.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import boto3
import numpy as np
from botocore.exceptions import BotoCoreError, ClientError

from client_agent import dp_sgd, objects, round_privacy, steps
from client_agent.checks import open_session, preflight
from client_agent.config import AgentConfig
from client_agent.errors import clean_error
from client_agent.heartbeat import Heartbeats
from client_agent.outcomes import Outcome
from client_agent.privacy_ledger import PrivacyLedger
from client_agent.progress import Progress
from client_agent.residuals import ResidualStore
from client_agent.round_privacy import Declined
from client_agent.secure_round import SUPERSEDES, Refused, Revealed, RoundSecrets, SecretStore, Unreadable, protocol
from client_agent.steps import RoundPrivacy
from client_agent.training import CannotEvaluate, FunctionTrainer, Trainer
from fedstep.aws import boto
from fedstep.aws.ddb import Items
from fedstep.aws.errors import AWS_ERRORS, error_code, explain, is_transient
from fedstep.core import keys, limits, tensors
from fedstep.core.clock import seconds_since, utc_now
from fedstep.core.errors import FedstepError
from fedstep.core.schemas import (
    MASKED_ENCODING,
    MASKED_TENSOR,
    PHASE_REVEAL,
    PHASE_SHARE,
    DeclineItem,
    EvalItem,
    EvaluateMessage,
    FailureItem,
    Feedback,
    InvalidMessage,
    ObjectRef,
    RoundMessage,
    RunEndedMessage,
    RunStop,
    SchemaMismatch,
    SecAggInboxItem,
    SecAggKeysItem,
    SecAggPhaseMessage,
    SecAggRevealItem,
    SecAggRoster,
    SecAggShareItem,
    StatsItem,
    StatsMessage,
    TrainingConfig,
    UpdateItem,
    parse_message,
)
from fedstep.core.statistics import FederatedStatistics, Standardization, StatsRequest, site_statistics
from fedstep.core.updates import UNSENT

log = logging.getLogger("fedstep.client")


def schema_advice(exc: SchemaMismatch) -> str:
    """What an agent says about a message of another wire schema: both versions, and who upgrades."""
    if exc.found > exc.supported:
        return (
            f"the stack sent wire schema {exc.found} and this agent reads schema {exc.supported}: upgrade this "
            "agent (pip install -U the fedstep release the operator deployed) and start it again"
        )
    return (
        f"the stack sent wire schema {exc.found}, older than this agent's schema {exc.supported}: the operator "
        f"must upgrade the stack (cdk deploy of this release), or run an agent of schema {exc.found}"
    )


@dataclass
class RoundReport:
    """What one served round did; logged as the round's summary line."""

    run_id: str
    round: int
    num_examples: int
    metrics: dict[str, float]
    bytes_down: int
    bytes_up: int
    seconds: float
    phases: dict[str, float] = field(default_factory=dict)
    """Seconds per phase of the round: `download` (architecture and global model), `train` (the
    train function, evaluations included) and `upload` (the update file and item)."""

    def line(self) -> str:
        """round 3 of run-x | 383 examples | loss 0.912 -> 0.620 | accuracy 0.712 -> 0.801 | down .. | 1.4 s
        (download 0.05 s, train 1.21 s, upload 0.12 s)"""
        parts = [f"round {self.round} of {self.run_id}", f"{self.num_examples} examples"]
        parts += [f"{name} {shown}" for name in ("loss", "accuracy") if (shown := self._before_after(name))]
        took = f"{self.seconds:.1f} s"
        if self.phases:
            took += " (" + ", ".join(f"{name} {s:.2f} s" for name, s in self.phases.items()) + ")"
        parts += [f"down {_size(self.bytes_down)} up {_size(self.bytes_up)}", took]
        return " | ".join(parts)

    def _before_after(self, name: str) -> str:
        m = self.metrics
        if f"test_{name}" in m:
            before = m.get(f"test_{name}_before")
            after = f"{m[f'test_{name}']:.4f} (test)"
            return f"{before:.4f} -> {after}" if before is not None else after
        return f"{m[f'train_{name}']:.4f} (train)" if f"train_{name}" in m else ""

    def fields(self) -> dict[str, Any]:
        """The same facts as structured fields (for `--log-format json`)."""
        return {
            "run_id": self.run_id,
            "round": self.round,
            "examples": self.num_examples,
            "metrics": self.metrics,
            "bytes_down": self.bytes_down,
            "bytes_up": self.bytes_up,
            "seconds": self.seconds,
            "phases": self.phases,
        }


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


FIRST_RETRY_DELAY_S = 5.0
"""After a failed round the agent waits this long before it polls again, doubling up to
`MAX_RETRY_DELAY_S` while rounds keep failing (the queue moves a message to the client's
dead-letter queue after 5 receives, so retries are spread over about two minutes)."""
MAX_RETRY_DELAY_S = 60.0


def _backoff(previous_s: float) -> float:
    """The next wait after `previous_s` (0: the first): FIRST_RETRY_DELAY_S, doubling to MAX_RETRY_DELAY_S."""
    return min(MAX_RETRY_DELAY_S, max(FIRST_RETRY_DELAY_S, previous_s * 2))


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        trainer: Trainer,
        session: boto3.Session | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.config = config
        self.trainer = trainer
        self.session = session or open_session(config)
        self.progress = progress or Progress(enabled=False)
        self.sqs = boto.client("sqs", self.session, config.endpoint_url)
        self.s3 = boto.client("s3", self.session, config.endpoint_url)
        self.table = Items(config.table, boto.client("dynamodb", self.session, config.endpoint_url))
        self.heartbeats = Heartbeats(config.client_id, self.table, config.heartbeat_s)
        self.cache = Path(config.cache_dir or Path.home() / ".cache" / "fedstep")
        self.ledger = PrivacyLedger.for_client(self.cache, config.client_id)
        self.residuals = ResidualStore.for_client(self.cache, config.client_id)
        self.secrets = SecretStore.for_client(self.cache, config.client_id)
        self.last_report: RoundReport | None = None
        self._told: Feedback | None = None
        self._said_no_dp: set[str] = set()
        self._said_no_stop_grant = False
        self._ended_runs: set[str] = set()
        """Runs whose run-ended message this agent has seen: their leftover rounds are skipped."""
        self._started = time.time()

    # -- the loop ---------------------------------------------------------------------------------
    def run(self, follow: bool = False, once: bool = False) -> int:
        """Serve rounds until a run ends (or forever with `follow`); `once`: stop after one round.

        Checks the queue first (a misconfiguration fails at once, with its cause). Network outages
        and throttling while polling are waited out with backoff (5 s doubling to 60 s); an error
        that waiting cannot fix (access denied, queue deleted) stops the agent with its cause. After
        a failed round (its message released) the agent waits `FIRST_RETRY_DELAY_S`, doubling to
        `MAX_RETRY_DELAY_S` while rounds keep failing, before it polls again.
        """
        preflight(self.config, self.session)
        log.info("client %s polling %s", self.config.client_id, self.config.queue_url)
        self.heartbeats.start()
        delay = retry = 0.0
        try:
            while True:
                try:
                    outcome = self.poll_once()
                except AWS_ERRORS as exc:
                    if not is_transient(exc):
                        raise FedstepError(explain(exc, what=f"queue {self.config.queue_url}")) from None
                    delay = _backoff(delay)
                    log.warning("cannot poll the queue, retrying in %.0f s: %s", delay, explain(exc))
                    time.sleep(delay)
                    continue
                if delay:
                    log.info("polling the queue again")
                    delay = 0.0
                if outcome is Outcome.KEPT:
                    retry = _backoff(retry)
                    log.info("polling again in %.0f s to try the round again", retry)
                    time.sleep(retry)
                elif outcome is not None:
                    retry = 0.0
                if outcome is Outcome.RUN_ENDED and not follow:
                    return 0
                if once and outcome in (Outcome.SERVED, Outcome.ALREADY_SERVED, Outcome.DECLINED, Outcome.REFUSED):
                    return 0
        finally:
            self.heartbeats.stop()

    def poll_once(self) -> Outcome | None:
        """One receive call; serve the message if one came. None when the queue was empty. The message
        is hidden from other receives for `visibility_timeout_s` (renewed while it is served)."""
        resp = self.sqs.receive_message(
            QueueUrl=self.config.queue_url,
            MaxNumberOfMessages=1,
            WaitTimeSeconds=self.config.poll_wait_s,
            VisibilityTimeout=self.config.visibility_timeout_s,
            AttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
        )
        messages = resp.get("Messages", [])
        return self.handle(messages[0]) if messages else None

    def handle(self, message: dict[str, Any]) -> Outcome:
        try:
            parsed = parse_message(json.loads(message["Body"]))
        except SchemaMismatch as exc:
            log.error("message %s goes to the dead-letter queue: %s", message.get("MessageId"), schema_advice(exc))
            self._release(message)
            return Outcome.REJECTED
        except (InvalidMessage, ValueError) as exc:
            # Not deleted: released at once, so after the queue's maxReceiveCount SQS moves it to the
            # client's dead-letter queue, where an operator can inspect it.
            log.error("malformed message %s goes to the dead-letter queue: %s", message.get("MessageId"), exc)
            self._release(message)
            return Outcome.REJECTED
        if isinstance(parsed, EvaluateMessage | StatsMessage):  # served even for an ended run: its main use
            return self.handle_request(message, parsed)
        if isinstance(parsed, RunEndedMessage):
            self._ended_runs.add(parsed.run_id)
            self.secrets.forget_run(parsed.run_id)  # its secure rounds' secrets are of no more use
            self._delete(message)
            if _sent_at(message) < self._started - limits.MAX_CLOCK_SKEW_S:
                log.info(
                    "run %s had ended before this agent started (%s); its message is ignored",
                    parsed.run_id,
                    parsed.reason,
                )
                return Outcome.STALE
            self._say_rejection(self._feedback(parsed.run_id))  # e.g. of the run's last round
            log.info("run %s ended (%s) after %d rounds", parsed.run_id, parsed.reason, parsed.rounds_completed)
            return Outcome.RUN_ENDED
        stale = self._stale(parsed)
        what = _round_name(parsed)
        if stale:
            log.info("%s skipped: %s", what, stale)
            self._delete(message)
            return Outcome.STALE
        try:
            with self._kept_invisible(message):
                outcome = (
                    self.serve_phase(parsed) if isinstance(parsed, SecAggPhaseMessage) else self.serve_round(parsed)
                )
        except (KeyboardInterrupt, SystemExit):
            # Stopped (SIGTERM, Ctrl-C) mid-round: abandon the round and release the message at once,
            # so this agent's next start (or nobody, until the deadline) serves it.
            self._release(message)
            raise
        except Exception as exc:  # a failed round must not stop the agent; the message is tried again
            if isinstance(exc, (ClientError, BotoCoreError)):
                detail = explain(exc)
            else:
                detail = str(exc) if isinstance(exc, FedstepError) else clean_error(exc)
            log.error(
                "%s failed, the message stays queued and is released for another try: %s",
                what,
                detail,
                exc_info=log.isEnabledFor(logging.DEBUG),
            )
            self._report_failure(parsed, detail, message)
            self._release(message)
            return Outcome.KEPT
        self._delete(message)
        return outcome

    def _report_failure(self, msg: RoundMessage | SecAggPhaseMessage, detail: str, message: dict[str, Any]) -> None:
        """Tell the operator at once that this round failed here: the run's failure item in this client's
        own partition (one per run, overwritten), with the error and the message's receive count. Best
        effort: a failure item that cannot be written is logged, and the round is tried again anyway."""
        attempt = _receive_count(message)
        item = FailureItem.of(msg.run_id, msg.round, self.config.client_id, detail, attempt, utc_now())
        try:
            self.table.put(item.to_item())
        except (ClientError, BotoCoreError) as exc:
            log.warning("could not report the failure to the operator: %s", explain(exc))

    def _stale(self, msg: RoundMessage | SecAggPhaseMessage) -> str | None:
        """Why a round message is a leftover not worth training (None: serve it): its run ended, or its
        deadline passed (beyond the clock skew allowed), so the server no longer waits for it."""
        if msg.run_id in self._ended_runs:
            return "the run has ended"
        if seconds_since(msg.issued_at, time.time()) > msg.deadline_s + limits.MAX_CLOCK_SKEW_S:
            return f"its deadline ({msg.deadline_s} s after {msg.issued_at}) has passed"
        return None

    @contextmanager
    def _kept_invisible(self, message: dict[str, Any]) -> Iterator[None]:
        """While a message is served, renew its visibility to `visibility_timeout_s` every
        `visibility_extend_s`, so that long local training never lets SQS hand the message out again
        (and an agent that dies stops renewing: the message returns within `visibility_timeout_s`)."""
        stop = threading.Event()
        every, timeout = self.config.visibility_extend_s, self.config.visibility_timeout_s

        def extend() -> None:
            while not stop.wait(every):
                try:
                    self.sqs.change_message_visibility(
                        QueueUrl=self.config.queue_url,
                        ReceiptHandle=message["ReceiptHandle"],
                        VisibilityTimeout=timeout,
                    )
                except (ClientError, BotoCoreError) as exc:
                    log.warning("could not extend the message's visibility: %s", exc)

        thread = threading.Thread(target=extend, name="visibility", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)

    def _release(self, message: dict[str, Any]) -> None:
        try:
            self.sqs.change_message_visibility(
                QueueUrl=self.config.queue_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
            )
        except (ClientError, BotoCoreError) as exc:
            log.warning("could not release the message (it returns after its visibility timeout): %s", exc)

    def _delete(self, message: dict[str, Any]) -> None:
        self.sqs.delete_message(QueueUrl=self.config.queue_url, ReceiptHandle=message["ReceiptHandle"])

    # -- evaluation requests ----------------------------------------------------------------------
    def handle_request(self, message: dict[str, Any], msg: EvaluateMessage | StatsMessage) -> Outcome:
        """An operator's request (`fedstep evaluate`, `fedstep stats`): answered whether or not its run
        has ended, and skipped (deleted) once past its deadline, when the operator no longer waits. A
        failure to reach S3 or DynamoDB leaves the message queued (it comes back); a failure to
        evaluate or to compute is the answer (an item with its `error`)."""
        what = _request_name(msg)
        if seconds_since(msg.issued_at, time.time()) > msg.deadline_s + limits.MAX_CLOCK_SKEW_S:
            log.info("%s skipped: its deadline (%d s after %s) has passed", what, msg.deadline_s, msg.issued_at)
            self._delete(message)
            return Outcome.STALE
        try:
            with self._kept_invisible(message):
                serve = self.serve_evaluation if isinstance(msg, EvaluateMessage) else self.serve_statistics
                outcome = serve(msg)  # type: ignore[arg-type]
        except (KeyboardInterrupt, SystemExit):
            self._release(message)
            raise
        except Exception as exc:  # S3 or DynamoDB unreachable: the message is tried again
            log.error(
                "%s failed, the message stays queued and is released for another try: %s",
                what,
                _evaluation_failure(exc),
                exc_info=log.isEnabledFor(logging.DEBUG),
            )
            self._release(message)
            return Outcome.KEPT
        self._delete(message)
        return outcome

    def serve_statistics(self, msg: StatsMessage) -> Outcome:
        """This site's bounded sums of its local training split's features (before any
        standardization), as the request asks (`fedstep.core.statistics.site_statistics`), written
        into this client's own partition; with the request's noise when it has an epsilon, drawn
        from the operating system's randomness. ALREADY_SERVED when the answer exists."""
        client = self.config.client_id
        try:
            request = StatsRequest.parse(msg.request)
            x = self._training_features()
            noise = 0.0
            if request.epsilon is not None:
                from fedstep.privacy.accounting import statistics_noise_std  # dp-accounting: only when asked

                noise = statistics_noise_std(request.epsilon, request.delta, x.shape[1], request.bins > 0)
            answer = site_statistics(x, request, noise, seed=None)
            item = StatsItem(msg.request_id, client, answer.features, answer.bins, answer.encode(), utc_now(), noise)
        except (ClientError, BotoCoreError, KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            reason = limits.reason(_evaluation_failure(exc))
            item = StatsItem(msg.request_id, client, 0, 0, b"", utc_now(), error=reason)
        if not self.table.put_once(item.to_item()):
            log.info("statistics request %s was already answered; message redelivered", msg.request_id)
            return Outcome.ALREADY_SERVED
        if item.error:
            log.warning("statistics request %s: cannot answer: %s", msg.request_id, item.error)
        else:
            noise_text = f", noise std {item.noise_std:.3g}" if item.noise_std else ", exact"
            log.info("statistics request %s | %d features%s", msg.request_id, item.features, noise_text)
        return Outcome.EVALUATED

    def _training_features(self) -> np.ndarray:
        """The local training split's features as the trainer holds them (before standardization)."""
        raw = getattr(self.trainer, "raw_data", None)
        if raw is None:
            raise FedstepError("this agent's trainer does not expose its data, so it cannot compute statistics")
        return np.asarray(raw[0][0])

    def _standardize(self, training: TrainingConfig, where: str) -> None:
        """Prepare the trainer's data as the run asks (`training.standardize`): as it is, standardized
        with this site's own statistics, or with the run's federated statistics (the object is read
        once, checked by its sha256, and kept in the cache)."""
        use = getattr(self.trainer, "use_standardization", None)
        if use is None:
            if training.standardize != "none":
                raise FedstepError(
                    f"the run standardizes its features ({training.standardize}) but this agent's trainer "
                    "cannot: use a trainer built by `client_agent.training.load_trainer`"
                )
            return
        if training.standardize == "none":
            use("none", lambda: None)
        elif training.standardize == "local":
            use("local", lambda: Standardization.local(self._training_features()))
        else:
            ref = training.standardization
            assert ref is not None  # TrainingConfig checks it
            use(ref.sha256, lambda: self._federated_standardization(ref, where))

    def _federated_standardization(self, ref: ObjectRef, where: str) -> Standardization:
        cached = self.cache / f"{ref.sha256}.statistics.json"
        if cached.exists() and hashlib.sha256(cached.read_bytes()).hexdigest() == ref.sha256:
            data = cached.read_bytes()
        else:
            data = self._download(ref, f"{where}: the run's federated statistics")
            self.cache.mkdir(parents=True, exist_ok=True)
            cached.write_bytes(data)
        return FederatedStatistics.decode(data, "the run's federated statistics").standardization()

    def serve_evaluation(self, msg: EvaluateMessage) -> Outcome:
        """Evaluate the requested global model (sha256-checked, like a round's) on the local test split
        with the trainer's `evaluate`, and write the answer into this client's own partition; an
        agent whose trainer cannot evaluate answers so. ALREADY_SERVED when the answer exists."""
        evaluate = getattr(self.trainer, "evaluate", None)
        try:
            if evaluate is None:
                raise CannotEvaluate("this agent's trainer has no evaluate function")
            architecture, _ = self._architecture(msg.model)
            data = self._download(msg.global_model, f"evaluation of round {msg.round}: global model")
            weights = tensors.decode(data, max_bytes=len(data))  # the server's file, its sha256 checked
            self._standardize(msg.training, f"evaluation of round {msg.round}")
            result = evaluate(architecture, weights, msg.training)
            item = EvalItem(
                msg.run_id,
                msg.round,
                msg.request_id,
                self.config.client_id,
                result.num_examples,
                result.metrics,
                utc_now(),
            )
        except (ClientError, BotoCoreError, KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            reason = limits.reason(_evaluation_failure(exc))
            item = EvalItem(msg.run_id, msg.round, msg.request_id, self.config.client_id, 0, {}, utc_now(), reason)
        if not self.table.put_once(item.to_item()):
            log.info("evaluation request %s was already answered; message redelivered", msg.request_id)
            return Outcome.ALREADY_SERVED
        if item.error:
            log.warning("evaluation of round %d of %s: cannot evaluate: %s", msg.round, msg.run_id, item.error)
        else:
            shown = " | ".join(f"{k} {v:.4f}" for k, v in sorted(item.metrics.items()))
            log.info("evaluation of round %d of %s | %d examples | %s", msg.round, msg.run_id, item.num_examples, shown)
        return Outcome.EVALUATED

    # -- one round --------------------------------------------------------------------------------
    def serve_round(self, msg: RoundMessage) -> Outcome:
        if self.heartbeats.privacy_run not in (None, msg.run_id):
            self.heartbeats.set_privacy(msg.run_id, None)  # another run: its figures come with its rounds
        self.heartbeats.set_state("training", msg.run_id, msg.round)
        outcome = None
        try:
            outcome = self._serve_round(msg)
            return outcome
        finally:
            if outcome is not Outcome.DECLINED:  # a declined round's state stays until the next one
                self.heartbeats.set_state("idle")

    def _serve_round(self, msg: RoundMessage) -> Outcome:
        stop = self._stop_of(msg.run_id)
        if stop is not None:
            return self._skip_stopped(msg, stop, "not trained")
        feedback = self._feedback(msg.run_id)
        self._say_rejection(feedback)
        existing = self._existing_update(msg)
        replace_rejected = False
        if msg.secagg is not None:  # a secure round: its keys, once per attempt; a masked update is never replaced
            answered = self._secure_round_answered(msg, feedback, existing)
            if answered is not None:
                return answered
        elif existing is not None:
            if not _rejected(feedback, msg, existing[0]):
                return self._report_existing_update(msg, *existing)
            log.warning("round %d of %s: training again to replace the rejected update", msg.round, msg.run_id)
            replace_rejected = True
        try:
            privacy = self._round_privacy(msg)
        except Declined as exc:
            return self._decline(msg, str(exc), replace_rejected)
        started = time.monotonic()
        log.info("round %d of %s: training", msg.round, msg.run_id)
        architecture, fetched = self._architecture(msg.model)
        global_bytes = self._download(msg.global_model, f"round {msg.round}: global model")
        # the server's file, its sha256 checked against the message: as large as the deployment allows
        global_weights = tensors.decode(global_bytes, max_bytes=len(global_bytes))
        if isinstance(self.trainer, FunctionTrainer):
            self.trainer.callbacks = lambda: self.progress.keras_callbacks(f"round {msg.round}: training")
        self._standardize(msg.training, f"round {msg.round}")
        downloaded = time.monotonic()
        result = self.trainer.fit(architecture, global_weights, replace(msg.training, instructions=msg.instructions))
        trained = time.monotonic()
        tensors.check_matches(result.weights, tensors.TensorSpec.of(global_weights))
        stop = self._stop_of(msg.run_id)  # stopped while it trained: the update stays here
        if stop is not None:
            return self._skip_stopped(msg, stop, "trained, not uploaded")
        ctx = steps.RoundContext(
            msg,
            self.config.client_id,
            privacy,
            global_weights,
            result.num_examples,
            result.metrics,
            self.ledger,
            self.heartbeats.set_privacy,
            residuals=self.residuals,
        )
        if msg.secagg is not None:
            # delta, clip, privacy accounting, quantise: the input is kept here until the input phase masks it
            quantised = steps.run_secure_steps(steps.steps_for(privacy, secure=True), result.weights, ctx)
            outcome, sent, last_phase = self._advertise(msg, ctx, quantised), 0, "advertise"
            if outcome is not Outcome.ADVANCED:
                return outcome
        else:
            # delta, clip, privacy accounting, encode: all before the upload (from then on the update may leave)
            data, update_item = steps.run_steps(steps.steps_for(privacy), result.weights, ctx)
            self._upload(update_item.update.key, data, f"round {msg.round}: update")
            item = replace(update_item, created_at=utc_now()).to_item()  # written once the file is on S3
            if replace_rejected:
                self.table.put(item)
            elif not self.table.put_once(item):
                return Outcome.ALREADY_SERVED
            outcome, sent, last_phase = Outcome.SERVED, len(data), "upload"
        report = RoundReport(
            msg.run_id,
            msg.round,
            result.num_examples,
            result.metrics,
            len(global_bytes) + fetched,
            sent,
            round(time.monotonic() - started, 2),
            {
                "download": round(downloaded - started, 3),
                "train": round(trained - downloaded, 3),
                last_phase: round(time.monotonic() - trained, 3),
            },
        )
        self.last_report = report
        log.info(report.line(), extra={"round_summary": report.fields()})
        return outcome

    def _stop_of(self, run_id: str) -> RunStop | None:
        """The run's stop marker (None: not stopped), one strongly consistent GetItem. A role without the
        grant to read it (a stack deployed before stop markers) is warned about once and served: the
        server still refuses the rounds of a stopped run."""
        try:
            return RunStop.of_item(run_id, self.table.get_item(keys.stop_item_key(run_id)))
        except ClientError as exc:
            if error_code(exc) not in ("AccessDeniedException", "AccessDenied"):
                raise
            if not self._said_no_stop_grant:
                self._said_no_stop_grant = True
                log.warning(
                    "cannot read whether run %s was stopped (%s): this client's role has no grant for stop "
                    "markers; the stack's operator should update the stack (`cdk deploy`)",
                    run_id,
                    error_code(exc),
                )
            return None

    def _skip_stopped(self, msg: RoundMessage | SecAggPhaseMessage, stop: RunStop, what: str) -> Outcome:
        """A round of a stopped run: skipped (its message deleted), and the run's later rounds too (its
        secure rounds' secrets deleted)."""
        self._ended_runs.add(msg.run_id)
        self.secrets.forget_run(msg.run_id)
        log.warning(
            "round %d of %s skipped (%s): the run was stopped at %s: %s",
            msg.round,
            msg.run_id,
            what,
            stop.stopped_at or "an unknown time",
            stop.reason,
        )
        return Outcome.STALE

    def _item(
        self,
        msg: RoundMessage,
        update: ObjectRef,
        num_examples: int,
        metrics: dict[str, float],
        privacy: dict[str, float] | None = None,
    ) -> UpdateItem:
        return UpdateItem(
            run_id=msg.run_id,
            round=msg.round,
            client_id=self.config.client_id,
            num_examples=num_examples,
            update=update,
            metrics=metrics,
            created_at=utc_now(),
            privacy=dict(privacy or {}),
        )

    # -- privacy ----------------------------------------------------------------------------------
    def _round_privacy(self, msg: RoundMessage) -> RoundPrivacy:
        """What the round's privacy instructions ask; raises `Declined` when the agent must not train
        it: unusable instructions, a delta above `dp_max_delta`, or a DP-SGD round that would take
        the run's epsilon past `dp_epsilon_budget` (or that cannot be accounted under a budget)."""
        budget = self.config.dp_epsilon_budget
        mode, clip, params = round_privacy.instructed(msg)
        if params is None:
            if budget is not None and msg.run_id not in self._said_no_dp:
                self._said_no_dp.add(msg.run_id)
                log.warning(
                    "run %s has no record-level differential privacy (no dp_mode dp-sgd): "
                    "dp_epsilon_budget %g is not enforced for it",
                    msg.run_id,
                    budget,
                )
            return RoundPrivacy(mode, clip)
        max_delta = self.config.dp_max_delta
        if max_delta is not None and (params.delta is None or params.delta > max_delta):
            shown = "none" if params.delta is None else f"{params.delta:g}"
            raise Declined(f"privacy: dp_delta {shown} is not within dp_max_delta {max_delta:g}")
        spend = round_privacy.dp_sgd_spend(msg, params, getattr(self.trainer, "num_examples", None))
        if spend is None and budget is None:
            log.warning(
                "round %d of %s: the trainer does not say its number of examples; not accounted", msg.round, msg.run_id
            )
        self.heartbeats.set_privacy(msg.run_id, self.ledger.privacy(msg.run_id).report())
        if budget is not None:
            after = self.ledger.privacy(msg.run_id, spend)
            if spend is None or after.epsilon is None:
                missing = "the number of training examples" if spend is None else f"instruction {dp_sgd.DELTA}"
                raise Declined(f"privacy budget: cannot account the round's epsilon without {missing}")
            total = after.epsilon + self.ledger.epsilon_of_other_runs(msg.run_id)
            if total > budget:
                raise Declined(f"privacy budget: epsilon would reach {total:.4g} > budget {budget:g}")
        return RoundPrivacy(mode, None, spend)

    def _decline(self, msg: RoundMessage, reason: str, replace_existing: bool) -> Outcome:
        """Write the round's decline item instead of training; the heartbeat says "declined"."""
        known = self.ledger.privacy(msg.run_id).report() if self.ledger.spends(msg.run_id) else {}
        item = DeclineItem(msg.run_id, msg.round, self.config.client_id, reason, utc_now(), known)
        if replace_existing:
            self.table.put(item.to_item())
        elif not (
            self.table.put_if(item.to_item(), SUPERSEDES, {":attempt": msg.attempt})  # over an earlier attempt's
            if msg.secagg is not None
            else self.table.put_once(item.to_item())
        ):
            log.info("round %d of run %s was already answered; message redelivered", msg.round, msg.run_id)
            return Outcome.ALREADY_SERVED
        log.warning("round %d of %s declined, not trained: %s", msg.round, msg.run_id, reason)
        self.heartbeats.set_state("declined", msg.run_id, msg.round)
        return Outcome.DECLINED

    def _feedback(self, run_id: str) -> Feedback | None:
        """The server's word on this client's last rejected update in run `run_id`, if any (None when
        it cannot be read: the agent then behaves as before feedback existed)."""
        try:
            item = self.table.get_item(keys.rejection_item_key(self.config.client_id, run_id))
            return Feedback.parse(item) if item else None
        except (ClientError, BotoCoreError, InvalidMessage) as exc:
            log.debug("could not read this client's feedback: %s", exc)
            return None

    def _say_rejection(self, feedback: Feedback | None) -> None:
        """Log a rejection the server recorded, once."""
        if feedback is None or feedback == self._told:
            return
        self._told = feedback
        log.warning(
            "the server rejected this client's update for round %d of %s: %s",
            feedback.round,
            feedback.run_id,
            feedback.reason,
        )

    def _existing_update(self, msg: RoundMessage) -> tuple[bytes, dict[str, Any]] | None:
        """This client's update file for the round and its metadata, if one was uploaded before (a
        redelivered or republished message); None otherwise. The role may read its own prefix, not the table's
        update items, so the file is the record of what was sent."""
        key = keys.update_key(msg.run_id, msg.round, self.config.client_id)
        try:
            data = self.s3.get_object(Bucket=self.config.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if error_code(exc) in ("NoSuchKey", "404", "AccessDenied"):
                return None
            raise
        meta = tensors.read_metadata(data)
        if meta.get("run_id") != msg.run_id or meta.get("round") != msg.round or "num_examples" not in meta:
            return None
        return data, meta

    def _report_existing_update(self, msg: RoundMessage, data: bytes, meta: dict[str, Any]) -> Outcome:
        """Write the item for an update uploaded before a restart, from the file's own metadata,
        instead of training again; ALREADY_SERVED when the item exists too."""
        key = keys.update_key(msg.run_id, msg.round, self.config.client_id)
        privacy = dict(meta.get("privacy", {}))
        item = self._item(msg, _ref(key, data), int(meta["num_examples"]), dict(meta.get("metrics", {})), privacy)
        if self.table.put_once(item.to_item()):
            log.info("round %d of run %s: reported the update uploaded before a restart", msg.round, msg.run_id)
            return Outcome.SERVED
        log.info("round %d of run %s was already served; message redelivered", msg.round, msg.run_id)
        return Outcome.ALREADY_SERVED

    # -- secure aggregation (client_agent.secure_round) -------------------------------------------
    def _secure_round_answered(
        self, msg: RoundMessage, feedback: Feedback | None, existing: tuple[bytes, dict[str, Any]] | None
    ) -> Outcome | None:
        """A secure round's message answered before training (None: train and advertise): its keys
        advertised before (a redelivered message: the same keys item again), its attempt over for this
        client, or its masked update rejected by the server, which is never replaced."""
        where = _round_name(msg)
        self.secrets.forget_before(msg.run_id, msg.round, msg.attempt)  # the server never goes back to them
        try:
            if self.secrets.revealed(msg.run_id, msg.round, msg.attempt) is not None:
                log.info("%s: this client has revealed its shares already; message redelivered", where)
                return Outcome.ALREADY_SERVED
            held = self.secrets.load(msg.run_id, msg.round, msg.attempt)
            if held is not None:
                written = self.table.put_once(self._keys_item(held).to_item())
                said = "; its keys item written now" if written else ""
                log.info("%s: its keys were advertised before (message redelivered%s)", where, said)
                return Outcome.ADVANCED
        except Unreadable as exc:
            return self._refuse(msg, str(exc))
        this_attempt = existing is not None and existing[1].get("attempt") == msg.attempt
        if existing is not None and _rejected(feedback, msg, existing[0]):
            if this_attempt:
                return self._refuse(
                    msg,
                    "the server rejected its masked update; under secure aggregation a masked update is never "
                    "replaced (not trained again: a retried round, the next attempt, gets fresh keys)",
                )
            log.info("%s: the server rejected its masked update of an earlier attempt; this one has fresh keys", where)
        elif this_attempt:
            log.info("%s: its masked update is uploaded already; message redelivered", where)
            return Outcome.ADVANCED
        return None

    def _advertise(self, msg: RoundMessage, ctx: steps.RoundContext, quantised: np.ndarray) -> Outcome:
        """Phase 1, once trained: fresh keys for the attempt, kept in the cache with the input before the
        keys item (the public keys and the seed's commitment) is written."""
        spec = msg.secagg
        assert spec is not None
        secagg = protocol()
        client = secagg.Client(
            self.config.client_id, secagg.RoundKey(msg.run_id, msg.round, msg.attempt), spec.threshold
        )
        held = RoundSecrets(
            msg.run_id,
            msg.round,
            msg.attempt,
            client.state(),
            min(ctx.num_examples, spec.max_examples),
            dict(ctx.metrics),
            dict(ctx.privacy),
            utc_now(),
        )
        self.secrets.save(held, quantised)  # a client never advertises keys it has not kept
        if not self.table.put_once(self._keys_item(held).to_item()):
            return self._refuse(
                msg,
                "it advertised keys for this attempt before, and its cache no longer holds their secrets",
            )
        log.info("%s: keys advertised; the masked update follows in the round's input phase", _round_name(msg))
        return Outcome.ADVANCED

    def _keys_item(self, held: RoundSecrets) -> SecAggKeysItem:
        advert = self._client_of(held).advertise()
        return SecAggKeysItem(
            held.run_id,
            held.round,
            held.attempt,
            self.config.client_id,
            advert.seal_public,
            advert.mask_public,
            advert.seed_commitment,
            held.created_at,
        )

    def _client_of(self, held: RoundSecrets) -> Any:
        """The protocol's client, as its kept state describes it (`Unreadable` when it does not)."""
        try:
            return protocol().Client.restore(held.client)
        except ValueError as exc:
            raise Unreadable(f"the secure round's secrets are unreadable: {exc}") from None

    def _refuse(self, msg: RoundMessage | SecAggPhaseMessage, reason: str) -> Outcome:
        """This client takes no further part in the attempt: said why, its secrets deleted, the message
        deleted (the server counts it as dropped)."""
        log.error("%s: this client takes no further part in the attempt: %s", _round_name(msg), reason)
        self.secrets.forget_secrets(msg.run_id, msg.round, msg.attempt)
        return Outcome.REFUSED

    def serve_phase(self, msg: SecAggPhaseMessage) -> Outcome:
        """A later phase of a secure round (share, input, reveal), from the attempt's kept secrets. A phase
        whose secrets this agent does not hold (a lost cache, another attempt) is logged and deleted: the
        server counts this client as dropped. A stopped run's share and input phases are skipped."""
        try:
            if msg.phase == PHASE_REVEAL:
                return self._reveal(msg)
            held = self.secrets.load(msg.run_id, msg.round, msg.attempt)
            if held is None:
                return self._no_secrets(msg)
            if self.config.client_id not in msg.members:
                return self._refuse(msg, f"it is not among the phase's {len(msg.members)} members")
            stop = self._stop_of(msg.run_id)
            if stop is not None:
                return self._skip_stopped(msg, stop, f"{msg.phase} phase")
            if msg.phase == PHASE_SHARE:
                return self._share(msg, held)
            return self._mask_and_upload(msg, held)
        except (Refused, Unreadable) as exc:
            return self._refuse(msg, str(exc))

    def _no_secrets(self, msg: SecAggPhaseMessage) -> Outcome:
        log.warning(
            "%s: this agent holds no secrets for it (its cache lost them, or they are another attempt's); "
            "the message is deleted and the server counts this client as dropped",
            _round_name(msg),
        )
        return Outcome.STALE

    def _share(self, msg: SecAggPhaseMessage, held: RoundSecrets) -> Outcome:
        """Phase 2: the roster read (sha256 and size checked against the message), this client's advert
        in it checked against its keys, and one share item per neighbour, sealed to it. The sealed shares
        are kept before any is written, so a redelivered message writes the same ones."""
        me = self.config.client_id
        if not held.outbox:
            try:
                roster = SecAggRoster.parse(json.loads(objects.read(self.s3, self.config.bucket, msg.roster)))
            except (FedstepError, ValueError) as exc:
                raise Refused(f"the roster {msg.roster.key} is unusable: {exc}") from None
            if (roster.run_id, roster.round, roster.attempt) != (msg.run_id, msg.round, msg.attempt):
                raise Refused(f"the roster {msg.roster.key} is of another round or attempt")
            client = self._client_of(held)
            mine = client.advertise()
            if roster.adverts.get(me) != (mine.seal_public, mine.mask_public, mine.seed_commitment):
                raise Refused("its advertisement in the roster is not the keys it advertised")
            if roster.threshold != client.threshold:
                raise Refused(f"the roster's threshold {roster.threshold} is not its round's {client.threshold}")
            adverts = {c: protocol().Advertisement(c, *values) for c, values in roster.adverts.items()}
            try:
                sealed = client.share_keys(adverts, roster.neighbours[me])
            except (FedstepError, ValueError) as exc:
                raise Refused(f"cannot share its keys: {exc}") from None
            held = replace(held, client=client.state(), outbox={j: s.hex() for j, s in sealed.items()})
            self.secrets.save(held)
        for recipient, sealed_hex in sorted(held.outbox.items()):
            item = SecAggShareItem(
                msg.run_id, msg.round, msg.attempt, me, recipient, bytes.fromhex(sealed_hex), utc_now()
            )
            self.table.put_once(item.to_item())  # one written before (a redelivered message) stays
        log.info("%s: %d sealed shares written, one per neighbour", _round_name(msg), len(held.outbox))
        return Outcome.ADVANCED

    def _mask_and_upload(self, msg: SecAggPhaseMessage, held: RoundSecrets) -> Outcome:
        """Phase 3: the shares relayed to this client's inbox opened and kept, its input masked (self-mask,
        and the pairwise masks with its neighbours among the members), uploaded as its update file (one
        uint32 tensor) and its update item written, once per attempt: an update the server rejected is
        never replaced."""
        me, where = self.config.client_id, _round_name(msg)
        key = keys.update_key(msg.run_id, msg.round, me)
        existing = self._existing_update(msg)
        if existing is not None and existing[1].get("attempt") == msg.attempt:
            data = existing[0]
            if _rejected(self._feedback(msg.run_id), msg, data):
                raise Refused(
                    "the server rejected its masked update; under secure aggregation a masked update is never "
                    "replaced (a retried round, the next attempt, gets fresh keys)"
                )
            item = replace(self._masked_item(msg, held), update=_ref(key, data))  # the file's metadata is the item's
            written = self.table.put_if(item.to_item(), SUPERSEDES, {":attempt": msg.attempt})
            said = "reported the masked update uploaded before" if written else "its masked update was reported already"
            log.info("%s: %s (message redelivered)", where, said)
            return Outcome.ADVANCED
        prefix = keys.secagg_sk(msg.run_id, msg.round, msg.attempt, "FROM#")
        inbox: dict[str, bytes] = {}
        for row in self.table.query_prefix(keys.inbox_pk(me), prefix):
            try:
                relayed = SecAggInboxItem.parse(row)
            except InvalidMessage as exc:
                raise Refused(f"a share relayed to it is malformed: {exc}") from None
            if relayed.sender in msg.members:
                inbox[relayed.sender] = relayed.sealed
        client = self._client_of(held)
        try:
            client.receive_shares(inbox)
        except ValueError as exc:
            raise Refused(f"cannot open the shares relayed to it: {exc}") from None
        shared = set(msg.members) & set(client.neighbours)
        missing = sorted(shared - set(inbox))
        if missing:
            log.warning("%s: no share relayed from %s; it cannot help unmask them", where, ", ".join(missing))
        self.secrets.save(replace(held, client=client.state()))  # the shares it holds, for the reveal
        masked = client.masked_input(self.secrets.input(msg.run_id, msg.round, msg.attempt), shared=shared)
        item = self._masked_item(msg, held)
        data = tensors.encode({MASKED_TENSOR: masked}, item.file_metadata(), element=tensors.U32)
        self._upload(key, data, f"round {msg.round}: masked update")
        item = replace(item, update=_ref(key, data), created_at=utc_now())  # written once the file is on S3
        if not self.table.put_if(item.to_item(), SUPERSEDES, {":attempt": msg.attempt}):
            log.info("%s: its masked update was reported already (message redelivered)", where)
            return Outcome.ADVANCED
        log.info("%s: masked update uploaded (%s, masked with %d neighbours)", where, _size(len(data)), len(shared))
        return Outcome.ADVANCED

    def _masked_item(self, msg: SecAggPhaseMessage, held: RoundSecrets) -> UpdateItem:
        key = keys.update_key(msg.run_id, msg.round, self.config.client_id)
        return UpdateItem(
            run_id=msg.run_id,
            round=msg.round,
            client_id=self.config.client_id,
            num_examples=held.num_examples,
            update=ObjectRef(key, UNSENT, 0),
            metrics=held.metrics,
            created_at=utc_now(),
            privacy=held.privacy,
            encoding=MASKED_ENCODING,
            attempt=msg.attempt,
        )

    def _reveal(self, msg: SecAggPhaseMessage) -> Outcome:
        """Phase 4: for each client whose shares it holds, its seed's share if it survived, its key's share
        if it dropped, never both: revealed once, kept (the secrets then deleted), and the same item
        written for a redelivered message, whatever survivors it names."""
        where = _round_name(msg)
        done = self.secrets.revealed(msg.run_id, msg.round, msg.attempt)
        members, dropped = sorted(msg.members), sorted(msg.dropped)
        if done is None:
            held = self.secrets.load(msg.run_id, msg.round, msg.attempt)
            if held is None:
                return self._no_secrets(msg)
            if self.config.client_id not in msg.members:
                raise Refused("it is not among the survivors the reveal is for")
            try:
                shares = self._client_of(held).reveal(set(members), set(dropped))
            except (FedstepError, ValueError) as exc:
                raise Refused(f"cannot reveal: {exc}") from None
            done = Revealed(utc_now(), shares, members, dropped)
            self.secrets.save_reveal(msg.run_id, msg.round, msg.attempt, done)  # before a share leaves
            self.secrets.forget_secrets(msg.run_id, msg.round, msg.attempt)
        elif (members, dropped) != (done.members, done.dropped):
            log.error(
                "%s: asked again with other survivors (%d, %d dropped); what it revealed first stands",
                where,
                len(members),
                len(dropped),
            )
        item = SecAggRevealItem(msg.run_id, msg.round, msg.attempt, self.config.client_id, done.created_at, done.shares)
        if not self.table.put_once(item.to_item()):
            log.info("%s: revealed already; message redelivered", where)
            return Outcome.ALREADY_SERVED
        seeds = sum(kind == "seed" for kind, _ in done.shares.values())
        log.info(
            "%s: revealed %d shares (%d survivors' seeds, %d dropped clients' keys)",
            where,
            len(done.shares),
            seeds,
            len(done.shares) - seeds,
        )
        return Outcome.SERVED

    def _download(self, ref: ObjectRef, description: str) -> bytes:
        """The object, exactly `ref.bytes` of it (a larger one is refused unread), read in 1 MiB chunks
        with a progress bar and checked against the message's sha256."""
        with self.progress.transfer(description, ref.bytes) as advance:
            return objects.read(self.s3, self.config.bucket, ref, advance)

    def _upload(self, key: str, data: bytes, description: str) -> None:
        """PutObject (multipart above 8 MiB, in parallel), with a progress bar."""
        with self.progress.transfer(description, len(data)) as advance:
            self.s3.upload_fileobj(io.BytesIO(data), self.config.bucket, key, Callback=advance)

    def _architecture(self, ref: ObjectRef) -> tuple[bytes, int]:
        """The run's `.keras` file and the bytes downloaded for it: 0 when the local cache has it."""
        cached = self.cache / f"{ref.sha256}.keras"
        if cached.exists() and hashlib.sha256(cached.read_bytes()).hexdigest() == ref.sha256:
            return cached.read_bytes(), 0
        data = self._download(ref, "run's model architecture")
        self.cache.mkdir(parents=True, exist_ok=True)
        cached.write_bytes(data)
        return data, len(data)


def _round_name(msg: RoundMessage | SecAggPhaseMessage) -> str:
    """How the log names a round message (`round 3 of run run-1`) or a secure round's phase message
    (`the share phase of round 3 of run run-1 (attempt 0)`)."""
    if isinstance(msg, SecAggPhaseMessage):
        return f"the {msg.phase} phase of round {msg.round} of run {msg.run_id} (attempt {msg.attempt})"
    if msg.secagg is not None:
        return f"round {msg.round} of run {msg.run_id} (secure, attempt {msg.attempt})"
    return f"round {msg.round} of run {msg.run_id}"


def _ref(key: str, data: bytes) -> ObjectRef:
    return ObjectRef(key, tensors.sha256_hex(data), len(data))


def _rejected(feedback: Feedback | None, msg: RoundMessage, data: bytes) -> bool:
    """Whether the server rejected exactly this file as the client's update for this round."""
    return (
        feedback is not None
        and (feedback.run_id, feedback.round) == (msg.run_id, msg.round)
        and feedback.update_sha256 == tensors.sha256_hex(data)
    )


def _evaluation_failure(exc: BaseException) -> str:
    """An evaluation's failure on one line: an AWS error explained, fedstep's own message, else the
    exception's type and message."""
    if isinstance(exc, (ClientError, BotoCoreError)):
        return explain(exc)
    return str(exc) if isinstance(exc, FedstepError) else f"{type(exc).__name__}: {exc}"


def _request_name(msg: EvaluateMessage | StatsMessage) -> str:
    """How the log names an operator's request."""
    if isinstance(msg, EvaluateMessage):
        return f"evaluation request {msg.request_id} (round {msg.round} of {msg.run_id})"
    return f"statistics request {msg.request_id}" + (f" (run {msg.run_id})" if msg.run_id else "")


def _receive_count(message: dict[str, Any]) -> int:
    """How many times SQS has handed out the message (1 on its first receive); 1 if it does not say."""
    try:
        return max(1, int(message.get("Attributes", {})["ApproximateReceiveCount"]))
    except (KeyError, TypeError, ValueError):
        return 1


def _sent_at(message: dict[str, Any]) -> float:
    """When SQS received the message (epoch seconds); now if it does not say."""
    try:
        return int(message.get("Attributes", {})["SentTimestamp"]) / 1000
    except (KeyError, TypeError, ValueError):
        return time.time()
