"""Why a round was not aggregated, by name: each class name is the Step Functions error name."""

from __future__ import annotations

from fedstep.core.errors import FedstepError


class RoundNotAggregated(FedstepError):
    """A round that cannot be aggregated; its class name is the Step Functions error name."""


class QuorumNotMet(RoundNotAggregated):
    """Fewer valid updates than the run's quorum."""


class TooFewParticipants(RoundNotAggregated):
    """Fewer valid updates than the run's `min_participants` (the aggregate would expose them), or
    than the run's strategy needs (`Strategy.min_updates`, e.g. Krum's 2f + 3)."""


class InvalidAggregate(RoundNotAggregated):
    """The strategy produced non-finite weights or state; nothing was written. A round failure like
    a quorum miss: the state machine retries the round (`round_retries`), never crashes the run."""


class SecAggThresholdNotMet(RoundNotAggregated):
    """Under secure aggregation, fewer clients than the threshold t survived a phase, or fewer than t
    shares of a secret the server needs were revealed: the sum cannot be unmasked. Retried as a round
    (`round_retries`), with fresh keys."""


class StrategyFailed(FedstepError):
    """The run's strategy raised, or returned something unusable: reported as what it is (the
    strategy, the round, the exception), never as a quorum problem. Not retried: it would fail again."""


class RoundBusy(FedstepError):
    """Another invocation holds the round's claim and has not finished; the state machine retries."""


class ClaimLost(FedstepError):
    """This invocation's claim on the round ran out and another took the round over: it leaves the
    round to that one (nothing of its own stays readable)."""
