"""Federated statistics requests (what `fedstep stats` shows) of the clients' features, and the exchange behind a run's
`standardize: federated`.

The exchange is `fedstep evaluate`'s: a statistics message (`StatsMessage`) on the stack's topic to
the clients asked, each agent's answer (`StatsItem`) in its own partition, read until every client
answered or the deadline passed. Each answer is the client's claim: it is parsed and checked
(`fedstep.core.statistics.SiteStatistics.check`) before it counts, and one that fails is shown as
rejected with its reason. No example leaves a site, only its bounded sums (`fedstep.core.statistics`).

Histograms need the same bins at every site, so without `--range` (and without noise, which needs
ranges anyway) `fedstep stats` asks twice: first for the counts, moments, min and max, then for the
histograms over the global min and max.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from fedstep.aws.adapters import DynamoRoundTable, S3ModelStore, SnsPublisher
from fedstep.aws.stack import StackOutputs
from fedstep.core import keys, limits, tensors
from fedstep.core.clock import duration, utc_now
from fedstep.core.errors import FedstepError
from fedstep.core.schemas import MAX_EVAL_DEADLINE_S, InvalidMessage, ObjectRef, RunRecord, StatsItem, StatsMessage
from fedstep.core.statistics import (
    FederatedStatistics,
    SiteStatistics,
    StatisticsError,
    StatsRequest,
    combine,
)
from fedstep.operator.model import build_model

DEFAULT_DEADLINE_S = 900
"""How long `fedstep stats` waits for the clients' answers by default (15 minutes)."""
DEFAULT_BINS = 10
"""Histogram bins per feature when `--bins` is not given."""
POLL_S = 1.0
"""How often the answers are read while waiting, s."""
PROGRESS_EVERY_S = 30.0
"""How often a line says who is still awaited, s."""

ANSWERED, CANNOT, REJECTED, NO_ANSWER = "answered", "cannot answer", "rejected", "no answer"


@dataclass(frozen=True)
class Answer:
    """One asked client: answered, cannot answer (its reason in `detail`), rejected (its answer failed
    the checks; the reason in `detail`) or no answer."""

    client_id: str
    status: str
    detail: str = ""


@dataclass(frozen=True)
class Exchange:
    """A finished request: its id, the checked answers of the clients that answered, and every
    asked client's status, in the order asked."""

    request_id: str
    request: StatsRequest
    sites: dict[str, SiteStatistics]
    answers: list[Answer]


def judge(client_id: str, item: dict[str, Any] | None, request: StatsRequest) -> tuple[Answer, SiteStatistics | None]:
    """An asked client's answer, validated: its item parsed and its numbers checked, or why not."""
    if item is None:
        return Answer(client_id, NO_ANSWER), None
    try:
        parsed = StatsItem.parse(item)
        if parsed.error:
            return Answer(client_id, CANNOT, parsed.error), None
        site = SiteStatistics.decode(parsed.values, parsed.features, parsed.bins, parsed.noise_std)
        site.check(request)
    except (InvalidMessage, StatisticsError) as exc:
        return Answer(client_id, REJECTED, limits.reason(str(exc))), None
    return Answer(client_id, ANSWERED), site


@dataclass(frozen=True)
class Channel:
    """How the operator asks and hears: the stack (its topic), an SNS client to publish with, the
    table the answers are read from, and where progress lines go."""

    outputs: StackOutputs
    sns: Any
    table: DynamoRoundTable
    progress: Callable[[str], None]


def ask(
    channel: Channel,
    clients: list[str],
    request: StatsRequest,
    deadline_s: int,
    run_id: str = "",
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Exchange:
    """Publish the request to `clients` and read their answers every `POLL_S` until every client
    answered or `deadline_s` passed, saying each answer as it comes and, every `PROGRESS_EVERY_S`,
    who is still awaited."""
    if not 1 <= deadline_s <= MAX_EVAL_DEADLINE_S:
        raise FedstepError(f"--deadline must be from 1 to {MAX_EVAL_DEADLINE_S} s, got {deadline_s}")
    progress = channel.progress
    message = StatsMessage(secrets.token_hex(6), request.to_dict(), utc_now(), deadline_s, run_id)
    SnsPublisher(channel.outputs.topic_arn, channel.sns).publish(message.to_dict(), clients)
    progress(
        f"asked {len(clients)} client(s) for statistics (request {message.request_id}); "
        f"waiting up to {duration(deadline_s)}"
    )
    started = said = clock()
    items: dict[str, dict[str, Any]] = {}
    while True:
        waiting = [c for c in clients if c not in items]
        fresh = channel.table.get_client_items([keys.stats_item_key(message.request_id, c) for c in waiting])
        for client in waiting:
            if client in fresh:
                items[client] = fresh[client]
                answer, _ = judge(client, items[client], request)
                detail = f": {answer.detail}" if answer.detail else ""
                progress(f"  {client}: {answer.status}{detail} ({len(items)} of {len(clients)})")
        left = deadline_s - (clock() - started)
        if len(items) == len(clients) or left <= 0:
            break
        if clock() - said >= PROGRESS_EVERY_S:
            progress(f"  waiting for {', '.join(c for c in clients if c not in items)} ({duration(left)} left)")
            said = clock()
        sleep(min(POLL_S, max(left, 0.0)))
    answers, sites = [], {}
    for client in clients:
        answer, site = judge(client, items.get(client), request)
        answers.append(answer)
        if site is not None:
            sites[client] = site
    return Exchange(message.request_id, request, sites, answers)


def federated_statistics(
    channel: Channel,
    clients: list[str],
    request: StatsRequest,
    deadline_s: int,
    run_id: str = "",
    needs: int = 1,
    then_bins: int = 0,
) -> tuple[FederatedStatistics, list[Answer]]:
    """The clients' combined statistics: one exchange, or with `then_bins` (histograms asked without
    ranges) two, the second for histograms of that many bins over the first one's min and max.
    FedstepError when fewer than `needs` answered."""
    exchange = ask(channel, clients, request, deadline_s, run_id)
    _enough(exchange, needs)
    result = combine(exchange.sites, request)
    if not then_bins:
        return result, exchange.answers
    assert result.minimum is not None and result.maximum is not None  # exact answers carry them
    ranges = tuple(_histogram_range(low, high) for low, high in zip(result.minimum, result.maximum, strict=True))
    histogram = replace(request, bins=then_bins, ranges=ranges, features=result.features)
    channel.progress("asking again for the histograms, over the global min and max")
    again = ask(channel, list(exchange.sites), histogram, deadline_s, run_id)
    _enough(again, needs)
    return combine(again.sites, histogram), again.answers


def _histogram_range(low: float, high: float) -> tuple[float, float]:
    """A feature's histogram range from its global min and max (a constant or empty feature gets a
    unit range around its value)."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return (0.0, 1.0)
    return (low, high) if high > low else (low - 0.5, high + 0.5)


def _enough(exchange: Exchange, needs: int) -> None:
    if len(exchange.sites) >= needs:
        return
    problems = "; ".join(
        f"{a.client_id}: {a.status}{' (' + a.detail + ')' if a.detail else ''}" for a in exchange.answers
    )
    raise FedstepError(
        f"federated statistics: {len(exchange.sites)} of {len(exchange.answers)} client(s) answered usably, "
        f"{needs} needed ({problems}); are their agents running? (`fedstep clients`)"
    )


# -- a run's standardization -----------------------------------------------------------------------


def statistics_for_run(
    record: RunRecord,
    outputs: StackOutputs,
    s3: Any,
    sns: Any,
    table_: DynamoRoundTable,
    progress: Callable[[str], None],
) -> ObjectRef:
    """For a run with `standardize: federated`, before it starts: ask the run's clients for their
    statistics (each site's contribution capped at the run's `max_examples`), wait up to the run's
    round deadline (at most `DEFAULT_DEADLINE_S`), and write the combined statistics once under
    `keys.statistics_key`, which every client reads and checks by its sha256. FedstepError when
    fewer than the run's quorum answered."""
    request = StatsRequest(max_examples=record.bounds.max_examples)
    deadline = min(record.round_timeout_s, DEFAULT_DEADLINE_S)
    progress(f"federated statistics for run {record.run_id} (standardize: federated)")
    channel = Channel(outputs, sns, table_, progress)
    result, _ = federated_statistics(channel, list(record.clients), request, deadline, record.run_id, record.quorum)
    data = result.encode()
    key = keys.statistics_key(record.run_id)
    if not S3ModelStore(outputs.bucket, s3).put_once(key, data):
        raise FedstepError(f"run {record.run_id} has federated statistics already; choose another run id")
    progress(f"federated statistics of {len(result.clients)} client(s), {result.features} features: {key}")
    return ObjectRef(key, tensors.sha256_hex(data), len(data))


def run_statistics(record: RunRecord, outputs: StackOutputs, s3: Any) -> FederatedStatistics | None:
    """The federated statistics a run trained with (None: it standardized otherwise, or not at all)."""
    ref = record.training.standardization
    if ref is None:
        return None
    data = S3ModelStore(outputs.bucket, s3).get(ref.key)
    if tensors.sha256_hex(data) != ref.sha256:
        raise FedstepError(f"run {record.run_id}: {ref.key} does not match the sha256 its run record holds")
    return FederatedStatistics.decode(data, ref.key)


# -- the command ---------------------------------------------------------------------------------


def parse_ranges(values: list[str] | None, features: int | None) -> tuple[tuple[float, float], ...] | None:
    """`--range LO:HI` (every feature) and `--range I=LO:HI` (feature I, from 0), as one range per
    feature (or one for all, when only LO:HI is given and the width is unknown); every feature needs
    one once any is given. None without `--range`."""
    if not values:
        return None
    every: tuple[float, float] | None = None
    each: dict[int, tuple[float, float]] = {}
    for value in values:
        index, _, bounds = value.rpartition("=")
        low, sep, high = bounds.partition(":")
        try:
            pair = (float(low), float(high))
            if not sep:
                raise ValueError
        except ValueError:
            raise FedstepError(f"--range {value!r}: give LO:HI (every feature) or I=LO:HI (feature I)") from None
        if not index:
            every = pair
            continue
        if not index.isdigit():
            raise FedstepError(f"--range {value!r}: the feature before = is its number, from 0")
        each[int(index)] = pair
    if not each:
        return (every,) * (features or 1)  # type: ignore[return-value]
    width = features or (max(each) + 1 if every is None else None)
    if width is None:
        raise FedstepError("--range I=LO:HI needs the number of features: give a model, or a range for every feature")
    missing = [i for i in range(width) if i not in each and every is None]
    if missing:
        raise FedstepError(f"--range: no range for feature(s) {', '.join(map(str, missing[:10]))}")
    outside = [i for i in each if i >= width]
    if outside:
        raise FedstepError(f"--range: feature {outside[0]} does not exist ({width} features)")
    return tuple(each.get(i, every) for i in range(width))  # type: ignore[misc]


def model_width(target: str) -> int:
    """The number of input features of a model: `module:function` returning a Keras model, or a
    `.keras` file (loaded with Keras' safe mode)."""
    from client_agent.keras_model import import_keras

    keras = import_keras()
    if target.endswith(".keras"):
        if not Path(target).is_file():
            raise FedstepError(f"{target}: no such model file")
        model = keras.models.load_model(target, safe_mode=True, compile=False)
    else:
        model = build_model(target)
    shape = model.inputs[0].shape[1:]
    if any(d is None for d in shape):
        raise FedstepError(f"{target}: its input shape {tuple(shape)} is not fixed, so its features are unknown")
    return int(np.prod(shape))


def is_run_id(text: str) -> bool:
    try:
        keys.check_id("run id", text)
    except ValueError:
        return False
    return True
