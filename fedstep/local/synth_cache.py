"""Reusing the synthesized stack when nothing it is made from has changed.

Synthesizing starts CDK's Node.js runtime and builds the whole app: several seconds of every
`fedstep local` run. The template depends only on the deployment config, the CDK app's sources
(`infra/`, `cdk.json`), the Lambda bundle's sources and requirements (`infra.bundle_sources`), and
the installed versions of the CDK libraries. `synth_key` hashes exactly those; a synthesized
assembly records the key it was made with (`<stack>.synth-key`), and the next run with the same key
deploys it again without synthesizing. Any change to one of them (an edited handler, another
number of clients) synthesizes afresh. `make clean` (or deleting `.cache/`) drops the cache.

Each key has a directory of its own under the cache (`slot`: `.cache/cdk.out/<key[:16]>`), so local
clouds of different configs (`fedstep local --clients 3` and `--clients 5`, the test suite's workers)
do not overwrite each other's assembly and synthesize again and again. A new slot starts with hard
links to the Lambda bundles other slots built (same sources, same asset hash: CDK does not bundle
them again); `prune` keeps the `SLOTS` most recently used.

A synth runs in a Python process of its own, in its own session (`run_synth`): CDK's Node.js runtime
(jsii's kernel) is its child, outside the terminal's foreground process group, so a Ctrl-C at the
terminal never reaches it, and this process never imports CDK. (In-process, a Ctrl-C that stopped
`fedstep local --keep-running` also killed the Node.js runtime, and jsii's exit handler then printed
`Exception ignored in atexit callback ... BrokenPipeError`.)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

from fedstep.core.errors import FedstepError
from infra.bundle_sources import REPO, source_hash

CDK_PACKAGES = ("aws-cdk-lib", "constructs", "cdk-nag", "jsii")
"""Installed packages whose versions change the synthesized template."""


def synth_key(config: Any) -> str:
    """sha256 of everything the synthesized assembly of `config` (a DeploymentConfig) is made from."""
    digest = hashlib.sha256(json.dumps(asdict(config), sort_keys=True, default=str).encode())
    for path in sorted([*(REPO / "infra").glob("*.py"), REPO / "cdk.json"]):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    digest.update(source_hash().encode())
    for package in CDK_PACKAGES:
        digest.update(f"{package}=={metadata.version(package)}".encode())
    return digest.hexdigest()


def cached_assembly(outdir: Path, stack: str, key: str) -> Path | None:
    """`outdir` if it holds a complete assembly of `stack` synthesized with `key`, else None."""
    marker = outdir / f"{stack}.synth-key"
    try:
        if marker.read_text() != key:
            return None
        assets = json.loads((outdir / f"{stack}.assets.json").read_text())
    except (OSError, ValueError):
        return None
    if not (outdir / f"{stack}.template.json").is_file():
        return None
    sources = [outdir / a["source"]["path"] for a in assets.get("files", {}).values()]
    return outdir if all(s.exists() for s in sources) else None


class SynthFailed(FedstepError):
    """Synthesizing the stack failed; the message ends with the synth's own last lines of output."""


def run_synth(config: Any, outdir: Path) -> Path:
    """Synthesize `config` (a DeploymentConfig) into `outdir` in a child process in its own session
    (`python -m infra.synth`); the assembly's directory. Its warnings are passed on to stderr. A Ctrl-C
    (KeyboardInterrupt) while it runs stops the child and its Node.js runtime, then goes on."""
    pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    child = subprocess.Popen(
        [sys.executable, "-m", "infra.synth"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={"JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20", **os.environ, "PYTHONPATH": pythonpath},
        start_new_session=True,  # not in the terminal's foreground process group: Ctrl-C does not reach it
    )
    try:
        out, err = child.communicate(json.dumps({"config": asdict(config), "outdir": str(outdir)}))
    except BaseException:
        os.killpg(child.pid, signal.SIGKILL)  # the child leads its own process group: it and Node.js
        child.wait()
        raise
    lines = out.strip().splitlines()
    if child.returncode != 0 or not lines:
        tail = "\n".join(err.strip().splitlines()[-20:])
        raise SynthFailed(f"synthesizing the stack failed (exit status {child.returncode}):\n{tail}")
    if err:
        sys.stderr.write(err)
    return Path(lines[-1])


def synthesize(config: Any, outdir: Path) -> tuple[Path, bool]:
    """The assembly of `config` in `outdir`, and whether it was reused rather than synthesized."""
    key = synth_key(config)
    stack = config.stack_name
    marker = outdir / f"{stack}.synth-key"
    if (cached := cached_assembly(outdir, stack, key)) is not None:
        os.utime(marker)  # recently used: `prune` keeps it
        return cached, True
    marker.unlink(missing_ok=True)  # a synth that fails half-way leaves no valid marker
    assembly = run_synth(config, outdir)
    (assembly / f"{stack}.synth-key").write_text(key)
    return assembly, False


SLOTS = 8
"""Assemblies the cache keeps (one per config and code), the most recently used."""


def slot(root: Path, config: Any) -> Path:
    """The directory under `root` of `config`'s assembly: its key's first 16 hex digits."""
    return root / synth_key(config)[:16]


def seed_bundles(directory: Path, root: Path) -> int:
    """Hard links in the slot `directory` to the bundles of the finished assemblies beside it under
    `root`, each made under a temporary name and renamed (a bundle is there whole or not at all), so
    CDK finds its asset built and does not bundle again; the bundles linked. Call it holding the slot's
    lock (`fedstep.local.cloud.assembly_lock`)."""
    linked = 0
    if any(directory.glob("*.synth-key")):
        return 0  # synthesized here before: its bundles are its own
    for other in _complete_slots(root, exclude=directory):
        for archive in other.glob("*.zip"):  # the bundle zipped for publishing (deterministic: the same bytes)
            with contextlib.suppress(OSError):
                os.link(archive, directory / archive.name)
        for bundle in other.glob("asset.*"):
            target = directory / bundle.name
            if not bundle.is_dir() or target.exists():
                continue
            partial = directory / f"partial.{bundle.name}"
            shutil.rmtree(partial, ignore_errors=True)
            try:
                shutil.copytree(bundle, partial, copy_function=os.link)
                partial.rename(target)
                linked += 1
            except OSError:  # pruned meanwhile, or another file system: CDK bundles it itself
                shutil.rmtree(partial, ignore_errors=True)
    return linked


def _complete_slots(root: Path, exclude: Path | None = None) -> list[Path]:
    """The slots under `root` holding a finished synth (a key marker), most recently used first."""
    marked = [(m.stat().st_mtime, m.parent) for m in root.glob("*/*.synth-key") if m.parent != exclude]
    return [path for _, path in sorted(marked, reverse=True)]


def prune(root: Path, keep: int = SLOTS) -> list[Path]:
    """Delete the slots beyond the `keep` most recently used, each only if no process holds its lock
    (`fedstep.local.cloud.assembly_lock`); the slots deleted."""
    deleted = []
    for stale in _complete_slots(root)[keep:]:
        try:
            with open(stale / "assembly.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(stale)
                deleted.append(stale)
        except OSError:  # in use by another local cloud, or gone already
            continue
    return deleted
