"""One round of SecAgg+ (Bell et al. 2020), its clients and its server in memory: what each side
computes in each phase, and what the server learns (the sum of the survivors' inputs, nothing else).

Phases, as the round will run them:
1. each selected client advertises two X25519 public keys (one to seal shares, one to agree pairwise
   masks) and a commitment to its self-mask seed; the server writes the roster;
2. each client Shamir-shares its self-mask seed and its masking private key among its neighbours
   and itself, each neighbour's share sealed (AES-GCM) to it; the server relays them unopened;
3. each client uploads its quantised input plus its self-mask and its pairwise masks with the
   neighbours that shared (modulo 2^32);
4. the server fixes the survivors (who uploaded) once; each client still there reveals, for each
   neighbour, the self-mask seed's share if that neighbour survived, the masking key's share if it
   dropped, never both; the server recovers them (checked against the roster) and removes the masks.

A client that drops after phase 2 has its pairwise masks removed; one that drops after phase 3 is in
the sum. Fewer than `threshold` survivors, or fewer than `threshold` shares for a secret the server
needs, is `SecAggThresholdNotMet`.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedstep.core.rounds.errors import SecAggThresholdNotMet
from fedstep.privacy.secagg.primitives import (
    SHARE_BYTES,
    KeyPair,
    SecAggError,
    agree,
    mask,
    open_sealed,
    random_secret,
    recover,
    seal,
    share,
)

MAX_SUBSETS = 256
"""The most subsets of t shares tried to rebuild one secret when some shares are wrong."""


@dataclass(frozen=True)
class RoundKey:
    """What keys are bound to: fresh for every (run, round, attempt)."""

    run_id: str
    round: int
    attempt: int

    def info(self, purpose: str, *parties: str) -> bytes:
        return "|".join(["fedstep-secagg", self.run_id, str(self.round), str(self.attempt), purpose, *parties]).encode()


@dataclass(frozen=True)
class Advertisement:
    """Phase 1: a client's public keys and the sha256 of its self-mask seed."""

    client_id: str
    seal_public: bytes
    mask_public: bytes
    seed_commitment: bytes


def neighbourhoods(client_ids: list[str], neighbours: int, seed: int) -> dict[str, list[str]]:
    """Each client's neighbours: everyone else when `neighbours` is 0 or >= n - 1 (a small consortium),
    else a ring over a seeded permutation, `neighbours` // 2 on each side (SecAgg+'s k-regular graph)."""
    ids = sorted(client_ids)
    if neighbours == 0 or neighbours >= len(ids) - 1:
        return {i: [j for j in ids if j != i] for i in ids}
    if neighbours < 2 or neighbours % 2:
        raise ValueError(f"a neighbourhood below the whole round is even and at least 2, got {neighbours}")
    ring = ids[:]
    random.Random(seed).shuffle(ring)
    n, half = len(ring), neighbours // 2
    return {ring[p]: sorted({ring[(p + d) % n] for d in range(-half, half + 1) if d} - {ring[p]}) for p in range(n)}


def _sign(me: str, other: str) -> int:
    return 1 if me < other else -1


class Client:
    """One client's side of the round: its secrets live here (the agent keeps them in its cache)."""

    def __init__(self, client_id: str, key: RoundKey, threshold: int) -> None:
        self.client_id, self.key, self.threshold = client_id, key, threshold
        self.seal_keys, self.mask_keys = KeyPair.generate(), KeyPair.generate()
        self.seed = random_secret()
        self.roster: dict[str, Advertisement] = {}
        self.neighbours: list[str] = []
        self.held: dict[str, tuple[bytes, bytes]] = {}  # owner -> (its seed's share, its masking key's share)
        self.revealed = False

    def state(self) -> dict[str, Any]:
        """Everything the client must keep to finish its round after a restart (its secrets included:
        the agent writes it to its cache, readable by its own user only), JSON-able."""
        return {
            "client_id": self.client_id,
            "key": [self.key.run_id, self.key.round, self.key.attempt],
            "threshold": self.threshold,
            "seal_private": self.seal_keys.private.hex(),
            "mask_private": self.mask_keys.private.hex(),
            "seed": self.seed.hex(),
            "roster": {
                cid: [a.seal_public.hex(), a.mask_public.hex(), a.seed_commitment.hex()]
                for cid, a in self.roster.items()
            },
            "neighbours": self.neighbours,
            "held": {owner: [s.hex(), k.hex()] for owner, (s, k) in self.held.items()},
            "revealed": self.revealed,
        }

    @classmethod
    def restore(cls, state: dict[str, Any]) -> Client:
        """The client `state` describes, as it was (SecAggError for a state that is not one)."""
        try:
            run_id, round_number, attempt = state["key"]
            client = cls(
                str(state["client_id"]), RoundKey(str(run_id), int(round_number), int(attempt)), int(state["threshold"])
            )
            client.seal_keys = KeyPair.of_private(bytes.fromhex(str(state["seal_private"])))
            client.mask_keys = KeyPair.of_private(bytes.fromhex(str(state["mask_private"])))
            client.seed = bytes.fromhex(str(state["seed"]))
            client.roster = {
                cid: Advertisement(cid, *(bytes.fromhex(v) for v in values))
                for cid, values in dict(state["roster"]).items()
            }
            client.neighbours = [str(n) for n in state["neighbours"]]
            client.held = {owner: (bytes.fromhex(s), bytes.fromhex(k)) for owner, (s, k) in dict(state["held"]).items()}
            client.revealed = bool(state["revealed"])
        except (KeyError, TypeError, ValueError) as exc:
            raise SecAggError(f"not a secure-aggregation client state: {exc}") from None
        return client

    def advertise(self) -> Advertisement:
        commitment = hashlib.sha256(self.seed).digest()
        return Advertisement(self.client_id, self.seal_keys.public, self.mask_keys.public, commitment)

    def share_keys(self, roster: dict[str, Advertisement], neighbours: list[str]) -> dict[str, bytes]:
        """Phase 2: to each neighbour, its shares of this client's seed and masking key, sealed to it.
        The secrets are shared t-of-(k + 1) among the k neighbours and the client itself, so k + 1 >= t
        (`fedstep.core.run_rules.check_threshold`); with k + 1 = t a round survives no dropout."""
        if len(neighbours) + 1 < self.threshold:
            raise SecAggThresholdNotMet(
                f"{self.client_id} has {len(neighbours)} neighbours, {self.threshold - 1} needed (with itself, "
                f"the threshold's {self.threshold} share holders)"
            )
        self.roster, self.neighbours = roster, neighbours
        seeds = share(self.seed, self.threshold, len(neighbours) + 1)
        keys = share(self.mask_keys.private, self.threshold, len(neighbours) + 1)
        self.held[self.client_id] = (seeds[-1], keys[-1])  # its own share, as Bonawitz et al.'s users keep one
        return {
            j: seal(self._seal_key(j, self.client_id, j), s + k, self._aad(self.client_id, j))
            for j, s, k in zip(neighbours, seeds, keys, strict=False)
        }

    def receive_shares(self, inbox: dict[str, bytes]) -> None:
        """Phase 2's relay: the shares sealed to this client, each opened and kept (SecAggError names a
        sender whose share is not authentic or malformed)."""
        for sender, sealed in inbox.items():
            if sender not in self.neighbours:
                raise SecAggError(f"{self.client_id} got a share from {sender}, not a neighbour")
            try:
                plain = open_sealed(
                    self._seal_key(sender, sender, self.client_id), sealed, self._aad(sender, self.client_id)
                )
            except SecAggError as exc:
                raise SecAggError(f"the share {sender} sent {self.client_id}: {exc}") from None
            if len(plain) != 2 * SHARE_BYTES:
                raise SecAggError(
                    f"the share {sender} sent {self.client_id} is {len(plain)} bytes, not {2 * SHARE_BYTES}"
                )
            self.held[sender] = (plain[:SHARE_BYTES], plain[SHARE_BYTES:])

    def masked_input(self, quantised: np.ndarray, shared: set[str], offset: int = 0) -> np.ndarray:
        """Phase 3: the quantised input (uint32, elements `offset`.. of the model) plus this client's
        self-mask and its pairwise masks with each neighbour in `shared` (who completed phase 2)."""
        x = np.asarray(quantised, dtype=np.uint32)
        total = x + mask(self.seed, offset, x.size)
        for j in self.neighbours:
            if j in shared:
                pair = mask(self._pair_seed(j), offset, x.size)
                total = total + pair if _sign(self.client_id, j) > 0 else total - pair
        return total

    def reveal(self, survivors: set[str], dropped: set[str]) -> dict[str, tuple[str, bytes]]:
        """Phase 4: for each neighbour whose shares it holds, ("seed", share) if it survived, ("key",
        share) if it dropped. Once only, and never both secrets of one client."""
        if self.revealed:
            raise SecAggError(f"{self.client_id} has revealed its shares of this round already")
        if survivors & dropped:
            raise SecAggError(f"clients both survived and dropped: {sorted(survivors & dropped)}")
        if len(survivors) < self.threshold:
            raise SecAggThresholdNotMet(f"{len(survivors)} survivor(s), {self.threshold} needed")
        self.revealed = True
        out: dict[str, tuple[str, bytes]] = {}
        for owner, (seed_share, key_share) in self.held.items():
            if owner in survivors:
                out[owner] = ("seed", seed_share)
            elif owner in dropped:
                out[owner] = ("key", key_share)
        return out

    def _pair_seed(self, other: str) -> bytes:
        return agree(self.mask_keys.private, self.roster[other].mask_public, self.key.info("pairwise"))

    def _seal_key(self, other: str, sender: str, recipient: str) -> bytes:
        return agree(self.seal_keys.private, self.roster[other].seal_public, self.key.info("seal", sender, recipient))

    def _aad(self, sender: str, recipient: str) -> bytes:
        return self.key.info("share", sender, recipient)


def unmask_range(total: np.ndarray, seeds: list[tuple[bytes, int]], offset: int = 0) -> np.ndarray:
    """Elements `offset`.. of a masked sum without the masks of `seeds` (`Server.mask_seeds`): each
    seed's mask is expanded over this range only (the mask stream is seekable)."""
    out = np.asarray(total, dtype=np.uint32).copy()
    for seed, sign in seeds:
        m = mask(seed, offset, out.size)
        out = out - m if sign > 0 else out + m
    return out


class Server:
    """The server's side: it relays sealed shares, fixes the survivors once, and unmasks the sum."""

    def __init__(self, key: RoundKey, threshold: int) -> None:
        self.key, self.threshold = key, threshold
        self.roster: dict[str, Advertisement] = {}
        self.neighbours: dict[str, list[str]] = {}
        self.shared: set[str] = set()
        self.inputs: dict[str, np.ndarray] = {}
        self.survivors: frozenset[str] | None = None

    def write_roster(self, adverts: list[Advertisement], neighbours: int, seed: int) -> dict[str, list[str]]:
        if len(adverts) < self.threshold:
            raise SecAggThresholdNotMet(f"{len(adverts)} client(s) advertised keys, {self.threshold} needed")
        self.roster = {a.client_id: a for a in adverts}
        self.neighbours = neighbourhoods(list(self.roster), neighbours, seed)
        return self.neighbours

    def relay(self, outboxes: dict[str, dict[str, bytes]]) -> dict[str, dict[str, bytes]]:
        """Phase 2: each client's sealed shares into its recipients' inboxes (unopened)."""
        self.shared = set(outboxes)
        inboxes: dict[str, dict[str, bytes]] = {cid: {} for cid in self.roster}
        for sender, out in outboxes.items():
            for recipient, sealed in out.items():
                if recipient not in self.neighbours.get(sender, []):
                    raise SecAggError(f"{sender} sealed a share for {recipient}, not its neighbour")
                inboxes[recipient][sender] = sealed
        return inboxes

    def receive_input(self, client_id: str, masked: np.ndarray) -> None:
        if self.survivors is not None:
            raise SecAggError(f"the survivors are fixed; {client_id}'s input came too late")
        if client_id not in self.shared:
            raise SecAggError(f"{client_id} did not share its keys; its input cannot be unmasked")
        self.inputs[client_id] = np.asarray(masked, dtype=np.uint32)

    def fix_survivors(self) -> tuple[frozenset[str], frozenset[str]]:
        """The survivors (who uploaded) and the dropped (who shared but did not upload), fixed once: a
        second call returns the same sets, so the server can never ask for both secrets of one client."""
        if self.survivors is None:
            if len(self.inputs) < self.threshold:
                raise SecAggThresholdNotMet(f"{len(self.inputs)} masked input(s), {self.threshold} needed")
            self.survivors = frozenset(self.inputs)
        return self.survivors, frozenset(self.shared - self.survivors)

    def unmask(self, reveals: dict[str, dict[str, tuple[str, bytes]]], offset: int = 0) -> np.ndarray:
        """The modular sum of the survivors' quantised inputs: the masked inputs summed, each survivor's
        self-mask and each dropped client's pairwise masks with the survivors removed."""
        survivors, dropped = self.fix_survivors()
        size = next(iter(self.inputs.values())).size
        total = np.zeros(size, dtype=np.uint32)
        for masked in self.inputs.values():
            total = total + masked
        return self.remove_masks(total, survivors, dropped, reveals, offset)

    def remove_masks(
        self,
        total: np.ndarray,
        survivors: frozenset[str],
        dropped: frozenset[str],
        reveals: dict[str, dict[str, tuple[str, bytes]]],
        offset: int = 0,
    ) -> np.ndarray:
        """The masked inputs' modular sum `total` (elements `offset`..) without the survivors'
        self-masks and the dropped clients' pairwise masks with the survivors: the sum of the
        survivors' quantised inputs. Each secret is rebuilt from `threshold` revealed shares and
        checked against the roster (SecAggError if a share is wrong)."""
        return unmask_range(total, self.mask_seeds(survivors, dropped, reveals), offset)

    def mask_seeds(
        self, survivors: frozenset[str], dropped: frozenset[str], reveals: dict[str, dict[str, tuple[str, bytes]]]
    ) -> list[tuple[bytes, int]]:
        """The seeds of every mask left in the survivors' sum, each with the sign it was added with:
        each survivor's self-mask seed, and each dropped client's pairwise seed with each surviving
        neighbour (rebuilt from its masking key). Removing them from any range of the sum
        (`unmask_range`) leaves that range of the survivors' quantised inputs."""
        seeds = [(self._recover(owner, "seed", reveals), 1) for owner in sorted(survivors)]
        for owner in sorted(dropped):
            key = KeyPair.of_private(self._recover(owner, "key", reveals))
            for k in self.neighbours[owner]:
                if k in survivors:  # survivor k added sign(k, owner) x the pair's mask
                    pair = agree(key.private, self.roster[k].mask_public, self.key.info("pairwise"))
                    seeds.append((pair, _sign(k, owner)))
        return seeds

    def _recover(self, owner: str, kind: str, reveals: dict[str, dict[str, tuple[str, bytes]]]) -> bytes:
        """`owner`'s secret of `kind` from the revealed shares, checked against what it advertised. With
        more than t shares, a wrong one (a lying client) is outvoted: subsets of t are tried until one
        rebuilds the committed secret (at most `MAX_SUBSETS`); SecAggError if none does."""
        shares = [r[owner][1] for _, r in sorted(reveals.items()) if owner in r and r[owner][0] == kind]
        if len(shares) < self.threshold:
            raise SecAggThresholdNotMet(f"{len(shares)} share(s) of {owner}'s {kind}, {self.threshold} needed")
        advert = self.roster[owner]
        expected = advert.seed_commitment if kind == "seed" else advert.mask_public
        for subset in itertools.islice(itertools.combinations(shares, self.threshold), MAX_SUBSETS):
            try:
                secret = recover(list(subset), self.threshold)
            except (SecAggError, ValueError):
                continue
            found = hashlib.sha256(secret).digest() if kind == "seed" else KeyPair.of_private(secret).public
            if found == expected:
                return secret
        raise SecAggError(f"the shares of {owner}'s {kind} do not recover what it advertised: a share is wrong")
