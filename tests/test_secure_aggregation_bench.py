"""Issue 25, secure aggregation's costs made visible: bench/secure_aggregation.py --cloud puts a secure
run beside a plain FedAvg run on the local cloud, from the requests the cloud answered, the function's
invocations and the execution's history (it prints the figures for 3, 10 and 30 clients;
docs/benchmarks.md keeps them). A smoke run: the shared cloud's two clients, a tiny model, two rounds."""

from __future__ import annotations

import pytest
from bench_modules import load_bench

from fedstep.costs.model import SECURE_PATH, SECURE_PHASES


@pytest.fixture(scope="module")
def bench():
    return load_bench("secure_aggregation")


def test_the_cloud_bench_measures_a_secure_round_beside_fedavg_from_what_the_cloud_answered(bench, cloud, tmp_path):
    row = bench.compare_on_cloud(cloud, tmp_path, parameters=200, rounds=2)
    plain, secure = row.plain, row.secure
    assert (row.clients, row.neighbours, row.threshold, row.parameters) == (2, 1, 2, 200)
    assert not plain.problems and not secure.problems  # every client in every round, at the first attempt
    # the history: a secure round adds its three later phases and the choice after each
    assert secure.transitions - plain.transitions == len(SECURE_PATH)
    # the function: besides the round's publication, each later phase's, and the items' stream batches
    assert secure.invocations >= plain.invocations + SECURE_PHASES
    # each phase's state, the invocations and the server's requests while it was the last one published
    assert plain.phases["share"]["state_s"] == plain.phases["reveal"]["state_s"] == 0
    assert plain.phases["advertise"]["invocations"] == plain.invocations
    for phase in ("advertise", "share", "input", "reveal"):
        assert secure.phases[phase]["state_s"] > 0 and secure.phases[phase]["invocations"] >= 2  # publish, batch
    assert secure.phases["share"]["ddb"] >= 2  # among them, the relay of each share into its recipient's inbox
    assert sum(p["invocations"] for p in secure.phases.values()) == secure.invocations
    assert 0 < plain.aggregation_s < plain.wall_s and 0 < secure.aggregation_s < secure.wall_s
    # a client's own items and reads, each counted from its requests: none of them in a plain round
    for kind in ("keys item", "share item", "reveal item"):
        assert secure.sent[kind] > 0 == plain.sent[kind]
    for kind in ("roster", "inbox"):
        assert secure.received[kind] > 0 == plain.received[kind]
    assert secure.received["message"] > plain.received["message"]  # four messages a round, not one
    # a masked input is a uint32 per parameter and one for the weight: as large as the float32 update, within
    # the header (which names one tensor, not two)
    assert abs(secure.sent["update"] - plain.sent["update"]) < 200 and plain.sent["update"] > 4 * 200
    assert secure.ddb > plain.ddb and secure.ddb_clients > plain.ddb_clients
    assert secure.cost_usd > plain.cost_usd > 0
    for table in (
        bench.time_table([row]),
        bench.traffic_table([row]),
        bench.bytes_table([row]),
        bench.phase_table([row]),
    ):
        header, rule, *lines = table.splitlines()
        assert header.count("|") == rule.count("|") == lines[-1].count("|")


def test_write_docs_replaces_only_its_own_sections_table(bench, tmp_path, monkeypatch):
    docs = tmp_path / "docs" / "benchmarks.md"
    docs.parent.mkdir()
    mark = bench.MARK.format
    docs.write_text(
        f"before\n{mark('memory start')}\nold memory\n{mark('memory end')}\nbetween\n"
        f"{mark('cloud start')}\nold cloud\n{mark('cloud end')}\nafter\n"
    )
    monkeypatch.setattr(bench, "ROOT", tmp_path)
    bench.write_docs("cloud", "| new |")
    assert docs.read_text() == (
        f"before\n{mark('memory start')}\nold memory\n{mark('memory end')}\nbetween\n"
        f"{mark('cloud start')}\n| new |\n{mark('cloud end')}\nafter\n"
    )
