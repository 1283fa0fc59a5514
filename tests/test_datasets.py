"""Specification of the client agent's built-in data sets (client_agent.datasets)."""

from collections import Counter

import numpy as np
import pytest

from client_agent import datasets
from client_agent.datasets import (
    BUILTIN,
    HEART_FEATURES,
    HEART_HOSPITALS,
    describe,
    load_heldout,
    load_partition,
    parse_partition,
)
from fedstep.core.statistics import StatsRequest, combine, site_statistics

IID = ["digits", "mnist"]
ALL = ["digits", "mnist", "heart"]
EVERY = [*ALL, "heart-raw"]
NUMERIC = list(range(6))  # age, trestbps, chol, thalch, oldpeak, ca
BINARY = list(range(6, 9))  # sex_male, fbs, exang
ONE_HOT = {
    column: [i for i, f in enumerate(HEART_FEATURES) if f.startswith(column + "=")]
    for column in ("cp", "restecg", "slope", "thal")
}
HOSPITAL_SIZES = {"Cleveland": 304, "Hungary": 293, "VA Long Beach": 200, "Switzerland": 123}


def rows(*xs: np.ndarray) -> list[bytes]:
    """One hashable key per example (row), over several arrays."""
    return [row.tobytes() for x in xs for row in x]


def whole_part(name: str, partition=None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A client's local train and test sets joined back together."""
    (x_train, y_train), (x_test, y_test) = load_partition(name, partition, seed=seed)
    return np.concatenate([x_train, x_test]), np.concatenate([y_train, y_test])


# --- names and partition syntax -------------------------------------------------------------


def test_builtin_names_are_digits_mnist_heart_and_heart_raw():
    assert set(BUILTIN) == {"digits", "mnist", "heart", "heart-raw"}


@pytest.mark.parametrize("call", [load_partition, load_heldout, describe])
def test_unknown_dataset_names_the_available_ones(call):
    with pytest.raises(ValueError, match="cifar10") as raised:
        call("cifar10")
    for name in BUILTIN:
        assert name in str(raised.value)


@pytest.mark.parametrize(("text", "expected"), [("2/3", (2, 3)), ("1/1", (1, 1)), ("3/3", (3, 3)), (" 4/10 ", (4, 10))])
def test_partition_text_is_the_one_based_ith_of_n(text, expected):
    assert parse_partition(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0/3", "between 1 and 3"),
        ("4/3", "between 1 and 3"),
        ("-1/3", "between 1 and 3"),
        ("1/0", "at least 1"),
        ("a/b", "i/n"),
        ("3", "i/n"),
        ("1/2/3", "i/n"),
        ("", "i/n"),
    ],
)
def test_partition_text_errors_are_clear(text, message):
    with pytest.raises(ValueError, match=message) as raised:
        parse_partition(text)
    assert text.strip() in str(raised.value)  # the message quotes what was given


def test_describe_gives_the_facts_for_docs_without_surprises():
    for name in EVERY:
        info = describe(name)
        assert set(info) == {"name", "num_classes", "input_shape", "num_examples", "source"}
        assert info["name"] == name
        assert info["source"]
    assert describe("digits")["input_shape"] == (64,)
    assert describe("mnist")["input_shape"] == (784,)
    assert describe("heart")["input_shape"] == (len(HEART_FEATURES),) == (22,)
    assert describe("heart")["num_classes"] == 2
    assert describe("heart-raw")["input_shape"] == (22,) and describe("heart-raw")["num_classes"] == 2


@pytest.mark.parametrize("name", EVERY)
def test_describe_matches_the_loaded_data(name):
    info = describe(name)
    x_pool, y_pool = whole_part(name)
    x_held, y_held = load_heldout(name)
    assert len(y_pool) + len(y_held) == info["num_examples"]
    assert x_pool.shape[1:] == x_held.shape[1:] == info["input_shape"]
    assert set(np.unique(np.concatenate([y_pool, y_held]))) == set(range(info["num_classes"]))


# --- array contract -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_outputs_are_float32_c_contiguous_x_and_int64_1d_y(name):
    (x_train, y_train), (x_test, y_test) = load_partition(name, (1, 2 if name in IID else 4))
    x_held, y_held = load_heldout(name)
    for x, y in [(x_train, y_train), (x_test, y_test), (x_held, y_held)]:
        assert x.dtype == np.float32 and x.ndim == 2 and x.flags.c_contiguous
        assert y.dtype == np.int64 and y.ndim == 1
        assert len(x) == len(y) > 0
        assert np.isfinite(x).all()


@pytest.mark.parametrize(("name", "width"), [("digits", 64), ("mnist", 784)])
def test_image_pixels_are_scaled_to_the_unit_interval(name, width):
    x, y = whole_part(name)
    assert x.shape[1] == width
    assert x.min() == 0.0 and x.max() == 1.0
    assert set(np.unique(y)) == set(range(10))


def test_returned_arrays_are_copies_that_callers_may_modify():
    x, y = load_heldout("digits")
    x[:] = -1.0
    y[:] = -1
    x_again, y_again = load_heldout("digits")
    assert x_again.min() >= 0.0 and y_again.min() >= 0


# --- held-out set and pool ----------------------------------------------------------------------


@pytest.mark.parametrize("name", IID)
def test_heldout_is_a_stratified_fifth_of_the_data(name):
    _, y_held = load_heldout(name)
    _, y_pool = whole_part(name)
    total = len(y_held) + len(y_pool)
    assert len(y_held) == pytest.approx(0.2 * total, abs=1)
    held_share = np.bincount(y_held) / len(y_held)
    pool_share = np.bincount(y_pool) / len(y_pool)
    np.testing.assert_allclose(held_share, pool_share, atol=0.01)


@pytest.mark.parametrize(("name", "count"), [("digits", 3), ("mnist", 3), ("heart", 4)])
def test_heldout_is_disjoint_from_every_partition(name, count):
    held = rows(load_heldout(name)[0])
    pool = []
    for i in range(1, count + 1):
        pool += rows(whole_part(name, (i, count))[0])
    overlap = set(held) & set(pool)
    if name == "heart":
        # The source holds two identical patient records (different ids); only those may repeat.
        repeated = {key for key, n in Counter(held + pool).items() if n > 1}
        assert len(repeated) == 2
        assert overlap <= repeated
    else:
        assert not overlap
    assert len(held) + len(pool) == describe(name)["num_examples"]


@pytest.mark.parametrize("name", IID)
def test_iid_partitions_are_disjoint_and_cover_the_pool(name):
    x_pool, _ = whole_part(name)
    parts = [rows(whole_part(name, (i, 3))[0]) for i in range(1, 4)]
    every_part = [key for part in parts for key in part]
    assert sorted(every_part) == sorted(rows(x_pool))  # each pool example exactly once
    sizes = [len(part) for part in parts]
    assert max(sizes) - min(sizes) <= 1


def test_iid_partitions_are_shuffled_not_sorted_by_label():
    _, y = whole_part("digits", (1, 10))
    assert len(np.unique(y)) >= 8


@pytest.mark.parametrize("name", ALL)
def test_no_partition_means_the_whole_pool_as_one_client(name):
    whole = load_partition(name)
    one_of_one = load_partition(name, (1, 1))
    for (x_a, y_a), (x_b, y_b) in zip(whole, one_of_one, strict=True):
        np.testing.assert_array_equal(x_a, x_b)
        np.testing.assert_array_equal(y_a, y_b)


@pytest.mark.parametrize(("name", "partition"), [("digits", (2, 5)), ("heart", (1, 4))])
def test_local_split_is_80_20_and_stratified(name, partition):
    (x_train, y_train), (x_test, y_test) = load_partition(name, partition)
    total = len(y_train) + len(y_test)
    assert len(y_test) == pytest.approx(0.2 * total, abs=1)
    assert not set(rows(x_train)) & set(rows(x_test))
    np.testing.assert_allclose(y_train.mean(), y_test.mean(), atol=0.05)


def test_tiny_partitions_fall_back_to_an_unstratified_local_split():
    (_, y_train), (_, y_test) = load_partition("digits", (1, 300))
    assert len(y_train) >= 1 and len(y_test) >= 1
    assert len(y_train) + len(y_test) in (4, 5)


def test_a_one_example_clients_local_split_is_that_example_to_train_on_and_an_empty_test_split():
    """digits' pool of 1,437 over 1,000 clients (IID): 437 hold 2 examples, 563 hold 1."""
    (x_train, y_train), (x_test, y_test) = load_partition("digits", (1000, 1000))
    assert (x_train.shape, y_train.shape) == ((1, 64), (1,))
    assert (x_test.shape, y_test.shape) == ((0, 64), (0,))
    assert (x_test.dtype, y_test.dtype) == (np.float32, np.int64)  # as a loader's empty test split
    (_, y_train), (_, y_test) = load_partition("digits", (1, 1000))  # two examples: one of each, as before
    assert (len(y_train), len(y_test)) == (1, 1)


def test_a_two_example_clients_local_split_is_one_to_train_on_and_one_to_test_on_as_before():
    prepared = datasets.prepare("digits")
    for index in (1, 200, 437):  # the clients of 2 examples in 1,000
        part = datasets.client_parts(prepared, 1000)[index - 1]
        train, test = datasets._stratified_split(part, prepared.y, datasets.LOCAL_TEST_FRACTION, 0)
        (_, y_train), (_, y_test) = load_partition("digits", (index, 1000))
        np.testing.assert_array_equal(y_train, prepared.y[train])
        np.testing.assert_array_equal(y_test, prepared.y[test])


def test_partitions_with_no_example_are_rejected():
    with pytest.raises(ValueError, match=r"partition 2000/2000 of digits would hold 0 example\(s\).*at least 1"):
        load_partition("digits", (2000, 2000))
    assert len(load_partition("digits", (1, 2000))[0][1]) == 1  # the first 1,437 of 2,000 hold one each


@pytest.mark.parametrize("partition", [(0, 3), (4, 3), (1, 0)])
def test_invalid_partition_tuples_are_rejected(partition):
    with pytest.raises(ValueError, match="partition"):
        load_partition("digits", partition)


# --- heart: one hospital per client -------------------------------------------------------------


def test_heart_hospital_order_is_fixed():
    assert HEART_HOSPITALS == ("Cleveland", "Hungary", "VA Long Beach", "Switzerland")


def test_heart_partition_is_one_hospital_per_client():
    for i, hospital in enumerate(HEART_HOSPITALS, start=1):
        _, y = whole_part("heart", (i, 4))
        assert len(y) == pytest.approx(0.8 * HOSPITAL_SIZES[hospital], abs=1)
    # The hospitals differ a lot in disease prevalence: a non-IID, cross-silo split.
    prevalence = [whole_part("heart", (i, 4))[1].mean() for i in range(1, 5)]
    assert prevalence[1] < 0.45 and prevalence[3] > 0.85


def test_heart_heldout_covers_every_hospital():
    _, y_held = load_heldout("heart")
    missing_from_pools = {
        hospital: HOSPITAL_SIZES[hospital] - len(whole_part("heart", (i, 4))[1])
        for i, hospital in enumerate(HEART_HOSPITALS, start=1)
    }
    # Every hospital keeps about a fifth of its patients back, and those are the held-out set.
    for hospital, kept_back in missing_from_pools.items():
        assert kept_back == pytest.approx(0.2 * HOSPITAL_SIZES[hospital], abs=1)
    assert sum(missing_from_pools.values()) == len(y_held)


def test_heart_all_hospitals_is_partition_1_of_1():
    x_all, _ = whole_part("heart", (1, 1))
    x_parts = [whole_part("heart", (i, 4))[0] for i in range(1, 5)]
    assert sorted(rows(x_all)) == sorted(rows(*x_parts))


@pytest.mark.parametrize("partition", [(1, 2), (1, 3), (2, 5)])
def test_heart_only_splits_into_its_4_hospitals(partition):
    with pytest.raises(ValueError, match="split by site, so it has exactly 4 partitions") as raised:
        load_partition("heart", partition)
    assert "Cleveland" in str(raised.value) and "i/4" in str(raised.value)


def test_heart_label_is_binary_disease_presence():
    _, y_pool = whole_part("heart")
    _, y_held = load_heldout("heart")
    y = np.concatenate([y_pool, y_held])
    assert set(np.unique(y)) == {0, 1}
    assert (y == 1).sum() == 509  # 920 patients, 411 with num == 0


def test_heart_numeric_features_are_standardized_on_the_pool_only():
    x_pool, _ = whole_part("heart")
    x_held, _ = load_heldout("heart")
    numeric = [HEART_FEATURES.index(f) for f in ("age", "trestbps", "chol", "thalch", "oldpeak")]
    np.testing.assert_allclose(x_pool[:, numeric].mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(x_pool[:, numeric].std(axis=0), 1.0, atol=1e-4)
    # Statistics fitted on pool + held-out would not centre the pool exactly.
    assert np.abs(x_held[:, numeric].mean(axis=0)).max() > 1e-3


def test_heart_binary_and_one_hot_features_are_0_or_1_with_one_category_each():
    x, _ = whole_part("heart")
    first_flag = HEART_FEATURES.index("sex_male")
    assert set(np.unique(x[:, first_flag:])) == {0.0, 1.0}
    for column in ("cp", "restecg", "slope", "thal"):
        block = [i for i, f in enumerate(HEART_FEATURES) if f.startswith(column + "=")]
        np.testing.assert_array_equal(x[:, block].sum(axis=1), 1.0)


# --- heart-raw: the same patients, as each hospital holds them -----------------------------------


def test_heart_raw_has_the_patients_splits_and_labels_of_heart():
    for seed in (0, 3):
        heart, raw = datasets.prepare("heart", seed), datasets.prepare("heart-raw", seed)
        for field in ("y", "pool", "heldout", "groups"):
            np.testing.assert_array_equal(getattr(heart, field), getattr(raw, field))
        assert raw.sites == heart.sites == HEART_HOSPITALS
    for partition in [(i, 4) for i in range(1, 5)] + [None]:
        heart, raw = load_partition("heart", partition), load_partition("heart-raw", partition)
        for (x_h, y_h), (x_r, y_r) in zip(heart, raw, strict=True):
            np.testing.assert_array_equal(y_h, y_r)
            _assert_same_patients(x_h, x_r)
    (x_h, y_h), (x_r, y_r) = load_heldout("heart"), load_heldout("heart-raw")
    np.testing.assert_array_equal(y_h, y_r)
    _assert_same_patients(x_h, x_r)


def _assert_same_patients(x_heart: np.ndarray, x_raw: np.ndarray) -> None:
    """Row by row the same patients: the flags and categories heart did not impute are equal, and
    heart's age (never missing) is the raw age standardized."""
    assert x_heart.shape == x_raw.shape
    flags = x_raw[:, BINARY]
    present = ~np.isnan(flags)
    np.testing.assert_array_equal(x_heart[:, BINARY][present], flags[present])
    for block in ONE_HOT.values():
        known = x_raw[:, block].sum(axis=1) == 1  # all zeros: the category is missing (heart imputes it)
        np.testing.assert_array_equal(x_heart[known][:, block], x_raw[known][:, block])
    age = datasets.pool(datasets.prepare("heart-raw"))[0][:, 0]
    np.testing.assert_allclose(x_heart[:, 0], (x_raw[:, 0] - age.mean()) / age.std(), atol=1e-5)


def test_heart_raw_keeps_the_missing_values_heart_imputes():
    x_heart, _ = datasets.pool(datasets.prepare("heart"))
    x_raw, _ = datasets.pool(datasets.prepare("heart-raw"))
    assert np.isfinite(x_heart).all()
    missing = np.isnan(x_raw)
    assert missing[:, NUMERIC].sum(axis=0).tolist()[0] == 0  # age is always there
    assert all(missing[:, j].any() for j in NUMERIC[1:])  # every other numeric feature has gaps
    assert missing[:, BINARY].any() and not missing[:, 9:].any()  # a missing category is all zeros
    for column, block in ONE_HOT.items():
        known = x_raw[:, block].sum(axis=1)
        assert set(np.unique(known)) <= {0.0, 1.0}  # one category, or none when it is missing
        assert (known == 0).any() == (column != "cp")  # only chest pain is always recorded
    assert (x_raw[:, HEART_FEATURES.index("ca")] == 0).any()  # 0 vessels is a value, not a gap
    # Raw clinical units, not standardized: ages in years, pressures in mm Hg, no zero pressure or cholesterol.
    assert np.nanmin(x_raw[:, 0]) >= 28 and np.nanmax(x_raw[:, 0]) <= 77
    assert np.nanmin(x_raw[:, HEART_FEATURES.index("trestbps")]) > 0 and np.nanmin(x_raw[:, 2]) > 0


def test_heart_raw_switzerland_has_no_cholesterol():
    chol = HEART_FEATURES.index("chol")
    (x_train, _), (x_test, _) = load_partition("heart-raw", (4, 4))
    assert np.isnan(x_train[:, chol]).all() and np.isnan(x_test[:, chol]).all()
    (x_train, _), _ = load_partition("heart-raw", (1, 4))
    assert not np.isnan(x_train[:, chol]).any()  # Cleveland measured everyone's


def test_heart_raw_standardized_with_the_hospitals_combined_statistics_is_heart_up_to_imputation():
    request = StatsRequest()
    answers = {
        hospital: site_statistics(whole_part("heart-raw", (i, 4))[0], request)
        for i, hospital in enumerate(HEART_HOSPITALS, start=1)
    }
    statistics = combine(answers, request)
    x_raw, _ = datasets.pool(datasets.prepare("heart-raw"))
    x_heart, _ = datasets.pool(datasets.prepare("heart"))
    raw = x_raw.astype(np.float64)
    # The 4 hospitals' sums combine into exactly the pool's statistics, missing values left out.
    np.testing.assert_allclose(statistics.mean, np.nanmean(raw, axis=0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(statistics.std, np.nanstd(raw, axis=0), rtol=1e-9, atol=1e-12)
    x = statistics.standardization().apply(x_raw)
    assert np.isfinite(x).all()
    np.testing.assert_allclose(x[:, 0], x_heart[:, 0], atol=1e-5)  # age: nothing to impute, heart exactly
    for j in NUMERIC:
        present = ~np.isnan(raw[:, j])
        assert (x[~present, j] == 0).all()  # a missing value becomes the mean
        # heart fits its mean and standard deviation after imputing the pool's median:
        filled = np.where(present, raw[:, j], np.nanmedian(raw[:, j]))
        value = x[present, j] * statistics.std[j] + statistics.mean[j]
        np.testing.assert_allclose(x_heart[present, j], (value - filled.mean()) / filled.std(), atol=1e-5)


def test_heart_raw_default_model_is_a_logistic_regression_that_needs_standardized_features():
    from client_agent.keras_model import one_batch
    from client_agent.models import DEFAULT_FOR_DATASET, heart_logreg
    from fedstep.core.errors import FedstepError
    from fedstep.core.statistics import Standardization

    assert DEFAULT_FOR_DATASET["heart-raw"] == "client_agent.models:heart_logreg"
    model = heart_logreg()
    assert [type(layer).__name__ for layer in model.layers] == ["Dense"]
    assert model.count_params() == 22 * 2 + 2
    (x_train, y_train), _ = load_partition("heart-raw", (1, 4))
    with pytest.raises(FedstepError, match="standardize"):
        one_batch(heart_logreg(), x_train, y_train)  # NaN features give a NaN loss
    metrics = one_batch(model, Standardization.local(x_train).apply(x_train), y_train)
    assert np.isfinite(metrics["loss"])


# --- determinism --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", EVERY)
def test_loading_is_deterministic(name):
    partition = (2, 4)

    def arrays(seed: int) -> list[np.ndarray]:
        (train, test), heldout = (
            load_partition(name, partition, seed=seed),
            load_heldout(name, seed),
        )
        return [*train, *test, *heldout]

    for left, right in zip(arrays(7), arrays(7), strict=True):
        np.testing.assert_array_equal(left, right)  # NaN equals NaN here


@pytest.mark.parametrize("name", ALL)
def test_the_seed_changes_the_split(name):
    held_0 = set(rows(load_heldout(name, seed=0)[0]))
    held_1 = set(rows(load_heldout(name, seed=1)[0]))
    assert held_0 != held_1


def test_a_parsed_data_set_is_kept_and_read_back_as_the_same_arrays_and_a_broken_cache_is_parsed_again(tmp_path):
    """`datasets.cached_arrays` (mnist's CSV: 2-3 s of CPU in every agent and memory-engine worker)."""
    from client_agent.datasets import cached_arrays

    source = tmp_path / "data.csv"
    source.write_text("1,2,3\n")
    parsed = []

    def parse():
        parsed.append(1)
        return np.arange(6, dtype=np.float32).reshape(2, 3) / 7, np.array([0, 1], dtype=np.int64)

    first = cached_arrays("toy", source, parse, tmp_path / "cache")
    second = cached_arrays("toy", source, parse, tmp_path / "cache")
    assert len(parsed) == 1
    assert all(a.tobytes() == b.tobytes() and a.dtype == b.dtype for a, b in zip(first, second, strict=True))
    (kept,) = (tmp_path / "cache").iterdir()
    kept.write_bytes(b"not an npz")
    cached_arrays("toy", source, parse, tmp_path / "cache")
    source.write_text("1,2,4\n")  # another source: another cache file
    cached_arrays("toy", source, parse, tmp_path / "cache")
    assert len(parsed) == 3 and len(list((tmp_path / "cache").iterdir())) == 2
