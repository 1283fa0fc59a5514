"""The agent's logging: readable text (with progress bars on a terminal) or JSON lines for log shippers.

`--log-format json` writes one JSON object per line to stderr (Powertools' formatter: level,
message, timestamp, service "fedstep-client", plus the record's extra fields, e.g. the round
summary's `round`, `examples`, `bytes_down`). Text is the default; on a terminal it goes through
rich, which keeps the progress bars below the log lines.
"""

from __future__ import annotations

import logging
import sys

from client_agent.progress import Progress

FORMATS = ("text", "json")
_QUIET = ("botocore", "boto3", "urllib3", "absl", "s3transfer")


def configure(log_format: str = "text", verbose: bool = False, progress: bool = True) -> Progress:
    """Set up the root logger; returns the progress bars to use (enabled only for text on a terminal)."""
    level = logging.DEBUG if verbose else logging.INFO
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    interactive = progress and log_format == "text" and sys.stderr.isatty()
    if log_format == "json":
        from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter

        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(LambdaPowertoolsFormatter(service="fedstep-client"))
        console = None
    elif interactive:
        from rich.console import Console
        from rich.logging import RichHandler

        console = Console(stderr=True)
        handler = RichHandler(console=console, show_path=False, log_time_format="%H:%M:%S")
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        console = None
    root.addHandler(handler)
    root.setLevel(level)
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
    return Progress(enabled=interactive, console=console)
