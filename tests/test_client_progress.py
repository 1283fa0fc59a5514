"""Progress bars: shown on a terminal for transfers and local epochs, absent (no-ops) anywhere else."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
from rich.console import Console

from client_agent.logs import configure
from client_agent.progress import Progress


def terminal() -> tuple[Progress, io.StringIO]:
    out = io.StringIO()
    return Progress(enabled=True, console=Console(file=out, force_terminal=True, width=100)), out


def test_a_transfer_bar_counts_bytes():
    progress, out = terminal()
    with progress.transfer("round 1: global model", 3_000_000) as advance:
        for _ in range(3):
            advance(1_000_000)
    assert "round 1: global model" in out.getvalue() and "3.0 MB" in out.getvalue()


def test_the_epoch_bar_follows_keras_fit():
    from client_agent.models import mlp

    progress, out = terminal()
    model = mlp(4, 2, hidden=3)
    x, y = np.random.default_rng(0).random((40, 4), dtype=np.float32), np.zeros(40, np.int64)
    model.fit(x, y, epochs=2, batch_size=10, verbose=0, callbacks=progress.keras_callbacks("round 2: training"))
    text = out.getvalue()
    assert "round 2: training, epoch 2/2" in text and "8/8" in text and "loss" in text


@pytest.fixture
def root_logger():
    """`configure` replaces the root logger's handlers: give pytest's back afterwards."""
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    yield
    root.handlers[:] = saved
    root.setLevel(level)


def test_without_a_terminal_there_are_no_bars_and_logs_are_plain_or_json(capsys, root_logger):
    assert configure("text").enabled is False  # pytest's stderr is not a terminal
    with Progress(enabled=False).transfer("x", 10) as advance:
        advance(10)
    assert Progress(enabled=False).keras_callbacks("x") == []
    configure("json")
    logging.getLogger("fedstep.client").info("round done", extra={"round_summary": {"round": 1}})
    err = capsys.readouterr().err
    assert '"message":"round done"' in err and '"round_summary":{"round":1}' in err
