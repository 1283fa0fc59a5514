from fnmatch import fnmatch

import pytest

from fedstep import keys


def test_s3_keys_follow_the_documented_layout():
    assert keys.model_key("run-1") == "runs/run-1/model.keras"
    assert keys.global_key("run-1", 0) == "runs/run-1/rounds/00000/global.safetensors"
    assert keys.update_key("run-1", 12, "hospital-a") == "updates/run-1/00012/hospital-a.safetensors"
    assert fnmatch(keys.update_key("run-1", 12, "hospital-a"), keys.client_update_key_pattern("hospital-a"))
    assert not fnmatch(keys.update_key("run-1", 12, "hospital-ab"), keys.client_update_key_pattern("hospital-a"))
    assert fnmatch(keys.global_key("run-1", 3), keys.GLOBAL_KEY_PATTERN)
    assert fnmatch(keys.model_key("run-1"), keys.MODEL_KEY_PATTERN)


def test_dynamodb_keys_encode_kind_round_and_client():
    assert keys.run_item_key("r") == {"pk": "r", "sk": "RUN"}
    assert keys.round_item_key("r", 3) == {"pk": "r", "sk": "ROUND#00003"}
    assert keys.update_item_key("r", 3, "c1") == {"pk": "r", "sk": "UPDATE#00003#c1"}
    assert keys.update_item_key("r", 3, "c1")["sk"].startswith(keys.update_sk_prefix(3))


@pytest.mark.parametrize("bad", ["", "a/b", "../etc", "x" * 65, "-lead", "sp ace"])
def test_ids_that_could_escape_a_prefix_are_refused(bad):
    with pytest.raises(ValueError, match="invalid client id"):
        keys.update_key("run-1", 1, bad)


def test_client_output_key_is_alphanumeric_and_unambiguous():
    assert keys.client_output_key("client-1") == "QueueUrlclientx2d1"
    assert keys.client_output_key("client-1") != keys.client_output_key("client_1")
    assert keys.client_output_key("a-b").isalnum()
