"""A round, from publication to report: publish it, claim it, aggregate its updates once, report once.

This is the logic behind the aggregation function, written against the ports in `fedstep.core.ports` so
it runs without AWS. Exactly once, by construction (DESIGN invariant 1):

1. **Open.** When the state machine publishes a round, `publish_round` selects its clients (the
   seeded sample, less those whose heartbeat says offline: `choose_clients`), records the attempt's
   task token and that selection in the round record (a server record: no client ever sees a token)
   and sends the round message to the selected clients. The later steps wait for the recorded
   selection (`selected_in`).
2. **Claim.** An invocation that finds every selected client's update in (the stream path), or that
   runs at the round's deadline, first takes the round with a conditional write: it succeeds only
   if the round is open, or if an earlier claim's lease ran out (its holder crashed). Only the
   holder reads updates and aggregates; everyone else leaves, or (at the deadline) waits for it.
3. **Write once.** The new global model is written under a key named by the claim, with
   `If-None-Match: *`, so two aggregations of a round can never overwrite each other's result,
   whatever the strategy (noise included).
4. **Commit, then report.** The summary is written on condition that the claim still holds; only
   then is the round reported, to the token the server recorded. A crash between the two is
   repaired by the next invocation, which finds the summary not yet reported and reports it.

**Stopped runs.** Once the operator has stopped a run (`fedstep stop` writes its stop marker first),
none of its rounds is published or claimed, and none is committed: the commit is one transaction
with the checks of the claim and of the marker (`RoundTable.complete_round`), so a round whose updates arrive
after the stop, or whose aggregation was under way when it came, leaves nothing behind (its model
and state are deleted, its claim released) and is never reported.

A round that cannot be aggregated (too few valid updates, for the run or for its strategy, or an
aggregate that is not finite) is given back (the claim released) and fails by name: QuorumNotMet,
TooFewParticipants or InvalidAggregate; the state machine retries it or fails the run.

A failed aggregation leaves nothing a client can read: every check that can fail (the strategy's
result, its measurements, finite weights and state, the privacy accounting) runs before the first
write, and what a later failure leaves (a state write refused, a claim lost before the commit) is
deleted, best effort. Under central DP each noisy model is counted in the round record before it is
written (`RoundTable.count_release`), so a model released and not committed is still accounted.

The modules, one job each: `publish` (1), `complete` (2-4 on the stream and the deadline paths, one
sequence for a claimed round: `run_claimed_round`), `aggregate` (the aggregation in one function),
`slices` (a round planned, aggregated and assembled by slices), `summary` (the one summary builder,
the round record's fields and the task output), `results` (write once, commit, discard, release),
`intake` (the update items sorted), `inputs` (what a round starts from), `privacy`, `settings`,
`errors`. Import the names from this package.
"""

from fedstep.core.rounds.aggregate import aggregate_round
from fedstep.core.rounds.complete import (
    Claimed,
    Outcome,
    complete_round_at_deadline,
    run_claimed_round,
    try_complete_round,
)
from fedstep.core.rounds.errors import (
    ClaimLost,
    InvalidAggregate,
    QuorumNotMet,
    RoundBusy,
    RoundNotAggregated,
    SecAggThresholdNotMet,
    StrategyFailed,
    TooFewParticipants,
)
from fedstep.core.rounds.inputs import (
    build_strategy,
    choose_clients,
    dp_sgd_instructions,
    expected_participants,
    input_state,
    load_state,
    previous_summary,
    read_state_values,
    round_bounds,
    round_history,
    selected_in,
)
from fedstep.core.rounds.intake import missing_clients
from fedstep.core.rounds.privacy import operator_privacy_spent, privacy_spent
from fedstep.core.rounds.publish import publish_round
from fedstep.core.rounds.results import new_claim_id
from fedstep.core.rounds.settings import AggregationSettings
from fedstep.core.rounds.slices import aggregate_slice, assemble_round, plan_output
from fedstep.core.rounds.summary import Tally, build_summary, summary_item, task_output

__all__ = [
    "AggregationSettings",
    "ClaimLost",
    "Claimed",
    "InvalidAggregate",
    "Outcome",
    "QuorumNotMet",
    "RoundBusy",
    "RoundNotAggregated",
    "SecAggThresholdNotMet",
    "StrategyFailed",
    "Tally",
    "TooFewParticipants",
    "aggregate_round",
    "aggregate_slice",
    "assemble_round",
    "build_strategy",
    "build_summary",
    "choose_clients",
    "complete_round_at_deadline",
    "dp_sgd_instructions",
    "expected_participants",
    "input_state",
    "load_state",
    "missing_clients",
    "new_claim_id",
    "operator_privacy_spent",
    "plan_output",
    "previous_summary",
    "privacy_spent",
    "publish_round",
    "read_state_values",
    "round_bounds",
    "round_history",
    "run_claimed_round",
    "selected_in",
    "summary_item",
    "task_output",
    "try_complete_round",
]
