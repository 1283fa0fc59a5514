"""Errors that name a user's mistake or a rejected input; the CLIs print them without a traceback."""


class FedstepError(Exception):
    """A problem the user can fix: the message says what is wrong and what to do."""


class InvalidUpdate(FedstepError):
    """A client's update, message or model file failed validation; `reason` is recorded in the round summary."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RunStopped(FedstepError):
    """The run was stopped (`fedstep stop`, its stop marker exists): none of its rounds may be published,
    aggregated or committed any more."""
