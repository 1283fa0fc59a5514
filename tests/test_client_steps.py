"""Client steps (`client_agent.steps`): the round's instructions choose an ordered list of small
functions - delta, clip, privacy accounting, encode - each of which works alone on an update and a
round context. The agent runs them (tests/test_client_privacy.py covers them inside the agent)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from client_agent import steps
from client_agent.privacy_ledger import PrivacyLedger, Spend
from fedstep.core import tensors
from fedstep.core.clock import utc_now
from fedstep.core.schemas import ObjectRef, RoundMessage, TrainingConfig
from fedstep.core.updates import encode_update

GLOBAL = {"000/d/kernel": np.full((2, 2), 0.5, np.float32), "001/d/bias": np.zeros(2, np.float32)}
TRAINED = {"000/d/kernel": np.full((2, 2), 3.5, np.float32), "001/d/bias": np.full(2, 4.0, np.float32)}
SPEND = Spend(round=1, steps=10, rate=0.1, noise_multiplier=1.1, delta=1e-5)


def context(privacy: steps.RoundPrivacy | None = None, **kwargs) -> steps.RoundContext:
    msg = RoundMessage(
        run_id="run-1",
        round=1,
        attempt=0,
        global_model=ObjectRef("global", "0" * 64, 100),
        issued_at=utc_now(),
        model=ObjectRef("model.keras", "0" * 64, 10),
        training=TrainingConfig(),
    )
    return steps.RoundContext(msg, "c1", privacy or steps.RoundPrivacy(), GLOBAL, 100, {"train_loss": 0.5}, **kwargs)


def norm(update: tensors.Tensors) -> float:
    return math.sqrt(sum(float(np.sum(t.astype(np.float64) ** 2)) for t in update.values()))


def test_the_rounds_instructions_choose_the_steps_in_order():
    assert steps.steps_for(steps.RoundPrivacy()) == [steps.delta, steps.encode]
    assert steps.steps_for(steps.RoundPrivacy("client-clip", 1.0)) == [steps.delta, steps.clip, steps.encode]
    assert steps.steps_for(steps.RoundPrivacy("dp-sgd", None, SPEND)) == [steps.delta, steps.account, steps.encode]
    unaccounted = steps.RoundPrivacy("dp-sgd")  # the trainer does not say its examples, no budget: not accounted
    assert steps.steps_for(unaccounted) == [steps.delta, steps.encode]


def test_the_delta_step_sends_the_trained_weights_minus_the_global_ones_in_float32():
    trained = dict(TRAINED, **{"001/d/bias": np.full(2, 4.0, np.float64)})  # a trainer's float64 comes back float32
    update = steps.delta(trained, context())
    assert update["000/d/kernel"].tolist() == [[3.0, 3.0], [3.0, 3.0]] and update["001/d/bias"].tolist() == [4.0, 4.0]
    assert all(t.dtype == np.float32 for t in update.values())


def test_the_clip_step_scales_the_update_to_the_clip_norm_and_reports_within_clip():
    ctx = context(steps.RoundPrivacy("client-clip", 1.0))
    update = steps.clip(steps.delta(TRAINED, ctx), ctx)
    assert norm(update) == pytest.approx(1.0, rel=1e-6) and ctx.privacy == {"within_clip": 0.0}
    assert update["001/d/bias"][0] == pytest.approx(4.0 / math.sqrt(4 * 9 + 2 * 16), rel=1e-6)  # scaled, not cut

    roomy = context(steps.RoundPrivacy("client-clip", 100.0))
    assert norm(steps.clip(steps.delta(TRAINED, roomy), roomy)) == pytest.approx(math.sqrt(68))
    assert roomy.privacy == {"within_clip": 1.0}


def test_the_account_step_records_the_round_in_the_ledger_and_reports_the_runs_epsilon(tmp_path):
    told = []
    ledger = PrivacyLedger.for_client(tmp_path, "c1")
    ctx = context(steps.RoundPrivacy("dp-sgd", None, SPEND), ledger=ledger, on_privacy=lambda *a: told.append(a))
    update = steps.delta(TRAINED, ctx)
    assert steps.account(update, ctx) is update  # the noise came with DP-SGD training: the update is unchanged
    [recorded] = ledger.spends("run-1")
    assert (recorded.steps, recorded.rate, recorded.recorded_at is not None) == (10, 0.1, True)
    assert ctx.privacy == ledger.privacy("run-1").report() and ctx.privacy["delta"] == 1e-5
    assert ctx.privacy["epsilon"] > 0 and told == [("run-1", ctx.privacy)]

    with pytest.raises(ValueError, match="needs the client's privacy ledger"):
        steps.account(update, context(steps.RoundPrivacy("dp-sgd", None, SPEND)))


def test_the_encode_step_writes_the_file_and_item_with_the_reported_figures():
    ctx = context(steps.RoundPrivacy("client-clip", 1.0))
    data, item = steps.run_steps(steps.steps_for(ctx.round_privacy), TRAINED, ctx)
    expected = encode_update(
        tensors.decode(data),
        run_id="run-1",
        round_number=1,
        client_id="c1",
        num_examples=100,
        metrics={"train_loss": 0.5},
        created_at=item.created_at,
        privacy={"within_clip": 0.0},
    )
    assert (data, item) == expected
    assert tensors.read_metadata(data)["privacy"] == {"within_clip": 0.0}


def test_a_step_list_that_never_encodes_is_an_error():
    with pytest.raises(ValueError, match="last step must be `encode`"):
        steps.run_steps([steps.delta], TRAINED, context())
