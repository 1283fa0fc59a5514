"""The agent's poll loop waits out network outages and stops, with the cause, on what waiting cannot fix."""

from __future__ import annotations

from dataclasses import replace

import boto3
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from client_agent import agent as agent_module
from client_agent.agent import Agent, Outcome
from client_agent.config import AgentConfig
from fedstep.core.errors import FedstepError

CONFIG = AgentConfig(
    client_id="c1", queue_url="https://sqs.us-east-1.amazonaws.com/1/q", bucket="b", table="t", data="d", heartbeat_s=0
)


def agent_polling(monkeypatch, outcomes):
    """An agent whose polls raise or return `outcomes` in turn; returns it and the sleeps it made."""
    monkeypatch.setattr(agent_module, "preflight", lambda config, session: None)
    sleeps: list[float] = []
    monkeypatch.setattr(agent_module.time, "sleep", sleeps.append)
    a = Agent(CONFIG, trainer=None, session=boto3.Session(region_name="us-east-1"))
    pending = iter(outcomes)

    def poll_once():
        item = next(pending)
        if isinstance(item, BaseException):
            raise item
        return item

    a.poll_once = poll_once
    return a, sleeps


def test_an_outage_while_polling_is_waited_out_with_backoff(monkeypatch):
    down = EndpointConnectionError(endpoint_url="https://sqs.us-east-1.amazonaws.com")
    a, sleeps = agent_polling(monkeypatch, [down, down, down, None, Outcome.RUN_ENDED])
    assert a.run() == 0
    assert sleeps == [5.0, 10.0, 20.0]


def test_after_a_failed_round_the_agent_polls_again_after_a_back_off_that_resets_once_a_round_is_served(
    monkeypatch,
):
    """A failed round's message is released at once; the agent retries it after 5 s, doubling to 60 s
    while rounds keep failing (so a broken round does not spin through its 5 receives in a second)."""
    kept = [Outcome.KEPT] * 6
    a, sleeps = agent_polling(monkeypatch, [*kept, None, Outcome.SERVED, Outcome.KEPT, Outcome.RUN_ENDED])
    assert a.run() == 0
    assert sleeps == [5.0, 10.0, 20.0, 40.0, 60.0, 60.0, 5.0]


def test_the_visibility_settings_are_bounded_so_a_message_is_renewed_before_it_runs_out():
    assert (CONFIG.visibility_timeout_s, CONFIG.visibility_extend_s) == (60, 20)
    replace(CONFIG, visibility_timeout_s=2, visibility_extend_s=1).validated()
    for bad, why in (
        ({"visibility_timeout_s": 1, "visibility_extend_s": 1}, "visibility_timeout_s must be 2-43200 seconds"),
        ({"visibility_timeout_s": 50_000}, "visibility_timeout_s must be 2-43200 seconds, got 50000"),
        ({"visibility_extend_s": 31}, r"visibility_extend_s must be 1 to half of visibility_timeout_s \(60 s\)"),
        ({"visibility_extend_s": 300}, "a message's visibility must be renewed before it runs out"),
        ({"visibility_extend_s": 0}, "visibility_extend_s must be 1 to half"),
    ):
        with pytest.raises(FedstepError, match=why):
            replace(CONFIG, **bad).validated()


def test_access_denied_while_polling_stops_the_agent_with_the_action(monkeypatch):
    denied = ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "ReceiveMessage")
    a, _ = agent_polling(monkeypatch, [denied])
    with pytest.raises(FedstepError, match=r"access denied: .*ReceiveMessage on queue https://sqs"):
        a.run()


def test_once_returns_after_one_served_round_and_follow_outlives_a_run(monkeypatch):
    a, _ = agent_polling(monkeypatch, [None, Outcome.KEPT, Outcome.SERVED])
    assert a.run(once=True) == 0
    a, _ = agent_polling(monkeypatch, [Outcome.RUN_ENDED, Outcome.SERVED, Outcome.RUN_ENDED, KeyboardInterrupt()])
    with pytest.raises(KeyboardInterrupt):
        a.run(follow=True)


def test_a_failing_heartbeat_is_logged_once_per_outage_and_never_raises(caplog):
    from client_agent.heartbeat import Heartbeats
    from fedstep.core.schemas import Heartbeat

    class Table:
        fail = True
        written: list = []

        def put(self, item):
            if self.fail:
                raise EndpointConnectionError(endpoint_url="https://dynamodb")
            self.written.append(Heartbeat.parse(item))

    table = Table()
    beats = Heartbeats("c1", table, interval_s=60)
    beats.beat()
    beats.set_state("training", "run-1", 2)
    table.fail = False
    beats.beat()
    warnings = [r for r in caplog.records if "could not write the heartbeat" in r.getMessage()]
    assert len(warnings) == 1 and "cannot reach https://dynamodb" in warnings[0].getMessage()
    assert (table.written[0].state, table.written[0].run_id, table.written[0].round) == ("training", "run-1", 2)
