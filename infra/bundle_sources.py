"""What the aggregation Lambda's bundle is made of, without importing CDK (the local cloud hashes it
to decide whether a synthesized template can be reused; `infra.bundling` builds the bundle from it)."""

from __future__ import annotations

import hashlib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REQUIREMENTS = REPO / "requirements-lambda.txt"
BUNDLE = ("fedstep/__init__.py", "fedstep/core", "fedstep/aws", "fedstep/privacy", "lambdas")
"""Exactly what goes into the bundle, besides the wheels: the package root, the core, the AWS adapters,
the privacy accountant and the handlers (DESIGN "Top-level layout")."""
PRUNED_TESTS = ("numpy", "scipy")
"""Wheels whose bundled test suites are left out: Lambda's unzipped code must stay under 250 MB
(`--no-compile` leaves out the .pyc files compiled for this interpreter, not Lambda's)."""


def bundled_sources() -> list[Path]:
    """The files copied into the bundle (`BUNDLE`), relative to the repo, sorted."""
    files: list[Path] = []
    for entry in BUNDLE:
        path = REPO / entry
        found = [path] if path.is_file() else path.rglob("*.py")
        files += [p for p in found if "__pycache__" not in p.parts]
    return sorted(p.relative_to(REPO) for p in files)


def source_hash() -> str:
    """sha256 of the requirements and every bundled source (its path and bytes)."""
    digest = hashlib.sha256(REQUIREMENTS.read_bytes())
    for rel in bundled_sources():
        digest.update(str(rel).encode() + b"\0" + (REPO / rel).read_bytes())
    return digest.hexdigest()
