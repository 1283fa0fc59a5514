"""A strategy's parameters: typed fields of a frozen dataclass, set by name from a run file
(`"strategy": {"name": "fedadam", "params": {"eta": 0.01}}`) or the command line
(`--strategy-param eta=0.01`). Unknown names and ill-typed values are refused with a message that
names them."""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from typing import Any

from fedstep.core import limits

TYPE_NAMES = {float: "number", int: "integer", bool: "true/false", str: "text"}


@dataclasses.dataclass(frozen=True)
class ParamInfo:
    """One parameter as `fedstep strategies` lists it."""

    name: str
    kind: str
    default: Any
    help: str


def describe(params_class: type) -> list[ParamInfo]:
    """The parameters of a strategy's `Params` class, in declaration order."""
    hints = typing.get_type_hints(params_class)
    return [
        ParamInfo(f.name, TYPE_NAMES[hints[f.name]], f.default, str(f.metadata.get("help", "")))
        for f in dataclasses.fields(params_class)
    ]


def _convert(value: Any, kind: type, strategy: str, name: str) -> Any:
    """`value` as `kind` (from JSON or command-line text); ValueError naming the parameter."""
    wrong = ValueError(f"parameter {name!r} of strategy {strategy!r} must be a {TYPE_NAMES[kind]}, got {value!r}")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise wrong
    if kind is str:
        if isinstance(value, str) and len(value) <= limits.MAX_PARAM_TEXT_CHARS:
            return value
        raise wrong
    if isinstance(value, bool):
        raise wrong
    try:
        converted = kind(value) if isinstance(value, str | int) or kind is float else None
    except (TypeError, ValueError):
        raise wrong from None
    if converted is None or (kind is int and isinstance(value, float)):
        raise wrong
    if kind is float and not (isinstance(value, int | float | str) and math.isfinite(converted)):
        raise wrong
    return converted


def parse(params_class: type, raw: dict[str, Any], strategy: str) -> Any:
    """An instance of `params_class` from `raw` (names to JSON values or text); defaults for the
    names not given. ValueError naming the unknown or ill-typed parameters."""
    known = {info.name: info for info in describe(params_class)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        takes = ", ".join(known) or "no parameters"
        raise ValueError(f"unknown parameter(s) {unknown} for strategy {strategy!r}; it takes: {takes}")
    hints = typing.get_type_hints(params_class)
    return params_class(**{name: _convert(value, hints[name], strategy, name) for name, value in raw.items()})


def parse_assignments(texts: list[str], what: str = "strategy parameter", example: str = "eta=0.01") -> dict[str, str]:
    """`["eta=0.01", "beta_1=0.9"]` as {"eta": "0.01", "beta_1": "0.9"}; ValueError for a text
    without `=` or a name given twice (`what` and `example` name the flag's kind in the message)."""
    out: dict[str, str] = {}
    for text in texts:
        name, sep, value = text.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"a {what} must look like NAME=VALUE (e.g. {example}); got {text!r}")
        if name in out:
            raise ValueError(f"{what} {name!r} is given twice")
        out[name] = value.strip()
    return out


def scalar_of(text: str) -> bool | int | float | str:
    """A `--train-param` value: a JSON number or boolean as such (`0.5`, `3`, `true`), else the text."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, bool | int | float) else text


def to_json(params: Any) -> dict[str, Any]:
    """The parameters as a JSON object (all of them, defaults included)."""
    return dataclasses.asdict(params)
