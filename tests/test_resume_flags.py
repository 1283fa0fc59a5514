"""`fedstep start --resume RUN_ID` keeps the run's settings: --rounds is applied (the total the
continuation runs up to), any other run setting is refused by name (fedstep issue 13)."""

from __future__ import annotations

import json

import pytest

from fedstep import cli


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--epochs", "3"], "--epochs"),
        (["--learning-rate", "0.01"], "--learning-rate"),
        (["--target", "test_accuracy>=0.9"], "--target"),
        (["--round-timeout", "60"], "--round-timeout"),
        (["--strategy-param", "eta=0.1"], "--strategy-param"),
        (["--seed", "3"], "--seed"),
        (["--dp", "central", "--dp-noise-multiplier", "1"], "--dp, --dp-noise-multiplier"),
    ],
)
def test_resume_with_another_run_setting_is_refused_by_name(flags, named, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_stack", lambda args: pytest.fail("refused before any AWS call"))
    code = cli.main(["start", "--resume", "run-1", "--rounds", "8", *flags])
    err = capsys.readouterr().err
    assert code == 2
    assert f"--resume continues run run-1 with its own settings; {named} cannot be changed" in err


def test_resume_with_a_run_file_of_settings_is_refused_by_name(tmp_path, monkeypatch, capsys):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"rounds": 8, "epochs": 2}))
    monkeypatch.setattr(cli, "_stack", lambda args: pytest.fail("refused before any AWS call"))
    assert cli.main(["start", "--resume", "run-1", "--run-file", str(path)]) == 2
    assert "epochs (run file) cannot be changed" in capsys.readouterr().err


def test_resume_with_a_run_id_is_refused(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_stack", lambda args: pytest.fail("refused before any AWS call"))
    assert cli.main(["start", "--resume", "run-1", "--run-id", "mine"]) == 2
    assert "drop --run-id" in capsys.readouterr().err


def test_resume_passes_rounds_to_the_continuation(monkeypatch, capsys):
    seen = {}

    class Stack:
        outputs = None

        def __init__(self, args):
            pass

        def client(self, service):
            return service

    def resume_run(run_id, outputs, *, s3, dynamodb, stepfunctions, rounds=None):
        seen.update(run_id=run_id, rounds=rounds)
        from fedstep.operator.start import StartedRun

        return StartedRun(f"{run_id}-r1", "arn:x", ["client-1"])

    monkeypatch.setattr(cli, "_stack", Stack)
    monkeypatch.setattr("fedstep.operator.start.start_warnings", lambda *args: ([], []))  # no heartbeats here
    monkeypatch.setattr("fedstep.operator.start.resume_run", resume_run)
    assert cli.main(["start", "--resume", "run-1", "--rounds", "8"]) == 0
    assert seen == {"run_id": "run-1", "rounds": 8}
    assert "resumed run run-1 as run run-1-r1" in capsys.readouterr().out
    assert cli.main(["start", "--resume", "run-1"]) == 0
    assert seen == {"run_id": "run-1", "rounds": None}  # the run's own
