"""A round's results in the store and the table: written once under the claim, committed under it,
and what a failed aggregation wrote deleted (best effort); the claim given back."""

from __future__ import annotations

import logging
import secrets

from fedstep.core import keys, tensors
from fedstep.core.clock import utc_now
from fedstep.core.errors import FedstepError
from fedstep.core.manifest import UpdateManifest
from fedstep.core.ports import ModelStore, RoundTable
from fedstep.core.rounds.summary import summary_item
from fedstep.core.schemas import Feedback, ObjectRef, RoundSummary, RunRecord, is_completed
from fedstep.core.version import SCHEMA_VERSION

log = logging.getLogger(__package__)


def new_claim_id() -> str:
    return secrets.token_hex(8)


def release(table: RoundTable, run_id: str, round_number: int, claim: str) -> None:
    """Give the claim back so another invocation may try; a failure here is only logged (the
    lease runs out instead), so it never hides the error that made the claim go back."""
    try:
        table.release_round(run_id, round_number, claim)
    except Exception:  # the lease is the fallback
        log.warning("could not release the claim on round %d of run %s; its lease runs out", round_number, run_id)


def send_feedback(table: RoundTable, run_id: str, round_number: int, client: str, sha256: str, reason: str) -> None:
    """Tell `client` why its update of the round was refused (its feedback items: the run's, and its
    latest in any run)."""
    for item in Feedback(client, run_id, round_number, sha256, reason, utc_now()).to_items():
        table.put_feedback(item)


def file_metadata(run: RunRecord, round_number: int, claim: str, kind: str) -> dict[str, object]:
    return {"schema": SCHEMA_VERSION, "kind": kind, "run_id": run.run_id, "round": round_number, "version": claim}


def write_once(store: ModelStore, key: str, data: bytes) -> ObjectRef:
    """Write a round's result object once; its reference."""
    if not store.put_once(key, data):
        raise FedstepError(f"{key} exists already: a claim id was reused")
    return ObjectRef(key, tensors.sha256_hex(data), len(data))


def write_results(
    store: ModelStore,
    run: RunRecord,
    round_number: int,
    claim: str,
    data: bytes,
    state_data: bytes | None,
    manifest: UpdateManifest | None = None,
) -> tuple[ObjectRef, ObjectRef | None, ObjectRef | None]:
    """Write the round's global model, the strategy's state and the update manifest, each once under
    the claim's keys; if one cannot be written, those written before it are deleted (best effort)."""
    global_ref = write_once(store, keys.global_key(run.run_id, round_number, claim), data)
    written = [global_ref.key]
    try:
        state_ref = None
        if state_data is not None:
            state_ref = write_once(store, keys.state_key(run.run_id, round_number, claim), state_data)
            written.append(state_ref.key)
        manifest_ref = None
        if manifest is not None:
            manifest_ref = write_once(store, keys.manifest_key(run.run_id, round_number, claim), manifest.encode())
        return global_ref, state_ref, manifest_ref
    except BaseException:
        discard(store, written)
        raise


def discard(store: ModelStore, object_keys: list[str]) -> None:
    """Delete what a failed aggregation wrote, so no client can read it; a failure is only logged
    (the object stays behind, unreferenced, and the error that made it an orphan is the one raised)."""
    for key in object_keys:
        try:
            store.delete(key)
        except Exception:  # best effort: never hide the error being handled
            log.warning("could not delete %s, written by an aggregation that failed", key)


def commit(store: ModelStore, table: RoundTable, summary: RoundSummary, claim: str, status: str) -> bool:
    """Commit the round's summary under the claim. False when the claim no longer holds: another
    invocation took the round over, and this one's model and state are deleted. A write whose answer
    was lost (an error, or a retried write that found its own commit) is judged from the record: only
    objects the record does not name are deleted."""
    try:
        if table.complete_round({**summary_item(summary), "status": status}, claim):
            return True
    except BaseException:
        if not is_committed(table, summary):
            discard(store, result_keys(summary))
        raise
    if is_committed(table, summary):
        return True
    discard(store, result_keys(summary))
    return False


def is_committed(table: RoundTable, summary: RoundSummary) -> bool:
    """Whether the round record holds `summary`'s model (unknown counts as yes: nothing is deleted)."""
    try:
        record = table.get_round(summary.run_id, summary.round) or {}
    except Exception:
        return True
    model = record.get("global_model")
    return is_completed(record) and isinstance(model, dict) and model.get("key") == summary.global_model.key


def result_keys(summary: RoundSummary) -> list[str]:
    return [ref.key for ref in (summary.global_model, summary.state, summary.manifest) if ref is not None]
