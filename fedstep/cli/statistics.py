"""`fedstep stats`: federated statistics of the clients' features, as a table or JSON (the exchange is
`fedstep.operator.statistics`)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedstep.aws.adapters import DynamoRoundTable
from fedstep.aws.stack import StackOutputs
from fedstep.core.errors import FedstepError
from fedstep.core.statistics import FederatedStatistics, StatisticsError, StatsRequest
from fedstep.operator.statistics import (
    ANSWERED,
    DEFAULT_BINS,
    Answer,
    Channel,
    federated_statistics,
    is_run_id,
    model_width,
    parse_ranges,
    run_statistics,
)
from fedstep.render.statistics import render
from fedstep.render.text import clean


def _progress(line: str) -> None:
    print(clean(line), file=sys.stderr, flush=True)


def stats_command(args: Any, outputs: StackOutputs, client: Callable[[str], Any]) -> int:
    """`fedstep stats [RUN | MODEL]`: a run's statistics (those it trained with, or new ones from its
    clients with `--new`), or new ones from the clients asked (`--clients`, default all the stack's),
    for a model's input when one is given. 0 when every asked client answered usably, else 1."""
    table_ = DynamoRoundTable(outputs.table, client("dynamodb"))
    record = table_.get_run(args.target) if args.target and is_run_id(args.target) else None
    features = None
    if record is not None:
        clients = list(record.clients)
        stored = None if args.new else run_statistics(record, outputs, client("s3"))
        if stored is not None:
            return _print(args, stored, None, f"the federated statistics run {record.run_id} trained with")
    else:
        if args.target:
            features = model_width(args.target)
        clients = sorted(outputs.queues)
    if args.clients:
        from fedstep.operator.settings import client_names

        named = client_names(args.clients, "--clients")
        unknown = [c for c in named if c not in outputs.queues]
        if unknown:
            raise FedstepError(f"--clients: {', '.join(unknown)} not among the stack's clients ({', '.join(clients)})")
        clients = named
    if not clients:
        raise FedstepError("the stack has no clients; add them to the deployment config and deploy")
    bins = DEFAULT_BINS if args.bins is None else args.bins
    ranges = parse_ranges(args.range, features)
    later = bins if bins and ranges is None and args.dp_epsilon is None else 0  # histograms after min and max
    try:
        request = StatsRequest(
            features=features,
            bins=0 if later else bins,
            ranges=ranges,
            max_examples=args.max_examples,
            epsilon=args.dp_epsilon,
            delta=args.dp_delta,
        )
    except StatisticsError as exc:
        raise FedstepError(str(exc)) from None
    run_id = record.run_id if record else ""
    channel = Channel(outputs, client("sns"), table_, _progress)
    stats, answers = federated_statistics(channel, clients, request, args.deadline, run_id, then_bins=later)
    title = f"federated statistics of {len(stats.clients)} of {len(clients)} client(s)"
    _print(args, stats, answers, title)
    return 0 if all(a.status == ANSWERED for a in answers) else 1


def _print(args: Any, stats: FederatedStatistics, answers: list[Answer] | None, title: str) -> int:
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_bytes(stats.encode())
        _progress(f"wrote {args.out}")
    if args.json:
        doc = stats.to_dict()
        if answers is not None:
            doc["answers"] = [a.__dict__ for a in answers]
        print(json.dumps(doc, indent=2))
    else:
        print(render(stats, answers, title))
    return 0
