"""A round's privacy loss (client-level DP from the accountant, dp-sgd from the participants' reports;
under distributed DP also the operator's, `operator_privacy_spent`) and the count of the noisy models
an aggregation releases."""

from __future__ import annotations

from fedstep.core.dp import Accountant, OperatorAccountant, operator_round_epsilon, round_epsilon
from fedstep.core.errors import FedstepError
from fedstep.core.ports import RoundTable
from fedstep.core.rounds.errors import ClaimLost
from fedstep.core.rounds.inputs import expected_participants
from fedstep.core.schemas import RoundSummary, RunRecord, UpdateItem


def privacy_spent(
    run: RunRecord,
    round_number: int,
    accepted: list[tuple[UpdateItem, int]],
    accountant: Accountant | None,
    repeated: int = 0,
) -> tuple[float | None, float | None, bool]:
    """(epsilon, delta, budget spent) after `round_number` rounds: client-level from the accountant
    (central modes, counting `repeated` releases too; spent when one more round would pass the
    budget; under distributed DP the published model's, its noise z C on the sum as central DP's
    is), or under dp-sgd the largest record-level epsilon the participants reported, unknown
    (None) unless every participant reported one: a client that reports none may have spent any
    amount, so a figure from the others would understate the round; (None, None, False) without DP."""
    dp = run.dp
    if dp is None:
        return None, None, False
    if not dp.client_level:
        reported = [item.privacy["epsilon"] for item, _ in accepted if "epsilon" in item.privacy]
        known = bool(reported) and len(reported) == len(accepted)
        return (max(reported) if known else None), dp.delta, False
    if accountant is None:
        raise FedstepError(f"run {run.run_id} has differential privacy but the function has no accountant")
    expected, population = expected_participants(run), len(run.clients)
    epsilon = round_epsilon(dp, accountant, expected, population, round_number, repeated, run.selection)
    budget = dp.epsilon_budget
    after_next = round_epsilon(dp, accountant, expected, population, round_number + 1, repeated, run.selection)
    return round(epsilon, 6), dp.delta, budget is not None and after_next > budget


def operator_privacy_spent(
    run: RunRecord, round_number: int, accountant: OperatorAccountant | None, dimension: int, repeated: int = 0
) -> float | None:
    """Under distributed DP, the run's epsilon against the operator after `round_number` rounds (at
    the run's delta; the round summary's `operator_epsilon`): no amplification by sampling, the
    discrete noise's correction, at least the threshold's honest survivors in each round
    (`fedstep.core.dp.operator_round_epsilon`). `dimension`: the elements of one client's delta (the
    model's parameters, each noised); `repeated`: sums released beyond one per round (each
    composed as one more round). Each round's fixed-point headroom is taken for the most inputs a
    round can have (the clients per round; under Poisson selection every client), an upper bound.
    None for any other run."""
    dp, secagg = run.dp, run.secagg
    if dp is None or dp.mode != "distributed":
        return None
    if accountant is None or secagg is None:
        raise FedstepError(
            f"run {run.run_id} has distributed DP but "
            + ("no secure aggregation" if secagg is None else "the function has no operator accountant")
        )
    most = len(run.clients) if run.selection == "poisson" else expected_participants(run)
    epsilon = operator_round_epsilon(
        dp, secagg.threshold, accountant, most, dimension, round_number, run.selection, repeated
    )
    return round(epsilon, 6)


def count_release(
    run: RunRecord, round_number: int, table: RoundTable, claim: str, previous: RoundSummary | None
) -> int:
    """Under client-level DP (central, or distributed: there the sum is released to the operator when
    it is unmasked), count this aggregation's noisy release in the round record before it happens
    (ClaimLost, writing nothing, if the claim no longer holds), so no noisy model or sum that was ever
    readable goes unaccounted: the run's repeated releases so far (`RoundSummary.repeated_releases`).
    0 for other runs."""
    if run.dp is None or not run.dp.client_level:
        return 0
    releases = table.count_release(run.run_id, round_number, claim)
    if releases is None:
        raise ClaimLost(f"round {round_number} of run {run.run_id} was taken over before its model was written")
    return (previous.repeated_releases if previous else 0) + releases - 1
