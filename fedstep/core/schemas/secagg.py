"""The records of a secure round's phases (`fedstep.core.rounds.secure`): the items a client writes,
each in its own partition, each value of an exact size: an advertisement (two public keys and
a commitment), one sealed share per neighbour, and its revealed shares; and what the server sends
and writes: the round message's secure part, the later phases' message, the roster and the relayed
inbox items. Bytes are binary attributes, as a statistics item's values are.

The sizes are the cryptography's (`fedstep.privacy.secagg.primitives`, which the core may not import;
`tests/test_secagg_schemas.py` checks they agree).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from fedstep.core import keys, limits
from fedstep.core.schemas.refs import ObjectRef
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


# -- what the server sends and writes ------------------------------------------------------------

PHASE_ADVERTISE = "advertise"
"""Phase 1: train, then advertise keys (the round message opens it; the round's task waits on it)."""
PHASE_SHARE = "share"
PHASE_INPUT = "input"
PHASE_REVEAL = "reveal"
LATER_PHASES = (PHASE_SHARE, PHASE_INPUT, PHASE_REVEAL)
"""The phases after the first, each a state of its own with its own task token and deadline, in order."""
PHASES = (PHASE_ADVERTISE, *LATER_PHASES)
MASKED_ENCODING = "secagg-u32"
"""The update item's `encoding` of a masked input: one uint32 tensor `MASKED_TENSOR` of d + 1 elements
(the weight, then the weighted delta of the model's d elements in `masked_order`), modulo 2^32."""
MASKED_TENSOR = "masked"
ROSTER_KIND = "secagg-roster"
PHASE_MESSAGE_TYPE = "secagg"


INBOX_KIND = "secagg-inbox"


@dataclass(frozen=True)
class SecAggInboxItem:
    """Phase 2, relayed: `sender`'s share pair sealed to `recipient`, copied unopened by the
    aggregation function into the recipient's inbox (`INBOX#<recipient>`, which only it may read)."""

    run_id: str
    round: int
    attempt: int
    recipient: str
    sender: str
    sealed: bytes

    def to_item(self) -> dict[str, Any]:
        return {
            **keys.inbox_item_key(self.run_id, self.round, self.attempt, self.recipient, self.sender),
            "schema": SCHEMA_VERSION,
            "kind": INBOX_KIND,
            "run_id": self.run_id,
            "round": self.round,
            "attempt": self.attempt,
            "recipient": self.recipient,
            "sender": self.sender,
            "sealed": self.sealed,
        }

    @classmethod
    def parse(cls, data: dict[str, Any]) -> SecAggInboxItem:
        where = "secure-aggregation inbox item"
        check_schema(data, where)
        if data.get("kind") != INBOX_KIND:
            raise InvalidMessage(f"{where}: kind must be {INBOX_KIND!r}")
        run_id = id_field(data, "run_id", "run id", where)
        round_number = positive_int(data, "round", where, 1, limits.MAX_ROUNDS)
        attempt = positive_int(data, "attempt", where, 0, MAX_ATTEMPT)
        recipient = id_field(data, "recipient", "client id", where)
        sender = id_field(data, "sender", "client id", where)
        _check_key(data, keys.inbox_item_key(run_id, round_number, attempt, recipient, sender), where)
        sealed = exact_bytes(data, "sealed", where, SEALED_SHARE_BYTES)
        return cls(run_id, round_number, attempt, recipient, sender, sealed)


def masked_order(names: list[str]) -> list[str]:
    """The order a model's tensors are flattened in for a masked input: by name."""
    return sorted(names)


@dataclass(frozen=True)
class SecAggRound:
    """The secure-aggregation part of a round message: how a client encodes and masks its input.
    `max_inputs`: the round's selected clients (the fixed-point headroom); `max_examples`: the run's
    weight cap (w = min(examples, max_examples) / max_examples); `noise_stddev`: under
    `--dp distributed`, the std of the discrete Gaussian noise each client adds to its clipped delta,
    in the delta's units (0: none)."""

    threshold: int
    neighbours: int
    clip: float
    max_inputs: int
    max_examples: int
    noise_stddev: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def parse(cls, data: Any, where: str) -> SecAggRound:
        if not isinstance(data, dict):
            raise InvalidMessage(f"{where}: secagg must be an object")
        clip = get_field(data, "clip", float, where)
        noise = get_field(data, "noise_stddev", float, where) if "noise_stddev" in data else 0.0
        if not (0 < clip < float("inf")) or not (0 <= noise < float("inf")):
            raise InvalidMessage(f"{where}: clip must be positive and noise_stddev >= 0, both finite")
        return cls(
            threshold=positive_int(data, "threshold", where, 2, limits.MAX_CLIENTS_PER_RUN),
            neighbours=positive_int(data, "neighbours", where, 0, limits.MAX_CLIENTS_PER_RUN),
            clip=clip,
            max_inputs=positive_int(data, "max_inputs", where, 1, limits.MAX_CLIENTS_PER_RUN),
            max_examples=positive_int(data, "max_examples", where, 1, limits.MAX_EXAMPLES),
            noise_stddev=noise,
        )


def _id_list(data: dict[str, Any], name: str, where: str) -> list[str]:
    values = get_field(data, name, list, where)
    if len(values) > limits.MAX_CLIENTS_PER_RUN:
        raise InvalidMessage(f"{where}: {name} lists {len(values)} clients, at most {limits.MAX_CLIENTS_PER_RUN}")
    try:
        return [keys.check_id("client id", v) for v in values]
    except ValueError as exc:
        raise InvalidMessage(f"{where}: {name}: {exc}") from None


@dataclass(frozen=True)
class SecAggPhaseMessage:
    """Published by the aggregation function to a later phase's clients (`members`) when the state
    machine opens that phase. `share`: members are the roster's clients (they share their keys);
    `input`: those whose shares all arrived (each masks with its neighbours among them); `reveal`: the
    survivors, those whose masked input arrived, and `dropped` the members of `input` that did not
    (written once in the survivors record before this message is sent)."""

    run_id: str
    round: int
    attempt: int
    phase: str
    roster: ObjectRef
    members: list[str]
    issued_at: str
    deadline_s: int
    dropped: list[str] = field(default_factory=list)
    type: str = PHASE_MESSAGE_TYPE

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "type": self.type,
            "run_id": self.run_id,
            "round": self.round,
            "attempt": self.attempt,
            "phase": self.phase,
            "roster": asdict(self.roster),
            "members": self.members,
            "dropped": self.dropped,
            "issued_at": self.issued_at,
            "deadline_s": self.deadline_s,
        }

    @classmethod
    def parse(cls, data: dict[str, Any]) -> SecAggPhaseMessage:
        where = "secure-aggregation phase message"
        check_schema(data, where)
        phase = get_field(data, "phase", str, where)
        if phase not in LATER_PHASES:
            raise InvalidMessage(f"{where}: phase must be one of {LATER_PHASES}, got {phase!r}")
        return cls(
            run_id=id_field(data, "run_id", "run id", where),
            round=positive_int(data, "round", where, 1, limits.MAX_ROUNDS),
            attempt=positive_int(data, "attempt", where, 0, MAX_ATTEMPT),
            phase=phase,
            roster=ObjectRef.parse(get_field(data, "roster", dict, where), f"{where} roster"),
            members=_id_list(data, "members", where),
            dropped=_id_list(data, "dropped", where) if "dropped" in data else [],
            issued_at=timestamp(data, "issued_at", where),
            deadline_s=positive_int(data, "deadline_s", where, 1, limits.MAX_ROUND_TIMEOUT_S),
        )


@dataclass(frozen=True)
class SecAggRoster:
    """Written once by the aggregation function when phase 1 closes (`keys.secagg_roster_key`, JSON):
    the advertisements of the clients that advertised in time (`adverts`: client id -> its keys item's
    three values) and each one's neighbours (`neighbours`: client id -> client ids)."""

    run_id: str
    round: int
    attempt: int
    threshold: int
    adverts: dict[str, tuple[bytes, bytes, bytes]]
    neighbours: dict[str, list[str]]

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "kind": ROSTER_KIND,
            "run_id": self.run_id,
            "round": self.round,
            "attempt": self.attempt,
            "threshold": self.threshold,
            "adverts": {c: [v.hex() for v in values] for c, values in sorted(self.adverts.items())},
            "neighbours": {c: list(n) for c, n in sorted(self.neighbours.items())},
        }

    @classmethod
    def parse(cls, data: Any) -> SecAggRoster:
        where = "secure-aggregation roster"
        if not isinstance(data, dict):
            raise InvalidMessage(f"{where} must be an object")
        check_schema(data, where)
        if data.get("kind") != ROSTER_KIND:
            raise InvalidMessage(f"{where}: kind must be {ROSTER_KIND!r}")
        sizes = (PUBLIC_KEY_BYTES, PUBLIC_KEY_BYTES, COMMITMENT_BYTES)
        adverts: dict[str, tuple[bytes, bytes, bytes]] = {}
        raw = get_field(data, "adverts", dict, where)
        if len(raw) > limits.MAX_CLIENTS_PER_RUN:
            raise InvalidMessage(f"{where}: {len(raw)} adverts, at most {limits.MAX_CLIENTS_PER_RUN}")
        for client, values in raw.items():
            try:
                keys.check_id("client id", client)
                decoded = tuple(bytes.fromhex(v) for v in values)
            except (ValueError, TypeError) as exc:
                raise InvalidMessage(f"{where}: the advert of {client!r}: {exc}") from None
            if len(decoded) != 3 or tuple(len(v) for v in decoded) != sizes:
                raise InvalidMessage(f"{where}: the advert of {client!r} must be three values of {sizes} bytes")
            adverts[client] = decoded  # type: ignore[assignment]
        neighbours = {
            c: _id_list({"n": n}, "n", f"{where} neighbours of {c}")
            for c, n in get_field(data, "neighbours", dict, where).items()
        }
        if set(neighbours) != set(adverts) or any(set(n) - set(adverts) for n in neighbours.values()):
            raise InvalidMessage(f"{where}: its neighbourhoods must be over its advertised clients")
        return cls(
            run_id=id_field(data, "run_id", "run id", where),
            round=positive_int(data, "round", where, 1, limits.MAX_ROUNDS),
            attempt=positive_int(data, "attempt", where, 0, MAX_ATTEMPT),
            threshold=positive_int(data, "threshold", where, 2, limits.MAX_CLIENTS_PER_RUN),
            adverts=adverts,
            neighbours=neighbours,
        )
