"""Resolving user-supplied `module:function` references (model builders, data loaders, trainers)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from fedstep.errors import FedstepError


def load_callable(ref: str, what: str) -> Callable[..., Any]:
    """Import `module:function`; FedstepError naming `what` and the problem otherwise."""
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise FedstepError(f"{what} {ref!r} must have the form module:function, e.g. mypkg.data:load")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise FedstepError(f"{what} {ref!r}: cannot import module {module_name!r} ({exc})") from None
    target: Any = module
    for part in attr.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise FedstepError(f"{what} {ref!r}: module {module_name!r} has no {attr!r}")
    if not callable(target):
        raise FedstepError(f"{what} {ref!r} is not callable")
    return target
