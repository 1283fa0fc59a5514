"""Secure aggregation (SecAgg+, Bell et al. 2020) for fedstep's rounds: the cryptography and the
arithmetic, outside the core (the core names what it needs in `fedstep.core.ports`, as it does the
accountant; the import contract keeps `cryptography` and `Crypto` out of it).

- `primitives`: X25519 key agreement, HKDF-SHA256, AES-GCM sealing of shares to their recipient,
  Shamir t-of-n sharing (PyCryptodome, over 16-byte chunks), and the mask generator (AES-256-CTR
  keyed by HKDF of a seed, seekable by element offset).
- `fixed_point`: values clipped and quantised to integers modulo 2^32, with headroom for a sum.
- `protocol`: one round's protocol between clients and the server: advertise keys, share seeds,
  upload a masked input, reveal shares for the survivors; the server only ever learns the sum of
  the survivors' quantised inputs, whoever dropped at which phase.
- `inputs`: a client's update as its input `[w, w x delta]`, and the unmasked sum as FedAvg's step.
- `server`: the aggregation function's side behind the core's port (`SecureAggregation`).

The round runs it as phases of the state machine (`fedstep.core.rounds.secure`) and the agent's
steps (`client_agent`); docs/privacy.md says when to use it.
"""
