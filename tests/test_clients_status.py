"""`fedstep clients`: online, offline, stopped or never seen, from the heartbeat items."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fedstep.core.schemas import Heartbeat
from fedstep.render.clients import render_table, statuses

NOW = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)
HARDWARE = {"os": "linux", "arch": "x86_64", "python": "3.11.7", "cpus": 8, "memory_gib": 31.2, "gpus": ["A10"]}


def beat(client_id, ago_s, state="idle", **extra):
    seen = (NOW - timedelta(seconds=ago_s)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return Heartbeat(client_id, "0.1.0", state, seen, 60, HARDWARE, **extra).to_item()


def test_clients_are_online_offline_stopped_or_never_seen():
    items = {
        "a": beat("a", 30, "training", run_id="run-1", round=3),
        "b": beat("b", 200),
        "c": beat("c", 5, "stopped"),
    }
    rows = {r.client_id: r for r in statuses(["a", "b", "c", "d"], items, NOW)}
    assert (rows["a"].status, rows["a"].activity) == ("online", "training run-1 round 3")
    assert rows["b"].status == "offline"  # 200 s > 2 intervals + 15 s
    assert rows["c"].status == "stopped"
    assert rows["d"].status == "never seen" and rows["d"].last_seen is None


def test_a_heartbeat_written_under_another_clients_partition_is_flagged():
    forged = {**beat("a", 1), "pk": "CLIENT#b"}
    [row] = statuses(["b"], {"b": forged}, NOW)
    assert row.status == "invalid" and "partition key does not match" in row.activity


def test_the_table_shows_hardware_and_a_count_of_online_clients():
    text = render_table(statuses(["a", "b"], {"a": beat("a", 30)}, NOW))
    assert "linux/x86_64, 8 CPUs, 31.2 GiB, 1 GPU (A10)" in text
    assert "30 s ago" in text and text.endswith("1 of 2 client(s) online")


def test_a_clients_last_rejected_update_is_shown_with_its_reason():
    from fedstep.core.schemas import Feedback

    told = Feedback("b", "run-7", 3, "0" * 64, "update norm 12.5 exceeds max_update_norm 5", "2026-11-21T11:00Z")
    rows = statuses(["a", "b"], {"a": beat("a", 30), "b": beat("b", 30)}, NOW, feedback={"b": told.to_item()})
    assert [r.last_rejection for r in rows] == ["", "run-7 round 3: update norm 12.5 exceeds max_update_norm 5"]
    assert "run-7 round 3: update norm 12.5" in render_table(rows)


def test_an_oversized_heartbeat_is_shown_as_invalid_not_printed():
    huge = {**beat("a", 1), "hardware": {f"k{i}": "x" * 100 for i in range(100)}}
    [row] = statuses(["a"], {"a": huge}, NOW)
    assert row.status == "invalid" and "hardware summary is larger than" in row.activity
