"""The cryptography of secure aggregation, from `cryptography` (X25519, HKDF, AES-GCM, AES-CTR) and
PyCryptodome (Shamir's secret sharing), nothing hand-written."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from Crypto.Protocol.SecretSharing import Shamir
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SECRET_BYTES = 32
"""A seed or a private key: 32 bytes."""
CHUNK_BYTES = 16
"""PyCryptodome's Shamir shares 16-byte secrets (GF(2^128)): a 32-byte secret is shared as two chunks."""
NONCE_BYTES = 12
ELEMENT_BYTES = 4
"""A mask element is a uint32 (the sum is taken modulo 2^32)."""
BLOCK_BYTES = 16


class SecAggError(ValueError):
    """A secure-aggregation message that cannot be used: malformed, not authentic, or not enough shares."""


@dataclass(frozen=True)
class KeyPair:
    """An X25519 key pair: the private key's 32 raw bytes and the public key's."""

    private: bytes
    public: bytes

    @classmethod
    def generate(cls) -> KeyPair:
        key = X25519PrivateKey.generate()
        return cls.of_private(key.private_bytes(*_RAW_PRIVATE))

    @classmethod
    def of_private(cls, private: bytes) -> KeyPair:
        key = X25519PrivateKey.from_private_bytes(private)
        return cls(private, key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


_RAW_PRIVATE = (serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def agree(private: bytes, peer_public: bytes, info: bytes) -> bytes:
    """A 32-byte key both ends derive alike: HKDF-SHA256 of the X25519 shared secret, bound to `info`
    (what the key is for, and the run, round and attempt). SecAggError for a malformed public key."""
    try:
        shared = X25519PrivateKey.from_private_bytes(private).exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:
        raise SecAggError(f"not an X25519 public key: {exc}") from None
    return derive(shared, info)


def derive(secret: bytes, info: bytes) -> bytes:
    """HKDF-SHA256 of `secret` for `info` (no salt), 32 bytes."""
    return HKDF(algorithm=hashes.SHA256(), length=SECRET_BYTES, salt=None, info=info).derive(secret)


def random_secret() -> bytes:
    return os.urandom(SECRET_BYTES)


def seal(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    """AES-256-GCM of `plaintext` under `key`, authenticated with `associated` (who sends it to whom,
    for which round): a fresh 12-byte nonce, then the ciphertext and its tag."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated)


def open_sealed(key: bytes, sealed: bytes, associated: bytes) -> bytes:
    """The plaintext of `seal`; SecAggError when it was not sealed under `key` for `associated`."""
    if len(sealed) < NONCE_BYTES + 16:
        raise SecAggError(f"a sealed share is at least {NONCE_BYTES + 16} bytes, got {len(sealed)}")
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], associated)
    except InvalidTag:
        raise SecAggError("a sealed share is not authentic (another key, sender, recipient or round)") from None


def share(secret: bytes, threshold: int, holders: int) -> list[bytes]:
    """`holders` Shamir shares of a 32-byte `secret`, any `threshold` of which recover it: share i
    (0-based) is its 2-byte index then one 16-byte share per chunk."""
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"a shared secret is {SECRET_BYTES} bytes, got {len(secret)}")
    if not 1 <= threshold <= holders <= 2**16 - 1:
        raise ValueError(f"need 1 <= threshold <= holders < 65536, got {threshold} of {holders}")
    chunks = [
        Shamir.split(threshold, holders, secret[i : i + CHUNK_BYTES], ssss=False)
        for i in range(0, SECRET_BYTES, CHUNK_BYTES)
    ]
    return [
        index.to_bytes(2, "big") + b"".join(part[h][1] for part in chunks)
        for h, index in enumerate(i for i, _ in chunks[0])
    ]


SHARE_BYTES = 2 + SECRET_BYTES


def recover(shares: list[bytes], threshold: int) -> bytes:
    """The secret `threshold` or more distinct `share`s hold (the first `threshold` are used);
    SecAggError when there are fewer or one is malformed."""
    distinct = {s[:2]: s for s in shares if isinstance(s, bytes) and len(s) == SHARE_BYTES}
    if len(distinct) != len(shares):
        raise SecAggError(f"a share is {SHARE_BYTES} bytes with a distinct index")
    if len(distinct) < threshold:
        raise SecAggError(f"{len(distinct)} share(s), {threshold} needed")
    chosen = list(distinct.values())[:threshold]
    return b"".join(
        Shamir.combine(
            [(int.from_bytes(s[:2], "big"), s[2 + i : 2 + i + CHUNK_BYTES]) for s in chosen],
            ssss=False,
        )
        for i in range(0, SECRET_BYTES, CHUNK_BYTES)
    )


def mask(seed: bytes, offset: int, count: int) -> np.ndarray:
    """Elements `offset` .. `offset + count - 1` of the uint32 mask stream of `seed`: AES-256-CTR keyed
    by HKDF(seed), the counter starting at 0, so any slice of a model expands only its own range."""
    if offset < 0 or count < 0:
        raise ValueError("a mask range starts at 0 or later and holds 0 or more elements")
    key = derive(seed, b"fedstep secagg mask")
    first_block, skip = divmod(offset * ELEMENT_BYTES, BLOCK_BYTES)
    encryptor = Cipher(algorithms.AES(key), modes.CTR(first_block.to_bytes(BLOCK_BYTES, "big"))).encryptor()
    stream = encryptor.update(bytes(skip + count * ELEMENT_BYTES))
    return np.frombuffer(stream[skip:], dtype="<u4").astype(np.uint32)
