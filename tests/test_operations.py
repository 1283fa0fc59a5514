"""Operating a deployment (docs/operations.md, issue 21 finding 9): revoking a client, rotating its
trust, the wire schema between agents and the stack.

Revocation and rotation are changes of the deployment config followed by `cdk deploy`. The local cloud
deploys a stack once (moto's CloudFormation replaces a nested stack on update instead of updating it,
which would not be what AWS does), so the update is shown in two honest halves: the synthesized
templates before and after the change differ only in the client's role (no resource removed or
replaced: CloudFormation updates the role in place and keeps every queue, the table and the bucket),
and a local cloud deployed from the config after the change refuses the attack."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import replace

import pytest
from botocore.exceptions import ClientError

from client_agent.agent import Outcome
from fedstep.aws.adapters import DynamoRoundTable
from fedstep.aws.stack import StackOutputs
from fedstep.core import keys
from fedstep.core.clock import utc_now
from fedstep.core.errors import FedstepError
from fedstep.core.schemas import DPSettings, Heartbeat, ObjectRef, RoundMessage, RunRecord, TrainingConfig
from fedstep.local.iam import identities
from fedstep.local.iam.policy import statements_of, trust_allows
from fedstep.operator.settings import RunSettings
from fedstep.operator.start import plan_run, without_revoked
from infra.config import ClientConfig, ConfigError, DeploymentConfig
from infra.synth import build_app
from tests.cloud_helpers import REPO, agent, drain_queues, fedstep, fedstep_here, published_round, serve
from tests.test_infra_template import flatten

PARTNER = "arn:aws:iam::111122223333:role/fl-agent"
ROTATED = "arn:aws:iam::111122223333:role/fl-agent-2026"
LEAVER = "arn:aws:iam::777788889999:role/fl-agent"
MODEL = "client_agent.models:digits_mlp"


def synth(*clients: ClientConfig) -> dict:
    config = DeploymentConfig(clients=clients, trial=True)
    return flatten(build_app(config, None, bundle=False).node.find_child(config.stack_name)).to_json()


def role_of(template: dict, client_id: str) -> tuple[str, dict]:
    [(logical_id, role)] = [
        (k, r)
        for k, r in template["Resources"].items()
        if r["Type"] == "AWS::IAM::Role"
        and r["Properties"].get("Description") == f"fedstep client agent of {client_id}"
    ]
    return logical_id, role


def changed_resources(before: dict, after: dict) -> set[str]:
    """Logical ids of the resources whose definition differs (nested stack resources aside: their
    template URL follows their content), after checking that no resource was added or removed."""
    assert {k: r["Type"] for k, r in before["Resources"].items()} == {
        k: r["Type"] for k, r in after["Resources"].items()
    }
    return {
        k
        for k, r in before["Resources"].items()
        if r["Type"] != "AWS::CloudFormation::Stack" and r != after["Resources"][k]
    }


@pytest.fixture(scope="module")
def consortium() -> dict:
    return synth(ClientConfig("org-a", PARTNER), ClientConfig("org-b", LEAVER))


def test_revoking_a_client_changes_only_its_role_which_then_trusts_nobody_and_holds_no_policy(consortium):
    revoked = synth(ClientConfig("org-a", PARTNER), ClientConfig("org-b", LEAVER, revoked=True))
    role_id, role = role_of(revoked, "org-b")
    assert changed_resources(consortium, revoked) == {role_id}  # queues, table, bucket, key untouched
    _, before = role_of(consortium, "org-b")
    assert trust_allows(before["Properties"]["AssumeRolePolicyDocument"], LEAVER, identity_allows=True)
    trust = role["Properties"]["AssumeRolePolicyDocument"]
    for caller in (LEAVER, PARTNER, "arn:aws:iam::123456789012:root", "arn:aws:iam::777788889999:user/admin"):
        assert not trust_allows(trust, caller, identity_allows=True), caller
    assert "Policies" not in role["Properties"] and "ManagedPolicyArns" not in role["Properties"]
    assert revoked["Outputs"]["RevokedClientIds"]["Value"] == "org-b"
    # reinstating gives back exactly the role it had
    assert synth(ClientConfig("org-a", PARTNER), ClientConfig("org-b", LEAVER)) == consortium


def test_rotating_a_clients_principal_updates_its_roles_trust_in_place(consortium):
    rotated = synth(ClientConfig("org-a", ROTATED), ClientConfig("org-b", LEAVER))
    role_id, role = role_of(rotated, "org-a")
    assert changed_resources(consortium, rotated) == {role_id}  # the same role (and ARN), a new trust
    trust = role["Properties"]["AssumeRolePolicyDocument"]
    assert trust_allows(trust, ROTATED, identity_allows=False)
    assert not trust_allows(trust, PARTNER, identity_allows=True)
    assert role["Properties"]["Policies"] == role_of(consortium, "org-a")[1]["Properties"]["Policies"]


@pytest.mark.parametrize(
    ("clients", "error"),
    [
        ([{"id": "a", "principal_arn": PARTNER, "revoked": "yes"}], "revoked must be true or false, got 'yes'"),
        ([{"id": "a", "principal_arn": PARTNER, "revoked": True}], "every client is revoked"),
    ],
)
def test_revocation_mistakes_in_the_deployment_config_are_named(clients, error):
    with pytest.raises(ConfigError, match=error):
        DeploymentConfig.from_dict({"clients": clients})


def test_a_revoked_client_needs_no_principal_outside_a_trial():
    config = DeploymentConfig.from_dict(
        {"clients": [{"id": "a", "principal_arn": PARTNER}, {"id": "gone", "revoked": True}]}
    )
    assert config.clients[1] == ClientConfig("gone", None, revoked=True)


@pytest.fixture(scope="module")
def offboarded():
    """The stack deployed after client-3 was revoked (`"revoked": true` on its entry)."""
    from fedstep.local.cloud import LocalCloud

    clients = (ClientConfig("client-1"), ClientConfig("client-2"), ClientConfig("client-3", revoked=True))
    with LocalCloud(DeploymentConfig(clients=clients, round_timeout_s=600)) as cloud:
        yield cloud


def test_a_revoked_clients_organisation_can_no_longer_assume_its_role(offboarded):
    cloud = offboarded
    role_arn = cloud.outputs.revoked_roles["client-3"]
    with pytest.raises(ClientError) as refused:  # its own keys, its own permission to assume: the trust refuses
        identities.assume(cloud.principals.keys("client-3"), role_arn, "us-east-1", cloud.endpoint, "after-revocation")
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    iam = cloud.client("iam")
    name = role_arn.rsplit("/", 1)[1]
    assert iam.list_role_policies(RoleName=name)["PolicyNames"] == []
    assert iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"] == []
    trust = statements_of(iam.get_role(RoleName=name)["Role"]["AssumeRolePolicyDocument"])
    assert any(s["Effect"] == "Deny" and s["Principal"] in ("*", {"AWS": "*"}) for s in trust), trust
    assert "client-3" not in cloud.outputs.roles and cloud.keys("client-1")  # the others still assume theirs


def test_a_revoked_clients_queue_stays_and_it_gets_no_agent_config(offboarded):
    cloud = offboarded
    queue = cloud.outputs.revoked["client-3"]
    assert cloud.client("sqs").get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]
    result = fedstep(cloud, "client-config", "client-3")
    assert result.returncode != 0 and "client 'client-3' is revoked in the deployment config" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_run_started_after_revocation_never_selects_the_revoked_client(offboarded):
    cloud = offboarded
    drain_queues(cloud)
    # in this process: `fedstep start --model` builds the model, a process would import TensorFlow again
    started = fedstep_here(cloud, "start", "--model", MODEL, "--rounds", "1", "--round-timeout", "600")
    assert started.returncode == 0, started.stderr
    run_id = re.search(r"started run (\S+)", started.stdout).group(1)
    assert published_round(cloud, run_id)["selected"] == ["client-1", "client-2"]
    assert DynamoRoundTable(cloud.outputs.table, cloud.client("dynamodb")).get_run(run_id).clients == [
        "client-1",
        "client-2",
    ]
    assert fedstep(cloud, "stop", run_id).returncode == 0
    named = fedstep(cloud, "start", "--model", MODEL, "--rounds", "1", "--select", "client-1,client-3")
    assert named.returncode != 0 and "started run" not in named.stdout
    assert "--select names client(s) revoked in the deployment config: client-3" in named.stderr, named.stderr
    listed = fedstep(cloud, "clients")
    assert listed.returncode == 0, listed.stderr
    assert "revoked: client-3 (no run selects them" in listed.stdout
    assert not any(line.split()[:1] == ["client-3"] for line in listed.stdout.splitlines())
    drain_queues(cloud)


def _round_body(schema: int) -> str:
    ref = ObjectRef("runs/run-x/model.keras", "0" * 64, 10)
    return json.dumps({**RoundMessage("run-x", 1, 0, ref, utc_now(), model=ref).to_dict(), "schema": schema})


@pytest.mark.parametrize(
    ("schema", "advice"),
    [
        (3, "the stack sent wire schema 3 and this agent reads schema 2: upgrade this agent"),
        (1, "the stack sent wire schema 1, older than this agent's schema 2: the operator must upgrade the stack"),
    ],
    ids=["newer stack", "older stack"],
)
def test_an_agent_refuses_a_round_of_another_wire_schema_naming_both_and_who_upgrades(
    offboarded, tmp_path, caplog, schema, advice
):
    cloud = offboarded
    drain_queues(cloud)
    cloud.client("sqs").send_message(QueueUrl=cloud.outputs.queues["client-1"], MessageBody=_round_body(schema))
    with caplog.at_level(logging.ERROR, logger="fedstep.client"):
        serve(agent(cloud, "client-1", tmp_path), expect=Outcome.REJECTED)
    assert advice in caplog.text and "goes to the dead-letter queue" in caplog.text, caplog.text
    drain_queues(cloud)


def test_stack_outputs_keep_a_revoked_clients_queue_apart_from_those_runs_select():
    outputs = {"BucketName": "b", "TableName": "t", "TopicArn": "a", "StateMachineArn": "m", "ClientGroups": "1"}
    group = {
        "ClientIds": "x,y",
        "RevokedClientIds": "y",
        **{keys.client_output_key(c): f"q-{c}" for c in "xy"},
        **{keys.client_role_output_key(c): f"r-{c}" for c in "xy"},
    }
    parsed = StackOutputs.parse(outputs, [group])
    assert parsed.queues == {"x": "q-x"} and parsed.roles == {"x": "r-x"}
    assert parsed.revoked == {"y": "q-y"} and parsed.revoked_roles == {"y": "r-y"}


def test_destroy_keeps_exactly_the_resources_docs_operations_names(consortium):
    """`cdk destroy` deletes everything but the resources whose DeletionPolicy is Retain: they are the
    rows of docs/operations.md's "Tear down" table, no more and no fewer."""
    text = (REPO / "docs" / "operations.md").read_text().split("## Tear down", 1)[1]
    documented = set(re.findall(r"^\| [^|]+ \| `(\w+)` \|", text, flags=re.MULTILINE))
    retained = {
        re.sub(r"[0-9A-F]{8}$", "", logical_id)
        for logical_id, resource in consortium["Resources"].items()
        if resource.get("DeletionPolicy") == "Retain"
    }
    assert documented == retained
    logs = {"AggregationLogs", "IntegrityLogs", "TrainingLogs"}  # the integrity check's: the mismatches it found
    assert retained == {"ModelRegistry", "AccessLogs", "Updates", "Key", *logs}
    kept = [r for r in consortium["Resources"].values() if r.get("DeletionPolicy") == "Retain"]
    assert all(r.get("UpdateReplacePolicy") == "Retain" for r in kept)


def _outputs_revoking(*revoked: str) -> StackOutputs:
    clients = ("a", "b", "c", "d")
    group = {
        "ClientIds": ",".join(clients),
        "RevokedClientIds": ",".join(revoked),
        **{keys.client_output_key(c): f"q-{c}" for c in clients},
        **{keys.client_role_output_key(c): f"r-{c}" for c in clients},
    }
    outputs = {"BucketName": "b", "TableName": "t", "TopicArn": "a", "StateMachineArn": "m", "ClientGroups": "1"}
    return StackOutputs.parse(outputs, [group])


def test_a_run_resumed_after_a_revocation_continues_without_the_revoked_client():
    """`fedstep start --resume` starts a new run: it leaves out a client revoked since the run began,
    and refuses when that changes what the run promised (a DP population, a quorum it cannot meet)."""
    run = RunRecord("run-1", ["a", "b", "c", "d"], 5, TrainingConfig(), "fedavg", utc_now(), quorum=2)
    assert without_revoked(run, _outputs_revoking()) == run
    resumed = without_revoked(replace(run, clients_per_round=3), _outputs_revoking("c"))
    assert resumed.clients == ["a", "b", "d"] and resumed.clients_per_round == 0  # 3 of 3 left: all
    assert without_revoked(replace(run, clients_per_round=2), _outputs_revoking("c")).clients_per_round == 2
    with pytest.raises(FedstepError, match=r"revoked clients \(c, d\) leave run run-1 2 client"):
        without_revoked(replace(run, quorum=3), _outputs_revoking("c", "d"))
    central = replace(run, dp=DPSettings("central", 1.0, 1.0, 1e-5))
    with pytest.raises(FedstepError, match=r"accounted over its 4 clients, and some are revoked now \(c\)"):
        without_revoked(central, _outputs_revoking("c"))
    record_level = replace(run, dp=DPSettings("dp-sgd", 1.0, 1.0, 1e-5))
    assert without_revoked(record_level, _outputs_revoking("c")).clients == ["a", "b", "d"]


def test_a_new_run_takes_the_stacks_clients_less_the_revoked_and_names_them_if_selected():
    outputs = _outputs_revoking("c")
    assert plan_run(RunSettings(), sorted(outputs.queues), "run-2", outputs.revoked).clients == ["a", "b", "d"]
    with pytest.raises(FedstepError, match="revoked in the deployment config: c"):
        plan_run(RunSettings(select=["a", "c"]), sorted(outputs.queues), "run-2", outputs.revoked)
    assert plan_run(RunSettings(exclude=["c", "d"]), sorted(outputs.queues), "run-2", outputs.revoked).clients == [
        "a",
        "b",
    ]


def test_fedstep_clients_shows_an_agent_of_another_wire_schema_before_a_run_sends_it_anything(offboarded):
    """An organisation upgraded its agent to a release of a newer schema before the stack: its heartbeat
    (written under its own role) reads as invalid, with both versions and the side to upgrade."""
    cloud = offboarded
    beat = {**Heartbeat("client-2", "0.2.0", "idle", utc_now(), 60, {}).to_item(), "schema": 3}
    DynamoRoundTable(cloud.outputs.table, cloud.client("dynamodb", "client-2")).put(beat)
    listed = fedstep(cloud, "clients", "--json")
    assert listed.returncode == 0, listed.stderr
    row = next(r for r in json.loads(listed.stdout) if r["client_id"] == "client-2")
    assert row["status"] == "invalid"
    assert "heartbeat item: wire schema 3, but this fedstep" in row["activity"]
    assert "reads schema 2 only: upgrade the side on schema 2" in row["activity"]
