"""`fedstep local` deploys the synthesized template of an earlier run when nothing it is made from
changed (`fedstep.local.synth_cache`), and synthesizes afresh when anything did."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fedstep.local import synth_cache
from infra.config import ClientConfig, DeploymentConfig

REPO = Path(__file__).resolve().parent.parent
CONFIG = DeploymentConfig(project="fedstep", clients=(ClientConfig("client-1"), ClientConfig("client-2")), trial=True)


@pytest.fixture
def synths(monkeypatch):
    """Stands in for CDK: each call writes a small assembly and is counted."""
    calls: list[Path] = []

    def run_synth(config, outdir):
        out = Path(outdir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "asset.abc").mkdir(exist_ok=True)
        (out / f"{config.stack_name}.template.json").write_text("{}")
        files = {"abc": {"source": {"path": "asset.abc", "packaging": "zip"}, "destinations": {}}}
        (out / f"{config.stack_name}.assets.json").write_text(json.dumps({"files": files}))
        calls.append(out)
        return out

    monkeypatch.setattr(synth_cache, "run_synth", run_synth)
    return calls


def test_an_unchanged_config_and_code_reuse_the_synthesized_template(tmp_path, synths):
    first, reused_first = synth_cache.synthesize(CONFIG, tmp_path)
    second, reused_second = synth_cache.synthesize(CONFIG, tmp_path)
    assert (reused_first, reused_second) == (False, True) and first == second and len(synths) == 1


def test_another_number_of_clients_synthesizes_afresh(tmp_path, synths):
    synth_cache.synthesize(CONFIG, tmp_path)
    three = DeploymentConfig(project="fedstep", clients=(*CONFIG.clients, ClientConfig("client-3")))
    assert synth_cache.synthesize(three, tmp_path)[1] is False and len(synths) == 2


def test_an_edited_lambda_source_synthesizes_afresh(tmp_path, synths, monkeypatch):
    synth_cache.synthesize(CONFIG, tmp_path)
    monkeypatch.setattr(synth_cache, "source_hash", lambda: "an edited handler")
    assert synth_cache.synthesize(CONFIG, tmp_path)[1] is False


def test_an_assembly_whose_bundle_was_deleted_is_not_reused(tmp_path, synths):
    synth_cache.synthesize(CONFIG, tmp_path)
    (tmp_path / "asset.abc").rmdir()
    assert synth_cache.synthesize(CONFIG, tmp_path)[1] is False


def test_a_synth_that_failed_half_way_is_not_reused(tmp_path, synths, monkeypatch):
    synth_cache.synthesize(CONFIG, tmp_path)

    def broken(config, outdir):
        raise synth_cache.SynthFailed("synth failed")

    monkeypatch.setattr(synth_cache, "run_synth", broken)
    (tmp_path / "fedstep.synth-key").write_text("stale")  # as if from another config
    with pytest.raises(synth_cache.SynthFailed):
        synth_cache.synthesize(CONFIG, tmp_path)
    assert not (tmp_path / "fedstep.synth-key").exists()


def _deploy_from_cache(root: Path, config: DeploymentConfig) -> tuple[Path, bool]:
    """What `LocalCloud.deploy` does with the cache: the config's slot, seeded, synthesized or reused."""
    directory = synth_cache.slot(root, config)
    directory.mkdir(parents=True, exist_ok=True)
    synth_cache.seed_bundles(directory, root)
    return synth_cache.synthesize(config, directory)


def test_clouds_of_different_configs_keep_their_own_assemblies_instead_of_overwriting_one(tmp_path, synths):
    three = DeploymentConfig(project="fedstep", clients=(*CONFIG.clients, ClientConfig("client-3")), trial=True)
    for config in (CONFIG, three, CONFIG, three, CONFIG):  # as the suite's workers take turns
        _deploy_from_cache(tmp_path, config)
    assert len(synths) == 2  # one synth per config, then reused
    assert synth_cache.slot(tmp_path, CONFIG) != synth_cache.slot(tmp_path, three)


def test_a_new_slot_starts_with_hard_links_to_the_bundles_other_slots_built(tmp_path, synths):
    _deploy_from_cache(tmp_path, CONFIG)
    three = DeploymentConfig(project="fedstep", clients=(*CONFIG.clients, ClientConfig("client-3")), trial=True)
    fresh = synth_cache.slot(tmp_path, three)
    fresh.mkdir()
    (synth_cache.slot(tmp_path, CONFIG) / "asset.abc" / "handler.py").write_text("code")
    assert synth_cache.seed_bundles(fresh, tmp_path) == 1
    linked = fresh / "asset.abc" / "handler.py"
    assert linked.stat().st_ino == (synth_cache.slot(tmp_path, CONFIG) / "asset.abc" / "handler.py").stat().st_ino
    assert not list(fresh.glob("partial.*"))
    assert synth_cache.seed_bundles(synth_cache.slot(tmp_path, CONFIG), tmp_path) == 0  # its own are its own


def test_the_cache_keeps_the_most_recently_used_slots_and_never_deletes_one_in_use(tmp_path, synths):
    import fcntl

    configs = [
        DeploymentConfig(project="fedstep", clients=tuple(ClientConfig(f"c-{i}") for i in range(n)), trial=True)
        for n in range(1, 5)
    ]
    for used_at, config in enumerate([*configs, configs[0]]):  # configs[0] reused last: the most recent
        _deploy_from_cache(tmp_path, config)
        marker = synth_cache.slot(tmp_path, config) / "fedstep.synth-key"
        os.utime(marker, (1_000_000 + used_at, 1_000_000 + used_at))  # distinct times, whatever the clock
    oldest = synth_cache.slot(tmp_path, configs[1])
    with open(oldest / "assembly.lock", "w") as held:  # another local cloud deploys from it
        fcntl.flock(held, fcntl.LOCK_EX)
        assert synth_cache.prune(tmp_path, keep=2) == [synth_cache.slot(tmp_path, configs[2])]
    assert synth_cache.prune(tmp_path, keep=2) == [oldest]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        synth_cache.slot(tmp_path, c).name for c in (configs[0], configs[3])
    )


def test_the_key_covers_the_infra_sources_and_the_cdk_versions(monkeypatch):
    key = synth_cache.synth_key(CONFIG)
    assert len(key) == 64 and key == synth_cache.synth_key(CONFIG)
    monkeypatch.setattr(synth_cache.metadata, "version", lambda package: "0.0.0")
    assert synth_cache.synth_key(CONFIG) != key


SYNTH_THEN_WAIT = """
import sys, time
from pathlib import Path
from fedstep.local import synth_cache
from tests.test_synth_cache import CONFIG
try:
    synth_cache.synthesize(CONFIG, Path(sys.argv[1]))
    print("synthesized", flush=True)
    while True:
        time.sleep(0.05)
except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    sys.exit(130)
"""


def test_ctrl_c_at_the_terminal_after_a_synth_ends_the_process_without_a_jsii_error(tmp_path):
    """What `fedstep local` does before it deploys, then a Ctrl-C: the terminal sends SIGINT to its
    foreground process group. CDK's Node.js runtime must not be in it (it died, and jsii's exit
    handler printed `Exception ignored in atexit callback ... BrokenPipeError`)."""
    shared = REPO / ".cache" / "cdk.out"  # the bundles built by earlier synths: hard links skip rebuilding them
    out = tmp_path / "cdk.out"
    out.mkdir()
    if shared.is_dir():
        synth_cache.seed_bundles(out, shared)
    proc = subprocess.Popen(
        [sys.executable, "-c", SYNTH_THEN_WAIT, str(out)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a terminal of its own: its process group gets the Ctrl-C, not pytest's
    )
    try:
        assert proc.stdout.readline() == "synthesized\n", proc.stderr.read()[-3000:]
        assert (out / "fedstep.template.json").is_file()
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err[-3000:]
    assert err.strip().splitlines()[-1] == "interrupted", err[-3000:]
    for noise in ("Exception ignored", "Traceback", "BrokenPipeError"):
        assert noise not in err, err[-3000:]
