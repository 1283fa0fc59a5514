"""What a round's privacy instructions ask of a client, decided the same way by the agent
(`client_agent.agent.Agent`) and the memory engine's workers (`fedstep.local.memory_workers`)."""

from __future__ import annotations

from typing import Any

from client_agent import dp_sgd
from client_agent.privacy_ledger import Spend


class Declined(Exception):
    """A round the client refuses to train; the message is its reason."""


def instructed(msg: Any) -> tuple[str | None, float | None, dp_sgd.DpSgdParams | None]:
    """The round's DP mode, its client clip norm (client-clip) and its DP-SGD parameters (dp-sgd)."""
    try:
        mode = dp_sgd.dp_mode(msg.instructions)
        clip = dp_sgd.client_clip_norm(msg.instructions) if mode == dp_sgd.CLIENT_CLIP else None
        params = dp_sgd.DpSgdParams.of(msg.instructions) if mode == dp_sgd.DP_SGD else None
    except ValueError as exc:
        raise Declined(f"unusable privacy instructions: {exc}") from None
    return mode, clip, params


def dp_sgd_spend(msg: Any, params: dp_sgd.DpSgdParams, examples: int | None) -> Spend | None:
    """The round's DP-SGD spend for `examples` training examples (None: not known, nothing to account);
    Declined when the round's delta is not below 1/examples."""
    if not examples:
        return None
    if params.delta is not None and params.delta >= 1 / examples:
        raise Declined(
            f"privacy: dp_delta {params.delta:g} is not below 1/examples = {1 / examples:.3g}: "
            "a guarantee that weak would allow publishing a record outright"
        )
    t = msg.training
    return Spend(
        round=msg.round,
        steps=dp_sgd.steps_per_round(t.epochs, t.batch_size, examples),
        rate=dp_sgd.sampling_rate(t.batch_size, examples),
        noise_multiplier=params.noise_multiplier,
        delta=params.delta,
        attempt=msg.attempt,
    )
