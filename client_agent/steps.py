"""Client steps: what the agent does to a trained model before it leaves the site, as an ordered list
of small functions.

Each step takes the update (named float32 tensors) and the round's context and returns the update
for the next step; it may change the update in place and record what the update item reports in the
context. The round's instructions choose the steps (`steps_for`):

1. `delta`: the trained weights minus the round's global weights (what is sent is always a delta);
2. `clip` (under `dp_mode` "client-clip"): scale the update to L2 norm `dp_clip`, report `within_clip`;
3. `account` (under `dp_mode` "dp-sgd"): the noise was added while training (DP-SGD); the round's
   steps are added to the privacy ledger - before the upload, since from then on the update may
   leave - and the run's epsilon and delta reported;
4. `encode`: the update file and its item, written with the run's codec (the round instructions'
   `fedstep_codec`, default float32; `fedstep.core.codecs`). A codec with error feedback (top-k)
   first adds the residual of the run's latest earlier round, clips the sum to the round's norm
   bound (`fedstep_norm_bound`, and under client-clip to `dp_clip` too) and keeps what it did not
   send as this round's residual (`client_agent.residuals`, written before the upload);
   or, in a secure round (the message's `secagg`), `quantise` in its place: the update as the
   round's input before masking (`client_agent.secure_round` masks and uploads it in a later phase).

The idea is Flower's client mods (`flwr.client.mod`), with a simpler signature: a step sees the
update and the round, not the message, and the agent alone talks to the queue, bucket and table.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from client_agent import dp_sgd
from client_agent.privacy_ledger import PrivacyLedger, Spend
from client_agent.residuals import ResidualStore
from fedstep.core import codecs
from fedstep.core.clock import utc_now
from fedstep.core.schemas import RoundMessage, UpdateItem
from fedstep.core.schemas.secagg import masked_order
from fedstep.core.tensors import Tensors, TensorSpec, l2_norm
from fedstep.core.updates import update_file

log = logging.getLogger("fedstep.client")


@dataclass(frozen=True)
class RoundPrivacy:
    """What a round's privacy instructions ask of the agent: `mode` (None, "client-clip" or
    "dp-sgd"), client-clip's `clip`, and under DP-SGD the `spend` the round adds to the ledger
    (None only when the trainer does not say its number of examples and no budget needs it)."""

    mode: str | None = None
    clip: float | None = None
    spend: Spend | None = None


@dataclass
class RoundContext:
    """One round as the steps see it: the round's message, this client, what its privacy
    instructions ask, the global weights the update is relative to, and what training reported.
    The steps fill in `privacy` (the item's privacy figures) and `encoded` (the file and its item)."""

    msg: RoundMessage
    client_id: str
    round_privacy: RoundPrivacy
    global_weights: Tensors
    num_examples: int
    metrics: dict[str, float]
    ledger: PrivacyLedger | None = None
    """The client's privacy ledger (needed by `account` only)."""
    on_privacy: Callable[[str, dict[str, float]], None] = lambda run_id, figures: None
    """Told the run's privacy figures once the round is accounted (the agent's heartbeat)."""
    privacy: dict[str, float] = field(default_factory=dict)
    encoded: tuple[bytes, UpdateItem] | None = None
    residuals: ResidualStore | None = None
    """The client's error-feedback residuals (needed by `encode` under a top-k codec only)."""
    quantised: np.ndarray | None = None
    """In a secure round: the input `quantise` made (uint32, before masking)."""


Step = Callable[[Tensors, RoundContext], Tensors]
"""A client step: the update and the round in, the update for the next step out."""


def delta(trained: Tensors, ctx: RoundContext) -> Tensors:
    """The trained weights minus the global weights, float32, for every tensor of the global model
    (the trained weights were checked to have the same names and shapes)."""
    return {name: np.asarray(trained[name], np.float32) - w for name, w in ctx.global_weights.items()}


def clip(update: Tensors, ctx: RoundContext) -> Tensors:
    """Client-side clipping: the update scaled in place to L2 norm `dp_clip` when it is longer;
    reports `within_clip` (1.0 when it was within the clip already, else 0.0)."""
    limit = ctx.round_privacy.clip
    if limit is not None:
        ctx.privacy["within_clip"] = 1.0 if clip_delta(update, limit) else 0.0
    return update


def account(update: Tensors, ctx: RoundContext) -> Tensors:
    """DP-SGD: the round's spend added to the ledger (written before the upload: see
    `client_agent.privacy_ledger` on when a round counts); reports the run's epsilon and delta."""
    spend = ctx.round_privacy.spend
    if spend is None:
        return update
    if ctx.ledger is None:
        raise ValueError("the account step needs the client's privacy ledger")
    msg = ctx.msg
    after = ctx.ledger.record(msg.run_id, replace(spend, recorded_at=utc_now()))
    ctx.privacy.update(after.report())
    ctx.on_privacy(msg.run_id, after.report())
    if after.epsilon is not None:
        log.info(
            "round %d of %s: record-level epsilon %.3g at delta %g after %d DP-SGD steps",
            msg.round,
            msg.run_id,
            after.epsilon,
            after.delta,
            after.steps,
        )
    return update


def encode(update: Tensors, ctx: RoundContext) -> Tensors:
    """The update file and its item, in `ctx.encoded`, written with the round's codec
    (`codecs.INSTRUCTION` in the instructions, default float32). Under a codec with error feedback
    the update sent is delta + the latest earlier round's residual, clipped (`round_limit`), and
    (delta + residual) - decoded is saved as this round's residual before the file exists; returns
    what was encoded (for float32, the update itself)."""
    msg = ctx.msg
    codec = codecs.get(str(msg.instructions.get(codecs.INSTRUCTION, codecs.DEFAULT)))
    seed = codecs.seed_for(msg.run_id, msg.round, ctx.client_id)
    if codec.name == codecs.DEFAULT:
        files = update
    elif codec.error_feedback:
        if ctx.residuals is None:
            raise ValueError(f"the encode step needs the client's residual store for codec {codec.name}")
        residual = ctx.residuals.latest_before(msg.run_id, msg.round, TensorSpec.of(update))
        if residual is not None:
            for name, tensor in update.items():
                tensor += residual[name]
        limit = round_limit(ctx)
        if limit is not None:
            clip_delta(update, limit)
        files, decoded = codec.encode(update, seed)
        for _ in range(MAX_RESCALES):  # quantisation may lengthen what is sent: never past the bound
            sent = l2_norm(decoded)
            if limit is None or sent <= limit:
                break
            shrink = np.float32(limit / sent * (1 - 1e-4))
            for tensor in update.values():
                tensor *= shrink
            files, decoded = codec.encode(update, seed)
        ctx.residuals.save(msg.run_id, msg.round, {n: t - decoded[n] for n, t in update.items()}, codec.name)
    else:
        files, _ = codec.encode(update, seed)
    ctx.encoded = update_file(
        files,
        run_id=msg.run_id,
        round_number=msg.round,
        client_id=ctx.client_id,
        num_examples=ctx.num_examples,
        metrics=ctx.metrics,
        created_at=utc_now(),
        privacy=ctx.privacy,
        codec=codec.name,
    )
    return update


MAX_RESCALES = 4
"""Times the encode step scales delta + residual down again when its quantised encoding came out
longer than the round's bound (stochastic rounding can add a little norm)."""


def round_limit(ctx: RoundContext) -> float | None:
    """The norm delta + residual is clipped to under error feedback: the round's update-norm bound
    (`codecs.NORM_BOUND_INSTRUCTION`), and under client-clip the clip norm too (the smaller), so
    the carried residual never pushes an honest update past either. None: no bound."""
    limits = []
    bound = ctx.msg.instructions.get(codecs.NORM_BOUND_INSTRUCTION)
    if bound is not None:
        if isinstance(bound, bool) or not isinstance(bound, int | float) or not bound > 0:
            raise ValueError(f"round instructions: {codecs.NORM_BOUND_INSTRUCTION} must be a positive number")
        limits.append(float(bound))
    if ctx.round_privacy.mode == dp_sgd.CLIENT_CLIP and ctx.round_privacy.clip is not None:
        limits.append(ctx.round_privacy.clip)
    return min(limits) if limits else None


def quantise(update: Tensors, ctx: RoundContext) -> Tensors:
    """A secure round: the update as the round's input before masking, in `ctx.quantised`: flat in
    `masked_order` (`flat_delta`), clipped to the round's clip, weighted by the examples and
    quantised, with the round's discrete noise under distributed DP (`InputCodec`), its random
    rounding and noise drawn from the operating system's entropy (never predictable). The item's
    privacy figures keep DP-SGD's epsilon and delta only: `within_clip` would tell the server one bit
    of an update it must not see."""
    from fedstep.privacy.secagg.inputs import InputCodec

    spec = ctx.msg.secagg
    if spec is None:
        raise ValueError("the quantise step is for a secure round (a round message with secagg)")
    ctx.privacy.pop("within_clip", None)
    codec = InputCodec.for_round(spec)
    ctx.quantised = codec.encode(flat_delta(update), ctx.num_examples, np.random.default_rng())
    return update


def flat_delta(update: Tensors) -> np.ndarray:
    """The update as one float32 vector: its tensors in `masked_order` (by name), each raveled in C order."""
    return np.concatenate([np.asarray(update[name], np.float32).ravel() for name in masked_order(list(update))])


def steps_for(privacy: RoundPrivacy, secure: bool = False) -> list[Step]:
    """The steps a round's privacy instructions choose, in order: delta, then clip under
    client-clip, then account under DP-SGD (when the round has a spend), then encode (`secure`: a
    secure round's `quantise` instead)."""
    chosen: list[Step] = [delta]
    if privacy.mode == dp_sgd.CLIENT_CLIP and privacy.clip is not None:
        chosen.append(clip)
    if privacy.spend is not None:
        chosen.append(account)
    chosen.append(quantise if secure else encode)
    return chosen


def _apply(steps: Sequence[Step], trained: Tensors, ctx: RoundContext) -> None:
    update = trained
    for step in steps:
        update = step(update, ctx)


def run_steps(steps: Sequence[Step], trained: Tensors, ctx: RoundContext) -> tuple[bytes, UpdateItem]:
    """Run `steps` in order on the trained weights; the update file and its item they encoded."""
    _apply(steps, trained, ctx)
    if ctx.encoded is None:
        raise ValueError("the client steps did not encode the update (the last step must be `encode`)")
    return ctx.encoded


def run_secure_steps(steps: Sequence[Step], trained: Tensors, ctx: RoundContext) -> np.ndarray:
    """Run a secure round's `steps` in order on the trained weights; the input they quantised."""
    _apply(steps, trained, ctx)
    if ctx.quantised is None:
        raise ValueError("the client steps did not quantise the update (the last step must be `quantise`)")
    return ctx.quantised


def clip_delta(update: Tensors, limit: float) -> bool:
    """Client-side clipping: scale the float32 `update` in place to L2 norm `limit` (all tensors
    together) when it is longer. True when it was within `limit` already."""
    norm = l2_norm(update)
    if norm <= limit:
        return True
    scale = np.float32(limit / norm)
    for tensor in update.values():
        tensor *= scale
    return False
