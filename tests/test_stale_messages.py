"""Leftover messages: an agent started after a run ended does not train that run's rounds, and an
agent started with --once does not exit on an older run's run-ended message."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import boto3

from client_agent import agent as agent_module
from client_agent.agent import Agent, Outcome
from client_agent.config import AgentConfig
from fedstep.core.schemas import ObjectRef, RoundMessage, RunEndedMessage, TrainingConfig

CONFIG = AgentConfig(
    client_id="c1", queue_url="https://sqs.us-east-1.amazonaws.com/1/q", bucket="b", table="t", data="d", heartbeat_s=0
)
REF = ObjectRef("k", "0" * 64, 1)


def quiet_agent() -> tuple[Agent, list[str], list[int]]:
    """An agent whose deletes and trainings are recorded instead of done."""
    a = Agent(CONFIG, trainer=None, session=boto3.Session(region_name="us-east-1"))
    deleted: list[str] = []
    served: list[int] = []
    a._delete = lambda message: deleted.append(message["MessageId"])
    a.serve_round = lambda msg: served.append(msg.round) or Outcome.SERVED
    return a, deleted, served


def sqs_message(body: dict, sent_s_ago: float = 0.0, message_id: str = "m") -> dict:
    sent_ms = int((time.time() - sent_s_ago) * 1000)
    return {
        "Body": json.dumps(body),
        "MessageId": message_id,
        "ReceiptHandle": "r",
        "Attributes": {"SentTimestamp": str(sent_ms)},
    }


def round_message(run_id: str, round_number: int, issued_s_ago: float, deadline_s: int = 600) -> dict:
    issued = (datetime.now(UTC) - timedelta(seconds=issued_s_ago)).isoformat()
    msg = RoundMessage(run_id, round_number, 0, REF, issued, REF, TrainingConfig(), deadline_s)
    return sqs_message(msg.to_dict(), issued_s_ago, f"{run_id}-{round_number}")


def test_a_round_past_its_deadline_is_deleted_without_training():
    a, deleted, served = quiet_agent()
    assert a.handle(round_message("old-run", 3, issued_s_ago=3600, deadline_s=600)) is Outcome.STALE
    assert served == [] and deleted == ["old-run-3"]
    assert a.handle(round_message("live-run", 1, issued_s_ago=10)) is Outcome.SERVED
    assert served == [1]


def test_the_rounds_of_a_run_that_ended_are_skipped():
    a, deleted, served = quiet_agent()
    ended = RunEndedMessage("run-9", "max_rounds", 2).to_dict()
    assert a.handle(sqs_message(ended, message_id="end")) is Outcome.RUN_ENDED
    assert a.handle(round_message("run-9", 2, issued_s_ago=5)) is Outcome.STALE  # redelivered after the end
    assert served == [] and deleted == ["end", "run-9-2"]


def test_an_older_runs_run_ended_message_does_not_stop_an_agent_started_with_once(monkeypatch):
    monkeypatch.setattr(agent_module, "preflight", lambda config, session: None)
    a, deleted, served = quiet_agent()
    messages = iter(
        [
            sqs_message(RunEndedMessage("yesterday", "max_rounds", 5).to_dict(), sent_s_ago=86_400, message_id="old"),
            round_message("today", 1, issued_s_ago=1),
        ]
    )
    a.poll_once = lambda: a.handle(next(messages))
    assert a.run(once=True) == 0  # it served today's round instead of exiting on yesterday's end
    assert served == [1] and deleted == ["old", "today-1"]
