"""Reading a deployment's outputs: the stack's own, and its client groups' (nested stacks of 50 clients)."""

from __future__ import annotations

import pytest

from fedstep.aws.stack import StackOutputs
from fedstep.core import keys
from fedstep.core.errors import FedstepError

STACK = {
    "BucketName": "bucket",
    "TableName": "table",
    "TopicArn": "arn:aws:sns:us-east-1:123456789012:topic",
    "StateMachineArn": "arn:aws:states:us-east-1:123456789012:stateMachine:m",
    "MaxModelBytes": "1024",
}


def group(*client_ids: str) -> dict[str, str]:
    """A client group's outputs, as `infra.client_group.ClientGroup` writes them."""
    outputs = {"ClientIds": ",".join(client_ids)}
    for cid in client_ids:
        outputs[keys.client_output_key(cid)] = f"https://sqs/{cid}"
        outputs[keys.client_role_output_key(cid)] = f"arn:aws:iam::123456789012:role/{cid}"
    return outputs


def test_the_clients_of_every_group_are_read_with_their_queues_and_roles():
    outputs = StackOutputs.parse({**STACK, "ClientGroups": "2"}, [group("a", "b"), group("c")])
    assert outputs.queues == {c: f"https://sqs/{c}" for c in "abc"}
    assert outputs.roles["c"] == "arn:aws:iam::123456789012:role/c"
    assert (outputs.bucket, outputs.max_model_bytes) == ("bucket", 1024)


def test_a_missing_group_is_named_not_silently_skipped():
    with pytest.raises(FedstepError, match=r"2 client group\(s\) \(nested stacks\) and 1 were found"):
        StackOutputs.parse({**STACK, "ClientGroups": "2"}, [group("a")])


def test_a_stack_deployed_before_the_groups_is_still_read_from_its_own_outputs():
    outputs = StackOutputs.parse({**STACK, **group("a", "b")})
    assert sorted(outputs.queues) == ["a", "b"]


def test_a_stack_deployed_with_the_old_output_names_is_read_until_it_is_deployed_again():
    old = {"ClientIds": "client-1", "QueueUrlclientx2d1": "https://sqs/old", "RoleArnclientx2d1": "arn:role/old"}
    outputs = StackOutputs.parse({**STACK, "ClientGroups": "1"}, [old])
    assert (outputs.queues, outputs.roles) == ({"client-1": "https://sqs/old"}, {"client-1": "arn:role/old"})


def test_a_stack_that_is_not_fedsteps_is_refused_with_the_output_it_lacks():
    with pytest.raises(FedstepError, match="no output 'ClientGroups'"):
        StackOutputs.parse(STACK)
    with pytest.raises(FedstepError, match="no output 'RoleArnC'"):
        StackOutputs.parse({**STACK, "ClientGroups": "1"}, [{"ClientIds": "c", keys.client_output_key("c"): "u"}])
