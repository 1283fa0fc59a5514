"""The benchmark scripts under `bench/` as modules, for the tests of their pure parts."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"


def load_bench(script: str, name: str | None = None) -> ModuleType:
    """`bench/<script>.py`, imported as module `name` (default: the script's name) and registered in
    `sys.modules` (its dataclasses look their module up)."""
    spec = importlib.util.spec_from_file_location(name or script, BENCH_DIR / f"{script}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
