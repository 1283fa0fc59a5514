"""A secure round (SecAgg+, `--secure-aggregation`): four phases, each closed once, and only the sum
of the survivors' inputs ever unmasked and decoded.

The phases of one attempt (docs/design-notes.md, "Secure aggregation on a serverless round"):
1. **advertise**: the round message (`publish_round`, the round record's task token); each client
   trains, then writes its keys item. Closed when every selected client advertised or declined (the
   stream path) or at the round's deadline: the roster is written once (`If-None-Match`), its
   members are the next phase's.
2. **share**, 3. **input**, 4. **reveal**: each opened by the state machine (`publish_phase`, the
   phase record's task token, the phase's own deadline) and closed by the stream path once every
   member answered, or at the phase's deadline with what arrived (`close_at_deadline`). Closing
   share relays the sealed shares into the recipients' inboxes; closing input checks each masked
   file and writes the survivors record once (a conditional write: an invocation that comes later
   reads it back and never recomputes it, so no client is ever asked for both of one client's
   secrets); closing reveal claims the round, unmasks the sum of the pinned masked files, decodes
   only that sum and applies the run's strategy to its mean (`aggregate_secure`).

A phase is closed by one conditional write of its record (open -> closed, with its outcome: the next
phase's members), then its side effects run (idempotent: a crashed closer's are redone by the next
invocation or at the deadline), then it is reported to its token and marked reported. Fewer than t
members left at any close is `SecAggThresholdNotMet`: the state machine retries the round with a new
attempt, whose keys are fresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import numpy as np

from fedstep.core import keys, limits, sliced, tensors
from fedstep.core.clock import utc_now
from fedstep.core.dp import distributed_client_stddev
from fedstep.core.errors import FedstepError, InvalidUpdate, RunStopped
from fedstep.core.manifest import ManifestEntry, UpdateManifest
from fedstep.core.ports import ModelStore, Publisher, RangeRead, Reporter, SecureAggregation, SecureTable
from fedstep.core.round_record import RoundRecord
from fedstep.core.rounds.aggregate import check_finite, kept_by_strategy, strategy_measurements
from fedstep.core.rounds.complete import Claimed, run_claimed_round
from fedstep.core.rounds.errors import RoundBusy, RoundNotAggregated, SecAggThresholdNotMet, StrategyFailed
from fedstep.core.rounds.inputs import build_strategy, load_state, previous_summary, selected_in
from fedstep.core.rounds.privacy import count_release, operator_privacy_spent, privacy_spent
from fedstep.core.rounds.results import file_metadata, new_claim_id, send_feedback, write_once, write_results
from fedstep.core.rounds.settings import AggregationSettings
from fedstep.core.rounds.slices import Planned, new_plan, plan_output
from fedstep.core.rounds.summary import DRAFT_TIMING, Tally, build_summary, finished, task_output
from fedstep.core.schemas import (
    LATER_PHASES,
    MASKED_ENCODING,
    MASKED_TENSOR,
    PHASE_ADVERTISE,
    PHASE_INPUT,
    PHASE_REVEAL,
    PHASE_SHARE,
    PHASES,
    ROUND_AGGREGATED,
    ROUND_REPORTED,
    DeclineItem,
    InvalidMessage,
    ObjectRef,
    Rejection,
    RoundSummary,
    RunRecord,
    SecAggInboxItem,
    SecAggKeysItem,
    SecAggPhaseMessage,
    SecAggRevealItem,
    SecAggRoster,
    SecAggRound,
    SecAggShareItem,
    UpdateItem,
    masked_order,
    parse_client_item,
)
from fedstep.core.strategies import ClientUpdate, GlobalModel, UpdateInfo
from fedstep.core.update_source import (
    ModelLayout,
    metadata_check,
    read_elements,
    read_layout,
    read_model,
    stream_blocks,
)

log = logging.getLogger(__package__)

T = TypeVar("T")
OPEN, CLOSED, REPORTED = "open", "closed", "reported"
PHASE_KIND = "secagg-phase"
SURVIVORS_KIND = "secagg-survivors"
SUM_CLIENT = "secure-sum"
"""The one update a strategy sees in a secure round: the survivors' weighted mean delta."""


def next_phase(phase: str) -> str | None:
    position = PHASES.index(phase)
    return PHASES[position + 1] if position + 1 < len(PHASES) else None


def phase_output(phase: str) -> dict[str, Any]:
    """What a closed phase (not the last) returns to the state machine: the phase to open next."""
    return {"secagg": {"phase": next_phase(phase)}}


def round_spec(run: RunRecord, selected: list[str]) -> SecAggRound:
    """The secure part of a round message (and what the server decodes the sum with). Under
    `--dp distributed` every client's weight is 1 (the cap is 1 example: an unweighted mean, as
    client-level DP's fixed denominator) and each adds noise of std zC / sqrt(t)."""
    if run.secagg is None:
        raise FedstepError(f"run {run.run_id} has no secure aggregation")
    distributed = run.dp is not None and run.dp.mode == "distributed"
    return SecAggRound(
        threshold=run.secagg.threshold,
        neighbours=run.secagg.neighbours,
        clip=run.secagg.clip,
        max_inputs=max(1, len(selected)),
        max_examples=1 if distributed else run.bounds.max_examples,
        noise_stddev=distributed_client_stddev(run.dp, run.secagg.threshold) if distributed and run.dp else 0.0,
    )


def graph_seed(run: RunRecord, round_number: int, attempt: int) -> int:
    """The neighbourhood graph's seed: the run's seed, the round and the attempt (fresh per attempt)."""
    digest = hashlib.sha256(f"{run.seed}|{run.run_id}|{round_number}|{attempt}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


@dataclass(frozen=True)
class Attempt:
    """One attempt of a secure round: its run, its round record as read, the attempt's phase records."""

    run: RunRecord
    round_number: int
    record: RoundRecord
    phases: dict[str, dict[str, Any]]

    @property
    def attempt(self) -> int:
        return self.record.attempt

    @property
    def run_id(self) -> str:
        return self.run.run_id

    @property
    def threshold(self) -> int:
        assert self.run.secagg is not None
        return self.run.secagg.threshold

    def key(self, phase: str) -> dict[str, str]:
        return keys.secagg_phase_key(self.run_id, self.round_number, self.attempt, phase)

    def current(self) -> str:
        """The latest phase that has a record (advertise while none has)."""
        for phase in reversed(LATER_PHASES):
            if phase in self.phases:
                return phase
        return PHASE_ADVERTISE

    def members(self, phase: str) -> list[str]:
        """Who takes part in `phase`: the selected clients for advertise, else the previous phase's outcome."""
        if phase == PHASE_ADVERTISE:
            return selected_in(self.record, self.run, self.round_number)
        previous = self.phases.get(PHASES[PHASES.index(phase) - 1], {})
        return [str(c) for c in previous.get("next", [])]

    def roster_ref(self) -> ObjectRef:
        raw = self.phases.get(PHASE_ADVERTISE, {}).get("roster")
        if not isinstance(raw, dict):
            raise FedstepError(f"round {self.round_number} of run {self.run_id} has no roster yet")
        return ObjectRef.parse(raw, "roster ref")

    def spec(self) -> SecAggRound:
        return round_spec(self.run, selected_in(self.record, self.run, self.round_number))


def load_attempt(table: SecureTable, run: RunRecord, round_number: int) -> Attempt | None:
    item = table.get_round(run.run_id, round_number)
    if item is None:
        return None
    record = RoundRecord.parse(item)
    phase_keys = [keys.secagg_phase_key(run.run_id, round_number, record.attempt, p) for p in PHASES]
    found = {str(i[keys.SK]).rsplit("#", 1)[-1]: i for i in table.get_items(phase_keys)}
    return Attempt(run, round_number, record, found)


# -- readiness: who answered a phase --------------------------------------------------------------


def _valid(at: Attempt, raws: list[dict[str, Any]], parse: Callable[[dict[str, Any]], T], what: str) -> list[T]:
    """The items that parse; each refused one is logged with why (it counts as not sent)."""
    valid = []
    for raw in raws:
        try:
            valid.append(parse(raw))
        except InvalidMessage as exc:
            log.warning("round %s/%d: a %s is refused: %s", at.run_id, at.round_number, what, exc)
    return valid


def _adverts(table: SecureTable, at: Attempt, members: list[str]) -> dict[str, SecAggKeysItem]:
    """The members' valid keys items of this attempt."""
    found = table.get_items([keys.secagg_keys_item_key(at.run_id, at.round_number, at.attempt, c) for c in members])
    return {item.client_id: item for item in _valid(at, found, SecAggKeysItem.parse, "keys item")}


def _declined(table: SecureTable, at: Attempt, members: list[str]) -> list[Rejection]:
    """The members that declined the round (their refusal in place of an update item), with why."""
    items = _valid(at, list(table.get_updates(at.run_id, at.round_number, members).values()), parse_client_item, "item")
    return [Rejection(i.client_id, i.reason) for i in items if isinstance(i, DeclineItem)]


def _shares(
    table: SecureTable, at: Attempt, members: list[str], roster: SecAggRoster
) -> dict[str, list[SecAggShareItem]]:
    """Each member's valid shares of this attempt, when it sealed one to every neighbour of the roster:
    read by key, one per (member, neighbour), so what a client writes beyond them is never read."""
    wanted = [
        keys.secagg_share_item_key(at.run_id, at.round_number, at.attempt, client, recipient)
        for client in members
        for recipient in roster.neighbours.get(client, [])
    ]
    found: dict[str, list[SecAggShareItem]] = {}
    for item in _valid(at, table.get_items(wanted), SecAggShareItem.parse, "share"):
        found.setdefault(item.client_id, []).append(item)
    return {c: items for c, items in found.items() if len(items) == len(roster.neighbours.get(c, []))}


def _masked_items(table: SecureTable, at: Attempt, members: list[str]) -> dict[str, UpdateItem]:
    """The members' masked-input items of this attempt (an earlier attempt's are not this one's)."""
    raws = list(table.get_updates(at.run_id, at.round_number, members).values())
    items = _valid(at, raws, parse_client_item, "masked-input item")
    return {i.client_id: i for i in items if isinstance(i, UpdateItem) and i.masked and i.attempt == at.attempt}


def _reveals(table: SecureTable, at: Attempt, members: list[str]) -> dict[str, SecAggRevealItem]:
    found = table.get_items([keys.secagg_reveal_item_key(at.run_id, at.round_number, at.attempt, c) for c in members])
    return {item.client_id: item for item in _valid(at, found, SecAggRevealItem.parse, "reveal")}


def _ready(table: SecureTable, store: ModelStore, at: Attempt, phase: str) -> bool:
    """Whether every member of `phase` answered it (or, for advertise, declined)."""
    members = at.members(phase)
    if phase == PHASE_ADVERTISE:
        answered = set(_adverts(table, at, members)) | {d.client_id for d in _declined(table, at, members)}
        return set(members) <= answered
    if phase == PHASE_SHARE:  # one query per member: stop at the first that has not shared them all
        roster = read_roster(store, at.roster_ref())
        return all(client in _shares(table, at, [client], roster) for client in members)
    if phase == PHASE_INPUT:
        return set(members) <= set(_masked_items(table, at, members))
    return set(members) <= set(_reveals(table, at, members))


# -- closing a phase ------------------------------------------------------------------------------


def read_roster(store: ModelStore, ref: ObjectRef) -> SecAggRoster:
    data = store.get(ref.key)
    if tensors.sha256_hex(data) != ref.sha256:
        raise FedstepError(f"the roster {ref.key} is not the one the round recorded")
    return SecAggRoster.parse(json.loads(data))


def _enough(at: Attempt, phase: str, members: list[str], answered: list[str]) -> None:
    if len(answered) < at.threshold:
        missing = sorted(set(members) - set(answered))
        raise SecAggThresholdNotMet(
            f"{len(answered)} of {len(members)} clients completed the {phase} phase of round {at.round_number} "
            f"(attempt {at.attempt}) of run {at.run_id}, threshold {at.threshold}; missing: {missing[:10]}"
        )


def _close(table: SecureTable, at: Attempt, phase: str, outcome: dict[str, Any]) -> dict[str, Any]:
    """Close `phase` with `outcome` (its `next` members, ...) once: the record as it stands after
    (another invocation's outcome if it closed first)."""
    allowed: tuple[str | None, ...] = (None,) if phase == PHASE_ADVERTISE else (OPEN,)
    sets = {"kind": PHASE_KIND, "status": CLOSED, "closed_at": utc_now(), **outcome}
    closed = table.update_where(at.key(phase), sets, allowed)
    if closed is None:
        closed = table.get_item(at.key(phase)) or {}
        if closed.get("status") not in (CLOSED, REPORTED):
            raise RoundBusy(f"the {phase} phase of round {at.round_number} of run {at.run_id} is not open")
    at.phases[phase] = closed
    return closed


def close_advertise(store: ModelStore, table: SecureTable, at: Attempt, secure: SecureAggregation) -> None:
    """Phase 1 closes: the roster of the clients that advertised, written once."""
    members = at.members(PHASE_ADVERTISE)
    adverts = _adverts(table, at, members)
    _enough(at, PHASE_ADVERTISE, members, list(adverts))
    assert at.run.secagg is not None
    clients = sorted(adverts)
    roster = SecAggRoster(
        at.run_id,
        at.round_number,
        at.attempt,
        at.threshold,
        {c: (a.seal_public, a.mask_public, a.seed_commitment) for c, a in adverts.items()},
        secure.neighbourhoods(clients, at.run.secagg.neighbours, graph_seed(at.run, at.round_number, at.attempt)),
    )
    key = keys.secagg_roster_key(at.run_id, at.round_number, at.attempt)
    data = json.dumps(roster.to_json(), sort_keys=True).encode()
    if not store.put_once(key, data):  # another invocation wrote it first: its roster stands
        data = store.get(key)
        roster = SecAggRoster.parse(json.loads(data))
    ref = ObjectRef(key, tensors.sha256_hex(data), len(data))
    _close(table, at, PHASE_ADVERTISE, {"next": sorted(roster.adverts), "roster": asdict(ref)})


def _relay(
    store: ModelStore, table: SecureTable, at: Attempt, shares: dict[str, list[SecAggShareItem]] | None = None
) -> None:
    """Copy each share a member of `input` sealed to another member into the recipient's inbox
    (`shares`: the members' shares as the close read them; None: read them again)."""
    members = set(at.members(PHASE_INPUT))
    if shares is None:
        shares = _shares(table, at, sorted(members), read_roster(store, at.roster_ref()))
    table.put_server_items(
        [
            SecAggInboxItem(at.run_id, at.round_number, at.attempt, share.recipient, sender, share.sealed).to_item()
            for sender, items in shares.items()
            for share in items
            if sender in members and share.recipient in members
        ]
    )


def close_share(store: ModelStore, table: SecureTable, at: Attempt) -> None:
    """Phase 2 closes: the members whose shares all came go on (each masks with those among them)."""
    members = at.members(PHASE_SHARE)
    shares = _shares(table, at, members, read_roster(store, at.roster_ref()))
    _enough(at, PHASE_SHARE, members, list(shares))
    _close(table, at, PHASE_SHARE, {"next": sorted(shares)})
    _relay(store, table, at, shares)


def masked_size(layout: ModelLayout) -> tuple[int, list[str]]:
    """(d + 1, the tensor names in masked order) of the round's model (`layout`: its global model's)."""
    return layout.spec.num_parameters + 1, masked_order(list(layout.spec.shapes))


def _masked_header(
    store: ModelStore, ref: ObjectRef, size: int, version: str | None
) -> tuple[tensors.Header, RangeRead]:
    """A masked input file's header (exactly one uint32 tensor `masked` of `size` elements, the file
    `ref.bytes` long) from one ranged read of its start; its size is checked before a byte is read."""
    data_bytes = 4 * size
    if not limits.MIN_UPDATE_FILE_BYTES + data_bytes <= ref.bytes <= 8 + limits.MAX_HEADER_SLACK_BYTES + data_bytes:
        raise InvalidUpdate(f"masked input is {ref.bytes} bytes; {size} uint32 values and a header cannot be")
    first = store.read_range(ref.key, 0, min(ref.bytes, 8 + limits.MAX_HEADER_SLACK_BYTES), version)
    if first.total_bytes != ref.bytes:
        raise InvalidUpdate(f"masked input is {first.total_bytes} bytes, the item says {ref.bytes}")
    spec = tensors.TensorSpec({MASKED_TENSOR: (size,)})
    header = tensors.parse_header(
        first.data, ref.bytes, spec, limits.MAX_HEADER_SLACK_BYTES, tensors.F32, {MASKED_TENSOR: tensors.U32}
    )
    return header, first


def check_masked(store: ModelStore, ref: ObjectRef, size: int) -> tuple[dict[str, Any], str | None]:
    """A masked input file checked (`_masked_header`, then its sha256 streamed a block at a time:
    memory one block, whatever the model's size): (its fedstep metadata, the object version checked).
    InvalidUpdate on any defect."""
    header, first = _masked_header(store, ref, size, None)
    digest = hashlib.sha256(first.data)
    for block in stream_blocks(store, ref.key, len(first.data), ref.bytes, first.version):
        digest.update(block)
    if digest.hexdigest() != ref.sha256:
        raise InvalidUpdate("sha256 does not match the one reported")
    return header.metadata, first.version


def read_masked(store: ModelStore, ref: ObjectRef, size: int, version: str | None) -> tuple[dict[str, Any], np.ndarray]:
    """The pinned version of a masked input file, whole (a model that fits one function): (its
    fedstep metadata, its `size` uint32 values); its sha256 checked again."""
    header, _ = _masked_header(store, ref, size, version)
    data = bytes(store.read_range(ref.key, 0, ref.bytes, version).data)
    if tensors.sha256_hex(data) != ref.sha256:
        raise InvalidUpdate("sha256 does not match the one pinned")
    return header.metadata, np.frombuffer(data, dtype="<u4", count=size, offset=header.data_start)


def close_input(store: ModelStore, table: SecureTable, at: Attempt) -> None:
    """Phase 3 closes: each masked file checked (size, header, sha256, metadata equal to its item) and
    pinned to the version checked; the survivors record written once (an earlier one stands)."""
    members = at.members(PHASE_INPUT)
    size, _ = masked_size(read_layout(store, at.record.require_input_model()))
    pinned: dict[str, dict[str, Any]] = {}
    for client, item in sorted(_masked_items(table, at, members).items()):
        try:
            metadata, version = check_masked(store, item.update, size)
            metadata_check(item)(metadata)
        except InvalidUpdate as exc:
            reason = f"masked input refused: {exc}"
            send_feedback(table, at.run_id, at.round_number, client, item.update.sha256, reason)
            continue
        pinned[client] = {"sha256": item.update.sha256, "bytes": item.update.bytes, "version": version}
    _enough(at, PHASE_INPUT, members, list(pinned))
    key = keys.secagg_survivors_key(at.run_id, at.round_number, at.attempt)
    if table.update_where(key, survivors_record(members, pinned), (None,)) is None:
        log.info("round %s/%d: the survivors were fixed already; they stand", at.run_id, at.round_number)
    fixed = table.get_item(key) or {}
    _close(table, at, PHASE_INPUT, {"next": list(fixed.get("survivors", []))})


def survivors_record(members: list[str], pinned: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The survivors record's fields: who survived (their masked files pinned: sha256, bytes, the
    object version checked) and who dropped (members of the input phase without a valid input)."""
    return {
        "kind": SURVIVORS_KIND,
        "survivors": sorted(pinned),
        "dropped": sorted(set(members) - set(pinned)),
        "inputs": pinned,
    }


def _survivors(table: SecureTable, at: Attempt) -> dict[str, Any]:
    fixed = table.get_item(keys.secagg_survivors_key(at.run_id, at.round_number, at.attempt))
    if fixed is None:
        raise FedstepError(f"round {at.round_number} of run {at.run_id} has no survivors record")
    return fixed


# -- the sum ----------------------------------------------------------------------------------------


class SummedUpdates:
    """The round's updates as a strategy sees them under secure aggregation: one update, the survivors'
    weighted mean delta (weighted by their examples), read in one pass (`strategies.Updates`)."""

    sliced = False
    slice_elements = 0

    def __init__(self, spec: tensors.TensorSpec, update: ClientUpdate) -> None:
        self.spec, self.update = spec, update

    def __iter__(self) -> Iterator[ClientUpdate]:
        yield self.update

    def accepted(self) -> list[UpdateInfo]:
        return [UpdateInfo(self.update.client_id, self.update.num_examples)]

    def slice(self, name: str, start: int, stop: int) -> np.ndarray:
        raise ValueError("secure aggregation gives a strategy the sum of the updates, never one update's slice")


def aggregate_secure(
    at: Attempt,
    claim: str,
    store: ModelStore,
    table: SecureTable,
    settings: AggregationSettings,
) -> RoundSummary | ObjectRef:
    """The round's model from the unmasked sum: the pinned masked files summed (never decoded one by
    one), the masks removed with the revealed shares, the sum decoded into the mean delta, the
    strategy applied to it; results written once under the claim, as a plain round's. A model larger
    than `settings.slice_bytes` is planned for slices instead (`_plan_secure`): the plan's ref."""
    if settings.secure is None:
        raise FedstepError("the aggregation function has no secure-aggregation engine (settings.secure)")
    run, round_number, record = at.run, at.round_number, at.record
    started = time.time()
    fixed = _survivors(table, at)
    survivors, dropped = frozenset(fixed["survivors"]), frozenset(fixed["dropped"])
    reveals = {c: dict(r.shares) for c, r in _reveals(table, at, sorted(survivors)).items()}
    input_model = record.require_input_model()
    layout = read_layout(store, input_model)
    if sliced.needs_slices(input_model.bytes, settings.slice_bytes):
        return _plan_secure(at, claim, store, table, settings, layout, fixed, reveals, started)
    size, names = masked_size(layout)
    total = np.zeros(size, dtype=np.uint32)
    survived = []
    for client in sorted(survivors):
        ref, version = _pinned_ref(at, fixed, client), fixed["inputs"][client].get("version")
        metadata, values = read_masked(store, ref, size, version)
        total += values
        survived.append(_Survivor.of(at, fixed, client, ref, metadata, version))
    repeated = _count_release(at, table, claim)
    summed = settings.secure.unmask(read_roster(store, at.roster_ref()), survivors, dropped, total, reveals)
    examples_sum, mean = settings.secure.mean_delta(at.spec(), summed, len(survivors))
    delta: tensors.Tensors = {}
    position = 0
    for name in names:
        shape = layout.spec.shapes[name]
        count = int(np.prod(shape, dtype=np.int64))
        delta[name] = mean[position : position + count].astype(np.float32).reshape(shape)
        position += count
    strategy = build_strategy(run)
    state = load_state(store, record, run)
    global_model = GlobalModel(layout.spec, lambda: read_model(store, input_model, layout))
    updates = SummedUpdates(layout.spec, ClientUpdate(SUM_CLIENT, max(1, round(examples_sum)), delta))
    try:
        result = strategy.aggregate(round_number, global_model, state, updates)
    except Exception as exc:
        raise StrategyFailed(
            f"strategy {run.strategy!r} failed in round {round_number} of run {run.run_id}: {type(exc).__name__}: {exc}"
        ) from exc
    measurements = strategy_measurements(result, run, round_number)
    kept_by_strategy(result, [SUM_CLIENT], run, round_number)
    check_finite(result)
    data = tensors.encode(result.weights, file_metadata(run, round_number, claim, "global"))
    state_data = result.state.encode(run.strategy) if result.state.tensors or result.state.values else None
    manifest = _manifest(at, claim, survived)
    global_ref, state_ref, manifest_ref = write_results(store, run, round_number, claim, data, state_data, manifest)
    timing = finished(record.first_issued_at, started)
    return _summary(at, table, settings, survived, dropped, global_ref, timing, layout, repeated,
                    measurements=measurements, state=state_ref, manifest=manifest_ref)  # fmt: skip


@dataclass(frozen=True)
class _Survivor:
    """A survivor's update item as its pinned file's metadata says (what was checked when the input
    phase closed; the item in the table may have been rewritten since), the examples it is weighted
    by and the object version pinned."""

    item: UpdateItem
    examples: int
    version: str | None

    @classmethod
    def of(
        cls, at: Attempt, fixed: dict[str, Any], client: str, ref: ObjectRef, metadata: dict[str, Any], version: Any
    ) -> _Survivor:
        item = UpdateItem(
            run_id=at.run_id,
            round=at.round_number,
            client_id=client,
            num_examples=int(metadata.get("num_examples", 1)),
            update=ref,
            metrics=dict(metadata.get("metrics") or {}),
            created_at=str(fixed.get("closed_at", "")),
            privacy=dict(metadata.get("privacy") or {}),
            encoding=MASKED_ENCODING,
            attempt=at.attempt,
        )
        return cls(item, min(item.num_examples, at.run.bounds.max_examples), version)


def _pinned_ref(at: Attempt, fixed: dict[str, Any], client: str) -> ObjectRef:
    pin = fixed["inputs"][client]
    return ObjectRef(keys.update_key(at.run_id, at.round_number, client), str(pin["sha256"]), int(pin["bytes"]))


def _count_release(at: Attempt, table: SecureTable, claim: str) -> int:
    """Under distributed DP, the noisy sum counted as released before it is unmasked (`count_release`)."""
    return count_release(at.run, at.round_number, table, claim, previous_summary(table, at.run, at.round_number))


def _manifest(at: Attempt, claim: str, survived: list[_Survivor]) -> UpdateManifest:
    """The masked files the sum was made of, each at the version pinned."""
    entries = [ManifestEntry.of(s.item, s.version, s.examples, None) for s in survived]
    return UpdateManifest(at.run_id, at.round_number, claim, entries)


def _summary(
    at: Attempt,
    table: SecureTable,
    settings: AggregationSettings,
    survived: list[_Survivor],
    dropped: frozenset[str],
    global_ref: ObjectRef,
    timing: dict[str, Any],
    layout: ModelLayout,
    repeated: int,
    **results: Any,
) -> RoundSummary:
    """The round's summary (or a sliced round's draft): the survivors as its participants, the clients
    that dropped out as rejected, those that declined, and both epsilons under distributed DP."""
    run, round_number, record = at.run, at.round_number, at.record
    accepted = [(s.item, s.examples) for s in survived]
    selected = selected_in(record, run, round_number)
    dropped_out = [Rejection(c, "dropped out of the secure round") for c in sorted(dropped)]
    return build_summary(
        run,
        round_number,
        record,
        selected,
        Tally(accepted, dropped_out, _declined(table, at, selected)),
        global_ref,
        timing,
        privacy_spent(run, round_number, accepted, settings.accountant, repeated),
        None,
        repeated_releases=repeated,
        operator_epsilon=operator_privacy_spent(
            run, round_number, settings.operator_accountant, layout.spec.num_parameters, repeated
        ),
        **results,
    )


def _plan_secure(
    at: Attempt,
    claim: str,
    store: ModelStore,
    table: SecureTable,
    settings: AggregationSettings,
    layout: ModelLayout,
    fixed: dict[str, Any],
    reveals: dict[str, dict[str, tuple[str, bytes]]],
    started: float,
) -> ObjectRef:
    """A secure round whose model is larger than one function: its slices planned. Each survivor's
    pinned masked file is read only for its header and its weight (element 0); the masks' seeds are
    rebuilt once, here, and kept in the plan (server-only, as the round's claim), so that each slice
    reads its own range of every masked file and removes the masks from that range alone."""
    assert settings.secure is not None
    run, round_number, record = at.run, at.round_number, at.record
    input_model = record.require_input_model()
    try:
        sliced.check_sliceable(build_strategy(run), input_model.bytes, settings.slice_bytes)
    except sliced.NotSliceable as exc:
        raise StrategyFailed(f"run {run.run_id}, round {round_number}: {exc}") from None
    size, names = masked_size(layout)
    survivors, dropped = frozenset(fixed["survivors"]), frozenset(fixed["dropped"])
    weights = np.zeros(1, dtype=np.uint32)
    survived, planned = [], []
    for client in sorted(survivors):
        ref, version = _pinned_ref(at, fixed, client), fixed["inputs"][client].get("version")
        header, _ = _masked_header(store, ref, size, version)
        weight = np.empty(1, dtype=np.uint32)
        read_elements(store, ref.key, header.data_start, 0, weight, tensors.U32, version)
        weights += weight
        survivor = _Survivor.of(at, fixed, client, ref, header.metadata, version)
        survived.append(survivor)
        planned.append(
            sliced.PlannedUpdate(
                client, ref.key, ref.sha256, version, header.data_start, header.offsets, survivor.examples, None,
                tensors.U32.name, MASKED_ENCODING,
            )
        )  # fmt: skip
    repeated = _count_release(at, table, claim)
    seeds = settings.secure.mask_seeds(read_roster(store, at.roster_ref()), survivors, dropped, reveals)
    spec = at.spec()
    weight_sum = settings.secure.decode_weight(spec, settings.secure.unmask_range(weights, seeds, 0), len(survivors))
    manifest = _manifest(at, claim, survived)
    manifest_ref = write_once(store, keys.manifest_key(run.run_id, round_number, claim), manifest.encode())
    output = ObjectRef(keys.global_key(run.run_id, round_number, claim), "0" * 64, 0)
    draft = _summary(at, table, settings, survived, dropped, output, DRAFT_TIMING, layout, repeated,
                     manifest=manifest_ref)  # fmt: skip
    secure = {
        "seeds": [[seed.hex(), sign] for seed, sign in seeds],
        "count": len(survivors),
        "weight": weight_sum,
        "examples": max(1, round(weight_sum * spec.max_examples)),
        "spec": spec.to_dict(),
        "order": names,
    }
    planning = Planned(run, round_number, record, claim, input_model, layout, started)
    plan = new_plan(planning, store, settings, planned, draft, secure)
    log.info("round %s/%d: planned %d slices of a secure sum", run.run_id, round_number, plan.slice_count)
    return write_once(store, keys.plan_key(run.run_id, round_number, claim), plan.encode())


def close_reveal(
    store: ModelStore,
    table: SecureTable,
    at: Attempt,
    settings: AggregationSettings,
    *,
    at_deadline: bool,
    on_aggregated: Callable[[RoundSummary], None] | None,
) -> dict[str, Any] | None:
    """Phase 4 closes: the round claimed and aggregated from the unmasked sum, its summary committed
    (or, for a model larger than one function, its slices planned): the task output. None when
    another invocation holds or took the round (it finishes it)."""
    members = at.members(PHASE_REVEAL)
    _enough(at, PHASE_REVEAL, members, list(_reveals(table, at, members)))
    now = time.time()
    claim = new_claim_id()
    claimed = table.claim_round(at.run_id, at.round_number, claim, now, now + settings.lease_s)
    if claimed is None:
        return None
    record = RoundRecord.parse(claimed)
    at = Attempt(at.run, at.round_number, record, at.phases)
    outcome = run_claimed_round(
        Claimed(at.run, at.round_number, record, claim, {}),
        store=store,
        table=table,
        settings=settings,
        at_deadline=at_deadline,
        status=ROUND_REPORTED if at_deadline else ROUND_AGGREGATED,
        on_aggregated=on_aggregated,
        aggregate=lambda *_: aggregate_secure(at, claim, store, table, settings),
    )
    if outcome.stopped is not None:
        raise outcome.stopped
    if outcome.summary is not None or outcome.plan is not None:
        _close(table, at, PHASE_REVEAL, {"next": []})
    if outcome.plan is not None:  # aggregated by slices: the state machine fans out, then assembles
        return plan_output(store, outcome.plan)
    return task_output(outcome.summary, at.run) if outcome.summary is not None else None


def _close_phase(
    phase: str,
    store: ModelStore,
    table: SecureTable,
    at: Attempt,
    settings: AggregationSettings,
    *,
    at_deadline: bool,
    on_aggregated: Callable[[RoundSummary], None] | None,
) -> dict[str, Any] | None:
    """Close `phase` (or redo a closed one's side effects): its output, None when another invocation
    aggregates the round."""
    closed = at.phases.get(phase, {}).get("status") in (CLOSED, REPORTED)
    if phase == PHASE_ADVERTISE:
        if not closed:
            if settings.secure is None:
                raise FedstepError("the aggregation function has no secure-aggregation engine (settings.secure)")
            close_advertise(store, table, at, settings.secure)
        return phase_output(phase)
    if phase == PHASE_SHARE:
        close_share(store, table, at) if not closed else _relay(store, table, at)
        return phase_output(phase)
    if phase == PHASE_INPUT:
        if not closed:
            close_input(store, table, at)
        return phase_output(phase)
    return close_reveal(store, table, at, settings, at_deadline=at_deadline, on_aggregated=on_aggregated)


def _token(at: Attempt, phase: str) -> str:
    if phase == PHASE_ADVERTISE:
        return at.record.task_token or ""
    return str(at.phases.get(phase, {}).get("task_token", ""))


def _mark_reported(table: SecureTable, at: Attempt, phase: str, output: dict[str, Any]) -> None:
    if phase == PHASE_REVEAL and "summary" in output:  # (a plan: the assembly reports the round)
        table.mark_reported(at.run_id, at.round_number)
    table.update_where(at.key(phase), {"status": REPORTED}, (CLOSED,))


# -- the entry points ------------------------------------------------------------------------------


def advance_secure_round(
    run: RunRecord,
    round_number: int,
    *,
    store: ModelStore,
    table: SecureTable,
    reporter: Reporter,
    settings: AggregationSettings,
    on_aggregated: Callable[[RoundSummary], None] | None = None,
) -> dict[str, Any] | None:
    """The stream path: close the attempt's current phase once every member answered it, and report
    it to its token. The output reported, None when nothing was (still waiting, or done elsewhere)."""
    at = load_attempt(table, run, round_number)
    if at is None or at.record.completed or at.record.lease_active(time.time()):
        return None
    phase = at.current()
    status = at.phases.get(phase, {}).get("status")
    if status == REPORTED:
        return None  # the state machine opens the next phase
    if status != CLOSED:  # (closed and not reported: the closer crashed; redo its side effects and report)
        if not _ready(table, store, at, phase):
            return None
        if table.get_stop(run.run_id) is not None:
            log.info("round %s/%d: the run was stopped, its phases are not closed", run.run_id, round_number)
            return None
    token = _token(at, phase)
    try:
        output = _close_phase(phase, store, table, at, settings, at_deadline=False, on_aggregated=on_aggregated)
    except (RoundNotAggregated, StrategyFailed) as exc:
        reporter.fail(token, type(exc).__name__, str(exc)[: limits.MAX_FAILURE_CAUSE_CHARS])
        return None
    if output is None:
        return None
    reporter.succeed(token, output)
    _mark_reported(table, at, phase, output)
    return output


def close_at_deadline(
    run_id: str,
    round_number: int,
    phase: str,
    *,
    store: ModelStore,
    table: SecureTable,
    settings: AggregationSettings,
    on_aggregated: Callable[[RoundSummary], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """A phase's deadline passed (advertise: the round's): close it with what arrived, or return the
    outcome of its close if it closed meanwhile. SecAggThresholdNotMet with fewer than t."""
    run = table.get_run(run_id)
    if run is None:
        raise FedstepError(f"run {run_id} has no run record")
    stop = table.get_stop(run_id)
    if stop is not None:
        raise RunStopped(f"run {run_id} was stopped ({stop.reason}): round {round_number} is not aggregated")
    give_up = time.monotonic() + settings.wait_s
    while True:
        at = load_attempt(table, run, round_number)
        if at is None:
            raise FedstepError(f"round {round_number} of run {run_id} was never published")
        if at.record.completed:
            return task_output(at.record.summary(), run)
        if at.record.plan is not None:  # planned for slices (its report may have been lost): fan out again
            return plan_output(store, at.record.plan)
        if at.record.lease_active(time.time()):
            if time.monotonic() > give_up:
                raise RoundBusy(f"round {round_number} of run {run_id} is still being aggregated by another invocation")
            sleep(1.0)
            continue
        output = _close_phase(phase, store, table, at, settings, at_deadline=True, on_aggregated=on_aggregated)
        if output is not None:
            table.update_where(at.key(phase), {"status": REPORTED}, (CLOSED,))
            return output


def publish_phase(
    run_id: str,
    round_number: int,
    attempt: int,
    phase: str,
    task_token: str,
    issued_at: str,
    *,
    store: ModelStore,
    table: SecureTable,
    publisher: Publisher,
    reporter: Reporter,
) -> SecAggPhaseMessage | None:
    """Open a later phase (its token and members in its record) and send its message to its members.
    A phase closed already (a retried call) is reported to the new token at once."""
    if phase not in LATER_PHASES:
        raise ValueError(f"secagg_publish event is malformed: phase {phase!r} is not one of {LATER_PHASES}")
    run = table.get_run(run_id)
    if run is None or run.secagg is None:
        raise FedstepError(f"run {run_id} has no run record with secure aggregation")
    stop = table.get_stop(run_id)
    if stop is not None:
        raise RunStopped(f"run {run_id} was stopped ({stop.reason}): round {round_number} is not continued")
    at = load_attempt(table, run, round_number)
    if at is None or at.attempt != attempt:
        raise FedstepError(f"round {round_number} of run {run_id} is not at attempt {attempt}")
    members = at.members(phase)
    opened = table.update_where(
        at.key(phase),
        {"kind": PHASE_KIND, "status": OPEN, "task_token": task_token, "issued_at": issued_at, "members": members},
        (None, OPEN),
    )
    if opened is None:  # closed already: its outcome goes to the new token
        if at.record.completed and phase == PHASE_REVEAL:
            reporter.succeed(task_token, task_output(at.record.summary(), run))
        else:
            reporter.succeed(task_token, phase_output(phase))
        return None
    dropped = list(_survivors(table, at).get("dropped", [])) if phase == PHASE_REVEAL else []
    message = SecAggPhaseMessage(
        run_id=run_id,
        round=round_number,
        attempt=attempt,
        phase=phase,
        roster=at.roster_ref(),
        members=members,
        issued_at=issued_at,
        deadline_s=run.secagg.phase_timeout_s,
        dropped=dropped,
    )
    publisher.publish(message.to_dict(), members)
    return message
