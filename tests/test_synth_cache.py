"""`fedstep local` deploys the synthesized template of an earlier run when nothing it is made from
changed (`fedstep.local.synth_cache`), and synthesizes afresh when anything did."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from fedstep.local import synth_cache
from infra.config import ClientConfig, DeploymentConfig

CONFIG = DeploymentConfig(project="fedstep", clients=(ClientConfig("client-1"), ClientConfig("client-2")), trial=True)


@pytest.fixture
def synths(monkeypatch):
    """Stands in for CDK: each call writes a small assembly and is counted."""
    calls: list[Path] = []

    def build_app(config, outdir):
        def synth():
            out = Path(outdir)
            out.mkdir(parents=True, exist_ok=True)
            (out / "asset.abc").mkdir(exist_ok=True)
            (out / f"{config.stack_name}.template.json").write_text("{}")
            files = {"abc": {"source": {"path": "asset.abc", "packaging": "zip"}, "destinations": {}}}
            (out / f"{config.stack_name}.assets.json").write_text(json.dumps({"files": files}))
            calls.append(out)
            return SimpleNamespace(directory=str(out))

        return SimpleNamespace(synth=synth)

    monkeypatch.setattr("infra.synth.build_app", build_app)
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
        raise RuntimeError("synth failed")

    monkeypatch.setattr("infra.synth.build_app", broken)
    (tmp_path / "fedstep.synth-key").write_text("stale")  # as if from another config
    with pytest.raises(RuntimeError):
        synth_cache.synthesize(CONFIG, tmp_path)
    assert not (tmp_path / "fedstep.synth-key").exists()


def test_the_key_covers_the_infra_sources_and_the_cdk_versions(monkeypatch):
    key = synth_cache.synth_key(CONFIG)
    assert len(key) == 64 and key == synth_cache.synth_key(CONFIG)
    monkeypatch.setattr(synth_cache.metadata, "version", lambda package: "0.0.0")
    assert synth_cache.synth_key(CONFIG) != key
