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
from fedstep.privacy.secagg.protocol import Advertisement, RoundKey, Server, neighbourhoods, unmask_range


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
        return unmask_range(masked_total, self.mask_seeds(roster, survivors, dropped, reveals))

    def mask_seeds(
        self,
        roster: SecAggRoster,
        survivors: frozenset[str],
        dropped: frozenset[str],
        reveals: dict[str, dict[str, tuple[str, bytes]]],
    ) -> list[tuple[bytes, int]]:
        """The seeds of the masks left in the survivors' sum, with their signs (a sliced round's plan
        keeps them, so each slice removes the masks from its own range); the same errors as `unmask`."""
        server = Server(RoundKey(roster.run_id, roster.round, roster.attempt), roster.threshold)
        server.roster = {c: Advertisement(c, *values) for c, values in roster.adverts.items()}
        server.neighbours = roster.neighbours
        try:
            return server.mask_seeds(survivors, dropped, reveals)
        except SecAggError as exc:
            raise InvalidAggregate(f"the masks could not be removed: {exc}") from None

    def unmask_range(self, masked_total: np.ndarray, seeds: list[tuple[bytes, int]], offset: int) -> np.ndarray:
        return unmask_range(masked_total, seeds, offset)

    def mean_delta(self, spec: SecAggRound, total: np.ndarray, survivors: int) -> tuple[float, np.ndarray]:
        return InputCodec.for_round(spec).mean_delta(total, survivors)

    def decode_weight(self, spec: SecAggRound, total: np.ndarray, survivors: int) -> float:
        """The survivors' summed weight from element 0 of the unmasked sum; InvalidAggregate if no
        honest survivors could give it."""
        codec = InputCodec.for_round(spec)
        weight = float(codec.weights.decode_sum(np.asarray(total, dtype=np.uint32)[:1], survivors)[0])
        if not (np.isfinite(weight) and 0 < weight <= survivors + survivors * codec.weights.step):
            raise InvalidAggregate(f"the unmasked sum's weight {weight:.6g} is outside (0, {survivors}]")
        return weight

    def decode_values(self, spec: SecAggRound, total: np.ndarray, survivors: int) -> np.ndarray:
        """A range of the survivors' summed weighted deltas (float64) from that range of the unmasked
        sum; InvalidAggregate outside what their clipped updates can reach."""
        codec = InputCodec.for_round(spec)
        values = codec.values.decode_sum(np.asarray(total, dtype=np.uint32), survivors)
        reach = survivors * codec.values.bound + survivors * codec.values.step
        if not np.isfinite(values).all() or np.max(np.abs(values), initial=0.0) > reach:
            raise InvalidAggregate("a range of the unmasked sum is outside what the survivors' clipped updates reach")
        return values
