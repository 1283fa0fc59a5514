"""The one place that builds S3 keys and DynamoDB keys.

S3 layout (bucket = the model registry):

    runs/{run_id}/model.keras                                 architecture, written by `fedstep start`
    runs/{run_id}/partition.json                              each client's label counts, written by
                                                              `fedstep local` (simulations only)
    runs/{run_id}/rounds/{r:05d}/global-{version}.safetensors global weights after round r
    runs/{run_id}/rounds/{r:05d}/state-{version}.safetensors  the strategy's state after round r
    runs/{run_id}/rounds/{r:05d}/manifest-{version}.json      the updates round r aggregated (key, sha256,
                                                              object version, weight, clip factor), written
                                                              once with the round's global model
    runs/{run_id}/rounds/{r:05d}/card-{version}.json          the model card of that global model: written
                                                              once by the aggregation function when the
                                                              run finishes (its last round), or by
                                                              `fedstep promote` for an earlier round
    registry/{name}/approved.json                             the approved model (a pointer to a card),
                                                              written by `fedstep promote` (default name
                                                              `default`)
    registry/{name}/history/{approved_at}-{run_id}-{r:05d}.json
                                                              every promotion, written once, never replaced
    runs/{run_id}/statistics.json                             the federated statistics the run standardizes
                                                              with (`standardize: federated`), written once
                                                              by `fedstep start`; every client reads it
    updates/{client_id}/{run_id}/{r:05d}.safetensors          a client's update in round r
    integrity/cursor.json                                     where the scheduled integrity check stopped
                                                              (`fedstep.core.integrity`), overwritten by it

Round r trains on the global weights of round r-1 and produces those of round r. A round's result
is written once, never overwritten (S3 `If-None-Match: *`): `version` is the id of the aggregation
that wrote it (round 0: `initial`, a resume: `resumed`), so two aggregations of one round can never
collide, and the round summary names the one that counts. Updates have a top-level prefix so that a
lifecycle rule can expire them, and inside it each client has a prefix of its own
(`updates/{client_id}/`), the only place its IAM role may write.

DynamoDB single table, partition key `pk`, sort key `sk`. Partitions whose key has a `#` are typed;
a run id never contains one, so the kinds cannot collide:

    {run_id}              RUN                          the run record (server)
    {run_id}              ROUND#{r:05d}                the round record: published, claimed, aggregated (server)
    CLIENT#{client_id}    UPDATE#{run_id}#{r:05d}      a client's update item (written by that client)
    CLIENT#{client_id}    HEARTBEAT                    a client's heartbeat (written by that client)
    CLIENT#{client_id}    FAILURE#{run_id}             the client's last failed round in that run and its error
                                                       (written by that client; one per run, overwritten)
    CLIENT#{client_id}    EVAL#{run_id}#{r:05d}#{request}  a client's evaluation of round r's global model, for
                                                       the operator's request `request` (by that client)
    CLIENT#{client_id}    STATS#{request}              a client's bounded sums for the operator's statistics
                                                       request `request` (`fedstep stats`; by that client)
    FEEDBACK#{client_id}  REJECTION#{run_id}           why the client's last update in that run was rejected
                                                       (server; the client may read it, and its agent does)
    FEEDBACK#{client_id}  LAST_REJECTION               a copy of the client's latest rejection in any run
                                                       (server; what `fedstep clients` shows)
    STOP#{run_id}         STOP                         the run was stopped (`fedstep stop`; written once by the
                                                       operator, read by the aggregation function, which
                                                       commits no round while it exists, and by every client,
                                                       whose agent neither trains nor uploads for the run)

A client's role may write only the partition `CLIENT#{its id}` (IAM `dynamodb:LeadingKeys`, an exact
match), so no client can write a run record, a round record, another client's items or its own
feedback. Feedback is kept per run, so a rejection in one run never hides (or fakes) another run's:
an agent decides from its run's item alone whether its update for a retried round was rejected.
"""

import re

PK = "pk"
SK = "sk"

RUN_SK = "RUN"
ROUND_PREFIX = "ROUND#"
UPDATE_PREFIX = "UPDATE#"
EVAL_PREFIX = "EVAL#"
STATS_PREFIX = "STATS#"
CLIENT_PK_PREFIX = "CLIENT#"
FEEDBACK_PK_PREFIX = "FEEDBACK#"
HEARTBEAT_SK = "HEARTBEAT"
LAST_REJECTION_SK = "LAST_REJECTION"
REJECTION_PREFIX = "REJECTION#"
FAILURE_PREFIX = "FAILURE#"
STOP_PK_PREFIX = "STOP#"
STOP_SK = "STOP"
SECAGG_PREFIX = "SECAGG#"
INBOX_PK_PREFIX = "INBOX#"

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_VERSION = re.compile(r"^[a-z0-9]{1,32}$")


def check_id(kind: str, value: str) -> str:
    """Return `value` if it is a valid run or client id (1-64 of A-Z a-z 0-9 _ -), else raise ValueError."""
    if not isinstance(value, str) or not _ID.match(value):
        raise ValueError(
            f"invalid {kind} {value!r}: use 1-64 letters, digits, '-' or '_', starting with a letter or digit"
        )
    return value


def _round(round_number: int) -> str:
    if isinstance(round_number, bool) or not isinstance(round_number, int) or not 0 <= round_number <= 99_999:
        raise ValueError(f"invalid round {round_number!r}: a whole number from 0 to 99999")
    return f"{round_number:05d}"


# -- S3 ------------------------------------------------------------------------------------------

RUNS_PREFIX = "runs/"
"""Every run's files: its architecture, global models, states, plans, cards and statistics."""


def run_prefix(run_id: str) -> str:
    return f"{RUNS_PREFIX}{check_id('run id', run_id)}/"


def model_key(run_id: str) -> str:
    return f"{run_prefix(run_id)}model.keras"


def partition_key(run_id: str) -> str:
    """The run's simulated partition (each client's label counts), written once by `fedstep local`."""
    return f"{run_prefix(run_id)}partition.json"


def statistics_key(run_id: str) -> str:
    """The federated statistics run `run_id` standardizes with, written once by `fedstep start`."""
    return f"{run_prefix(run_id)}statistics.json"


def round_prefix(run_id: str, round_number: int) -> str:
    return f"{run_prefix(run_id)}rounds/{_round(round_number)}/"


INITIAL_VERSION = "initial"
"""The version of round 0's weights, written by `fedstep start`."""
RESUMED_VERSION = "resumed"
"""The version of the weights a resumed run starts from (copied from the run it continues)."""


def global_key(run_id: str, round_number: int, version: str) -> str:
    """The global weights after `round_number`, as written by the aggregation `version`."""
    if not _VERSION.match(version):
        raise ValueError(f"invalid model version {version!r}: 1-32 lowercase letters or digits")
    return f"{round_prefix(run_id, round_number)}global-{version}.safetensors"


def state_key(run_id: str, round_number: int, version: str) -> str:
    """The strategy's server state after `round_number`, written by the aggregation `version` (once)."""
    return global_key(run_id, round_number, version).replace("/global-", "/state-")


def plan_key(run_id: str, round_number: int, version: str) -> str:
    """The slice plan of a round aggregated by slices (`fedstep.core.sliced`), by the aggregation `version`."""
    model = global_key(run_id, round_number, version)
    return model.replace("/global-", "/plan-").removesuffix(".safetensors") + ".json"


UPDATES_PREFIX = "updates/"


def client_update_prefix(client_id: str) -> str:
    """Everything under this prefix is the client's own: its role may write nothing else."""
    return f"{UPDATES_PREFIX}{check_id('client id', client_id)}/"


def update_key(run_id: str, round_number: int, client_id: str) -> str:
    return f"{client_update_prefix(client_id)}{check_id('run id', run_id)}/{_round(round_number)}.safetensors"


def version_of_global(key: str) -> str:
    """The aggregation `version` of a global model's key (`.../global-{version}.safetensors`)."""
    name = key.rpartition("/")[2]
    version = name.removeprefix("global-").removesuffix(".safetensors")
    if not name.startswith("global-") or not name.endswith(".safetensors") or not _VERSION.match(version):
        raise ValueError(f"not a global model's key: {key!r}")
    return version


def manifest_key(run_id: str, round_number: int, version: str) -> str:
    """The update manifest of the round aggregated by `version`: the updates it aggregated, beside its model."""
    model = global_key(run_id, round_number, version)
    return model.replace("/global-", "/manifest-").removesuffix(".safetensors") + ".json"


INTEGRITY_PREFIX = "integrity/"


def integrity_cursor_key() -> str:
    """Where the scheduled integrity check keeps its place between invocations (`fedstep.core.integrity`)."""
    return f"{INTEGRITY_PREFIX}cursor.json"


def card_key(run_id: str, round_number: int, version: str) -> str:
    """The model card of the global model `global_key(run_id, round_number, version)`, beside it."""
    model = global_key(run_id, round_number, version)
    return model.replace("/global-", "/card-").removesuffix(".safetensors") + ".json"


REGISTRY_PREFIX = "registry/"
DEFAULT_MODEL_NAME = "default"


def approved_key(name: str = DEFAULT_MODEL_NAME) -> str:
    """The pointer to the approved model of the name `name` (overwritten by each promotion)."""
    return f"{REGISTRY_PREFIX}{check_id('model name', name)}/approved.json"


def promotion_key(name: str, approved_at: str, run_id: str, round_number: int) -> str:
    """One promotion in the history of `name`, written once; `approved_at` is a compact UTC time
    (`20261130T091500123456Z`), so the history lists in the order of promotion."""
    if not re.fullmatch(r"\d{8}T\d{6,12}Z", approved_at):
        raise ValueError(f"invalid promotion time {approved_at!r}: YYYYMMDDTHHMMSS[ffffff]Z")
    history = f"{REGISTRY_PREFIX}{check_id('model name', name)}/history/"
    return f"{history}{approved_at}-{check_id('run id', run_id)}-{_round(round_number)}.json"


# S3 key patterns for IAM policies (`*` is the run id, round or version, chosen at run time).
MODEL_KEY_PATTERN = "runs/*/model.keras"
GLOBAL_KEY_PATTERN = "runs/*/rounds/*/global-*.safetensors"
STATISTICS_KEY_PATTERN = "runs/*/statistics.json"
CARD_KEY_PATTERN = "runs/*/rounds/*/card-*.json"
PLAN_KEY_PATTERN = "runs/*/rounds/*/plan-*.json"
MANIFEST_KEY_PATTERN = "runs/*/rounds/*/manifest-*.json"
STATE_KEY_PATTERN = "runs/*/rounds/*/state-*.safetensors"
PARTITION_KEY_PATTERN = "runs/*/partition.json"
SECAGG_ROSTER_KEY_PATTERN = "runs/*/rounds/*/secagg-*/roster.json"
START_KEY_PATTERNS = (
    f"runs/*/rounds/*/global-{INITIAL_VERSION}.safetensors",
    f"runs/*/rounds/*/global-{RESUMED_VERSION}.safetensors",
    f"runs/*/rounds/*/state-{RESUMED_VERSION}.safetensors",
)
"""What a run starts from, written by `fedstep start` (and `--resume`): its weights, and its state."""


def client_update_key_pattern(client_id: str) -> str:
    """The client's own prefix: whatever `*` matches (even a `/`) stays inside it."""
    return f"{client_update_prefix(client_id)}*"


# -- DynamoDB ------------------------------------------------------------------------------------


def run_item_key(run_id: str) -> dict[str, str]:
    return {PK: check_id("run id", run_id), SK: RUN_SK}


def round_sk(round_number: int) -> str:
    return f"{ROUND_PREFIX}{_round(round_number)}"


def round_item_key(run_id: str, round_number: int) -> dict[str, str]:
    return {PK: check_id("run id", run_id), SK: round_sk(round_number)}


def client_pk(client_id: str) -> str:
    """The one partition a client's role may write."""
    return f"{CLIENT_PK_PREFIX}{check_id('client id', client_id)}"


def update_sk(run_id: str, round_number: int) -> str:
    return f"{UPDATE_PREFIX}{check_id('run id', run_id)}#{_round(round_number)}"


def update_item_key(run_id: str, round_number: int, client_id: str) -> dict[str, str]:
    return {PK: client_pk(client_id), SK: update_sk(run_id, round_number)}


def client_of(pk: str) -> str:
    """The client id of a client's own partition (`CLIENT#<id>`) or its feedback partition."""
    for prefix in (CLIENT_PK_PREFIX, FEEDBACK_PK_PREFIX):
        if pk.startswith(prefix):
            return check_id("client id", pk.removeprefix(prefix))
    raise ValueError(f"not a client's partition: {pk!r}")


def parse_update_item_key(pk: str, sk: str) -> tuple[str, str, int]:
    """(client id, run id, round) of an update item's key; ValueError if it is not one."""
    kind, _, rest = sk.partition("#")
    run_id, _, round_text = rest.rpartition("#")
    if not pk.startswith(CLIENT_PK_PREFIX) or f"{kind}#" != UPDATE_PREFIX or not round_text.isdigit():
        raise ValueError(f"not an update item key: {pk!r} / {sk!r}")
    return client_of(pk), check_id("run id", run_id), int(round_text)


def check_request_id(value: str) -> str:
    """`value` if it is a valid request id (evaluation, statistics): 1-32 lowercase letters or digits."""
    if not isinstance(value, str) or not _VERSION.match(value):
        raise ValueError(f"invalid request id {value!r}: 1-32 lowercase letters or digits")
    return value


def eval_sk(run_id: str, round_number: int, request_id: str) -> str:
    """An evaluation item's sort key; it never starts with `UPDATE_PREFIX`, so no aggregation reads it."""
    return f"{EVAL_PREFIX}{check_id('run id', run_id)}#{_round(round_number)}#{check_request_id(request_id)}"


def eval_item_key(run_id: str, round_number: int, request_id: str, client_id: str) -> dict[str, str]:
    """A client's answer to the evaluation request `request_id` (round `round_number`'s global model)."""
    return {PK: client_pk(client_id), SK: eval_sk(run_id, round_number, request_id)}


def stats_item_key(request_id: str, client_id: str) -> dict[str, str]:
    """A client's answer to the statistics request `request_id` (`fedstep stats`); its sort key never
    starts with `UPDATE_PREFIX`, so no aggregation reads it."""
    return {PK: client_pk(client_id), SK: f"{STATS_PREFIX}{check_request_id(request_id)}"}


def heartbeat_item_key(client_id: str) -> dict[str, str]:
    """The one heartbeat item of a client (overwritten by every beat)."""
    return {PK: client_pk(client_id), SK: HEARTBEAT_SK}


def failure_item_key(run_id: str, client_id: str) -> dict[str, str]:
    """The client's last failed round in run `run_id` and its error (overwritten by each failure in that
    run, so a client has at most one per run); its sort key never starts with `UPDATE_PREFIX`."""
    return {PK: client_pk(client_id), SK: f"{FAILURE_PREFIX}{check_id('run id', run_id)}"}


def feedback_pk(client_id: str) -> str:
    """A server partition a client's role may read (not write): feedback on its updates."""
    return f"{FEEDBACK_PK_PREFIX}{check_id('client id', client_id)}"


def rejection_item_key(client_id: str, run_id: str) -> dict[str, str]:
    """Why the client's last update in run `run_id` was rejected (overwritten by each rejection in that run)."""
    return {PK: feedback_pk(client_id), SK: f"{REJECTION_PREFIX}{check_id('run id', run_id)}"}


def last_rejection_item_key(client_id: str) -> dict[str, str]:
    """The client's latest rejection in any run (a copy of one `rejection_item_key` item)."""
    return {PK: feedback_pk(client_id), SK: LAST_REJECTION_SK}


def stop_item_key(run_id: str) -> dict[str, str]:
    """The run's stop marker, in a partition of its own (`STOP#{run_id}`): the operator's role may write
    only such partitions' items of its kind, and a client's role may read them, nothing else of the run."""
    return {PK: f"{STOP_PK_PREFIX}{check_id('run id', run_id)}", SK: STOP_SK}


# -- CloudFormation outputs ----------------------------------------------------------------------


def output_suffix(client_id: str) -> str:
    """A client id as CloudFormation output names allow (A-Za-z0-9): each run of letters and digits
    capitalised, the rest dropped (`client-1` -> `Client1`, `org_b` -> `OrgB`). Two clients with the
    same suffix cannot be in one deployment (`infra.config` refuses them)."""
    parts = re.split(r"[^A-Za-z0-9]+", check_id("client id", client_id))
    return "".join(p[:1].upper() + p[1:] for p in parts)


def client_output_key(client_id: str) -> str:
    """CloudFormation output name holding a client's queue URL, e.g. `QueueUrlClient1`."""
    return "QueueUrl" + output_suffix(client_id)


def client_role_output_key(client_id: str) -> str:
    """CloudFormation output name holding the ARN of a client's IAM role, e.g. `RoleArnClient1`."""
    return "RoleArn" + output_suffix(client_id)


def legacy_output_keys(client_id: str) -> tuple[str, str]:
    """(queue URL, role ARN) output names of a stack deployed before `output_suffix` (`QueueUrlclientx2d1`):
    read until it is deployed again."""
    suffix = "".join(c if c.isalnum() else f"x{ord(c):02x}" for c in check_id("client id", client_id))
    return "QueueUrl" + suffix, "RoleArn" + suffix


# -- secure aggregation (issue 25: the records of a secure round's phases) ---------------------------


def _attempt(attempt: int) -> str:
    if isinstance(attempt, bool) or not isinstance(attempt, int) or not 0 <= attempt <= 99:
        raise ValueError(f"invalid attempt {attempt!r}: a whole number from 0 to 99")
    return f"{attempt:02d}"


def secagg_sk(run_id: str, round_number: int, attempt: int, what: str) -> str:
    """A secure round's record (`what`: KEYS, SHARE#<recipient>, REVEAL, FROM#<sender>, SURVIVORS),
    for one attempt: a retried round gets fresh keys, so nothing of an earlier attempt is reused."""
    return f"{SECAGG_PREFIX}{check_id('run id', run_id)}#{_round(round_number)}#{_attempt(attempt)}#{what}"


def secagg_keys_item_key(run_id: str, round_number: int, attempt: int, client_id: str) -> dict[str, str]:
    """A client's advertisement (its public keys), in its own partition."""
    return {PK: client_pk(client_id), SK: secagg_sk(run_id, round_number, attempt, "KEYS")}


def secagg_share_item_key(
    run_id: str, round_number: int, attempt: int, client_id: str, recipient: str
) -> dict[str, str]:
    """A client's sealed share for one recipient, in the sender's own partition."""
    share = f"SHARE#{check_id('client id', recipient)}"
    return {PK: client_pk(client_id), SK: secagg_sk(run_id, round_number, attempt, share)}


def secagg_reveal_item_key(run_id: str, round_number: int, attempt: int, client_id: str) -> dict[str, str]:
    """A client's revealed shares, in its own partition."""
    return {PK: client_pk(client_id), SK: secagg_sk(run_id, round_number, attempt, "REVEAL")}


def inbox_pk(client_id: str) -> str:
    """A server partition a client's role may read (not write): the shares sealed to it."""
    return f"{INBOX_PK_PREFIX}{check_id('client id', client_id)}"


def inbox_item_key(run_id: str, round_number: int, attempt: int, recipient: str, sender: str) -> dict[str, str]:
    """The server's copy of `sender`'s share sealed to `recipient`, in the recipient's inbox."""
    origin = f"FROM#{check_id('client id', sender)}"
    return {PK: inbox_pk(recipient), SK: secagg_sk(run_id, round_number, attempt, origin)}


def secagg_survivors_key(run_id: str, round_number: int, attempt: int) -> dict[str, str]:
    """The survivors of a secure round's attempt, written once, in the run's partition."""
    return {PK: check_id("run id", run_id), SK: secagg_sk(run_id, round_number, attempt, "SURVIVORS")}


def secagg_phase_key(run_id: str, round_number: int, attempt: int, phase: str) -> dict[str, str]:
    """A phase of a secure round's attempt (`phase`: advertise, share, input, reveal): its task token
    (the later three; the first phase's is the round record's), its members, its state and its
    outcome, in the run's partition (server only, as the round record)."""
    if phase not in ("advertise", "share", "input", "reveal"):
        raise ValueError(f"invalid secure-aggregation phase {phase!r}")
    return {PK: check_id("run id", run_id), SK: secagg_sk(run_id, round_number, attempt, f"PHASE#{phase}")}


def parse_secagg_item_key(pk: str, sk: str) -> tuple[str, str, int, int, str]:
    """(client id, run id, round, attempt, what) of a client's secure-round item (`secagg_sk` in a
    `CLIENT#` partition); ValueError for any other key."""
    client_id = client_of(pk)
    parts = sk.split("#") if isinstance(sk, str) else []
    if len(parts) < 5 or f"{parts[0]}#" != SECAGG_PREFIX:
        raise ValueError(f"not a secure-aggregation item key: {str(sk)[:80]!r}")
    run_id, round_text, attempt_text, what = parts[1], parts[2], parts[3], "#".join(parts[4:])
    if not (round_text.isdigit() and attempt_text.isdigit()):
        raise ValueError(f"not a secure-aggregation item key: {sk[:80]!r}")
    return client_id, check_id("run id", run_id), int(round_text), int(attempt_text), what


def secagg_roster_key(run_id: str, round_number: int, attempt: int) -> str:
    """The roster of a secure round's attempt (every advertisement and the neighbourhoods), written once."""
    return f"{round_prefix(run_id, round_number)}secagg-{_attempt(attempt)}/roster.json"
