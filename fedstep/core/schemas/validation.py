"""The checks every wire format is parsed with: `InvalidMessage` naming the first bad field,
`SchemaMismatch` for another schema version, and the field readers (types, ranges, sizes from
`fedstep.core.limits`)."""

from __future__ import annotations

import math
from typing import Any, TypeVar

from fedstep.core import keys, limits
from fedstep.core.clock import parse_utc
from fedstep.core.errors import FedstepError
from fedstep.core.version import SCHEMA_VERSION, __version__

T = TypeVar("T")


class InvalidMessage(FedstepError):
    """A message, item or event does not match its schema."""


class SchemaMismatch(InvalidMessage):
    """A message or item of another wire schema version (`fedstep.SCHEMA_VERSION`) than this fedstep
    reads: `found` is the writer's, `supported` this reader's. Agents and the stack work together only
    at the same schema (docs/operations.md: upgrading)."""

    def __init__(self, where: str, found: int, supported: int = SCHEMA_VERSION) -> None:
        self.found, self.supported = found, supported
        super().__init__(
            f"{where}: wire schema {found}, but this fedstep ({__version__}) reads schema {supported} only: "
            f"upgrade the side on schema {min(found, supported)} (docs/operations.md, Upgrading)"
        )


def get_field(data: dict[str, Any], name: str, kind: type[T] | tuple[type, ...], where: str) -> T:
    if not isinstance(data, dict):
        raise InvalidMessage(f"{where}: expected an object, got {type(data).__name__}")
    if name not in data:
        raise InvalidMessage(f"{where}: missing field {name!r}")
    value = data[name]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        expected = getattr(kind, "__name__", str(kind))
        raise InvalidMessage(f"{where}: field {name!r} must be {expected}, got {value!r:.80}")
    return value  # type: ignore[return-value]


def positive_int(data: dict[str, Any], name: str, where: str, minimum: int = 1, maximum: int | None = None) -> int:
    value = get_field(data, name, int, where)
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
        raise InvalidMessage(f"{where}: field {name!r} must be {bound}, got {value}")
    return value


def optional_number(data: dict[str, Any], name: str, where: str) -> float | None:
    """A number that may be absent or null (inf allowed: no noise means no guarantee)."""
    return None if data.get(name) is None else get_field(data, name, float, where)


def short_str(data: dict[str, Any], name: str, where: str, max_chars: int) -> str:
    value = get_field(data, name, str, where)
    if len(value) > max_chars:
        raise InvalidMessage(f"{where}: field {name!r} is {len(value)} characters, at most {max_chars} allowed")
    return value


def timestamp(data: dict[str, Any], name: str, where: str) -> str:
    """An ISO 8601 time with its UTC offset (`2026-11-30T12:00:00.123Z`), at most
    `limits.MAX_TIMESTAMP_CHARS` long: a deadline counted from anything else would never pass."""
    value = short_str(data, name, where, limits.MAX_TIMESTAMP_CHARS)
    try:
        parse_utc(value)
    except ValueError as exc:
        raise InvalidMessage(f"{where}: field {name!r} {exc}") from None
    return value


def id_field(data: dict[str, Any], name: str, kind: str, where: str) -> str:
    try:
        return keys.check_id(kind, get_field(data, name, str, where))
    except ValueError as exc:
        raise InvalidMessage(f"{where}: {exc}") from None


def check_schema(data: dict[str, Any], where: str) -> None:
    schema = get_field(data, "schema", int, where)
    if schema != SCHEMA_VERSION:
        raise SchemaMismatch(where, schema)


def check_metrics(data: Any, where: str) -> dict[str, float]:
    """A client's metrics: at most `limits.MAX_METRICS`, each name and value within `limits`."""
    if not isinstance(data, dict):
        raise InvalidMessage(f"{where}: metrics must be an object")
    if len(data) > limits.MAX_METRICS:
        raise InvalidMessage(f"{where}: {len(data)} metrics, at most {limits.MAX_METRICS} allowed")
    out: dict[str, float] = {}
    for name, value in data.items():
        problem = limits.metric_problem(name, value)
        if problem:
            raise InvalidMessage(f"{where}: {problem}")
        out[name] = float(value)
    return out


def check_scalars(data: Any, where: str, max_entries: int) -> dict[str, bool | int | float | str]:
    """A small flat object of named scalars (a strategy's instructions or parameters): at most
    `max_entries`, names like metric names, values finite numbers, booleans or short text."""
    if not isinstance(data, dict):
        raise InvalidMessage(f"{where}: expected an object")
    if len(data) > max_entries:
        raise InvalidMessage(f"{where}: {len(data)} entries, at most {max_entries} allowed")
    for name, value in data.items():
        if not isinstance(name, str) or not limits.METRIC_NAME.match(name):
            raise InvalidMessage(f"{where}: {str(name)[:80]!r} is not a valid name")
        ok_text = isinstance(value, str) and len(value) <= limits.MAX_PARAM_TEXT_CHARS
        ok_number = isinstance(value, int | float) and math.isfinite(value)
        if not (ok_text or ok_number):
            raise InvalidMessage(f"{where}: {name!r} must be a finite number, true/false or short text")
    return dict(data)


def check_measurements(data: Any, where: str) -> dict[str, float]:
    """A strategy's measurements of a round: at most `limits.MAX_MEASUREMENTS` finite numbers."""
    values = check_scalars(data, where, limits.MAX_MEASUREMENTS)
    if any(isinstance(v, bool | str) for v in values.values()):
        raise InvalidMessage(f"{where}: measurements must be numbers")
    return {k: float(v) for k, v in values.items()}


def check_kept(kept: Any, participants: list[str], where: str) -> list[str] | None:
    """The clients a strategy kept (`RoundSummary.kept`): None, or distinct participants (at most all of
    them), in the order given; a stored record names them by their positions in `participants`."""
    if kept is None:
        return None
    if not isinstance(kept, list) or len(kept) > len(participants):
        raise InvalidMessage(f"{where}: expected a list of at most the {len(participants)} participants")
    if all(isinstance(i, int) and not isinstance(i, bool) for i in kept):
        if any(not 0 <= i < len(participants) for i in kept):
            raise InvalidMessage(f"{where}: a position outside the {len(participants)} participants")
        kept = [participants[i] for i in kept]
    outsiders = [c for c in kept if not isinstance(c, str) or c not in participants]
    if outsiders or len(set(kept)) != len(kept):
        named = f"{str(outsiders[0])[:80]!r} is not a participant" if outsiders else "a client is named twice"
        raise InvalidMessage(f"{where}: {named}")
    return list(kept)


def binary(value: Any, where: str, size: int | None = None) -> bytes:
    """A binary attribute's bytes (boto3 reads one as a `Binary`), of exactly `size` bytes when given."""
    raw = getattr(value, "value", value)
    if not isinstance(raw, bytes | bytearray):
        raise InvalidMessage(f"{where} must be binary")
    if size is not None and len(raw) != size:
        raise InvalidMessage(f"{where} is {len(raw)} bytes, not {size}")
    return bytes(raw)
