"""What serving one message did (`client_agent.agent.Agent.handle`)."""

from __future__ import annotations

from enum import Enum


class Outcome(Enum):
    SERVED = "served"  # update written, message deleted
    ALREADY_SERVED = "already_served"  # the item existed (a redelivered message), message deleted
    RUN_ENDED = "run_ended"
    STALE = "stale"  # a leftover: a round past its deadline or of a run that ended; deleted, not served
    REJECTED = "rejected"  # malformed message, released towards the dead-letter queue
    KEPT = "kept"  # failed; the message is released at once (not deleted) for another try
    DECLINED = "declined"  # refused to train (privacy); decline item written, message deleted
    EVALUATED = "evaluated"  # an evaluation or statistics request answered (or why not); message deleted
    ADVANCED = "advanced"  # a secure round's phase served (or served before); the round goes on
    REFUSED = "refused"  # a secure round this client takes no further part in (said why); message deleted
