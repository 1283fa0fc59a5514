"""Choosing a strategy: by name plus typed parameters, from flags or a run file; unknown or ill-typed
parameters are refused with a message that names them; `fedstep strategies` lists them all."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedstep.core import strategies
from fedstep.core.errors import FedstepError
from fedstep.core.strategies.params import describe, parse_assignments
from fedstep.operator.settings import RunSettings, load_run_file, merge_settings
from fedstep.render.strategies import render_strategies

REPO = Path(__file__).resolve().parent.parent


def fedstep_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedstep", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_a_run_file_names_a_strategy_and_its_parameters(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"strategy": {"name": "fedavg", "params": {}}, "rounds": 3}))
    settings = merge_settings(RunSettings(), load_run_file(str(path)))
    assert (settings.strategy, settings.rounds) == ("fedavg", 3) and not settings.strategy_params


def test_a_malformed_strategy_object_in_a_run_file_is_refused(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"strategy": {"name": "fedavg", "parms": {}}}))
    with pytest.raises(FedstepError, match="strategy must be a name or an object of name"):
        load_run_file(str(path))


def test_flags_override_the_run_files_parameters_one_by_one():
    run_file = {"strategy": "fedprox", "strategy_params": {"mu": 0.1}}
    flags = {"strategy_params": parse_assignments(["mu=0.5"])}
    settings = merge_settings(RunSettings(), run_file, flags)
    assert settings.strategy_instance().params.mu == 0.5


def test_train_params_come_from_flags_over_the_run_file_one_by_one_as_numbers_booleans_or_text():
    from fedstep.cli import build_parser, run_flags

    args = build_parser().parse_args(
        [
            "start",
            "--model",
            "m:f",
            "--train-param",
            "dropout=0.3",
            "--train-param",
            "augment=true",
            "--train-param",
            "backbone=resnet18",
        ]
    )
    run_file = {"train_params": {"dropout": 0.1, "warmup": 2}}
    settings = merge_settings(RunSettings(), run_file, run_flags(args))
    assert settings.training().params == {"dropout": 0.3, "warmup": 2, "augment": True, "backbone": "resnet18"}
    with pytest.raises(FedstepError, match="a training parameter must look like NAME=VALUE"):
        run_flags(build_parser().parse_args(["start", "--model", "m:f", "--train-param", "dropout"]))
    with pytest.raises(FedstepError, match="training param note: a text of at most 256 characters"):
        merge_settings(RunSettings(), {"train_params": {"note": "x" * 300}})


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"etta": "0.1"}, r"unknown parameter\(s\) \['etta'\] for strategy 'fedprox'; it takes: mu"),
        ({"mu": "abc"}, r"parameter 'mu' of strategy 'fedprox' must be a number, got 'abc'"),
        ({"mu": True}, r"parameter 'mu' of strategy 'fedprox' must be a number"),
    ],
)
def test_unknown_or_ill_typed_parameters_are_refused_by_name(params, message):
    with pytest.raises(FedstepError, match=message):
        merge_settings(RunSettings(), {"strategy": "fedprox", "strategy_params": params})


def test_an_unknown_strategy_is_refused_with_the_known_names():
    with pytest.raises(FedstepError, match=r"unknown strategy 'fedadamm'; known: .*fedadam"):
        merge_settings(RunSettings(), {"strategy": "fedadamm"})


def test_a_parameter_flag_without_a_value_is_refused_before_anything_is_deployed():
    result = fedstep_cli("start", "--model", "m:f", "--strategy", "fedprox", "--strategy-param", "mu")
    assert result.returncode == 2
    assert "must look like NAME=VALUE" in result.stderr and "Traceback" not in result.stderr
    result = fedstep_cli("start", "--model", "m:f", "--strategy", "fedprox", "--strategy-param", "muu=1")
    assert result.returncode == 2 and "unknown parameter(s) ['muu']" in result.stderr


def test_every_strategy_is_listed_with_its_parameters_and_defaults():
    text = render_strategies()
    listing = json.loads(render_strategies(as_json=True))
    assert [s["name"] for s in listing] == list(strategies.STRATEGIES)
    for cls in strategies.STRATEGIES.values():
        assert f"{cls.name}  {cls.summary}" in text
        for info in describe(cls.Params):
            assert f"{info.name} ({info.kind}, default {info.default})" in text
    result = fedstep_cli("strategies")
    assert result.returncode == 0 and result.stdout.strip() == text


def test_a_run_record_keeps_every_parameter_defaults_included():
    settings = merge_settings(RunSettings(), {"strategy": "fedprox"})
    assert strategies.params.to_json(settings.strategy_instance().params) == {"mu": 0.01}
