import pickle

import numpy as np
import pytest

from fedstep.core import tensors
from fedstep.core.errors import InvalidUpdate

WEIGHTS = {"000/dense/kernel": np.arange(6, dtype=np.float32).reshape(2, 3), "001/dense/bias": np.ones(3, np.float32)}
SPEC = tensors.TensorSpec.of(WEIGHTS)


def test_round_trip_keeps_names_shapes_values_and_metadata():
    data = tensors.encode(WEIGHTS, {"run_id": "r", "round": 2})
    out = tensors.decode(data, expected=SPEC, sha256=tensors.sha256_hex(data))
    assert set(out) == set(WEIGHTS)
    for name in WEIGHTS:
        np.testing.assert_array_equal(out[name], WEIGHTS[name])
    assert tensors.read_metadata(data) == {"run_id": "r", "round": 2}


def test_encoding_is_deterministic():
    meta = {"schema": 1, "run_id": "r", "round": 4, "kind": "global", "client_id": "c"}
    assert len({tensors.encode(WEIGHTS, meta) for _ in range(30)}) == 1


def test_a_pickle_payload_is_rejected_without_being_unpickled():
    payload = pickle.dumps({"000/dense/kernel": WEIGHTS["000/dense/kernel"]})  # pickle-attack
    with pytest.raises(InvalidUpdate, match="not a safetensors file"):
        tensors.decode(payload, expected=SPEC)


@pytest.mark.parametrize("garbage", [b"", b"1234", b"\xff" * 64, b"\x08\x00\x00\x00\x00\x00\x00\x00{notjson"])
def test_corrupt_files_are_rejected_with_a_reason(garbage):
    with pytest.raises(InvalidUpdate, match="not a safetensors file"):
        tensors.decode(garbage)


def test_nan_values_are_rejected():
    bad = dict(WEIGHTS, **{"001/dense/bias": np.array([1, np.nan, 0], np.float32)})
    with pytest.raises(InvalidUpdate, match="non-finite"):
        tensors.decode(tensors.encode(bad), expected=SPEC)


def test_wrong_shapes_and_names_are_rejected():
    reshaped = dict(WEIGHTS, **{"001/dense/bias": np.ones(4, np.float32)})
    with pytest.raises(InvalidUpdate, match="shape"):
        tensors.decode(tensors.encode(reshaped), expected=SPEC)
    renamed = {"x": WEIGHTS["000/dense/kernel"], "001/dense/bias": WEIGHTS["001/dense/bias"]}
    with pytest.raises(InvalidUpdate, match="names differ"):
        tensors.decode(tensors.encode(renamed), expected=SPEC)


def test_other_dtypes_are_rejected():
    from safetensors.numpy import save

    data = save({"000/dense/kernel": np.zeros((2, 3), np.float64), "001/dense/bias": np.ones(3, np.float32)})
    with pytest.raises(InvalidUpdate, match="float64"):
        tensors.decode(data)


def test_sha256_mismatch_and_size_limit_are_enforced():
    data = tensors.encode(WEIGHTS)
    with pytest.raises(InvalidUpdate, match="sha256"):
        tensors.decode(data, sha256="0" * 64)
    with pytest.raises(InvalidUpdate, match="over the limit"):
        tensors.decode(data, max_bytes=len(data) - 1)
