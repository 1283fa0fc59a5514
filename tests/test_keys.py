from fnmatch import fnmatch

import pytest

from fedstep.core import keys


def test_s3_keys_follow_the_documented_layout():
    assert keys.model_key("run-1") == "runs/run-1/model.keras"
    assert keys.global_key("run-1", 0, "initial") == "runs/run-1/rounds/00000/global-initial.safetensors"
    assert keys.update_key("run-1", 12, "hospital-a") == "updates/hospital-a/run-1/00012.safetensors"
    assert fnmatch(keys.update_key("run-1", 12, "hospital-a"), keys.client_update_key_pattern("hospital-a"))
    assert not fnmatch(keys.update_key("run-1", 12, "hospital-ab"), keys.client_update_key_pattern("hospital-a"))
    assert not fnmatch(keys.update_key("run-1", 12, "a"), keys.client_update_key_pattern("hospital-a"))
    assert fnmatch(keys.global_key("run-1", 3, "0f3a"), keys.GLOBAL_KEY_PATTERN)
    assert fnmatch(keys.model_key("run-1"), keys.MODEL_KEY_PATTERN)


def test_a_clients_prefix_holds_only_its_own_keys():
    """IAM's `*` matches a `/` too; with the client id first, whatever it matches stays in the client's prefix."""
    own = keys.client_update_key_pattern("hospital-a")
    assert own == "updates/hospital-a/*"
    for other in ("hospital-b", "hospital-ab", "hospital"):
        assert not fnmatch(keys.update_key("run-1", 1, other), own)


def test_dynamodb_keys_encode_kind_round_and_client():
    assert keys.run_item_key("r") == {"pk": "r", "sk": "RUN"}
    assert keys.round_item_key("r", 3) == {"pk": "r", "sk": "ROUND#00003"}
    assert keys.update_item_key("r", 3, "c1") == {"pk": "CLIENT#c1", "sk": "UPDATE#r#00003"}
    assert keys.heartbeat_item_key("c1") == {"pk": "CLIENT#c1", "sk": "HEARTBEAT"}
    assert keys.last_rejection_item_key("c1") == {"pk": "FEEDBACK#c1", "sk": "LAST_REJECTION"}
    assert keys.parse_update_item_key("CLIENT#c1", "UPDATE#r#00003") == ("c1", "r", 3)


@pytest.mark.parametrize(
    ("pk", "sk"), [("r", "UPDATE#r#00003"), ("CLIENT#c1", "HEARTBEAT"), ("CLIENT#c1", "UPDATE#r#x")]
)
def test_other_keys_are_not_taken_for_update_items(pk, sk):
    with pytest.raises(ValueError):
        keys.parse_update_item_key(pk, sk)


@pytest.mark.parametrize("bad", ["", "a/b", "../etc", "x" * 65, "-lead", "sp ace", "a#b"])
def test_ids_that_could_escape_a_prefix_or_partition_are_refused(bad):
    with pytest.raises(ValueError, match="invalid client id"):
        keys.update_key("run-1", 1, bad)


def test_client_output_key_is_alphanumeric_and_unambiguous():
    assert keys.client_output_key("client-1") == "QueueUrlClient1"  # as the console shows it
    assert keys.client_role_output_key("hospital_b-2") == "RoleArnHospitalB2"
    assert keys.client_output_key("a-b").isalnum()
    # ids that differ only in case, - or _ share an output name: a deployment config refuses them
    from infra.config import ConfigError, DeploymentConfig

    with pytest.raises(ConfigError, match=r"client ids \['client-1', 'client_1'\] give the same stack output names"):
        DeploymentConfig.from_dict({"project": "p", "clients": [{"id": "client-1"}, {"id": "client_1"}], "trial": True})
