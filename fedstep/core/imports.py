"""Resolving user-supplied `module:function` references (model builders, data loaders, trainers).

The working directory is importable, as with `python -m`: `--trainer my_site:train` finds `./my_site.py`.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

from fedstep.core.errors import FedstepError


def load_callable(ref: str, what: str) -> Callable[..., Any]:
    """Import `module:function`; FedstepError naming `what` and the problem otherwise."""
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise FedstepError(f"{what} {ref!r} must have the form module:function, e.g. mypkg.data:load")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: modules in the working directory are found
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise FedstepError(f"{what} {ref!r}: cannot import module {module_name!r} ({exc})") from None
    except Exception as exc:  # the user's module failed while importing (SyntaxError, NameError, ...)
        raise FedstepError(f"{what} {ref!r}: importing {module_name!r} failed: {type(exc).__name__}: {exc}") from None
    target: Any = module
    for part in attr.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise FedstepError(f"{what} {ref!r}: module {module_name!r} has no {attr!r}")
    if not callable(target):
        raise FedstepError(f"{what} {ref!r} is not callable")
    return target
