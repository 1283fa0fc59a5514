"""The one place that builds S3 keys and DynamoDB keys.

S3 layout of a run (bucket = the model registry):

    runs/{run_id}/model.keras                          architecture, written by `fedstep start`
    runs/{run_id}/rounds/{r:05d}/global.safetensors    global weights after round r (r=0: initial)
    updates/{run_id}/{r:05d}/{client_id}.safetensors   a client's update in round r

Round r trains on the global weights of round r-1 and produces those of round r. Updates have a
top-level prefix of their own so that a lifecycle rule can expire them (S3 filters by literal
prefix); each client's IAM role may write only keys ending in `/{client_id}.safetensors` there.

DynamoDB single-table layout: partition key `pk` = run id, sort key `sk` encodes the kind:

    RUN                          the run record (config, registered clients)
    ROUND#{r:05d}                 the round summary, written once by the aggregation function
    UPDATE#{r:05d}#{client_id}    a client's update item

Heartbeats live in a partition of their own per client, `CLIENT#{client_id}` / `HEARTBEAT`, so a
client's IAM role can be bound to exactly its own heartbeat (`dynamodb:LeadingKeys`). `#` never
occurs in a run id, so these partitions cannot collide with a run's.
"""

import re

PK = "pk"
SK = "sk"

RUN_SK = "RUN"
ROUND_PREFIX = "ROUND#"
UPDATE_PREFIX = "UPDATE#"
CLIENT_PK_PREFIX = "CLIENT#"
HEARTBEAT_SK = "HEARTBEAT"

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def check_id(kind: str, value: str) -> str:
    """Return `value` if it is a valid run or client id (1-64 of A-Z a-z 0-9 _ -), else raise ValueError."""
    if not isinstance(value, str) or not _ID.match(value):
        raise ValueError(
            f"invalid {kind} {value!r}: use 1-64 letters, digits, '-' or '_', starting with a letter or digit"
        )
    return value


def run_prefix(run_id: str) -> str:
    return f"runs/{check_id('run id', run_id)}/"


def model_key(run_id: str) -> str:
    return f"{run_prefix(run_id)}model.keras"


def round_prefix(run_id: str, round_number: int) -> str:
    return f"{run_prefix(run_id)}rounds/{round_number:05d}/"


def global_key(run_id: str, round_number: int) -> str:
    return f"{round_prefix(run_id, round_number)}global.safetensors"


UPDATES_PREFIX = "updates/"


def update_prefix(run_id: str, round_number: int) -> str:
    return f"{UPDATES_PREFIX}{check_id('run id', run_id)}/{round_number:05d}/"


def update_key(run_id: str, round_number: int, client_id: str) -> str:
    return f"{update_prefix(run_id, round_number)}{check_id('client id', client_id)}.safetensors"


def run_item_key(run_id: str) -> dict[str, str]:
    return {PK: check_id("run id", run_id), SK: RUN_SK}


def round_sk(round_number: int) -> str:
    return f"{ROUND_PREFIX}{round_number:05d}"


def round_item_key(run_id: str, round_number: int) -> dict[str, str]:
    return {PK: check_id("run id", run_id), SK: round_sk(round_number)}


def update_sk_prefix(round_number: int) -> str:
    return f"{UPDATE_PREFIX}{round_number:05d}#"


def update_item_key(run_id: str, round_number: int, client_id: str) -> dict[str, str]:
    return {
        PK: check_id("run id", run_id),
        SK: f"{update_sk_prefix(round_number)}{check_id('client id', client_id)}",
    }


def heartbeat_item_key(client_id: str) -> dict[str, str]:
    """The one heartbeat item of a client (overwritten by every beat)."""
    return {PK: f"{CLIENT_PK_PREFIX}{check_id('client id', client_id)}", SK: HEARTBEAT_SK}


def _output_suffix(client_id: str) -> str:
    return "".join(c if c.isalnum() else f"x{ord(c):02x}" for c in check_id("client id", client_id))


def client_output_key(client_id: str) -> str:
    """CloudFormation output name holding a client's queue URL (output names allow only A-Za-z0-9)."""
    return "QueueUrl" + _output_suffix(client_id)


def client_role_output_key(client_id: str) -> str:
    """CloudFormation output name holding the ARN of a client's IAM role."""
    return "RoleArn" + _output_suffix(client_id)


# S3 key patterns for IAM policies (`*` is the run id or round, chosen at run time).
MODEL_KEY_PATTERN = "runs/*/model.keras"
GLOBAL_KEY_PATTERN = "runs/*/rounds/*/global.safetensors"


def client_update_key_pattern(client_id: str) -> str:
    return f"{UPDATES_PREFIX}*/*/{check_id('client id', client_id)}.safetensors"
