"""Properties every registered strategy has, whatever its algorithm. The tests iterate `STRATEGIES`, so
a new strategy is covered as soon as it is registered; give it parameters in PARAMS if its defaults
cannot aggregate N_CLIENTS updates or would not exercise it.

The updates are real safetensors files in an in-memory bucket, read through the real
`UpdateSource` (checked, then one pass or ranged reads by slices), as a round reads them."""

from __future__ import annotations

import dataclasses
import tracemalloc
import typing
from dataclasses import dataclass, replace

import numpy as np
import pytest

from fedstep.core import keys, limits, strategies, tensors
from fedstep.core.schemas import Bounds, ObjectRef, UpdateItem, check_measurements, check_scalars
from fedstep.core.strategies import STRATEGIES, Aggregate, GlobalModel, ServerState, Strategy, aggregation
from fedstep.core.update_source import UpdateSource, read_layout, read_model
from fedstep.core.updates import encode_update
from fedstep.memory import MemoryStore

RUN = "run-conformance"
SHAPES = {"000/a/kernel": (4, 3), "001/a/bias": (3,), "002/b/kernel": (2, 5)}
"""25 parameters: slices of 7 elements end inside and at the ends of tensors."""
N_CLIENTS = 6
TINY_SLICE = 7
PARAMS: dict[str, dict[str, object]] = {
    "krum": {"num_malicious": 1},  # needs n > 2f + 2 = 4
    "multikrum": {"num_malicious": 1},
    "fedavg_normbound": {"max_norm": 0.5},  # the updates' norms span about 0.1 to 1: some clipped, some not
    "trimmed_mean": {"beta": 0.2},  # cuts 1 of each side of 6
}
EXACT = {"median", "trimmed_mean", "krum", "multikrum"}
"""Order statistics and selections: the result does not depend on the updates' order, to the bit."""
NAMES = sorted(STRATEGIES)


def build(name: str) -> Strategy:
    return strategies.build(name, PARAMS.get(name))


@dataclass
class Round:
    """A round's input model and update items in a bucket."""

    store: MemoryStore
    number: int
    model: ObjectRef
    items: list[UpdateItem]


def put_round(store: MemoryStore, number: int, weights: tensors.Tensors, deltas: list[tensors.Tensors]) -> Round:
    """The global model of round `number` and its clients' updates (files and items, as agents write them)."""
    data = tensors.encode(weights)
    key = keys.global_key(RUN, number, f"v{number}")
    store.put(key, data)
    model = ObjectRef(key, tensors.sha256_hex(data), len(data))
    items = []
    for i, delta in enumerate(deltas):
        data, item = encode_update(
            delta,
            run_id=RUN,
            round_number=number,
            client_id=f"client-{i:02d}",
            num_examples=10 + 7 * i,
            metrics={},
            created_at="2026-01-01T00:00Z",
        )
        store.put(item.update.key, data)
        items.append(item)
    return Round(store, number, model, items)


def random_weights(rng: np.random.Generator, scale: float = 1.0) -> tensors.Tensors:
    return {name: (scale * rng.normal(size=shape)).astype(np.float32) for name, shape in SHAPES.items()}


def random_deltas(rng: np.random.Generator, n: int = N_CLIENTS) -> list[tensors.Tensors]:
    """n deltas around a common direction, of norms from about 0.1 to 1."""
    common = random_weights(rng, 0.05)
    return [
        {k: (common[k] + 0.04 * (i + 1) * rng.normal(size=v.shape)).astype(np.float32) for k, v in common.items()}
        for i in range(n)
    ]


def aggregate(
    name: str,
    rnd: Round,
    state: ServerState,
    *,
    sliced: bool = False,
    slice_elements: int | None = None,
    order: list[int] | None = None,
    strategy: Strategy | None = None,
) -> Aggregate:
    """The strategy's result on the round's updates, read through a fresh UpdateSource."""
    layout = read_layout(rnd.store, rnd.model)
    items = rnd.items if order is None else [rnd.items[i] for i in order]
    source = UpdateSource(rnd.store, layout, Bounds(), items, sliced=sliced, fixed_slice_elements=slice_elements)
    model = GlobalModel(layout.spec, lambda: read_model(rnd.store, rnd.model, layout))
    result = (strategy or build(name)).aggregate(rnd.number, model, state, source)
    assert not source.rejected and len(source.accepted_items) == len(items)
    return result


def through_file(state: ServerState, name: str) -> ServerState:
    """The state as the next round reads it: encoded, written, read back, decoded."""
    return ServerState.decode(state.encode(name), name)


def two_rounds(name: str, seed: int = 0) -> tuple[Round, Aggregate, Round]:
    """Round 2 of a run (its updates in the bucket), the result of its round 1 (so round 2's input
    state is not empty for a stateful strategy), and round 1."""
    rng = np.random.default_rng(seed)
    store = MemoryStore()
    rnd1 = put_round(store, 1, random_weights(rng), random_deltas(rng))
    first = aggregate(name, rnd1, ServerState())
    return put_round(store, 2, first.weights, random_deltas(rng)), first, rnd1


def assert_same(a: Aggregate, b: Aggregate, exact: bool = False) -> None:
    def check(x: tensors.Tensors, y: tensors.Tensors) -> None:
        assert x.keys() == y.keys()
        for k in x:
            assert x[k].dtype == y[k].dtype == np.float32
            if exact:
                np.testing.assert_array_equal(x[k], y[k], err_msg=k)
            else:
                np.testing.assert_allclose(x[k], y[k], rtol=1e-6, atol=1e-7, err_msg=k)

    check(a.weights, b.weights)
    check(a.state.tensors, b.state.tensors)
    assert a.state.values == b.state.values
    assert a.measurements.keys() == b.measurements.keys()
    for k in a.measurements:
        assert a.measurements[k] == pytest.approx(b.measurements[k], rel=1e-6, abs=1e-9), k


# -- declaration ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_declares_its_name_summary_access_and_typed_parameters_with_defaults_and_help(name):
    cls = STRATEGIES[name]
    assert cls.name == name
    assert cls.summary and "\n" not in cls.summary and len(cls.summary) <= 120
    assert cls.access in ("pass", "slices")
    assert dataclasses.is_dataclass(cls.Params) and cls.Params.__dataclass_params__.frozen
    hints = typing.get_type_hints(cls.Params)
    for f in dataclasses.fields(cls.Params):
        assert hints[f.name] in (float, int, bool, str), f.name
        assert f.default is not dataclasses.MISSING, f.name
        assert f.metadata.get("help"), f.name
    assert isinstance(strategies.build(name), cls)  # the defaults can work


@pytest.mark.parametrize("name", NAMES)
def test_gives_clients_valid_instructions_from_the_previous_rounds_state_values(name):
    _, first, _ = two_rounds(name)
    for values in ({}, first.state.values):
        check_scalars(build(name).configure_round(2, dict(values)), "instructions", limits.MAX_INSTRUCTIONS)


# -- the result -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_returns_float32_weights_of_the_model_a_finite_state_and_valid_measurements(name):
    rnd, first, _ = two_rounds(name)
    result = aggregate(name, rnd, through_file(first.state, name))
    assert {k: v.shape for k, v in result.weights.items()} == SHAPES
    for tensor in (*result.weights.values(), *result.state.tensors.values()):
        assert tensor.dtype == np.float32 and np.isfinite(tensor).all()
    assert check_measurements(result.measurements, "measurements") == result.measurements
    assert result.measurements, "a few useful numbers, e.g. step_norm"


@pytest.mark.parametrize("name", NAMES)
def test_no_updates_is_a_value_error(name):
    rnd, _, _ = two_rounds(name)
    for sliced in (False, True):
        with pytest.raises(ValueError, match="no updates"):
            aggregate(name, replace(rnd, items=[]), ServerState(), sliced=sliced)


# -- (a) the updates' order does not matter -------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_the_order_of_the_updates_does_not_matter(name):
    rnd, first, _ = two_rounds(name)
    in_order = aggregate(name, rnd, through_file(first.state, name))
    for seed in (1, 2):
        order = [int(i) for i in np.random.default_rng(seed).permutation(len(rnd.items))]
        shuffled = aggregate(name, rnd, through_file(first.state, name), order=order)
        assert_same(in_order, shuffled, exact=name in EXACT)


# -- (b) equal updates aggregate to one of them ---------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_equal_updates_aggregate_like_one_of_them(name):
    """n clients sending the same delta d (with different example counts) move the model like one
    client sending d: for a stateless strategy to global + d; for a stateful one (momentum,
    adaptive) to its rule's result on d, weights and state alike."""
    rng = np.random.default_rng(5)
    weights, d = random_weights(rng), random_weights(rng, 0.05)  # |d| ~ 0.25: within normbound's 0.5
    many = aggregate(name, put_round(MemoryStore(), 1, weights, [d] * N_CLIENTS), ServerState())
    if many.state.tensors or many.state.values:
        assert_same(many, aggregate(name, put_round(MemoryStore(), 1, weights, [d]), ServerState()))
    else:
        for k in weights:
            expected = (weights[k].astype(np.float64) + d[k]).astype(np.float32)
            np.testing.assert_allclose(many.weights[k], expected, rtol=1e-6, atol=1e-7, err_msg=k)


# -- (c) one pass and slices agree ----------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_one_pass_and_tiny_slices_give_the_same_result(name):
    """For an averaging strategy: a streaming pass vs `sliced` access; for one that always reads
    slices: whole-tensor slices vs slices of 7 elements. On round 1 (fresh state) and round 2.
    Bit for bit where the arithmetic is per element (the weighted mean's float32 sum, the median,
    the trimmed mean); Krum's distances and norm-bounded FedAvg's norms are sums over slices."""
    rnd2, first, rnd1 = two_rounds(name)
    for r, state in ((rnd1, ServerState()), (rnd2, first.state)):
        whole = aggregate(name, r, through_file(state, name))
        tiny = aggregate(name, r, through_file(state, name), sliced=True, slice_elements=TINY_SLICE)
        assert_same(whole, tiny, exact=name not in ("krum", "fedavg_normbound"))


# -- (d) the state survives its file --------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_the_state_round_trips_through_its_encoding(name):
    rnd, first, _ = two_rounds(name)
    second = aggregate(name, rnd, through_file(first.state, name))
    for state in (first.state, second.state):
        encoded = state.encode(name)
        decoded = ServerState.decode(encoded, name)
        assert decoded.equals(state)
        assert decoded.encode(name) == encoded  # deterministic: the same state, the same bytes


# -- (e) a resumed run continues bit for bit ------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_a_resumed_run_continues_the_state_bit_for_bit(name):
    """Three rounds by one strategy object, each handed the previous round's state object, against
    a run that stops after round 2 and resumes: a new strategy object, the state read back from its
    file. The same weights and state after round 3, to the bit."""
    rng = np.random.default_rng(11)
    initial, deltas = random_weights(rng), [random_deltas(rng) for _ in range(3)]

    def run(resume_after: int | None) -> Aggregate:
        store, weights, state, strategy = MemoryStore(), initial, ServerState(), build(name)
        for number in (1, 2, 3):
            if number - 1 == resume_after:
                strategy, state = build(name), through_file(state, name)
            result = aggregate(name, put_round(store, number, weights, deltas[number - 1]), state, strategy=strategy)
            weights, state = result.weights, result.state
        return result

    uninterrupted, resumed = run(None), run(2)
    assert_same(uninterrupted, resumed, exact=True)
    assert uninterrupted.state.equals(resumed.state)


# -- memory ---------------------------------------------------------------------------------------

BIG = {"000/big/kernel": (200, 200), "001/big/bias": (200,)}
"""40,200 parameters (160 KB of float32)."""
BIG_CLIENTS = 16


@pytest.mark.parametrize("name", NAMES)
def test_memory_is_a_few_models_whatever_the_number_of_clients(name, monkeypatch):
    """Aggregating 16 updates (one pass, or slices of 1024 elements) peaks below 8 models' worth of
    float32, where holding every update would take 16: one update or one slice of every update at a
    time, plus the strategy's own O(model) buffers (a float64 step, moments, the global weights).
    The chunks worked on at a time are made smaller to fit this small model; a first, untraced
    aggregation leaves out one-off imports."""
    monkeypatch.setattr(tensors, "CHUNK_ELEMENTS", 2048)
    monkeypatch.setattr(aggregation, "CHUNK_ELEMENTS", 2048)
    rng = np.random.default_rng(2)
    weights = {k: rng.normal(size=s).astype(np.float32) for k, s in BIG.items()}
    deltas = [{k: (0.01 * rng.normal(size=s)).astype(np.float32) for k, s in BIG.items()} for _ in range(BIG_CLIENTS)]
    rnd = put_round(MemoryStore(), 1, weights, deltas)
    model_bytes = 4 * sum(int(np.prod(s)) for s in BIG.values())
    for sliced in (False, True) if STRATEGIES[name].access == "pass" else (True,):
        aggregate(name, rnd, ServerState(), sliced=sliced, slice_elements=1024)  # lazy imports (np.median's)
        tracemalloc.start()
        try:
            result = aggregate(name, rnd, ServerState(), sliced=sliced, slice_elements=1024)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 8 * model_bytes, f"peak {peak / model_bytes:.1f} models (sliced={sliced})"
        del result
