"""Reading the user's JSON config files (client config, run file) with errors that name the file and field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedstep.core.errors import FedstepError


def load_json_object(path: str | Path, what: str, known: set[str]) -> dict[str, Any]:
    """The JSON object in `path`; FedstepError if it is missing, unreadable, not an object, or has a
    field outside `known` (a typo must not be silently ignored). `what` names the file in errors."""
    p = Path(path)
    try:
        values = json.loads(p.read_text())
    except FileNotFoundError:
        raise FedstepError(f"{what} {p} does not exist") from None
    except OSError as exc:
        raise FedstepError(f"cannot read {what} {p}: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FedstepError(f"{what} {p} is not valid JSON: {exc}") from None
    if not isinstance(values, dict):
        raise FedstepError(f"{what} {p} must hold a JSON object")
    unknown = sorted(set(values) - known)
    if unknown:
        raise FedstepError(f"{what} {p}: unknown field(s) {unknown}; known: {sorted(known)}")
    return values
