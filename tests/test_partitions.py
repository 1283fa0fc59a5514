"""Non-IID partitions (client_agent.partitions) and how the built-in data sets and the client config use them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from client_agent import config as agent_config
from client_agent.data import load_local_data
from client_agent.datasets import client_parts, load_partition, prepare
from client_agent.partitions import IID, MAX_ATTEMPTS, Scheme, parse_scheme, split
from fedstep.core.errors import FedstepError

# 10 classes of 100 examples each, in label order: shards of 100 align with the classes.
SORTED = np.repeat(np.arange(10), 100)
# The same labels shuffled (the schemes must not depend on the pool's order).
SHUFFLED = np.random.default_rng(42).permutation(SORTED)
SCHEMES = ["iid", "dirichlet:0.1", "dirichlet:1", "shards:2", "quantity:0.5"]


def shares(labels: np.ndarray, part: np.ndarray) -> np.ndarray:
    """The part's label distribution, sorted from the most frequent label down."""
    counts = np.bincount(labels[part], minlength=10)
    return np.sort(counts)[::-1] / counts.sum()


# --- parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, IID),
        ("", IID),
        ("iid", IID),
        (" IID ", IID),
        ("dirichlet:0.5", Scheme("dirichlet", alpha=0.5)),
        ("dirichlet:1e-1", Scheme("dirichlet", alpha=0.1)),
        ("shards:2", Scheme("shards", shards=2)),
        ("quantity:10", Scheme("quantity", alpha=10.0)),
    ],
)
def test_scheme_text_parses(text, expected):
    assert parse_scheme(text) == expected


@pytest.mark.parametrize("text", ["iid", "dirichlet:0.5", "dirichlet:0.1", "shards:3", "quantity:2"])
def test_scheme_text_round_trips(text):
    assert str(parse_scheme(text)) == text
    assert parse_scheme(str(parse_scheme(text))) == parse_scheme(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("foo", "unknown partition scheme 'foo'; use iid, dirichlet:ALPHA, shards:K, quantity:ALPHA"),
        ("dirichlet:-1", "'dirichlet:-1': ALPHA must be a number above 0"),
        ("dirichlet:0", "ALPHA must be a number above 0"),
        ("dirichlet:nan", "ALPHA must be a number above 0"),
        ("dirichlet:inf", "ALPHA must be a number above 0"),
        ("dirichlet:abc", "ALPHA must be a number above 0"),
        ("dirichlet", "give the concentration ALPHA, e.g. dirichlet:0.5"),
        ("quantity:", "give the concentration ALPHA, e.g. quantity:0.5"),
        ("shards:0", "'shards:0': K (shards per client) must be a whole number of at least 1"),
        ("shards:1.5", "K (shards per client) must be a whole number"),
        ("shards", "give the shards per client, e.g. shards:2"),
        ("iid:3", "iid takes no parameter"),
        ("1/3", "unknown partition scheme '1/3'"),
    ],
)
def test_scheme_text_errors_are_clear(text, message):
    with pytest.raises(ValueError) as raised:
        parse_scheme(text)
    assert message in str(raised.value)


# --- every scheme: deterministic, disjoint, covering -----------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES)
def test_partitions_are_deterministic_for_a_seed_and_change_with_it(scheme):
    first = split(SHUFFLED, 5, scheme, seed=3)
    again = split(SHUFFLED, 5, scheme, seed=3)
    other = split(SHUFFLED, 5, scheme, seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("clients", [1, 3, 7])
def test_partitions_are_disjoint_and_cover_the_pool(scheme, clients):
    parts = split(SHUFFLED, clients, scheme, seed=0)
    assert len(parts) == clients
    together = np.concatenate(parts)
    assert len(together) == len(SHUFFLED)  # no position twice ...
    assert np.array_equal(np.sort(together), np.arange(len(SHUFFLED)))  # ... and every one once
    assert min(len(p) for p in parts) >= 2


def test_iid_is_the_seeded_shuffle_cut_into_nearly_equal_parts():
    parts = split(SHUFFLED, 3, "iid", seed=0)
    expected = np.array_split(np.random.default_rng(0).permutation(len(SHUFFLED)), 3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, expected, strict=True))


# --- each scheme does what it says ---------------------------------------------------------------


def test_dirichlet_0_1_is_visibly_skewed_each_client_dominated_by_few_labels():
    parts = split(SHUFFLED, 5, "dirichlet:0.1", seed=0)
    for part in parts:
        assert shares(SHUFFLED, part)[:3].sum() > 0.7  # three labels hold most of every client's data
    iid_top = [shares(SHUFFLED, p)[:3].sum() for p in split(SHUFFLED, 5, "iid", seed=0)]
    assert max(iid_top) < 0.45  # while IID clients see all labels about equally


def test_a_larger_dirichlet_alpha_is_closer_to_iid():
    def skew(alpha: str) -> float:
        return float(np.mean([shares(SHUFFLED, p)[0] for p in split(SHUFFLED, 5, f"dirichlet:{alpha}", seed=1)]))

    assert skew("0.1") > skew("1") > skew("100")
    assert skew("100") < 0.2


def test_dirichlet_cuts_each_class_among_the_clients():
    parts = split(SHUFFLED, 4, "dirichlet:0.3", seed=2)
    owner = np.empty(len(SHUFFLED), dtype=int)
    for client, part in enumerate(parts):
        owner[part] = client
    for label in range(10):  # every example of every class went to exactly one client
        assert np.bincount(owner[np.equal(SHUFFLED, label)], minlength=4).sum() == 100


def test_shards_2_gives_each_client_at_most_2_labels_on_a_sorted_split():
    for labels in (SORTED, SHUFFLED):
        parts = split(labels, 5, "shards:2", seed=0)
        assert [len(p) for p in parts] == [200] * 5
        assert all(len(np.unique(labels[p])) <= 2 for p in parts)


def test_shards_smaller_than_the_classes_give_at_most_2k_labels():
    labels = np.repeat(np.arange(10), [90, 110, 95, 105, 100, 100, 80, 120, 99, 101])
    parts = split(labels, 10, "shards:2", seed=5)  # 20 shards of 50: each straddles at most one boundary
    assert all(len(np.unique(labels[p])) <= 4 for p in parts)
    assert any(len(np.unique(labels[p])) > 2 for p in parts)


def test_quantity_skew_gives_unequal_sizes_with_iid_labels():
    parts = split(SHUFFLED, 5, "quantity:0.5", seed=0)
    sizes = sorted(len(p) for p in parts)
    assert sizes[-1] > 3 * sizes[0]  # very unequal sizes ...
    for part in parts:
        if len(part) >= 100:  # ... but every sizeable client sees every label at about its share
            assert len(np.unique(SHUFFLED[part])) == 10
            assert shares(SHUFFLED, part)[0] < 0.25


def test_a_large_quantity_alpha_gives_nearly_equal_sizes():
    sizes = [len(p) for p in split(SHUFFLED, 5, "quantity:1000", seed=0)]
    assert max(sizes) - min(sizes) < 60


# --- impossible partitions fail clearly ------------------------------------------------------------


def test_an_alpha_too_small_for_the_clients_suggests_a_larger_alpha_or_fewer_clients():
    with pytest.raises(ValueError) as raised:
        split(SHUFFLED, 40, "dirichlet:0.001", seed=0)
    message = str(raised.value)
    assert f"fewer than 2 examples in each of {MAX_ATTEMPTS} draws" in message
    assert "use a larger ALPHA (e.g. dirichlet:0.01) or fewer clients" in message


def test_a_draw_below_the_minimum_is_redrawn_with_the_seed():
    parts = split(SHUFFLED, 20, "quantity:1", seed=0, min_examples=10)
    assert min(len(p) for p in parts) >= 10
    assert all(np.array_equal(a, b) for a, b in zip(parts, split(SHUFFLED, 20, "quantity:1", 0, 10), strict=True))


def same_parts(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_a_preferred_size_is_redrawn_for_and_gives_the_parts_that_minimum_always_gave():
    """The built-in data sets need 1 example per client and prefer 2 (a local test split): a run that
    met 2 before keeps its exact split."""
    preferred = split(SHUFFLED, 60, "quantity:1", seed=0, min_examples=1, preferred=2)
    assert same_parts(preferred, split(SHUFFLED, 60, "quantity:1", seed=0, min_examples=2))
    assert not same_parts(preferred, split(SHUFFLED, 60, "quantity:1", seed=0, min_examples=1))  # redrawn for 2


def test_when_no_draw_gives_the_preferred_size_the_first_that_gives_the_minimum_is_kept():
    with pytest.raises(ValueError, match="fewer than 2 examples in each of"):
        split(SHUFFLED, 100, "quantity:1", seed=0, min_examples=2)
    parts = split(SHUFFLED, 100, "quantity:1", seed=0, min_examples=1, preferred=2)
    assert same_parts(parts, split(SHUFFLED, 100, "quantity:1", seed=0, min_examples=1))
    assert min(len(p) for p in parts) == 1


@pytest.mark.parametrize(("clients", "scheme"), [(50, "quantity:1"), (150, "dirichlet:1"), (100, "shards:2")])
def test_the_built_in_data_sets_keep_the_non_iid_splits_their_former_minimum_of_2_gave(clients, scheme):
    prepared = prepare("digits")
    former = split(prepared.y[prepared.pool], clients, scheme, seed=0, min_examples=2)
    assert same_parts(client_parts(prepared, clients, 0, scheme), [prepared.pool[p] for p in former])


def test_a_scheme_that_leaves_a_client_empty_in_every_draw_says_so():
    with pytest.raises(ValueError, match=r"quantity:1 left some client with no examples in each of 100 draws"):
        split(SHUFFLED, 200, "quantity:1", seed=0, min_examples=1, preferred=2)


@pytest.mark.parametrize(
    ("clients", "scheme", "message"),
    [
        (600, "dirichlet:1", "a pool of 1000 examples cannot give each of 600 clients at least 2"),
        (300, "shards:4", "300 clients x 4 shards = 1200 shards, more than the pool's 1000 examples"),
        (0, "iid", "at least 1"),
    ],
)
def test_pools_too_small_for_the_clients_are_refused(clients, scheme, message):
    with pytest.raises(ValueError, match=message):
        split(SHUFFLED, clients, scheme)


# --- the built-in data sets ------------------------------------------------------------------------


def joined(split_data) -> np.ndarray:
    (_, y_train), (_, y_test) = split_data
    return np.concatenate([y_train, y_test])


@pytest.mark.parametrize("scheme", ["dirichlet:0.5", "shards:2", "quantity:1"])
def test_digits_clients_split_the_pool_disjointly_and_match_the_operators_view(scheme):
    pool = prepare("digits", 0).pool
    parts = client_parts(prepare("digits", 0), 4, 0, scheme)
    assert sorted(np.concatenate(parts).tolist()) == sorted(pool.tolist())
    for i, part in enumerate(parts, start=1):
        mine = joined(load_partition("digits", (i, 4), seed=0, scheme=scheme))
        assert np.array_equal(np.bincount(mine, minlength=10), np.bincount(prepare("digits", 0).y[part], minlength=10))


def test_the_default_scheme_is_todays_iid_split():
    for (x_a, y_a), (x_b, y_b) in zip(
        load_partition("digits", (2, 3)), load_partition("digits", (2, 3), scheme="iid"), strict=True
    ):
        assert x_a.tobytes() == x_b.tobytes() and y_a.tobytes() == y_b.tobytes()


def test_digits_under_dirichlet_0_1_differs_between_seeds():
    a = joined(load_partition("digits", (1, 3), seed=0, scheme="dirichlet:0.1"))
    b = joined(load_partition("digits", (1, 3), seed=1, scheme="dirichlet:0.1"))
    assert not np.array_equal(np.bincount(a, minlength=10), np.bincount(b, minlength=10))


def test_heart_keeps_its_hospitals_and_refuses_other_schemes():
    with pytest.raises(
        ValueError, match=r"heart comes with its sites \(1=Cleveland, .*use partition natural, not dirichlet:0\.5"
    ):
        load_partition("heart", (1, 4), scheme="dirichlet:0.5")
    assert [len(p) for p in client_parts(prepare("heart", 0), 4, 0, "iid")] == [
        len(p) for p in client_parts(prepare("heart", 0), 4, 0, "natural")
    ]  # for heart, iid means its natural split


# --- the client agent's config and data --------------------------------------------------------------


GOOD = {"client_id": "client-1", "queue_url": "https://q", "bucket": "b", "table": "t", "data": "digits"}


def write_config(tmp_path, **fields) -> str:
    path = tmp_path / "client.json"
    path.write_text(json.dumps({**GOOD, **fields}))
    return str(path)


def test_the_client_config_carries_the_scheme_and_the_data_seed(tmp_path):
    path = write_config(tmp_path, partition="2/3", partition_scheme="dirichlet:0.1", data_seed=7)
    config = agent_config.load(path, {})
    assert (config.partition, config.partition_scheme, config.data_seed) == ("2/3", "dirichlet:0.1", 7)
    assert agent_config.load(write_config(tmp_path), {}).data_seed == 0


def test_the_scheme_and_seed_come_from_the_environment_too(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDSTEP_PARTITION_SCHEME", "shards:2")
    monkeypatch.setenv("FEDSTEP_DATA_SEED", "5")
    config = agent_config.load(write_config(tmp_path, partition="1/2"), {})
    assert (config.partition_scheme, config.data_seed) == ("shards:2", 5)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"partition": "1/3", "partition_scheme": "dirichlet:-1"}, "partition_scheme: partition scheme 'dirichlet:-1'"),
        ({"partition": "1/3", "partition_scheme": "foo"}, "unknown partition scheme 'foo'"),
        ({"partition_scheme": "shards:2"}, "partition_scheme shards:2 needs a partition"),
        ({"partition": "1/3", "data_seed": -1}, "data_seed must be 0-4294967295, got -1"),
        ({"partition": "1/3", "data_seed": "seven"}, "data_seed must be a whole number, got 'seven'"),
        ({"partition": "1/3", "partition_scheme": 3}, "partition_scheme must be a string"),
    ],
)
def test_bad_scheme_fields_are_refused_with_the_field_named(tmp_path, fields, message):
    with pytest.raises(FedstepError) as raised:
        agent_config.load(write_config(tmp_path, **fields), {})
    assert message in str(raised.value)


def test_the_client_takes_its_part_of_the_non_iid_split():
    mine = joined(load_local_data("digits", "2/20", "shards:1", seed=0))
    assert len(np.unique(mine)) <= 2  # one shard (72 examples) of a label-sorted pool: two labels at most
    with pytest.raises(FedstepError, match=r"data 'heart': .*one client each: use partition natural"):
        load_local_data("heart", "1/4", "dirichlet:1")
