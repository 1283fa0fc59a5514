"""Every bound on a value a client controls, and the service limits they keep records inside.

A client is authenticated, never trusted (DESIGN "Trust model"): each field it writes is checked
against these bounds before it is used, so no client-supplied value can push a server record (a
DynamoDB item, a Step Functions payload, an SNS message) past its service limit.
`tests/test_limits.py` computes the largest record each bound allows and checks it against the limit.
"""

from __future__ import annotations

import re

# -- service limits (bytes) ----------------------------------------------------------------------
DYNAMODB_ITEM_BYTES = 400 * 1000
STEP_FUNCTIONS_PAYLOAD_BYTES = 256 * 1024
SNS_MESSAGE_BYTES = 256 * 1024

# -- what a client writes ------------------------------------------------------------------------
MAX_METRICS = 32
"""Metrics per update item."""
METRIC_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
"""A metric name: 1-64 letters, digits, '_', '.', '-', starting with a letter."""
MAX_METRIC_MAGNITUDE = 1e12
"""|value| of any metric; names ending in `accuracy` (or `accuracy_before`) lie in [0, 1], names
containing `loss` are >= 0."""
MAX_TIMESTAMP_CHARS = 40
"""A timestamp or a version string."""
MAX_HARDWARE_FIELDS, MAX_HARDWARE_CHARS = 16, 2000
"""A heartbeat's hardware summary (shown by `fedstep clients`)."""
MAX_HEARTBEAT_INTERVAL_S = 3600
"""A heartbeat's claimed interval (the agent allows 10-3600 s): a client is online for at most two
of them after its last beat."""
MAX_CLOCK_SKEW_S = 300
"""How far in the future a client's timestamp may lie before it is refused."""
MAX_EXAMPLES = 2**40
"""The most examples an item may claim at all; the run's `max_examples` caps its weight far lower."""
MIN_UPDATE_FILE_BYTES = 8 + 2
"""The smallest safetensors file: its 8-byte header length and the shortest header, `{}`. An item
claiming fewer bytes is refused when it is parsed (a zero would size a read by nothing)."""
MAX_HEADER_SLACK_BYTES = 64 * 1024
"""An update file's safetensors header may exceed the global model's by this much (its metadata)."""
MAX_FAILURE_CHARS = 300
"""A client's failure item's error (one line of ASCII; longer ones are refused when read, and the
agent cuts its own): a QuorumNotMet cause quotes at most `MAX_FAILURES_NAMED` of them."""
MAX_FAILURES_NAMED = 10
"""Missing clients a round's failure cause names with their last error (the rest are counted)."""
MAX_FAILURE_ATTEMPTS = 10_000
"""The largest attempt number a failure item may claim (SQS delivers a message at most a few times)."""

# -- what the server writes ----------------------------------------------------------------------
MAX_REASON_CHARS = 160
"""A rejection reason kept in a round record or a feedback item (longer ones are cut; ASCII only,
so characters are bytes): with 1,000 clients all rejected, a round record stays near 320 KB."""
MAX_ADJUSTMENT_CHARS = 80
"""What a clipped update's entry says ("examples 1000000000 -> 100000; norm 12.5 -> 10")."""
MAX_CLIENTS_PER_RUN = 1000
"""Clients a run may register: keeps a round record (ids, rejections) under DynamoDB's 400 KB."""
MAX_ROUNDS = 99_999
"""Rounds a run may have (round numbers have five digits in keys)."""


MAX_STOP_REASON_CHARS = 300
"""The operator's `fedstep stop --reason`, as its stop marker keeps it (longer ones are cut)."""


def reason(text: str, max_chars: int = MAX_REASON_CHARS) -> str:
    """`text` on one line, in ASCII (anything else becomes '?'), cut to `max_chars` ("..." marks the cut)."""
    text = " ".join(str(text).split()).encode("ascii", "replace").decode("ascii")
    return text if len(text) <= max_chars else text[: max_chars - 3] + "..."


def metric_problem(name: object, value: object) -> str | None:
    """Why the metric `name` = `value` is not acceptable, or None if it is."""
    if not isinstance(name, str) or not METRIC_NAME.match(name):
        return f"metric name {str(name)[:40]!r} must be 1-64 letters, digits, '_', '.' or '-', starting with a letter"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"metric {name!r} must be a number"
    if not abs(value) <= MAX_METRIC_MAGNITUDE:  # also catches NaN
        return f"metric {name!r} must be a finite number of magnitude <= {MAX_METRIC_MAGNITUDE:g}"
    if name.removesuffix("_before").endswith("accuracy") and not 0 <= value <= 1:
        return f"metric {name!r} is an accuracy and must lie in [0, 1], got {value:g}"
    if "loss" in name and value < 0:
        return f"metric {name!r} is a loss and must be >= 0, got {value:g}"
    return None


# -- what a run asks of the clients (`fedstep start` refuses more; an agent refuses a message with more)
MAX_EPOCHS = 1000
"""Local epochs per round."""
MAX_BATCH_SIZE = 65_536
"""Examples per local training batch (2^16)."""
MAX_TRAIN_PARAMS = 32
"""The most operator parameters (`training.params`, `--train-param`) a round may carry."""
MAX_TRAIN_PARAM_CHARS = 256
"""The longest text value of one training parameter."""
MAX_ROUND_TIMEOUT_S = 365 * 24 * 3600
"""A round's deadline, seconds: at most a year (a Step Functions standard execution's longest life)."""

# -- strategies (set by the operator, bounded so the run record and round message stay small) ---
MAX_PARAM_TEXT_CHARS = 200
"""Longest text value of a strategy parameter."""
MAX_INSTRUCTIONS = 16
"""Most per-round client instructions a strategy may give (names like METRIC_NAME)."""
RESERVED_INSTRUCTION_PREFIX = "fedstep_"
"""Round instructions fedstep itself adds (the run's codec, the clip bound): no strategy may use them."""
MAX_FAILURE_CAUSE_CHARS = 4000
"""Longest failure cause reported to Step Functions (its own limit is 32,768 characters)."""
MAX_MEASUREMENTS = 16
"""Most measurements a strategy may report per round (names like METRIC_NAME)."""
