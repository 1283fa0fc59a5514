"""A model card per run, and the approved-model pointer of the registry: pure logic, no AWS.

The card of a global model (`keys.card_key`, beside the model, written once) says what the model is
and how it was made: the model reference (run, round, aggregation version, S3 keys), the sha256 of
the architecture (`model.keras`) and of the global weights, each client's data set size as the
aggregation counts it (the `num_examples` of its latest update item up to that round, capped by the
run's `max_examples` or the client's own cap; a larger claim is kept beside it), the run's
settings (its run record), the round's weighted metrics and the federated evaluation of the
previous global model (the `*_before` metrics), and the privacy spent (DP runs).

A card is deterministic (sorted JSON, no time of writing): the aggregation function writing it at
the end of a run and `fedstep promote` writing a missing one produce the same bytes, and whichever
writes first wins (`If-None-Match: *`).

The approved pointer (`keys.approved_key`) names the card of the approved model and its sha256;
each promotion is also kept in the history (`keys.promotion_key`), written once.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

from fedstep.core import keys, tensors
from fedstep.core.errors import FedstepError
from fedstep.core.influence import bounded_examples
from fedstep.core.ports import ModelStore
from fedstep.core.schemas import Bounds, InvalidMessage, ObjectRef, RoundSummary, RunRecord, UpdateItem, is_completed
from fedstep.core.update_source import stored_sha256

CARD_KIND = "model_card"
APPROVAL_KIND = "approved_model"
CARD_FORMAT = 1
"""The card's own format version (bumped when a field changes meaning)."""
MAX_NOTE_CHARS = 1000
BEFORE_SUFFIX = "_before"
_RUN_FIELDS_NOT_SETTINGS = ("run_id", "created_at", "model", "initial_state", "resumed_from", "clients")


class ModelCardError(FedstepError):
    """A card cannot be made or read: a missing run or round, a malformed card."""


class ModelTampered(FedstepError):
    """An object in the registry does not match the sha256 its card (or its round) recorded."""


@dataclass(frozen=True)
class ClientSize:
    """A client's data set size as the aggregation counts it: `num_examples` of its latest update item
    (of `round`), capped by the run's bounds; `claimed`, the item's own figure, when it was larger
    (None otherwise)."""

    num_examples: int
    round: int
    claimed: int | None = None


class CardTable(Protocol):
    """What a card is made from in the table (`fedstep.aws.adapters.DynamoRoundTable`)."""

    def get_run(self, run_id: str) -> RunRecord | None: ...

    def get_round(self, run_id: str, round_number: int) -> dict[str, Any] | None: ...

    def latest_updates(self, run_id: str, client_ids: list[str], up_to_round: int) -> dict[str, dict[str, Any]]:
        """Each client's update item of the latest round <= `up_to_round` it sent one in, by client id."""
        ...


def _settings(run: RunRecord) -> dict[str, Any]:
    settings = {k: v for k, v in asdict(run).items() if k not in _RUN_FIELDS_NOT_SETTINGS}
    settings["target"] = str(run.target) if run.target else None
    settings["clients"] = sorted(run.clients)
    return settings


def build_card(
    run: RunRecord,
    summary: RoundSummary,
    architecture: ObjectRef,
    sizes: dict[str, ClientSize],
) -> dict[str, Any]:
    """The card of the global model of `summary` (a round of `run`), whose architecture file is
    `architecture` (key, sha256, bytes). `summary.global_model` must hold the verified sha256."""
    if summary.run_id != run.run_id:
        raise ModelCardError(f"round {summary.round} belongs to run {summary.run_id}, not {run.run_id}")
    version = keys.version_of_global(summary.global_model.key)
    metrics = {k: v for k, v in summary.metrics.items() if not k.endswith(BEFORE_SUFFIX)}
    before = {k: v for k, v in summary.metrics.items() if k.endswith(BEFORE_SUFFIX)}
    return {
        "kind": CARD_KIND,
        "format": CARD_FORMAT,
        "model": {
            "run_id": run.run_id,
            "round": summary.round,
            "version": version,
            "card_key": keys.card_key(run.run_id, summary.round, version),
            "global_model": asdict(summary.global_model),
            "architecture": asdict(architecture),
            "state": asdict(summary.state) if summary.state else None,
        },
        "run": {
            "created_at": run.created_at,
            "resumed_from": run.resumed_from or None,
            "rounds_planned": run.rounds,
            "round_completed_at": summary.completed_at,
        },
        "settings": _settings(run),
        "data": {
            "clients": {c: _size(s) for c, s in sorted(sizes.items())},
            "total_examples": sum(s.num_examples for s in sizes.values()),
            "round_participants": sorted(summary.participants),
            "round_examples": summary.num_examples,
        },
        "metrics": dict(sorted(metrics.items())),
        "evaluation_before": dict(sorted(before.items())),
        "privacy": {"epsilon": summary.epsilon, "delta": summary.delta} if summary.epsilon is not None else None,
    }


def _size(size: ClientSize) -> dict[str, int]:
    return {k: v for k, v in asdict(size).items() if v is not None}


def card_bytes(card: dict[str, Any]) -> bytes:
    """The card as stored: sorted, indented JSON (the same card always gives the same bytes)."""
    return (json.dumps(card, sort_keys=True, indent=2, allow_nan=False) + "\n").encode()


def parse_card(data: bytes, where: str) -> dict[str, Any]:
    """A stored card, checked for the fields `fedstep promote` and `download --approved` rely on."""
    try:
        card = json.loads(data)
        model = card["model"]
        if card.get("kind") != CARD_KIND:
            raise ValueError(f"kind is {card.get('kind')!r}, not {CARD_KIND!r}")
        ObjectRef.parse(model["global_model"], "global_model")
        ObjectRef.parse(model["architecture"], "architecture")
        keys.check_id("run id", model["run_id"])
        if not isinstance(model["round"], int):
            raise ValueError("round is not a whole number")
    except (ValueError, KeyError, TypeError, FedstepError) as exc:
        raise ModelCardError(f"{where} is not a model card: {exc}") from None
    return card


def card_refs(card: dict[str, Any]) -> tuple[ObjectRef, ObjectRef]:
    """(global model, architecture) of a parsed card."""
    model = card["model"]
    return ObjectRef(**model["global_model"]), ObjectRef(**model["architecture"])


def verify(ref: ObjectRef, data: bytes, what: str) -> bytes:
    """`data` if its sha256 and size are `ref`'s, else ModelTampered naming the object."""
    _check_matches(ref, tensors.sha256_hex(data), len(data), what)
    return data


def verify_stored(store: ModelStore, ref: ObjectRef, what: str) -> None:
    """`verify` of a stored object, streamed (memory one block: a model larger than the function)."""
    _check_matches(ref, *stored_sha256(store, ref.key), what)


def _check_matches(ref: ObjectRef, sha: str, size: int, what: str) -> None:
    if sha != ref.sha256 or size != ref.bytes:
        raise ModelTampered(
            f"{ref.key} ({what}) does not match its record: sha256 {sha[:12]}..., {size} bytes; "
            f"expected {ref.sha256[:12]}..., {ref.bytes} bytes. The object was replaced after it was written."
        )


def completed_summary(table: CardTable, run: RunRecord, round_number: int) -> RoundSummary:
    """The summary of an aggregated round of `run`, else ModelCardError."""
    item = table.get_round(run.run_id, round_number)
    if item is None or not is_completed(item):
        raise ModelCardError(f"run {run.run_id} has no aggregated round {round_number}")
    return RoundSummary.parse(item)


def compose_card(run_id: str, round_number: int, store: ModelStore, table: CardTable) -> dict[str, Any]:
    """The card of the global model after round `round_number` of `run_id`, read from the registry
    and the table, with both objects' sha256 verified (ModelTampered if one was replaced)."""
    run = table.get_run(run_id)
    if run is None:
        raise ModelCardError(f"no run {run_id} in this stack")
    summary = completed_summary(table, run, round_number)
    verify_stored(store, summary.global_model, f"global model of round {round_number}")
    model_key = run.model.key if run.model else keys.model_key(run_id)
    architecture = store.get(model_key)
    if run.model:
        verify(run.model, architecture, "architecture")
    arch_ref = ObjectRef(model_key, tensors.sha256_hex(architecture), len(architecture))
    sizes = client_sizes(table.latest_updates(run_id, run.clients, round_number), run.bounds)
    return build_card(run, summary, arch_ref, sizes)


def client_sizes(items: dict[str, dict[str, Any]], bounds: Bounds) -> dict[str, ClientSize]:
    """Each client's size from its latest update item, as the aggregation counts it: the item is a
    client's claim, so it is parsed (`UpdateItem.parse`: at most `limits.MAX_EXAMPLES`) and capped
    by `bounds` (`influence.bounded_examples` with the clip action: the weight an update carries at
    most), the claim kept beside a capped figure. A client whose item does not parse (a rewritten,
    malformed item) is left out, so no client can keep a card from being written."""
    sizes = {}
    counting = replace(bounds, action="clip")  # the cap, whatever the run does with updates beyond it
    for client, raw in items.items():
        try:
            item = UpdateItem.parse(raw)
        except InvalidMessage:
            continue
        if item.client_id == client:
            counted, capped = bounded_examples(client, item.num_examples, counting)
            sizes[client] = ClientSize(counted, item.round, item.num_examples if capped else None)
    return sizes


def write_card(run_id: str, round_number: int, store: ModelStore, table: CardTable) -> ObjectRef:
    """Write the card once (`If-None-Match: *`); if one is there already, it stands (it is read
    back and checked). The card's ref: key, sha256, bytes."""
    card = compose_card(run_id, round_number, store, table)
    key, data = card["model"]["card_key"], card_bytes(card)
    if not store.put_once(key, data):
        data = store.get(key)
        existing = parse_card(data, key)
        if existing["model"]["global_model"] != card["model"]["global_model"]:
            raise ModelTampered(f"{key} describes another global model than round {round_number}'s")
    return ObjectRef(key, tensors.sha256_hex(data), len(data))


# -- the approved model -----------------------------------------------------------------------------


def compact_time(iso: str) -> str:
    """`2026-11-30T09:15:00.123+00:00` -> `20261130T091500123Z` (for history keys, sorting by time)."""
    digits = "".join(c for c in iso.split("+")[0] if c.isdigit())
    return f"{digits[:8]}T{digits[8:]}Z"


def approval(
    card: dict[str, Any], card_ref: ObjectRef, name: str, approved_at: str, note: str, previous: dict[str, Any] | None
) -> dict[str, Any]:
    """The approved pointer for the card `card` (stored as `card_ref`); `previous`: the pointer it
    replaces (summarised in it, so the history can also be followed backwards)."""
    if len(note) > MAX_NOTE_CHARS:
        raise ModelCardError(f"the note has {len(note)} characters; at most {MAX_NOTE_CHARS}")
    model = card["model"]
    return {
        "kind": APPROVAL_KIND,
        "name": keys.check_id("model name", name),
        "run_id": model["run_id"],
        "round": model["round"],
        "version": model["version"],
        "card": asdict(card_ref),
        "global_model": model["global_model"],
        "architecture": model["architecture"],
        "approved_at": approved_at,
        "note": note,
        "history_key": keys.promotion_key(name, compact_time(approved_at), model["run_id"], model["round"]),
        "previous": (
            {k: previous[k] for k in ("run_id", "round", "version", "approved_at", "history_key")} if previous else None
        ),
    }


def parse_approval(data: bytes, where: str) -> dict[str, Any]:
    """A stored approved pointer, checked for the fields `download --approved` relies on."""
    try:
        pointer = json.loads(data)
        if pointer.get("kind") != APPROVAL_KIND:
            raise ValueError(f"kind is {pointer.get('kind')!r}, not {APPROVAL_KIND!r}")
        ObjectRef.parse(pointer["card"], "card")
        keys.check_id("run id", pointer["run_id"])
    except (ValueError, KeyError, TypeError, AttributeError, FedstepError) as exc:
        raise ModelCardError(f"{where} is not an approved-model pointer: {exc}") from None
    return pointer
