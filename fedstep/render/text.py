"""Plain-text output shared by the operator commands: aligned tables, human durations, and the one
place text becomes safe to print (`clean`).

Much of what the commands show was written by clients (heartbeats, decline and rejection reasons,
evaluation answers, metric names), and a client is never trusted: a string carrying terminal control
sequences would clear the operator's screen, retitle the window or forge a line. Every table cell,
rendered line and echoed line goes through `clean`, which replaces each control character with a
visible escape."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence

from fedstep.core.clock import duration  # noqa: F401 (the commands format durations from here)


def clean(value: object) -> str:
    """`value` as text that does nothing to a terminal: every character that is not printable (C0
    controls with ESC, BEL, newline and tab; DEL; C1 controls; Unicode format characters such as
    bidirectional overrides; line and paragraph separators) becomes its visible escape, e.g. `\\x1b`,
    `\\n`, `\\u202e`; the space and every printable character are kept."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def lines(parts: Iterable[object]) -> str:
    """One printable block: each part is one line, `clean`ed (a newline inside a part is shown as
    `\\n`, so that no value can add a line of its own)."""
    return "\n".join(clean(p) for p in parts)


def html_text(value: object) -> str:
    """`value` for an HTML page: `clean`ed, then HTML-escaped."""
    return html.escape(clean(value))


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """Left-aligned columns, two spaces apart; every cell `clean`ed."""
    cells = [[clean(c) for c in header], *[[clean(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
