"""Integrity of a run's stored objects: every object the server's records name, hashed again and
compared with the sha256 and size recorded for it (`fedstep verify`, and the scheduled check).

What a run's records name (`recorded_objects`), in this order:
- the run record: the architecture (`model`) and the strategy state it starts from (`initial_state`);
- each round record: the model and state the round started from (`input_model`, `input_state`: round
  1's is the run's initial model), its slice plan (`plan`, a sliced round), and once aggregated its
  summary's global model, strategy state and update manifest (`fedstep.core.manifest`);
- the model card beside a round's global model, where one was written (the last round of a finished
  run, or a promoted round): no record holds its sha256, but a card is deterministic, so the card the
  records make (`model_card.build_card`, with the client sizes the stored card lists, the only part
  the records cannot say) must be the stored card, byte for byte.

A resumed run's record names the run it continues (`resumed_from`): that run is checked too, back
to the first. The same object named twice (round r's global model is round r+1's input) is hashed
once. The clients' update files are not checked: a lifecycle rule expires them; the manifest keeps
their sha256 and object versions.

A missing object is a mismatch; an error that says nothing of the object (access denied, the
store unreachable) is raised: the check could not be made. Which errors mean "missing" is the
store's business (`missing`: `KeyError` for `fedstep.memory`, NoSuchKey for S3).

The scheduled check (`sweep`) verifies the runs started in the last N days within one invocation's
time: it stops before its budget ends, between two objects, and keeps its place (`Cursor`, in the
store at `keys.integrity_cursor_key()`), so the next invocation goes on where it stopped.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from fedstep.core import keys, model_card, tensors
from fedstep.core.errors import FedstepError
from fedstep.core.ports import ModelStore, RoundTable
from fedstep.core.round_record import RoundRecord
from fedstep.core.schemas import InvalidMessage, ObjectRef, RoundSummary, RunRecord, is_completed
from fedstep.core.update_source import stored_sha256

MAX_CHAIN = 100
"""The most runs a resumed run's chain is followed back (a loop in `resumed_from` stops too)."""
MISSING = "missing"


class NoSuchRun(FedstepError):
    """The run has no run record in this stack: there is nothing to check."""


def missing_in_memory(exc: Exception) -> bool:
    """Whether an error of `fedstep.memory.MemoryStore` means the object is absent."""
    return isinstance(exc, KeyError)


@dataclass(frozen=True)
class Recorded:
    """One object a record names: whose run and round (0: the run's own), what it is, its ref."""

    run_id: str
    round: int
    what: str
    ref: ObjectRef
    card_of: RoundSummary | None = field(default=None, compare=False)
    """For a model card: the summary its card is made from (its ref's sha256 is then unknown)."""


@dataclass(frozen=True)
class Mismatch:
    """An object that is not what its record says: `expected` and `found` are "sha256 <hex>, <n>
    bytes", or `found` is "missing"."""

    run_id: str
    round: int
    what: str
    key: str
    expected: str
    found: str

    def line(self) -> str:
        where = f"round {self.round}" if self.round else "run"
        return f"run {self.run_id} {where}: {self.what} {self.key}: expected {self.expected}, found {self.found}"


@dataclass
class IntegrityReport:
    """What a check found: the runs it covered (the run first, then those it continues), the objects
    checked and hashed, the mismatches. `next_index`: where a check stopped early (`should_stop`)
    resumes in the run's list of objects; None when it checked them all."""

    run_id: str
    runs: list[str] = field(default_factory=list)
    objects: int = 0
    bytes_hashed: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)
    next_index: int | None = None

    @property
    def ok(self) -> bool:
        return not self.mismatches and self.next_index is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "runs": self.runs,
            "objects_checked": self.objects,
            "bytes_hashed": self.bytes_hashed,
            "ok": self.ok,
            "complete": self.next_index is None,
            "mismatches": [asdict(m) for m in self.mismatches],
        }


def _described(sha256: str, size: int) -> str:
    return f"sha256 {sha256}, {size} bytes"


def run_chain(table: RoundTable, run_id: str, follow_resumes: bool = True) -> list[RunRecord]:
    """The run's record, then (`follow_resumes`) those of the runs it continues; NoSuchRun if the run
    has none. A continued run whose record is gone ends the chain (its objects cannot be named)."""
    run = table.get_run(run_id)
    if run is None:
        raise NoSuchRun(f"no run {run_id} in this stack (`fedstep runs` lists them)")
    chain = [run]
    while follow_resumes and run.resumed_from and len(chain) < MAX_CHAIN:
        earlier = table.get_run(run.resumed_from)
        if earlier is None or any(r.run_id == earlier.run_id for r in chain):
            break
        chain.append(earlier)
        run = earlier
    return chain


def _round_records(table: RoundTable, run: RunRecord) -> list[dict[str, Any]]:
    """The run's round records: the completed ones, then the one after them if it was published (open,
    claimed or planned for slices)."""
    completed = table.list_rounds(run.run_id)
    last = max((int(r.get("round", 0)) for r in completed), default=0)
    if not completed and run.resumed_from:
        earlier = table.list_rounds(run.resumed_from)
        last = max((int(r.get("round", 0)) for r in earlier), default=0)
    following = table.get_round(run.run_id, last + 1) if last < 99_999 else None
    return completed + ([following] if following is not None and not is_completed(following) else [])


def recorded_objects(
    table: RoundTable, run_id: str, follow_resumes: bool = True
) -> tuple[list[RunRecord], list[Recorded]]:
    """(the run records covered, every object they and their rounds' records name), in a fixed order:
    the run first, each round in order, then the runs it continues. Table reads only: nothing is hashed."""
    chain = run_chain(table, run_id, follow_resumes)
    objects: list[Recorded] = []
    for run in chain:
        if run.model is not None:
            objects.append(Recorded(run.run_id, 0, "architecture", run.model))
        if run.initial_state is not None:
            objects.append(Recorded(run.run_id, 0, "initial strategy state", run.initial_state))
        for item in _round_records(table, run):
            record = RoundRecord.parse(item)
            r = record.round
            named: list[tuple[str, ObjectRef | None]] = [
                ("input model", record.input_model),
                ("input strategy state", record.input_state),
                ("slice plan", record.plan),
            ]
            summary = RoundSummary.parse(item) if is_completed(item) else None
            if summary is not None:
                named += [
                    ("global model", summary.global_model),
                    ("strategy state", summary.state),
                    ("update manifest", summary.manifest),
                ]
            objects += [Recorded(run.run_id, r, what, ref) for what, ref in named if ref is not None]
            if summary is not None:
                version = keys.version_of_global(summary.global_model.key)
                card = ObjectRef(keys.card_key(run.run_id, r, version), "0" * 64, 0)
                objects.append(Recorded(run.run_id, r, "model card", card, card_of=summary))
    return chain, objects


@dataclass
class _Hasher:
    """Each key hashed once: (sha256, size), or None for a missing object."""

    store: ModelStore
    missing: Callable[[Exception], bool]
    seen: dict[str, tuple[str, int] | None] = field(default_factory=dict)
    bytes_hashed: int = 0

    def __call__(self, key: str) -> tuple[str, int] | None:
        if key not in self.seen:
            try:
                self.seen[key] = stored_sha256(self.store, key)
                self.bytes_hashed += self.seen[key][1]  # type: ignore[index]
            except Exception as exc:
                if not self.missing(exc):
                    raise
                self.seen[key] = None
        return self.seen[key]

    def read(self, key: str) -> bytes | None:
        try:
            return self.store.get(key)
        except Exception as exc:
            if not self.missing(exc):
                raise
            return None


def _check_card(hasher: _Hasher, runs: dict[str, RunRecord], obj: Recorded) -> Mismatch | None:
    """A model card, if one was written: the card the records make (with the stored card's client
    sizes) must be the stored one."""
    data = hasher.read(obj.ref.key)
    if data is None or obj.card_of is None:
        return None  # no card was written for this round: no record names one
    found = _described(tensors.sha256_hex(data), len(data))

    def mismatch(expected: str) -> Mismatch:
        return Mismatch(obj.run_id, obj.round, obj.what, obj.ref.key, expected, found)

    run = runs[obj.run_id]
    try:
        card = model_card.parse_card(data, obj.ref.key)
        sizes = {
            client: model_card.ClientSize(int(s["num_examples"]), int(s["round"]), s.get("claimed"))
            for client, s in dict(card["data"]["clients"]).items()
        }
        architecture = run.model or model_card.card_refs(card)[1]
        expected = model_card.card_bytes(model_card.build_card(run, obj.card_of, architecture, sizes))
    except (model_card.ModelCardError, KeyError, TypeError, ValueError, AttributeError) as exc:
        return mismatch(f"a model card of round {obj.round}'s records ({exc})")
    if expected == data:
        return None
    return mismatch(f"the card its records make, {_described(tensors.sha256_hex(expected), len(expected))}")


def verify_run(
    run_id: str,
    store: ModelStore,
    table: RoundTable,
    *,
    missing: Callable[[Exception], bool] = missing_in_memory,
    follow_resumes: bool = True,
    start: int = 0,
    should_stop: Callable[[], bool] | None = None,
) -> IntegrityReport:
    """Check every object the records of `run_id` (and, `follow_resumes`, of the runs it continues)
    name against their sha256 and size. `start`: skip the first objects of the list (a check resumed
    where an earlier one stopped); `should_stop`: asked before each object, a check that stops
    reports where to resume (`next_index`). NoSuchRun if the run has no record; an error reading an
    object that does not mean "missing" is raised."""
    chain, objects = recorded_objects(table, run_id, follow_resumes)
    runs = {r.run_id: r for r in chain}
    report = IntegrityReport(run_id, [r.run_id for r in chain])
    hasher = _Hasher(store, missing)
    reported: set[tuple[str, str]] = set()
    for index in range(start, len(objects)):
        if should_stop is not None and should_stop():
            report.next_index = index
            break
        obj = objects[index]
        report.objects += 1
        if obj.what == "model card":
            problem = _check_card(hasher, runs, obj)
        else:
            got = hasher(obj.ref.key)
            expected = _described(obj.ref.sha256, obj.ref.bytes)
            problem = None
            if got is None:
                problem = Mismatch(obj.run_id, obj.round, obj.what, obj.ref.key, expected, MISSING)
            elif got != (obj.ref.sha256, obj.ref.bytes):
                problem = Mismatch(obj.run_id, obj.round, obj.what, obj.ref.key, expected, _described(*got))
        if problem is not None and (problem.key, problem.expected) not in reported:
            reported.add((problem.key, problem.expected))  # named once, where it is first recorded
            report.mismatches.append(problem)
    report.bytes_hashed = hasher.bytes_hashed
    return report


# -- the scheduled check ----------------------------------------------------------------------------


@dataclass
class Cursor:
    """Where the scheduled check stands: the runs its sweep has left (the first checked up to
    `index` of its objects), when the sweep started, and what it found so far."""

    runs: list[str] = field(default_factory=list)
    index: int = 0
    sweep_started: str = ""
    mismatches: int = 0
    objects: int = 0

    def encode(self) -> bytes:
        return json.dumps({"kind": "integrity_cursor", **asdict(self)}, sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> Cursor:
        try:
            raw = json.loads(data)
            return cls(
                [keys.check_id("run id", r) for r in raw["runs"]],
                int(raw["index"]),
                str(raw["sweep_started"]),
                int(raw.get("mismatches", 0)),
                int(raw.get("objects", 0)),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidMessage(f"{keys.integrity_cursor_key()} is not an integrity cursor: {exc}") from None


@dataclass
class SweepResult:
    """One invocation of the scheduled check: the runs it finished, the objects it checked, the
    mismatches it found, the runs its sweep still has to check (`remaining`) and whether it started a
    new sweep."""

    runs_checked: list[str] = field(default_factory=list)
    objects: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)
    remaining: list[str] = field(default_factory=list)
    started_sweep: bool = False
    sweep_started: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "runs_checked": self.runs_checked,
            "objects_checked": self.objects,
            "mismatches": [asdict(m) for m in self.mismatches],
            "remaining": self.remaining,
            "started_sweep": self.started_sweep,
            "sweep_started": self.sweep_started,
        }


def load_cursor(store: ModelStore, missing: Callable[[Exception], bool]) -> Cursor | None:
    try:
        return Cursor.decode(store.get(keys.integrity_cursor_key()))
    except InvalidMessage:
        return None  # unreadable: a new sweep starts (and overwrites it)
    except Exception as exc:
        if missing(exc):
            return None
        raise


def sweep(
    store: ModelStore,
    table: RoundTable,
    recent_runs: Callable[[], list[str]],
    *,
    now: str,
    due: Callable[[str], bool],
    should_stop: Callable[[], bool],
    missing: Callable[[Exception], bool] = missing_in_memory,
) -> SweepResult:
    """One invocation of the scheduled check. It goes on with the sweep its cursor names; with none
    left, it starts a new one over `recent_runs()` if `due(last sweep's start)` (always, without a
    cursor). Each run is checked as `verify_run` checks it (its own records: the runs it continues are
    checked in their own turn when they are recent), until `should_stop()`; the cursor is then saved
    with the runs left, the first of them with the index of its next object."""
    result = SweepResult()
    cursor = load_cursor(store, missing)
    if cursor is None or (not cursor.runs and due(cursor.sweep_started)):
        cursor = Cursor(list(recent_runs()), 0, now)
        result.started_sweep = True
    result.sweep_started = cursor.sweep_started
    before = cursor.encode()
    while cursor.runs and not should_stop():
        run_id = cursor.runs[0]
        try:
            report = verify_run(
                run_id,
                store,
                table,
                missing=missing,
                follow_resumes=False,
                start=cursor.index,
                should_stop=should_stop,
            )
        except NoSuchRun:  # its record is gone since the sweep began: nothing to check
            cursor.runs.pop(0)
            cursor.index = 0
            continue
        result.objects += report.objects
        result.mismatches += report.mismatches
        if report.next_index is not None:
            cursor.index = report.next_index
            break
        result.runs_checked.append(run_id)
        cursor.runs.pop(0)
        cursor.index = 0
    cursor.objects += result.objects
    cursor.mismatches += len(result.mismatches)
    result.remaining = list(cursor.runs)
    if result.started_sweep or cursor.encode() != before:  # an idle day writes nothing
        store.put(keys.integrity_cursor_key(), cursor.encode())
    return result
