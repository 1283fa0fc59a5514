"""The items a client writes in a secure round's phases (issue 25: the schemas; the round's wiring is
next), each in its own partition, each value of an exact size: an advertisement (two public keys and
a commitment), one sealed share per neighbour, and its revealed shares. Bytes are binary attributes,
as a statistics item's values are.

The sizes are the cryptography's (`fedstep.privacy.secagg.primitives`, which the core may not import;
`tests/test_secagg_schemas.py` checks they agree).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fedstep.core import keys, limits
from fedstep.core.schemas.validation import (
    InvalidMessage,
    binary,
    check_schema,
    get_field,
    id_field,
    positive_int,
    timestamp,
)
from fedstep.core.version import SCHEMA_VERSION

PUBLIC_KEY_BYTES = 32
"""An X25519 public key."""
COMMITMENT_BYTES = 32
"""The sha256 of a client's self-mask seed."""
SHARE_BYTES = 34
"""A Shamir share of a 32-byte secret: its 2-byte index and two 16-byte chunks."""
SEALED_SHARE_BYTES = 12 + 2 * SHARE_BYTES + 16
"""A share pair (of the seed and of the masking key) sealed with AES-GCM: nonce, ciphertext, tag."""
MAX_ATTEMPT = 99
REVEAL_KINDS = ("seed", "key")

KEYS_KIND = "secagg-keys"
SHARE_KIND = "secagg-share"
REVEAL_KIND = "secagg-reveal"


def exact_bytes(data: dict[str, Any], name: str, where: str, size: int) -> bytes:
    """Field `name`, a binary attribute of exactly `size` bytes."""
    return binary(data.get(name), f"{where}: field {name!r}", size)


def _phase_item(data: dict[str, Any], where: str, kind: str) -> tuple[str, int, int, str]:
    """(run id, round, attempt, client id) of a client's secure-round item of `kind`."""
    check_schema(data, where)
    if data.get("kind") != kind:
        raise InvalidMessage(f"{where}: kind must be {kind!r}, got {data.get('kind')!r}")
    run_id = id_field(data, "run_id", "run id", where)
    round_number = positive_int(data, "round", where, 1, limits.MAX_ROUNDS)
    attempt = positive_int(data, "attempt", where, 0, MAX_ATTEMPT)
    client_id = id_field(data, "client_id", "client id", where)
    return run_id, round_number, attempt, client_id


def _check_key(data: dict[str, Any], own_key: dict[str, str], where: str) -> None:
    if any(data.get(k) not in (None, v) for k, v in own_key.items()):
        raise InvalidMessage(f"{where}: its key does not match its run, round, attempt and client")


def _common(item: Any, key: dict[str, str], kind: str) -> dict[str, Any]:
    """The fields every secure-round item starts with: its key, schema and kind, and whose it is."""
    return {
        **key,
        "schema": SCHEMA_VERSION,
        "kind": kind,
        "run_id": item.run_id,
        "round": item.round,
        "attempt": item.attempt,
        "client_id": item.client_id,
        "created_at": item.created_at,
    }


@dataclass(frozen=True)
class SecAggKeysItem:
    """Phase 1: a client's public keys (to seal shares, to agree masks) and its seed's commitment."""

    run_id: str
    round: int
    attempt: int
    client_id: str
    seal_public: bytes
    mask_public: bytes
    seed_commitment: bytes
    created_at: str

    def to_item(self) -> dict[str, Any]:
        return {
            **_common(
                self, keys.secagg_keys_item_key(self.run_id, self.round, self.attempt, self.client_id), KEYS_KIND
            ),
            "seal_public": self.seal_public,
            "mask_public": self.mask_public,
            "seed_commitment": self.seed_commitment,
        }

    @classmethod
    def parse(cls, data: dict[str, Any]) -> SecAggKeysItem:
        where = "secure-aggregation keys item"
        run_id, round_number, attempt, client_id = _phase_item(data, where, KEYS_KIND)
        _check_key(data, keys.secagg_keys_item_key(run_id, round_number, attempt, client_id), where)
        return cls(
            run_id,
            round_number,
            attempt,
            client_id,
            exact_bytes(data, "seal_public", where, PUBLIC_KEY_BYTES),
            exact_bytes(data, "mask_public", where, PUBLIC_KEY_BYTES),
            exact_bytes(data, "seed_commitment", where, COMMITMENT_BYTES),
            timestamp(data, "created_at", where),
        )


@dataclass(frozen=True)
class SecAggShareItem:
    """Phase 2: a client's shares for one neighbour, sealed to it (the server relays it unopened)."""

    run_id: str
    round: int
    attempt: int
    client_id: str
    recipient: str
    sealed: bytes
    created_at: str

    def to_item(self) -> dict[str, Any]:
        key = keys.secagg_share_item_key(self.run_id, self.round, self.attempt, self.client_id, self.recipient)
        return {**_common(self, key, SHARE_KIND), "recipient": self.recipient, "sealed": self.sealed}

    @classmethod
    def parse(cls, data: dict[str, Any]) -> SecAggShareItem:
        where = "secure-aggregation share item"
        run_id, round_number, attempt, client_id = _phase_item(data, where, SHARE_KIND)
        recipient = id_field(data, "recipient", "client id", where)
        if recipient == client_id:
            raise InvalidMessage(f"{where}: a client keeps its own share; it does not send it")
        _check_key(data, keys.secagg_share_item_key(run_id, round_number, attempt, client_id, recipient), where)
        sealed = exact_bytes(data, "sealed", where, SEALED_SHARE_BYTES)
        return cls(run_id, round_number, attempt, client_id, recipient, sealed, timestamp(data, "created_at", where))


@dataclass(frozen=True)
class SecAggRevealItem:
    """Phase 4: for each neighbour (and itself), the share of its seed ("seed": it survived) or of its
    masking key ("key": it dropped)."""

    run_id: str
    round: int
    attempt: int
    client_id: str
    created_at: str
    shares: dict[str, tuple[str, bytes]] = field(default_factory=dict)

    def to_item(self) -> dict[str, Any]:
        key = keys.secagg_reveal_item_key(self.run_id, self.round, self.attempt, self.client_id)
        shares = {owner: [kind, share] for owner, (kind, share) in self.shares.items()}
        return {**_common(self, key, REVEAL_KIND), "shares": shares}

    @classmethod
    def parse(cls, data: dict[str, Any]) -> SecAggRevealItem:
        where = "secure-aggregation reveal item"
        run_id, round_number, attempt, client_id = _phase_item(data, where, REVEAL_KIND)
        _check_key(data, keys.secagg_reveal_item_key(run_id, round_number, attempt, client_id), where)
        raw = get_field(data, "shares", dict, where)
        if len(raw) > limits.MAX_CLIENTS_PER_RUN:
            raise InvalidMessage(f"{where}: {len(raw)} shares, at most {limits.MAX_CLIENTS_PER_RUN}")
        shares: dict[str, tuple[str, bytes]] = {}
        for owner, pair in raw.items():
            try:
                keys.check_id("client id", owner)
            except ValueError as exc:
                raise InvalidMessage(f"{where}: {exc}") from None
            if not (isinstance(pair, list) and len(pair) == 2 and pair[0] in REVEAL_KINDS):
                raise InvalidMessage(f"{where}: the share of {owner} must be [kind, share], kind one of {REVEAL_KINDS}")
            shares[owner] = (pair[0], binary(pair[1], f"{where}: the share of {owner}", SHARE_BYTES))
        return cls(run_id, round_number, attempt, client_id, timestamp(data, "created_at", where), shares)
