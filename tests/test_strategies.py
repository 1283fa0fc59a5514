"""Each strategy against a case computed by hand from its paper's update rule, its parameters'
validation, and the attacks that motivate the robust ones. (The properties every strategy shares
are in tests/test_strategy_conformance.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from fedstep.core import strategies
from fedstep.core.strategies import Aggregate, ClientUpdate, GlobalModel, ServerState, UpdateList
from fedstep.core.tensors import TensorSpec


def run(
    name: str,
    deltas: list[list[float]],
    examples: list[int] | None = None,
    params: dict | None = None,
    weights: list[float] | np.ndarray | None = None,
    state: ServerState | None = None,
    ids: list[str] | None = None,
    sliced: bool = False,
) -> Aggregate:
    """One round of `name` on a one-tensor model "w": global `weights` (zeros by default), client i
    sending deltas[i] after examples[i] examples (1 by default)."""
    arrays = [np.asarray(d, np.float32) for d in deltas]
    shape = arrays[0].shape
    ids = ids or [f"c{i}" for i in range(len(arrays))]
    examples = examples or [1] * len(arrays)
    updates = [ClientUpdate(c, n, {"w": a}) for c, n, a in zip(ids, examples, arrays, strict=True)]
    start = np.zeros(shape, np.float32) if weights is None else np.asarray(weights, np.float32)
    model = GlobalModel(TensorSpec({"w": shape}), lambda: {"w": start.copy()})
    strategy = strategies.build(name, params)
    return strategy.aggregate(1, model, state or ServerState(), UpdateList(updates, sliced=sliced, slice_elements=1))


def close(actual: np.ndarray, expected: list[float] | np.ndarray) -> None:
    np.testing.assert_allclose(actual, np.asarray(expected, np.float64), rtol=1e-6, atol=1e-7)


# Two clients with 1 and 3 examples: the example-weighted mean delta is (1*[1, 2] + 3*[5, -2]) / 4 = [4, -1].
TWO = {"deltas": [[1.0, 2.0], [5.0, -2.0]], "examples": [1, 3]}


# -- FedProx: FedAvg on the server, mu for the clients --------------------------------------------


def test_fedprox_averages_like_fedavg_and_tells_the_clients_mu():
    close(run("fedprox", **TWO, weights=[1.0, 1.0]).weights["w"], [5.0, 0.0])
    assert strategies.build("fedprox").configure_round(1, {}) == {"proximal_mu": 0.01}
    assert strategies.build("fedprox", {"mu": "0.5"}).configure_round(7, {}) == {"proximal_mu": 0.5}
    assert strategies.build("fedavg").configure_round(1, {}) == {}


# -- FedAvgM: v <- beta v + delta; x <- x + eta v ----------------------------------------------------------


def test_fedavgm_accumulates_server_momentum():
    params = {"server_learning_rate": 0.5, "server_momentum": 0.9}
    first = run("fedavgm", **TWO, params=params, weights=[1.0, 1.0])
    close(first.state.tensors["momentum/w"], [4.0, -1.0])  # v = 0.9 * 0 + [4, -1]
    close(first.weights["w"], [1 + 0.5 * 4, 1 + 0.5 * -1])  # [3, 0.5]
    second = run("fedavgm", **TWO, params=params, weights=first.weights["w"], state=first.state)
    close(second.state.tensors["momentum/w"], [0.9 * 4 + 4, 0.9 * -1 - 1])  # [7.6, -1.9]
    close(second.weights["w"], [3 + 0.5 * 7.6, 0.5 + 0.5 * -1.9])  # [6.8, -0.45]


def test_fedavgm_with_its_defaults_is_fedavg_in_the_first_round():
    close(run("fedavgm", **TWO, weights=[1.0, 1.0]).weights["w"], [5.0, 0.0])  # eta 1, v = delta


# -- FedOpt (Reddi et al. 2021, Algorithm 2), m = 0 and v = tau^2 before the first round --------------


def test_fedadam_first_and_second_steps():
    # defaults: eta 0.1, beta_1 0.9, beta_2 0.99, tau 1e-9; delta = [4, -1]
    first = run("fedadam", **TWO, weights=[1.0, 1.0])
    m1 = [0.1 * 4, 0.1 * -1]  # (1 - beta_1) delta
    v1 = [0.99 * 1e-18 + 0.01 * 16, 0.99 * 1e-18 + 0.01 * 1]  # beta_2 tau^2 + (1 - beta_2) delta^2 = [0.16, 0.01]
    close(first.state.tensors["m/w"], m1)
    close(first.state.tensors["v/w"], v1)
    assert first.state.values == {"steps": 1}
    # x <- x + eta m / (sqrt(v) + tau): 0.1 * 0.4 / 0.4 = 0.1 and 0.1 * -0.1 / 0.1 = -0.1
    close(first.weights["w"], [1 + 0.1 * 0.4 / (0.4 + 1e-9), 1 - 0.1 * 0.1 / (0.1 + 1e-9)])
    second = run("fedadam", **TWO, weights=first.weights["w"], state=first.state)
    m2 = [0.9 * 0.4 + 0.1 * 4, 0.9 * -0.1 + 0.1 * -1]  # [0.76, -0.19]
    v2 = [0.99 * 0.16 + 0.01 * 16, 0.99 * 0.01 + 0.01 * 1]  # [0.3184, 0.0199]
    close(second.state.tensors["m/w"], m2)
    close(second.state.tensors["v/w"], v2)
    assert second.state.values == {"steps": 2}
    close(second.weights["w"], [1.1 + 0.1 * 0.76 / np.sqrt(0.3184), 0.9 - 0.1 * 0.19 / np.sqrt(0.0199)])


def test_fedyogi_moves_v_towards_delta_squared_by_a_fixed_step_in_either_direction():
    # defaults: eta 0.01, beta_1 0.9, beta_2 0.99, tau 1e-3 (v starts at 1e-6); delta = [4, -1]
    first = run("fedyogi", **TWO)
    # v < delta^2 in both coordinates: v <- v - 0.01 delta^2 * sign(v - delta^2) = v + 0.01 delta^2
    close(first.state.tensors["v/w"], [1e-6 + 0.16, 1e-6 + 0.01])
    close(first.weights["w"], [0.01 * 0.4 / (np.sqrt(0.160001) + 1e-3), 0.01 * -0.1 / (np.sqrt(0.010001) + 1e-3)])
    # round 2: delta = [1, 0.05]; coordinate 0 still has v < delta^2 (grows), coordinate 1 has v > delta^2 (shrinks)
    second = run("fedyogi", [[1.0, 0.05]], weights=first.weights["w"], state=first.state)
    v2 = [0.160001 + 0.01 * 1, 0.010001 - 0.01 * 0.0025]  # [0.170001, 0.009976]; Adam would give 0.00995099
    m2 = [0.9 * 0.4 + 0.1 * 1, 0.9 * -0.1 + 0.1 * 0.05]  # [0.46, -0.085]
    close(second.state.tensors["v/w"], v2)
    close(second.state.tensors["m/w"], m2)
    step = [0.01 * m2[0] / (np.sqrt(v2[0]) + 1e-3), 0.01 * m2[1] / (np.sqrt(v2[1]) + 1e-3)]
    close(second.weights["w"], first.weights["w"] + np.array(step))


def test_fedadagrad_sums_squared_deltas():
    # defaults: eta 0.1, beta_1 0 (m = delta), tau 1e-9; delta = [4, -1]
    first = run("fedadagrad", **TWO)
    close(first.state.tensors["v/w"], [16.0, 1.0])  # tau^2 + delta^2
    close(first.weights["w"], [0.1 * 4 / 4, 0.1 * -1 / 1])  # eta delta / |delta|
    second = run("fedadagrad", [[1.0, 0.05]], weights=first.weights["w"], state=first.state)
    close(second.state.tensors["v/w"], [16 + 1, 1 + 0.0025])
    close(second.weights["w"], [0.1 + 0.1 * 1 / np.sqrt(17), -0.1 + 0.1 * 0.05 / np.sqrt(1.0025)])


def test_an_adaptive_state_of_another_model_is_refused():
    first = run("fedadam", [[1.0, 2.0, 3.0]])
    with pytest.raises(ValueError, match="shape"):
        run("fedadam", **TWO, state=first.state)


# -- Norm-bounded FedAvg -------------------------------------------------------------------------


@pytest.mark.parametrize("sliced", [False, True])
def test_normbound_clips_each_update_to_max_norm_then_takes_the_weighted_mean(sliced):
    # [3, 4] has norm 5: clipped to [0.6, 0.8]; [0.3, 0.4] has norm 0.5: unchanged
    result = run("fedavg_normbound", [[3.0, 4.0], [0.3, 0.4]], examples=[1, 3], params={"max_norm": 1.0}, sliced=sliced)
    close(result.weights["w"], [(0.6 + 3 * 0.3) / 4, (0.8 + 3 * 0.4) / 4])  # [0.375, 0.5]
    assert result.measurements["clipped"] == 1
    assert result.measurements["largest_norm"] == pytest.approx(5.0)


# -- Median and trimmed mean (Yin et al. 2018) ----------------------------------------------------


def test_median_is_coordinatewise_and_ignores_example_counts():
    deltas = [[1.0, 10.0], [2.0, -4.0], [100.0, 0.0]]
    close(run("median", deltas, examples=[1, 1, 1000]).weights["w"], [2.0, 0.0])
    # an even number: the mean of the two middle values (2, 3 and 0, 5)
    close(run("median", [*deltas, [3.0, 5.0]]).weights["w"], [2.5, 2.5])


def test_trimmed_mean_cuts_floor_beta_n_values_from_each_end_of_each_coordinate():
    deltas = [[1.0, 3.0], [2.0, -50.0], [3.0, 0.0], [4.0, 1.0], [100.0, 2.0]]
    examples = [1, 1, 1, 1, 1000]  # unweighted
    # beta 0.2, n 5: cut 1 each side -> mean of [2, 3, 4] and of [0, 1, 2]
    result = run("trimmed_mean", deltas, examples=examples, params={"beta": 0.2})
    close(result.weights["w"], [3.0, 1.0])
    assert result.measurements["trimmed_per_side"] == 1
    # beta 0.1 (default), n 5: floor(0.5) = 0 cut, the plain unweighted mean
    close(run("trimmed_mean", deltas, examples=examples).weights["w"], [110 / 5, -44 / 5])
    # beta 0.4, n 5: cut 2 each side, the median
    close(run("trimmed_mean", deltas, params={"beta": 0.4}).weights["w"], [3.0, 1.0])


# -- Krum and Multi-Krum (Blanchard et al. 2017) --------------------------------------------------

# Five updates [p, -p] for p = 0, 1, 2, 4, 100 (squared distances are twice the 1-D ones). With f = 1
# each is scored by its n - f - 2 = 2 nearest: p=0: 2*(1+4) = 10; p=1: 2*(1+1) = 4; p=2: 2*(1+4) = 10;
# p=4: 2*(4+9) = 26; p=100: 2*(96^2 + 98^2) = 37640.
POINTS = [0.0, 1.0, 2.0, 4.0, 100.0]
KRUM_DELTAS = [[p, -p] for p in POINTS]


def test_krum_selects_the_update_closest_to_its_neighbours():
    result = run("krum", KRUM_DELTAS, examples=[1, 1, 1, 1, 1000], params={"num_malicious": 1})
    close(result.weights["w"], [1.0, -1.0])
    assert result.measurements["selected"] == 1
    assert result.measurements["best_score"] == pytest.approx(4.0)


def test_multikrum_averages_the_n_minus_f_best_by_default():
    result = run("multikrum", KRUM_DELTAS, params={"num_malicious": 1})
    close(result.weights["w"], [(0 + 1 + 2 + 4) / 4, -(0 + 1 + 2 + 4) / 4])  # drops p = 100
    assert result.measurements["selected"] == 4


def test_krum_breaks_equal_scores_by_client_id_whatever_the_order():
    # m = 2: p=1 (score 4), then p=0 and p=2 tie at 10: the one with the smaller client id is kept
    params = {"num_malicious": 1, "num_selected": 2}
    ids = ["b", "zed", "amy", "d", "e"]  # p=0 is "b", p=2 is "amy"
    for order in ([0, 1, 2, 3, 4], [4, 2, 0, 3, 1], [2, 4, 3, 1, 0]):
        deltas, who = [KRUM_DELTAS[i] for i in order], [ids[i] for i in order]
        result = run("krum", deltas, params=params, ids=who)
        close(result.weights["w"], [(1 + 2) / 2, -(1 + 2) / 2])
        assert result.kept == ["amy", "zed"]  # the clients kept, by client id
    ids = ["a", "zed", "amy", "d", "e"]  # now p=0 ("a") wins the tie
    result = run("krum", KRUM_DELTAS, params=params, ids=ids)
    close(result.weights["w"], [0.5, -0.5])
    assert result.kept == ["a", "zed"]


def test_each_strategy_says_how_many_updates_it_needs():
    """What `fedstep start` compares `min_participants` with, and a short round's TooFewParticipants names."""
    needs = {name: strategies.build(name).min_updates()[0] for name in strategies.STRATEGIES}
    assert needs == {**{name: 1 for name in strategies.STRATEGIES}, "krum": 3, "multikrum": 3}
    assert strategies.build("krum", {"num_malicious": 2}).min_updates() == (
        7,
        "2 x num_malicious + 3 with num_malicious 2",
    )
    assert strategies.build("multikrum", {"num_selected": 5}).min_updates() == (5, "num_selected 5")


def test_krum_needs_more_than_2f_plus_2_updates():
    with pytest.raises(ValueError, match=r"num_malicious f = 1 needs more than 2f \+ 2 = 4 updates, got 4"):
        run("krum", KRUM_DELTAS[:4], params={"num_malicious": 1})
    with pytest.raises(ValueError, match=r"2f \+ 2 = 2 updates, got 2"):
        run("krum", KRUM_DELTAS[:2])  # f = 0 by default
    with pytest.raises(ValueError, match="num_selected"):
        run("multikrum", KRUM_DELTAS, params={"num_selected": 6})


# -- parameters -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "params", "named"),
    [
        ("fedadam", {"etaa": 0.1}, "etaa"),  # unknown
        ("fedadagrad", {"beta_2": 0.9}, "beta_2"),  # Adagrad has no beta_2
        ("fedadam", {"eta": "abc"}, "eta"),  # ill-typed
        ("krum", {"num_malicious": 1.5}, "num_malicious"),  # not an integer
        ("fedprox", {"mu": True}, "mu"),
        ("trimmed_mean", {"beta": 0.7}, "beta"),  # impossible values
        ("trimmed_mean", {"beta": 0.5}, "beta"),
        ("trimmed_mean", {"beta": -0.1}, "beta"),
        ("fedadam", {"eta": 0}, "eta"),
        ("fedadam", {"beta_1": 1.0}, "beta_1"),
        ("fedyogi", {"beta_2": 1.5}, "beta_2"),
        ("fedadagrad", {"tau": 0}, "tau"),
        ("fedavgm", {"server_momentum": 1}, "server_momentum"),
        ("fedavgm", {"server_learning_rate": -1}, "server_learning_rate"),
        ("fedprox", {"mu": -0.01}, "mu"),
        ("fedavg_normbound", {"max_norm": 0}, "max_norm"),
        ("krum", {"num_malicious": -1}, "num_malicious"),
        ("multikrum", {"num_selected": -2}, "num_selected"),
        ("fedavg", {"eta": 1}, "eta"),  # FedAvg takes none
    ],
)
def test_a_parameter_that_cannot_work_is_refused_by_name(name, params, named):
    with pytest.raises(ValueError, match=named):
        strategies.build(name, params)


def test_parameters_come_as_json_values_or_command_line_text():
    assert strategies.build("fedadam", {"eta": "0.01", "tau": 1e-3}).params.eta == 0.01
    assert strategies.build("krum", {"num_malicious": "2"}).params.num_malicious == 2
    assert strategies.build("trimmed_mean", {"beta": 0}).params.beta == 0.0


# -- attacks: one client boosts its update x100 ---------------------------------------------------


def honest_and_boosted(n_honest: int = 5) -> tuple[list[np.ndarray], np.ndarray]:
    """`n_honest` updates near a common delta, plus one that is the first honest update x100 (a
    boosted model-replacement update), with the honest mean."""
    rng = np.random.default_rng(4)
    base = rng.normal(size=10)
    honest = [base + 0.05 * rng.normal(size=10) for _ in range(n_honest)]
    return [*honest, 100 * honest[0]], np.mean(honest, axis=0)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("median", {}),
        ("trimmed_mean", {"beta": 0.2}),
        ("krum", {"num_malicious": 1}),
        ("multikrum", {"num_malicious": 1}),
    ],
)
def test_the_robust_strategies_ignore_one_update_boosted_x100(name, params):
    deltas, honest_mean = honest_and_boosted()
    boosted = run(name, deltas, params=params).weights["w"]
    averaged = run("fedavg", deltas).weights["w"]
    assert np.linalg.norm(averaged - honest_mean) > 10 * np.linalg.norm(honest_mean)  # FedAvg is taken over
    assert np.linalg.norm(boosted - honest_mean) < 0.1 * np.linalg.norm(honest_mean)
    if name == "krum":  # it keeps one of the honest updates as it is
        assert any(np.array_equal(boosted, d.astype(np.float32)) for d in deltas[:5])


def test_normbound_caps_what_a_boosted_update_can_do():
    deltas, honest_mean = honest_and_boosted()
    max_norm = 1.1 * max(np.linalg.norm(d) for d in deltas[:5])
    result = run("fedavg_normbound", deltas, params={"max_norm": float(max_norm)})
    assert result.measurements["clipped"] == 1  # the boosted one, none of the honest ones
    # the boosted update counts as one honest-sized update: the mean moves by about 1/6 of 0.1 |honest|
    assert np.linalg.norm(result.weights["w"] - honest_mean) < 0.05 * np.linalg.norm(honest_mean)
    assert np.linalg.norm(result.weights["w"]) <= max_norm
