"""Federated statistics (`fedstep.core.statistics`): each site's bounded sums, checked, combined into
the statistics the pooled data would give; a dishonest answer is refused with its reason."""

from __future__ import annotations

import numpy as np
import pytest

from fedstep.core.schemas import InvalidMessage, StatsItem, StatsMessage, parse_message
from fedstep.core.statistics import (
    MAX_VALUES,
    FederatedStatistics,
    SiteStatistics,
    Standardization,
    StatisticsError,
    StatsRequest,
    combine,
    site_statistics,
)
from fedstep.privacy.accounting import epsilon_poisson, statistics_noise_std


def sites(seed: int = 1) -> dict[str, np.ndarray]:
    """Three sites of different sizes and means, with missing values (NaN) and one all-missing column."""
    rng = np.random.default_rng(seed)
    out = {f"site-{i}": rng.normal(10.0 * i, i + 1.0, size=(50 * (i + 1), 4)) for i in range(3)}
    out["site-1"][::7, 1] = np.nan
    out["site-2"][:, 3] = np.nan  # a site that never measures feature 3
    return out


def answers(data: dict[str, np.ndarray], request: StatsRequest, **kw) -> dict[str, SiteStatistics]:
    out = {}
    for client, x in data.items():
        answer = site_statistics(x, request, **kw)
        answer.check(request)
        out[client] = answer
    return out


def test_combined_statistics_equal_those_of_the_pooled_data():
    data = sites()
    request = StatsRequest(features=4)
    result = combine(answers(data, request), request)
    pooled = np.concatenate(list(data.values()))
    assert result.clients == ("site-0", "site-1", "site-2")
    np.testing.assert_allclose(result.count, (~np.isnan(pooled)).sum(axis=0))
    np.testing.assert_allclose(result.mean, np.nanmean(pooled, axis=0), rtol=1e-12)
    np.testing.assert_allclose(result.std, np.nanstd(pooled, axis=0), rtol=1e-10)
    np.testing.assert_allclose(result.minimum, np.nanmin(pooled, axis=0))
    np.testing.assert_allclose(result.maximum, np.nanmax(pooled, axis=0))


def test_a_feature_of_large_values_with_a_small_spread_keeps_its_precision():
    """Each site sends squared deviations from its own mean (combined exactly), not raw squares."""
    rng = np.random.default_rng(0)
    data = {f"s{i}": 1e9 + rng.normal(0, 0.01, size=(200, 1)) for i in range(3)}
    request = StatsRequest()
    result = combine(answers(data, request), request)
    assert result.std[0] == pytest.approx(np.std(np.concatenate(list(data.values()))), rel=1e-6)


def test_histograms_over_the_same_bins_add_up_to_the_pooled_histogram_and_values_are_clipped():
    data = sites()
    request = StatsRequest(features=4, bins=5, ranges=((-5.0, 30.0),) * 4)
    result = combine(answers(data, request), request)
    pooled = np.clip(np.concatenate(list(data.values())), -5.0, 30.0)
    for j in range(4):
        column = pooled[~np.isnan(pooled[:, j]), j]
        np.testing.assert_array_equal(result.histogram[j], np.histogram(column, bins=5, range=(-5, 30))[0])
        assert sum(result.histogram[j]) == result.count[j]
        assert result.edges[j] == pytest.approx(tuple(np.linspace(-5, 30, 6)))
    assert min(result.minimum) >= -5.0 and max(result.maximum) <= 30.0


def test_a_site_larger_than_max_examples_counts_a_sample_of_that_many():
    request = StatsRequest(max_examples=40)
    answer = site_statistics(np.arange(1000.0).reshape(-1, 1), request)
    answer.check(request)
    assert answer.column("count")[0] == 40


def _honest() -> tuple[SiteStatistics, StatsRequest]:
    request = StatsRequest(features=2, bins=2, ranges=((0.0, 10.0), (0.0, 10.0)), max_examples=100)
    x = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 9.0]])
    return site_statistics(x, request), request


def _forged(change) -> SiteStatistics:
    honest, _ = _honest()
    values = honest.values.copy()
    change(values)
    return SiteStatistics(values)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda v: v.__setitem__((0, 0), 1e6), "counts must be whole numbers from 0 to max_examples 100"),
        (lambda v: v.__setitem__((0, 0), 2.5), "counts must be whole numbers"),
        (lambda v: v.__setitem__((0, 1), 1e5), r"mean \(sum / count\) lies outside its min and max"),
        (lambda v: v.__setitem__((0, 2), 1e5), "squared deviations exceed what its min and max allow"),
        (lambda v: v.__setitem__((0, 2), -1.0), "squares must be >= 0"),
        (lambda v: v.__setitem__((0, 4), 50.0), "outside the range the request gives"),
        (lambda v: v.__setitem__((0, 3), 9.0), "a finite min <= max"),
        (lambda v: v.__setitem__((1, 5), 7.0), "histogram must count each of its values once"),
        (lambda v: v.__setitem__((1, 1), np.inf), "must be finite numbers"),
    ],
)
def test_a_dishonest_answer_is_refused_with_its_reason(change, reason):
    _, request = _honest()
    with pytest.raises(StatisticsError, match=reason):
        _forged(change).check(request)


def test_an_answer_of_another_shape_or_without_the_noise_asked_is_refused():
    honest, request = _honest()
    with pytest.raises(StatisticsError, match="expected 112"):
        SiteStatistics.decode(honest.encode()[:-8], 2, 2)
    with pytest.raises(StatisticsError, match="3 histogram bins, the request asks 2"):
        SiteStatistics(np.zeros((2, 8))).check(request)
    noisy = StatsRequest(features=2, ranges=((0.0, 10.0), (0.0, 10.0)), epsilon=1.0)
    with pytest.raises(StatisticsError, match="asks for noise and the answer has none"):
        SiteStatistics(np.zeros((2, 5))).check(noisy)


def test_noisy_statistics_are_close_release_no_min_or_max_and_the_noise_spends_the_epsilon_asked():
    data = {f"s{i}": np.random.default_rng(i).uniform(0, 10, size=(20_000, 3)) for i in range(3)}
    request = StatsRequest(features=3, bins=4, ranges=((0.0, 10.0),) * 3, epsilon=2.0)
    std = statistics_noise_std(2.0, request.delta, 3, True)
    result = combine(answers(data, request, noise_std=std, seed=None), request)
    assert result.minimum is None and result.maximum is None and result.noise_std == std
    np.testing.assert_allclose(result.mean, 5.0, atol=0.1)
    np.testing.assert_allclose(result.std, 10 / 12**0.5, atol=0.1)
    sensitivity = (4 * 3) ** 0.5  # count, sum, square and one bin per feature, each at most 1
    assert epsilon_poisson(std / sensitivity, 1.0, 1, request.delta) <= 2.0
    assert epsilon_poisson(0.99 * std / sensitivity, 1.0, 1, request.delta) > 2.0  # not more noise than needed


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"bins": 4}, "histograms need a range for every feature"),
        ({"epsilon": 1.0}, "noise needs a range for every feature"),
        ({"features": 3, "ranges": ((0.0, 1.0),) * 2}, "2 ranges for 3 features"),
        ({"features": 1, "ranges": ((1.0, 0.0),)}, "must be finite with low < high"),
        ({"features": 4000, "bins": 60, "ranges": ((0.0, 1.0),) * 4000}, f"exceed the {MAX_VALUES}"),
        ({"epsilon": 0.0, "ranges": ((0.0, 1.0),)}, "epsilon must be > 0"),
    ],
)
def test_a_request_that_cannot_work_is_refused_with_the_reason(kwargs, reason):
    with pytest.raises(StatisticsError, match=reason):
        StatsRequest(**kwargs)


def test_standardization_centres_and_scales_and_a_missing_value_becomes_the_mean():
    data = sites()
    request = StatsRequest(features=4)
    scale = combine(answers(data, request), request).standardization()
    pooled = np.concatenate(list(data.values()))
    out = scale.apply(pooled)
    assert out.dtype == np.float32 and not np.isnan(out).any()
    present = ~np.isnan(pooled)
    np.testing.assert_allclose([out[present[:, j], j].mean() for j in range(4)], 0, atol=1e-5)
    np.testing.assert_allclose([out[present[:, j], j].std() for j in range(4)], 1, atol=1e-5)
    assert (out[~present] == 0).all()
    with pytest.raises(StatisticsError, match="the data has 3 features, the standardization 4"):
        scale.apply(pooled[:, :3])
    own = Standardization.local(data["site-2"])  # its feature 3 is never measured: centred on 0, scale 1
    assert own.mean[3] == 0 and own.scale[3] == 1


def test_the_statistics_object_round_trips_and_garbage_is_refused():
    request = StatsRequest(features=4, bins=3, ranges=((-5.0, 30.0),) * 4)
    result = combine(answers(sites(), request), request)
    again = FederatedStatistics.decode(result.encode())
    assert again.mean == result.mean and again.histogram == result.histogram and again.clients == result.clients
    for bad in (b"[]", b'{"kind": "statistics", "features": 2, "mean": [1], "std": [1], "count": [1]}', b"\xff"):
        with pytest.raises(StatisticsError):
            FederatedStatistics.decode(bad)


def test_the_statistics_message_and_item_round_trip_and_an_item_must_sit_in_its_clients_partition():
    request = StatsRequest(features=2, bins=2, ranges=((0.0, 1.0), (0.0, 1.0)))
    message = StatsMessage("abc123", request.to_dict(), "2026-12-06T12:00:00+00:00", 60, "run-1")
    assert parse_message(message.to_dict()) == message
    answer = site_statistics(np.array([[0.2, 0.4], [0.6, 0.8]]), request)
    item = StatsItem("abc123", "client-1", 2, 2, answer.encode(), "2026-12-06T12:00:00+00:00").to_item()
    parsed = StatsItem.parse(item)
    assert SiteStatistics.decode(parsed.values, parsed.features, parsed.bins).values.tolist() == answer.values.tolist()
    with pytest.raises(InvalidMessage, match="does not match its request and client"):
        StatsItem.parse({**item, "client_id": "client-2"})
    with pytest.raises(InvalidMessage, match="statistics message request"):
        parse_message({**message.to_dict(), "request": {"bins": 3}})
