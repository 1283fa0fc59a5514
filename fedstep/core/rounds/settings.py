"""The aggregation function's settings for a round: the claim's lease, the deadline path's wait, the
privacy accountant and the slice size."""

from __future__ import annotations

from dataclasses import dataclass

from fedstep.core.dp import Accountant, OperatorAccountant
from fedstep.core.ports import SecureAggregation


@dataclass(frozen=True)
class AggregationSettings:
    """`lease_s`: how long a claim holds before another invocation may take the round over (longer
    than the function's timeout; default 360 s). `wait_s`: how long the deadline invocation waits for
    another claim's holder to finish (default 240 s)."""

    lease_s: float = 360.0
    wait_s: float = 240.0
    accountant: Accountant | None = None
    """The privacy accountant of DP runs (`fedstep.privacy.accounting.epsilon_fixed`)."""
    operator_accountant: OperatorAccountant | None = None
    """Distributed DP's accountant of the epsilon against the operator (`fedstep.privacy.lazy_operator_epsilon`;
    `fedstep.core.rounds.operator_privacy_spent`)."""
    slice_bytes: int | None = None
    """Global models larger than this are aggregated by slices (`fedstep.core.sliced`); None: never.
    The store must then also be a `MultipartStore`."""
    secure: SecureAggregation | None = None
    """The cryptography of secure rounds (`fedstep.privacy.secagg.server.SecAggServer`); a run with
    secure aggregation cannot be aggregated without it."""


DEFAULT_SETTINGS = AggregationSettings()
"""The settings a round runs with when none are given."""
