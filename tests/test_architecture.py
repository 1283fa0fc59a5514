"""The import direction of DESIGN "Top-level layout", checked by import-linter (contracts in pyproject.toml):
core <- aws <- cli/local/report; the core is numpy + safetensors only; the client agent holds no server logic;
the in-memory adapters (fedstep.memory) import the core only."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
PACKAGES = ("fedstep", "client_agent", "lambdas", "infra")


def lint_imports(root: Path) -> tuple[int, str]:
    """lint-imports' exit code and its report, without colour codes."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    result = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )
    return result.returncode, re.sub(r"\x1b\[[0-9;]*m", "", result.stdout + result.stderr)


def test_the_import_contracts_are_kept() -> None:
    code, report = lint_imports(REPO)
    assert code == 0, report
    assert "0 broken" in report


def copy_tree(tmp_path: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_a_core_module_importing_boto3_breaks_a_contract(tmp_path: Path) -> None:
    root = copy_tree(tmp_path)
    with (root / "fedstep" / "core" / "keys.py").open("a") as f:
        f.write("\nimport boto3  # planted\n")
    code, report = lint_imports(root)
    assert code != 0
    assert "the core is numpy and safetensors only BROKEN" in report


def test_the_client_agent_importing_the_round_logic_breaks_a_contract(tmp_path: Path) -> None:
    root = copy_tree(tmp_path)
    with (root / "client_agent" / "config.py").open("a") as f:
        f.write("\nfrom fedstep.core import rounds  # planted\n")
    code, report = lint_imports(root)
    assert code != 0
    assert "never server logic BROKEN" in report


def test_the_in_memory_adapters_importing_an_aws_adapter_break_a_contract(tmp_path: Path) -> None:
    root = copy_tree(tmp_path)
    with (root / "fedstep" / "memory" / "table.py").open("a") as f:
        f.write("\nfrom fedstep.aws import adapters  # planted\n")
    code, report = lint_imports(root)
    assert code != 0
    assert "the in-memory adapters import the core only BROKEN" in report
