"""Errors from Keras, TensorFlow and user code, as one readable line for logs and failure items."""

from __future__ import annotations

import re

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
