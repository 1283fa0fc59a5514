"""The aggregation function's side of a secure round, behind the core's port
(`fedstep.core.ports.SecureAggregation`): the neighbourhoods a roster fixes, the masks removed from the
masked inputs' sum, and the sum turned into FedAvg's step. Stateless: everything comes from the
round's records (the roster, the survivors record, the revealed shares), so any invocation can do it."""

from __future__ import annotations

import numpy as np

from fedstep.core.rounds.errors import InvalidAggregate
from fedstep.core.schemas.secagg import SecAggRoster, SecAggRound
from fedstep.privacy.secagg.inputs import InputCodec
from fedstep.privacy.secagg.primitives import SecAggError
from fedstep.privacy.secagg.protocol import Advertisement, RoundKey, Server, neighbourhoods


class SecAggServer:
    """`fedstep.core.ports.SecureAggregation` with SecAgg+ (`fedstep.privacy.secagg.protocol`)."""

    def neighbourhoods(self, clients: list[str], neighbours: int, seed: int) -> dict[str, list[str]]:
        return neighbourhoods(clients, neighbours, seed)

    def unmask(
        self,
        roster: SecAggRoster,
        survivors: frozenset[str],
        dropped: frozenset[str],
        masked_total: np.ndarray,
        reveals: dict[str, dict[str, tuple[str, bytes]]],
    ) -> np.ndarray:
        """The sum of the survivors' quantised inputs (uint32) from the masked inputs' sum.
        SecAggThresholdNotMet when a secret has fewer than t shares; InvalidAggregate (the round fails
        by name, retried with fresh keys) when the shares rebuild a secret the roster does not commit
        to: a client revealed a wrong share."""
        server = Server(RoundKey(roster.run_id, roster.round, roster.attempt), roster.threshold)
        server.roster = {c: Advertisement(c, *values) for c, values in roster.adverts.items()}
        server.neighbours = roster.neighbours
        try:
            return server.remove_masks(masked_total, survivors, dropped, reveals)
        except SecAggError as exc:
            raise InvalidAggregate(f"the masks could not be removed: {exc}") from None

    def mean_delta(self, spec: SecAggRound, total: np.ndarray, survivors: int) -> tuple[float, np.ndarray]:
        return InputCodec.for_round(spec).mean_delta(total, survivors)
