"""The clients' side of a secure round (SecAgg+, issue 25) in process: what each client's agent does
in each phase, on the in-memory ports (`fedstep.memory`). The memory engine
(`fedstep.local.memory_engine`) plays its clients' agents with it, and tests/test_secure_rounds.py
its simulated clients.

Each `SecureClient` acts in its own role only, as the agent does (docs/design-notes.md, "Secure
aggregation on a serverless round"): it reads only the roster object and its own inbox, and writes
only its own items (keys, shares, reveal: `CLIENT#<id>`) and its own update file. Its secrets (the
`protocol.Client`) stay in this object; the server side never reads them.

In a simulation the trained update exists first as the client's plain update file (the memory
engine's workers run the agent's client steps unchanged): `SecureClient.of_update` decodes that file
back into the client's delta, as the agent holds it before its secure input is made. That decode is
the client's own step, in the client's role; the server side only ever sees the masked inputs and
decodes only their unmasked sum.

Reproducible: the quantisation's stochastic rounding and, under `--dp distributed`, the client's
discrete noise come from the `rng` given; the memory engine seeds it from the run's seed, the round,
the attempt and the client (`client_rng`), so the same run gives the same model (a real agent uses
OS entropy). The masking keys and seeds are always fresh from OS entropy: the masks cancel in the sum,
so they never change the result.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
from safetensors.numpy import load as load_safetensors

from fedstep.core import codecs, keys, tensors
from fedstep.core.clock import utc_now
from fedstep.core.errors import FedstepError
from fedstep.core.schemas import (
    RoundMessage,
    SecAggInboxItem,
    SecAggKeysItem,
    SecAggPhaseMessage,
    SecAggRevealItem,
    SecAggRoster,
    SecAggShareItem,
    UpdateItem,
    masked_order,
)
from fedstep.core.updates import EncodedUpdate, masked_input_file
from fedstep.memory import MemoryStore, MemoryTable
from fedstep.privacy.secagg.inputs import InputCodec
from fedstep.privacy.secagg.protocol import Advertisement, Client, RoundKey


def client_rng(seed: int, round_number: int, attempt: int, client_id: str) -> np.random.Generator:
    """A client's generator for its secure input in one attempt of a round, from the run's seed."""
    digest = hashlib.sha256(f"secagg-input|{seed}|{round_number}|{attempt}|{client_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "big"))


def decode_delta(data: bytes, encoding: str, spec: tensors.TensorSpec) -> tensors.Tensors:
    """A client's own delta from its plain update file, written with the run's codec `encoding`."""
    if encoding == codecs.DEFAULT:
        return tensors.decode(data, expected=spec, max_bytes=len(data))
    return codecs.get(encoding).decode(dict(load_safetensors(data)), spec)


def flat_delta(delta: tensors.Tensors) -> np.ndarray:
    """The delta as one vector in the masked order (sorted names, each tensor C-order raveled)."""
    return np.concatenate([np.asarray(delta[name], np.float32).ravel() for name in masked_order(list(delta))])


class SecureClient:
    """One client of one attempt of a secure round, from the round message to its reveal: each method
    is a phase of the agent, reading and writing what that client's role may."""

    def __init__(
        self,
        store: MemoryStore,
        table: MemoryTable,
        client_id: str,
        message: RoundMessage,
        delta: tensors.Tensors,
        examples: int,
        rng: np.random.Generator,
        *,
        metrics: dict[str, float] | None = None,
        privacy: dict[str, float] | None = None,
        created_at: str | None = None,
    ) -> None:
        if message.secagg is None:
            raise FedstepError(f"round {message.round} of run {message.run_id} is not a secure round")
        self.store, self.table, self.id, self.msg = store, table, client_id, message
        self.examples = examples
        self.metrics, self.privacy, self.created_at = dict(metrics or {}), dict(privacy or {}), created_at
        codec = InputCodec.for_round(message.secagg)
        self.quantised = codec.encode(flat_delta(delta), examples, rng)
        key = RoundKey(message.run_id, message.round, message.attempt)
        self.proto = Client(client_id, key, message.secagg.threshold)
        self.advert = self.proto.advertise()
        self.revealed: SecAggRevealItem | None = None
        self.out = False
        """Whether it takes no further part (the roster misstated its advert)."""

    @classmethod
    def of_update(
        cls,
        store: MemoryStore,
        table: MemoryTable,
        message: RoundMessage,
        data: bytes,
        item: UpdateItem,
        spec: tensors.TensorSpec,
        rng: np.random.Generator,
    ) -> SecureClient:
        """The client whose plain update (`data`, `item`: what the agent's client steps made) this is."""
        delta = decode_delta(data, item.encoding, spec)
        return cls(
            store, table, item.client_id, message, delta, item.num_examples, rng,
            metrics=item.metrics, privacy=item.privacy,
        )  # fmt: skip

    def now(self) -> str:
        return self.created_at or utc_now()

    def advertise(self) -> None:
        """Phase 1 (after training): its two public keys and its seed's commitment."""
        a, msg = self.advert, self.msg
        item = SecAggKeysItem(
            msg.run_id, msg.round, msg.attempt, self.id, a.seal_public, a.mask_public, a.seed_commitment, self.now()
        )
        self.table.put(item.to_item())

    def read_roster(self, phase: SecAggPhaseMessage) -> SecAggRoster:
        """The roster object the phase message names, checked against its size and sha256."""
        data = self.store.get(phase.roster.key)
        if len(data) != phase.roster.bytes or tensors.sha256_hex(data) != phase.roster.sha256:
            raise FedstepError(f"the roster {phase.roster.key} is not the one the phase message names")
        return SecAggRoster.parse(json.loads(data))

    def share(self, phase: SecAggPhaseMessage) -> None:
        """Phase 2: one sealed share pair per neighbour of the roster. A client whose own advert the
        roster misstates takes no further part (the agent logs it as an error)."""
        if self.out or self.id not in phase.members:
            return
        roster = self.read_roster(phase)
        own = (self.advert.seal_public, self.advert.mask_public, self.advert.seed_commitment)
        if tuple(roster.adverts.get(self.id, ())) != own:
            self.out = True
            return
        adverts = {c: Advertisement(c, *v) for c, v in roster.adverts.items()}
        msg = self.msg
        for recipient, sealed in self.proto.share_keys(adverts, roster.neighbours[self.id]).items():
            item = SecAggShareItem(msg.run_id, msg.round, msg.attempt, self.id, recipient, sealed, self.now())
            self.table.put(item.to_item())

    def masked_input(self, phase: SecAggPhaseMessage) -> EncodedUpdate:
        """Phase 3's file and item: its inbox's shares opened, its input masked with the members it
        shares masks with."""
        msg = self.msg
        prefix = keys.secagg_sk(msg.run_id, msg.round, msg.attempt, "FROM#")
        inbox = [SecAggInboxItem.parse(i) for i in self.table.query_items(keys.inbox_pk(self.id), prefix)]
        self.proto.receive_shares({i.sender: i.sealed for i in inbox if i.sender in phase.members})
        masked = self.proto.masked_input(self.quantised, set(phase.members) & set(self.proto.neighbours))
        assert msg.secagg is not None
        return masked_input_file(
            masked,
            run_id=msg.run_id,
            round_number=msg.round,
            attempt=msg.attempt,
            client_id=self.id,
            num_examples=min(self.examples, msg.secagg.max_examples),
            metrics=self.metrics,
            created_at=self.now(),
            privacy=self.privacy,
        )

    def upload(self, phase: SecAggPhaseMessage) -> str | None:
        """Phase 3: its masked input file, then its item (once per attempt); the file's key."""
        if self.out or self.id not in phase.members:
            return None
        data, item = self.masked_input(phase)
        self.store.put(item.update.key, data)
        self.table.put(item.to_item())
        return item.update.key

    def reveal(self, phase: SecAggPhaseMessage) -> None:
        """Phase 4: the shares the survivors' and the dropped clients' masks need, never both of one
        client's (the same item again if the message comes twice)."""
        if self.out or self.id not in phase.members:
            return
        if self.revealed is None:
            shares = self.proto.reveal(set(phase.members), set(phase.dropped))
            msg = self.msg
            self.revealed = SecAggRevealItem(msg.run_id, msg.round, msg.attempt, self.id, self.now(), shares)
        self.table.put(self.revealed.to_item())
