"""The agent's logging: readable text (with progress bars on a terminal) or JSON lines for log shippers.

`--log-format json` writes one JSON object per line to stderr (Powertools' formatter: level,
message, timestamp, service "fedstep-client", plus the record's extra fields, e.g. the round
summary's `round`, `examples`, `bytes_down`). Text is the default; on a terminal it goes through
rich, which keeps the progress bars below the log lines.
"""

from __future__ import annotations

import logging
import re
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


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_GRAPH_NOISE = re.compile(r"^(Graph execution error:|Detected at node|File \"|Exception encountered when calling)")
_NODE_TRAILER = re.compile(r"\s*\[\[\{\{node .*$|\s*\[Op:[^\]]*\]\s*$", re.DOTALL)
MAX_ERROR_CHARS = 400
"""The longest one-line error `clean_error` returns (characters); longer ones are cut with "...". """


def clean_error(exc: BaseException, limit: int = MAX_ERROR_CHARS) -> str:
    """One readable line for an exception from Keras or TensorFlow (or anything else): "Type: message".

    ANSI colour codes are stripped; of Keras' "Exception encountered when calling X.call()" only the
    message is kept (not the arguments received); of TensorFlow's graph errors (InvalidArgumentError
    and friends, whose text is "Graph execution error: Detected at node ... File ..." followed by the
    cause) only the cause, without the node and op trailer; an exception with no text gives its
    type's name and its `message` attribute if it has one. Whitespace runs become one space; at most
    `limit` characters.
    """
    text = str(exc) or str(getattr(exc, "message", "") or "")
    text = _ANSI.sub("", text)
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    kept = [p for p in paragraphs if not _GRAPH_NOISE.match(p) and not p.startswith("Arguments received by")]
    if kept:
        text = kept[0] if len(kept) < len(paragraphs) else " ".join(kept)
    text = _NODE_TRAILER.sub("", text)
    text = " ".join(text.split())
    name = type(exc).__name__
    line = f"{name}: {text}" if text else name
    return line if len(line) <= limit else line[: limit - 3].rstrip() + "..."
