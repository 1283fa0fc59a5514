"""The import direction of DESIGN "Top-level layout", checked by import-linter (contracts in pyproject.toml):
core <- aws <- cli/local/report; the core is numpy + safetensors only; the client agent holds no server logic;
the in-memory adapters (fedstep.memory) import the core only."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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


@pytest.mark.parametrize(
    "planted", ["import boto3", "import cryptography", "from Crypto.Protocol import SecretSharing"]
)
def test_a_core_module_importing_boto3_or_cryptography_breaks_a_contract(tmp_path: Path, planted: str) -> None:
    root = copy_tree(tmp_path)
    with (root / "fedstep" / "core" / "keys.py").open("a") as f:
        f.write(f"\n{planted}  # planted\n")
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


def test_the_python_api_importing_the_command_line_breaks_a_contract(tmp_path: Path) -> None:
    root = copy_tree(tmp_path)
    with (root / "fedstep" / "api.py").open("a") as f:
        f.write("\nfrom fedstep.cli import main  # planted\n")
    code, report = lint_imports(root)
    assert code != 0
    assert "the CLI | the Python API BROKEN" in report


def import_graph(root: Path) -> dict[str, set[str]]:
    """Every module of the packages and the modules of the packages it imports, with the imports inside
    functions (lazy imports) too: a cycle through a lazy import still ties the modules together."""
    modules = {}
    for package in PACKAGES:
        for path in (root / package).rglob("*.py"):
            name = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
            modules[name] = path

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [known(a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                targets = [
                    known(f"{base}.{a.name}") if f"{base}.{a.name}" in modules else known(base) for a in node.names
                ]
            else:
                continue
            graph[module] |= {t for t in targets if t and t != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_module_imports_itself_through_others_lazy_imports_included() -> None:
    assert cycles(import_graph(REPO)) == []


def test_a_planted_lazy_import_cycle_is_found(tmp_path: Path) -> None:
    root = copy_tree(tmp_path)
    with (root / "fedstep" / "core" / "clock.py").open("a") as f:
        f.write("\n\ndef planted():\n    from fedstep.core import schemas  # planted: schemas imports clock\n")
    found = cycles(import_graph(root))
    assert any({"fedstep.core.clock", "fedstep.core.schemas"} <= set(component) for component in found), found


def test_the_core_never_imports_the_fedstep_package_root() -> None:
    """The root holds the Python API's lazy names; the core reads versions from `fedstep.core.version`."""
    offenders = []
    for path in (REPO / "fedstep" / "core").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.ImportFrom) and node.module == "fedstep" and not node.level) or (
                isinstance(node, ast.Import) and any(a.name == "fedstep" for a in node.names)
            ):
                offenders.append(str(path.relative_to(REPO)))
    assert offenders == []


def test_the_in_memory_adapters_importing_an_aws_adapter_break_a_contract(tmp_path: Path) -> None:
    root = copy_tree(tmp_path)
    with (root / "fedstep" / "memory" / "table.py").open("a") as f:
        f.write("\nfrom fedstep.aws import adapters  # planted\n")
    code, report = lint_imports(root)
    assert code != 0
    assert "the in-memory adapters import the core only BROKEN" in report


def underscore_imports(root: Path) -> list[str]:
    """`from <our module> import _name` anywhere in the packages, the tests and the benches: a module's
    underscore names are its own."""
    ours = {*PACKAGES, "tests", "bench"}
    found = []
    for folder in ours:
        for path in (root / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ours:
                    private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                    found += [f"{path.relative_to(root)}:{node.lineno} {node.module}.{name}" for name in private]
    return found


def test_no_module_imports_another_modules_underscore_names() -> None:
    assert underscore_imports(REPO) == []
