"""Wire formats: the round message, the run-ended message, the evaluate message, the update item, the
evaluation item, the round record, the run record, the feedback and heartbeat items, the stop marker.

Every format carries `schema` (an integer, `fedstep.SCHEMA_VERSION`). Parsing validates types, ranges
and sizes (`fedstep.core.limits`) and raises `InvalidMessage` naming the first bad field, so a malformed
message or item is rejected with a reason instead of failing somewhere deeper; one of another schema
version raises `SchemaMismatch`, naming both versions and which side to upgrade.

One module per kind of format: `messages` (to the clients' queues), `items` (what a client writes),
`summary` (a round's outcome and its record's statuses), `run_record`, `records` (feedback, the stop
marker), `training`, `refs`, and `validation` (the field readers every format is parsed with). Import
the names from this package.
"""

from __future__ import annotations

from fedstep.core.schemas.items import (
    DECLINED_KIND,
    EVAL_KIND,
    FAILURE_KIND,
    HEARTBEAT_STATES,
    PRIVACY_FIELDS,
    STATS_KIND,
    UPDATE_ITEM_KIND,
    UPDATE_KIND,
    DeclineItem,
    EvalItem,
    FailureItem,
    Heartbeat,
    StatsItem,
    UpdateItem,
    check_privacy,
    parse_client_item,
)
from fedstep.core.schemas.messages import (
    MAX_EVAL_DEADLINE_S,
    EvaluateMessage,
    RoundMessage,
    RunEndedMessage,
    StatsMessage,
    from_state,
    parse_message,
    state_machine_fields,
)
from fedstep.core.schemas.records import (
    STOP_KIND,
    Feedback,
    RunStop,
)
from fedstep.core.schemas.refs import (
    ObjectRef,
)
from fedstep.core.schemas.run_record import (
    BOUND_ACTIONS,
    DP_MODES,
    Bounds,
    DPSettings,
    RunRecord,
    SecAggSettings,
    Target,
)
from fedstep.core.schemas.secagg import (
    LATER_PHASES,
    MASKED_ENCODING,
    MASKED_TENSOR,
    PHASE_ADVERTISE,
    PHASE_INPUT,
    PHASE_REVEAL,
    PHASE_SHARE,
    SecAggKeysItem,
    SecAggPhaseMessage,
    SecAggRevealItem,
    SecAggRoster,
    SecAggRound,
    SecAggShareItem,
    masked_order,
)
from fedstep.core.schemas.summary import (
    ROUND_AGGREGATED,
    ROUND_CLAIMED,
    ROUND_OPEN,
    ROUND_REPORTED,
    Adjustment,
    Rejection,
    RoundSummary,
    headline_metric,
    is_completed,
)
from fedstep.core.schemas.training import (
    STANDARDIZE_MODES,
    TrainingConfig,
)
from fedstep.core.schemas.validation import (
    InvalidMessage,
    SchemaMismatch,
    check_kept,
    check_measurements,
    check_metrics,
    check_scalars,
    check_schema,
    get_field,
    id_field,
    optional_number,
    positive_int,
    short_str,
    timestamp,
)

__all__ = [
    "BOUND_ACTIONS",
    "DECLINED_KIND",
    "DP_MODES",
    "EVAL_KIND",
    "FAILURE_KIND",
    "HEARTBEAT_STATES",
    "LATER_PHASES",
    "MASKED_ENCODING",
    "MASKED_TENSOR",
    "MAX_EVAL_DEADLINE_S",
    "PHASE_ADVERTISE",
    "PHASE_INPUT",
    "PHASE_REVEAL",
    "PHASE_SHARE",
    "PRIVACY_FIELDS",
    "ROUND_AGGREGATED",
    "ROUND_CLAIMED",
    "ROUND_OPEN",
    "ROUND_REPORTED",
    "STANDARDIZE_MODES",
    "STATS_KIND",
    "STOP_KIND",
    "UPDATE_ITEM_KIND",
    "UPDATE_KIND",
    "Adjustment",
    "Bounds",
    "DPSettings",
    "DeclineItem",
    "EvalItem",
    "EvaluateMessage",
    "FailureItem",
    "Feedback",
    "Heartbeat",
    "InvalidMessage",
    "ObjectRef",
    "Rejection",
    "RoundMessage",
    "RoundSummary",
    "RunEndedMessage",
    "RunRecord",
    "RunStop",
    "SchemaMismatch",
    "SecAggKeysItem",
    "SecAggPhaseMessage",
    "SecAggRevealItem",
    "SecAggRoster",
    "SecAggRound",
    "SecAggSettings",
    "SecAggShareItem",
    "StatsItem",
    "StatsMessage",
    "Target",
    "TrainingConfig",
    "UpdateItem",
    "check_kept",
    "check_measurements",
    "check_metrics",
    "check_privacy",
    "check_scalars",
    "check_schema",
    "from_state",
    "get_field",
    "headline_metric",
    "id_field",
    "is_completed",
    "masked_order",
    "optional_number",
    "parse_client_item",
    "parse_message",
    "positive_int",
    "short_str",
    "state_machine_fields",
    "timestamp",
]
