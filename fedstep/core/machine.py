"""The "FederatedTraining" state machine's names, defined once: the modes of its calls of the
aggregation function (`{"mode": ...}`, dispatched by `lambdas/aggregate.py`) and its state names
(built by `infra/state_machine.py`, counted by `fedstep.costs`, shown by the Step Functions console
and the execution history). Plain strings: what AWS shows and what the template holds."""

from __future__ import annotations

from typing import Final


class Mode:
    """The `mode` of each call the state machine makes to the aggregation function."""

    DEADLINE: Final = "deadline"
    """A round's task timed out: aggregate what arrived (`complete_round_at_deadline`)."""
    PUBLISH: Final = "publish"
    """Open a round and send its message, with the task token to report to (`publish_round`)."""
    CARD: Final = "card"
    """A run finished: write the model card of its final global model (`write_card`)."""
    SLICE: Final = "slice"
    """Aggregate one slice of a planned round (`aggregate_slice`)."""
    ASSEMBLE: Final = "assemble"
    """Join a planned round's slices and commit its summary (`assemble_round`)."""
    SECAGG_PUBLISH: Final = "secagg_publish"
    """Open a later phase of a secure round (`{"phase"}`: share, input, reveal) and send its message,
    with the task token the phase's state waits on (`fedstep.core.rounds.secure`)."""
    SECAGG_DEADLINE: Final = "secagg_deadline"
    """A later phase of a secure round timed out: close it with what arrived (its result is the
    state's output: the next phase, or the round's task output after the reveal)."""


MODES: Final = (
    Mode.DEADLINE,
    Mode.PUBLISH,
    Mode.CARD,
    Mode.SLICE,
    Mode.ASSEMBLE,
    Mode.SECAGG_PUBLISH,
    Mode.SECAGG_DEADLINE,
)
"""Every mode, in the order the aggregation function names them."""


class State:
    """The state machine's state names (they are what the console and the execution history show)."""

    PREPARE_ROUND: Final = "Prepare round"
    NOTIFY_AND_WAIT: Final = "Notify clients and wait for updates"
    AGGREGATE_AT_DEADLINE: Final = "Aggregate at deadline"
    AGGREGATED_BY_SLICES: Final = "Aggregated by slices?"
    AGGREGATE_SLICES: Final = "Aggregate slices"
    AGGREGATE_ONE_SLICE: Final = "Aggregate one slice"
    ASSEMBLE_GLOBAL_MODEL: Final = "Assemble global model"
    REPORT_IS_OURS: Final = "Report is for this round?"
    REPORT_FOR_ANOTHER_RUN: Final = "Report for another run"
    ROUND_AGGREGATED: Final = "Round aggregated"
    MORE_ROUNDS: Final = "More rounds?"
    RETRY_ROUND_CHOICE: Final = "Retry round?"
    RETRY_ROUND: Final = "Retry round"
    TRAINING_FAILED: Final = "Training failed"
    TARGET_REACHED: Final = "Target reached"
    PRIVACY_BUDGET_SPENT: Final = "Privacy budget spent"
    ALL_ROUNDS_DONE: Final = "All rounds done"
    NOTIFY_RUN_ENDED: Final = "Notify clients: run ended"
    WRITE_MODEL_CARD: Final = "Write model card"
    TRAINING_FINISHED: Final = "Training finished"
    NEXT_SECURE_PHASE: Final = "Next secure-aggregation phase?"
    SHARE_KEYS: Final = "Share keys"
    SHARE_KEYS_AT_DEADLINE: Final = "Share keys at deadline"
    UPLOAD_MASKED_INPUTS: Final = "Upload masked inputs"
    UPLOAD_MASKED_INPUTS_AT_DEADLINE: Final = "Upload masked inputs at deadline"
    REVEAL_SHARES: Final = "Reveal shares"
    REVEAL_SHARES_AT_DEADLINE: Final = "Reveal shares at deadline"


SECURE_PHASE_STATES: Final = {
    "share": (State.SHARE_KEYS, State.SHARE_KEYS_AT_DEADLINE),
    "input": (State.UPLOAD_MASKED_INPUTS, State.UPLOAD_MASKED_INPUTS_AT_DEADLINE),
    "reveal": (State.REVEAL_SHARES, State.REVEAL_SHARES_AT_DEADLINE),
}
"""Each later phase of a secure round (`fedstep.core.schemas.secagg.LATER_PHASES`): the state that
publishes it and waits on its token, and the state that closes it at its deadline."""
