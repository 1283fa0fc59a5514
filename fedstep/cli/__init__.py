"""`fedstep`: the operator's command line.

start, runs, status [--watch], stop, download, report: run a training and follow it; verify: check a
run's stored objects against the sha256 its records hold; evaluate: the
global model on the clients' test splits (or the operator's data); promote and download --approved:
the approved model and its card; cost: a run's estimated AWS cost; clients and client-config: the
organisations; strategies: the aggregation strategies and their parameters; local: everything on
the embedded local cloud.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from fedstep.core.errors import FedstepError
from fedstep.core.schemas.run_record import DEFAULT_SECAGG_PHASE_TIMEOUT_S
from fedstep.core.version import __version__
from fedstep.operator.paths import model_file, report_folder
from fedstep.operator.settings import LOCAL_DEFAULTS, START_DEFAULTS, RunSettingsDefaults
from fedstep.render.text import clean


def _settings_args(parser: argparse.ArgumentParser, defaults: RunSettingsDefaults) -> None:
    """The run settings as flags; each overrides the run file, which overrides the defaults."""
    parser.add_argument(
        "--run-file", help="JSON file of run settings (and model); flags override it (see README, Configuration)"
    )
    parser.add_argument("--rounds", type=int, help=f"number of rounds (default {defaults.rounds})")
    parser.add_argument("--epochs", type=int, help="local epochs per round (default 1)")
    parser.add_argument("--batch-size", type=int, help="local batch size (default 32)")
    parser.add_argument("--learning-rate", type=float, help="local learning rate (default: the model's own)")
    parser.add_argument("--strategy", help="aggregation strategy (default fedavg; `fedstep strategies` lists them)")
    parser.add_argument(
        "--strategy-param",
        action="append",
        metavar="NAME=VALUE",
        help="a parameter of the strategy, e.g. eta=0.01 (repeat for several; see `fedstep strategies`)",
    )
    parser.add_argument(
        "--codec",
        help="how clients encode their updates: float32 (default), float16, int8, topk:FRACTION or "
        "topk:FRACTION+int8 (`fedstep codecs` lists them)",
    )
    parser.add_argument(
        "--train-param",
        action="append",
        metavar="NAME=VALUE",
        help="a setting for the clients' train functions, as training.params, e.g. dropout=0.2 (repeat for several)",
    )
    parser.add_argument(
        "--standardize",
        choices=("none", "local", "federated"),
        help="scale the clients' features before training: none (default), local (each site's own mean and std) "
        "or federated (the statistics of every site, computed before round 1; see `fedstep stats`)",
    )
    parser.add_argument(
        "--clients-per-round", help="clients each round selects: a number (3) or a fraction (0.5); default all"
    )
    parser.add_argument(
        "--selection",
        help="how a round samples --clients-per-round: fixed (exactly that many; epsilon for replace-one neighbours) "
        "or poisson (each client with probability clients-per-round / clients; epsilon for add/remove neighbours); "
        "default fixed, see docs/privacy.md",
    )
    parser.add_argument(
        "--select-online",
        action=argparse.BooleanOptionalAction,
        help="leave out of each round the clients whose heartbeat says offline or stopped (default on; "
        "--no-select-online waits for every selected client; see README, Configuration)",
    )
    parser.add_argument(
        "--round-retries", type=int, help="publish a round that misses its quorum again, up to N times (default 0)"
    )
    parser.add_argument(
        "--target",
        help="stop early when the global model's federated evaluation meets this, e.g. test_accuracy>=0.9",
    )
    parser.add_argument(
        "--quorum", type=int, help="fewest valid updates a round may be aggregated from (default: half the clients)"
    )
    parser.add_argument(
        "--round-timeout", type=int, dest="round_timeout_s", help=f"round deadline, s (default {defaults.timeout})"
    )
    parser.add_argument(
        "--min-participants",
        type=int,
        help="never aggregate a round from fewer valid updates (default 2; 1 publishes a single client's update)",
    )
    parser.add_argument(
        "--max-examples", type=int, help="cap on the examples a client's update is weighted by (default 100000)"
    )
    parser.add_argument(
        "--max-update-norm",
        type=float,
        help="bound on an update's L2 norm, trained minus global (default: 10 x the larger of the "
        "initial model's norm and sqrt(parameters))",
    )
    parser.add_argument(
        "--bound-action",
        choices=("clip", "reject"),
        help="an update beyond max-examples or max-update-norm is clipped (default) or rejected",
    )
    parser.add_argument(
        "--dp",
        choices=("central", "client-clip", "distributed", "dp-sgd"),
        help="differential privacy: client-level by the server (central), with clients clipping (client-clip), "
        "with each client adding its share of the noise under --secure-aggregation (distributed), or record-level "
        "on each client (dp-sgd); see docs/privacy.md",
    )
    parser.add_argument(
        "--dp-noise-multiplier", type=float, help="noise std over the clip norm, z (required with --dp)"
    )
    parser.add_argument(
        "--dp-clip",
        help="clip norm C, or 'adaptive' (central modes: default adaptive; dp-sgd: default 1.0; distributed: required)",
    )
    parser.add_argument("--dp-delta", type=float, help="delta of the (epsilon, delta) guarantee (default 1e-5)")
    parser.add_argument(
        "--dp-epsilon",
        type=float,
        help="epsilon budget: the run stops before a round would exceed it (central modes, distributed)",
    )
    parser.add_argument(
        "--secure-aggregation",
        action=argparse.BooleanOptionalAction,
        help="secure aggregation (SecAgg+): the server learns only the sum of each round's updates, even when "
        "clients drop out (default off; averaging strategies, float32 updates; see docs/privacy.md)",
    )
    parser.add_argument(
        "--secagg-threshold",
        type=int,
        metavar="T",
        help="the fewest survivors a secure round's sum is unmasked from (default: max(2, min-participants, "
        "quorum), at most the clients per round)",
    )
    parser.add_argument(
        "--secagg-neighbours",
        type=int,
        metavar="K",
        help="how many others each client masks with and shares its secrets to: 0 (default) every other selected "
        "client, else an even number of at least threshold - 1",
    )
    parser.add_argument(
        "--secagg-clip",
        type=float,
        metavar="C",
        help="the L2 norm each client clips its update to before it is masked (default 10; under --dp distributed, "
        "--dp-clip)",
    )
    parser.add_argument(
        "--secagg-phase-timeout",
        type=int,
        dest="secagg_phase_timeout_s",
        metavar="S",
        help="deadline of each later phase of a secure round (sharing keys, masked inputs, revealing), s "
        f"(default {DEFAULT_SECAGG_PHASE_TIMEOUT_S})",
    )


def _settings(args: argparse.Namespace, defaults: RunSettingsDefaults, run_file: dict[str, Any]):  # -> RunSettings
    from fedstep.operator.settings import RunSettings, merge_settings

    base = RunSettings(rounds=defaults.rounds, round_timeout_s=defaults.timeout)
    return merge_settings(base, run_file, run_flags(args))


def run_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed arguments, with `--strategy-param NAME=VALUE`s as `strategy_params` and
    `--train-param NAME=VALUE`s as `train_params` (numbers and booleans as such)."""
    from fedstep.core.strategies.params import parse_assignments, scalar_of

    try:
        train = parse_assignments(getattr(args, "train_param", None) or [], "training parameter", "dropout=0.2")
        return {
            **vars(args),
            "strategy_params": parse_assignments(args.strategy_param or []),
            "train_params": {name: scalar_of(value) for name, value in train.items()},
        }
    except ValueError as exc:
        raise FedstepError(str(exc)) from None


def _run_file(args: argparse.Namespace) -> dict[str, Any]:
    from fedstep.operator.settings import load_run_file

    return load_run_file(args.run_file) if args.run_file else {}


def _stack_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stack", default="fedstep", help="CloudFormation stack name (default fedstep)")
    parser.add_argument(
        "--region", help="AWS region (default: $AWS_REGION, else $AWS_DEFAULT_REGION, else the profile's)"
    )
    parser.add_argument("--endpoint-url", help="AWS endpoint override (e.g. the embedded local cloud)")


def _stack(args: argparse.Namespace):  # -> fedstep.operator.stack.Stack
    """The deployed stack a command works on, from `--stack`, `--region` and `--endpoint-url`."""
    from fedstep.operator.stack import Stack

    return Stack(args.stack, args.region, args.endpoint_url)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedstep", description="serverless federated learning on AWS")
    parser.add_argument("--version", action="version", version=f"fedstep {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    start = sub.add_parser("start", help="start a training run on a deployed stack")
    start.add_argument("--model", help="module:function returning a compiled Keras model (not with --resume)")
    start.add_argument(
        "--resume", metavar="RUN_ID", help="continue a failed or stopped run from its last completed round"
    )
    _stack_args(start)
    start.add_argument("--run-id", help="run id (default run-<UTC time>-<random>)")
    start.add_argument(
        "--seed",
        type=int,
        help="seed for the initial weights and the client selection (default: unseeded, selection seed 0)",
    )
    start.add_argument("--watch", action="store_true", help="then follow the run, as `fedstep status --watch`")
    start.add_argument(
        "--select", metavar="A,B", help="take part with these of the stack's clients only, by name (default all)"
    )
    start.add_argument("--exclude", metavar="C", help="leave these clients out of the run, by name (a,b for several)")
    _settings_args(start, START_DEFAULTS)

    stats = sub.add_parser(
        "stats", help="federated statistics of the clients' features: count, mean, std, min/max, histograms"
    )
    stats.add_argument(
        "target",
        nargs="?",
        help="a run id (its clients; shows the statistics it trained with, if any) or a model (module:function or "
        "a .keras file: its input features); default: the stack's clients",
    )
    _stack_args(stats)
    stats.add_argument("--clients", metavar="A,B", help="ask only these clients (default: the run's, else all)")
    stats.add_argument("--new", action="store_true", help="for a run: ask its clients again")
    stats.add_argument(
        "--bins", type=int, help="histogram bins per feature (default 10; 0: none; without --range: asks twice)"
    )
    stats.add_argument(
        "--range",
        action="append",
        metavar="LO:HI",
        help="clip every feature into LO:HI (or only feature I with I=LO:HI; repeat): histogram bins lie in it",
    )
    stats.add_argument(
        "--dp-epsilon", type=float, help="Gaussian noise on each client's sums for (epsilon, delta) (needs --range)"
    )
    stats.add_argument("--dp-delta", type=float, default=1e-5, help="delta with --dp-epsilon (default 1e-5)")
    stats.add_argument(
        "--max-examples", type=int, default=100_000, help="rows a client counts at most (default 100000)"
    )
    stats.add_argument("--deadline", type=int, default=900, help="how long to wait for the answers, s (default 900)")
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    stats.add_argument("--out", help="also write the statistics (JSON) to this file")

    runs = sub.add_parser("runs", help="the stack's runs, newest first, with their status")
    _stack_args(runs)
    runs.add_argument("--limit", type=int, default=20, help="how many runs (default 20)")
    runs.add_argument("--json", action="store_true", help="print the runs as JSON")

    status = sub.add_parser("status", help="a run's per-round table: participants, rejections, metrics, durations")
    status.add_argument("run_id")
    _stack_args(status)
    status.add_argument("--watch", action="store_true", help="print each round as it completes, until the run ends")
    status.add_argument("--interval", type=float, default=2.0, help="--watch polling interval, s (default 2)")
    status.add_argument(
        "--json", action="store_true", help="print the run and its rounds as JSON (with each round's clients)"
    )
    status.add_argument("--clients", action="store_true", help="also a table of every client's own metrics per round")
    status.add_argument("--round", type=int, help="the per-client table of this round only")

    evaluate = sub.add_parser("evaluate", help="evaluate a run's global model on the clients' test splits (or --data)")
    evaluate.add_argument("run_id")
    _stack_args(evaluate)
    evaluate.add_argument(
        "--round", type=int, help="the model after this round (default: the last aggregated; 0: initial)"
    )
    evaluate.add_argument("--clients", help="ask only these clients, e.g. a,b (default: the run's clients)")
    evaluate.add_argument(
        "--deadline", type=int, default=900, help="seconds to wait for the clients' answers (default 900)"
    )
    evaluate.add_argument("--data", help="module:function returning (x, y): evaluate here, on your own data, instead")
    evaluate.add_argument("--json", action="store_true", help="print JSON instead of a table")

    stop = sub.add_parser("stop", help="stop a running run and tell its clients it ended")
    stop.add_argument("run_id")
    _stack_args(stop)
    stop.add_argument(
        "--reason",
        default="stopped by an operator",
        help="why: shown by `fedstep status` and to the run's agents, recorded as the execution's cause",
    )

    download = sub.add_parser("download", help="a run's global model as a .keras file, ready for model.predict")
    download.add_argument("run_id", nargs="?", help="the run (not with --approved)")
    _stack_args(download)
    download.add_argument("--round", type=int, help="after this round (default: the last completed; 0: initial)")
    download.add_argument("-o", "--out", type=Path, help="file to write (default runs/<run>/<run>-round<r>.keras)")
    download.add_argument(
        "--approved", action="store_true", help="the approved model (`fedstep promote`), checked against its card"
    )
    download.add_argument("--name", default="default", help="with --approved: the approved model's name (default)")

    promote = sub.add_parser("promote", help="approve a round's global model (with its model card) in the registry")
    promote.add_argument("run_id")
    _stack_args(promote)
    promote.add_argument("--round", type=int, required=True, help="the aggregated round whose global model to approve")
    promote.add_argument("--note", default="", help="why it is approved, kept in the promotion history")
    promote.add_argument("--name", default="default", help="the approved model's name (default: default)")

    verify = sub.add_parser(
        "verify",
        help="check every object a run's records name (models, states, plans, manifests, cards) against its "
        "sha256; exit 1 naming each mismatch",
    )
    verify.add_argument("run_id")
    _stack_args(verify)
    verify.add_argument("--json", action="store_true", help="print the report as JSON")

    report = sub.add_parser("report", help="an HTML report of a run, with its plots as PNG files")
    report.add_argument("run_id")
    _stack_args(report)
    report.add_argument("-o", "--out", type=Path, help="folder to write into (default runs/<run>/report)")

    client_config = sub.add_parser("client-config", help="print a ready client config file for a client")
    client_config.add_argument("client_id", help="the client's id in the deployment config")
    _stack_args(client_config)
    client_config.add_argument("--data", default="module:function", help="the client's data loader to fill in")
    client_config.add_argument("-o", "--out", type=Path, help="write to this file instead of printing")

    clients = sub.add_parser("clients", help="which client agents are online (from their heartbeats)")
    _stack_args(clients)
    clients.add_argument("--json", action="store_true", help="print JSON instead of a table")

    cost = sub.add_parser("cost", help="a run's estimated AWS cost, per service and per participant")
    cost.add_argument("run_id")
    _stack_args(cost)
    cost.add_argument("--json", action="store_true", help="print JSON instead of tables")

    strategies = sub.add_parser("strategies", help="the aggregation strategies, with their parameters and defaults")
    strategies.add_argument("--json", action="store_true", help="print JSON instead of text")

    codecs = sub.add_parser("codecs", help="the update codecs: what each sends up and how close it decodes")
    codecs.add_argument("--json", action="store_true", help="print JSON instead of text")

    local = sub.add_parser("local", help="run a real federated training on the embedded local cloud")
    local.add_argument(
        "--dataset",
        default="digits",
        help="digits, mnist, heart, heart-raw (needs --standardize), or module:function returning your whole "
        "data set: (x, y), or with --partition natural (x, y, groups) or {site: ((x_train, y_train), "
        "(x_test, y_test))} (default digits)",
    )
    local.add_argument(
        "--partition",
        default="iid",
        help="how the clients' data is divided: iid, dirichlet:ALPHA, shards:K, quantity:ALPHA, or natural: one "
        "client per site of a data set that has them (heart's and heart-raw's hospitals, your loader's groups) "
        "(default iid; heart, heart-raw: natural)",
    )
    local.add_argument("--clients", type=int, default=3, help="number of client agents (default 3)")
    local.add_argument(
        "--out", type=Path, help="output folder (default runs/<run>, and runs/latest links to it; demo: runs/demo)"
    )
    local.add_argument(
        "--model",
        help="module:function returning a compiled Keras model (default: the built-in data set's; needed for your own)",
    )
    local.add_argument(
        "--seed", type=int, help="seed for the initial weights, the client selection and the data split (default 0)"
    )
    local.add_argument(
        "--keep-running",
        action="store_true",
        help="after the run, keep the local cloud and its client agents up for `fedstep status`, `report`, "
        "`start`, ... until Ctrl-C (writes <out>/local-cloud.env)",
    )
    local.add_argument(
        "--engine",
        default="cloud",
        choices=("cloud", "memory"),
        help="cloud: deploy the stack into the embedded local cloud, one agent process per client (default); "
        "memory: the same rounds in this process and a pool of worker processes, up to 1000 clients, no cloud "
        "(docs/local-cloud.md, Two engines)",
    )
    local.add_argument(
        "--workers", type=int, help="--engine memory: worker processes training the clients (default one per core)"
    )
    _settings_args(local, LOCAL_DEFAULTS)
    return parser


def _cost(args: argparse.Namespace) -> int:
    from fedstep.render.cost import estimate_run, render_json, render_text

    stack = _stack(args)
    est = estimate_run(_view(stack, args.run_id), stack.outputs, stack.client("stepfunctions"))
    region = stack.session.region_name
    print(render_json(est, region) if args.json else render_text(est, region))
    return 0


def _strategies(args: argparse.Namespace) -> int:
    from fedstep.render.strategies import render_strategies

    print(render_strategies(as_json=args.json))
    return 0


def _codecs(args: argparse.Namespace) -> int:
    from fedstep.render.codecs import render_codecs

    print(render_codecs(as_json=args.json))
    return 0


def _start(args: argparse.Namespace) -> int:
    from fedstep.operator.start import resume_rounds

    run_file = _run_file(args)
    model = args.model or run_file.get("model")
    if bool(model) == bool(args.resume):
        raise FedstepError("give --model (or model in the run file) to start a new run, or --resume RUN_ID")
    rounds = resume_rounds(args.resume, vars(args), run_file) if args.resume else None  # refuses other settings
    settings = None if args.resume else _settings(args, START_DEFAULTS, run_file)  # a continuation keeps its own
    stack = _stack(args)
    seed = args.seed if args.seed is not None else run_file.get("seed")
    started = launch(stack, settings, model=model, seed=seed, run_id=args.run_id, resume=args.resume, rounds=rounds)
    if args.resume:
        print(f"resumed run {args.resume} as run {started.run_id}")
    else:
        print(f"started run {started.run_id} with clients {', '.join(started.clients)}")
    print(f"execution: {started.execution_arn}")
    return _watch(stack, started.run_id, 2.0) if args.watch else 0


def launch(stack: Any, settings: Any, **run: Any) -> Any:  # -> StartedRun
    """`fedstep.operator.start.launch`, its warnings and notes on stderr (what `fedstep start` prints)."""
    from fedstep.operator.start import launch as start

    def say(prefix: str) -> Any:
        return lambda line: print(clean(f"fedstep: {prefix}{line}"), file=sys.stderr, flush=True)

    return start(stack, settings, warn=say("warning: "), note=say(""), progress=_stderr_line, **run)


def _stderr_line(line: str) -> None:
    print(clean(line), file=sys.stderr, flush=True)


def _view(stack: Any, run_id: str):  # -> RunView
    from fedstep.operator.views import view_of

    return view_of(stack, run_id)


def _watch(stack: Any, run_id: str, interval_s: float) -> int:
    from fedstep.render.status import watch

    view = watch(lambda: _view(stack, run_id), lambda line: print(line, flush=True), interval_s)
    return 0 if view.status == "SUCCEEDED" else 1


def _runs(args: argparse.Namespace) -> int:
    from fedstep.aws.adapters import DynamoRoundTable
    from fedstep.operator.views import list_runs
    from fedstep.render.status import render_runs, render_runs_json

    stack = _stack(args)
    table = DynamoRoundTable(stack.outputs.table, stack.client("dynamodb"))
    runs = list_runs(stack.outputs, stack.client("stepfunctions"), args.limit)

    def rounds_of(run_id: str) -> tuple[int, int | None]:
        record = table.get_run(run_id)
        return len(table.list_rounds(run_id)), record.rounds if record else None

    print((render_runs_json if args.json else render_runs)(runs, rounds_of))
    return 0


def _status(args: argparse.Namespace) -> int:
    from fedstep.render.status import render_status, render_status_json

    stack = _stack(args)
    if args.watch:
        return _watch(stack, args.run_id, args.interval)
    view = _view(stack, args.run_id)
    if args.json or args.clients or args.round is not None:
        view = _with_clients(stack, view, args.round)
    print(render_status_json(view) if args.json else render_status(view))
    return 0


def _with_clients(stack: Any, view: Any, only: int | None) -> Any:
    """`view` with its clients' own metrics (of round `only`, which must be completed, or of all)."""
    from fedstep.aws.adapters import DynamoRoundTable
    from fedstep.operator.views import with_clients

    if only is not None and only not in {s.round for s in view.rounds}:
        raise FedstepError(f"run {view.run_id} has no completed round {only}")
    return with_clients(view, DynamoRoundTable(stack.outputs.table, stack.client("dynamodb")), only)


def _stats(args: argparse.Namespace) -> int:
    from fedstep.cli.statistics import stats_command

    stack = _stack(args)
    return stats_command(args, stack.outputs, stack.client)


def _evaluate(args: argparse.Namespace) -> int:
    from fedstep.cli.evaluate import evaluate_command

    stack = _stack(args)
    return evaluate_command(args, _view(stack, args.run_id), stack.outputs, stack.client)


def _stop(args: argparse.Namespace) -> int:
    from fedstep.aws.adapters import DynamoRoundTable
    from fedstep.operator.operate import stop_run

    stack = _stack(args)
    view = _view(stack, args.run_id)
    table = DynamoRoundTable(stack.outputs.table, stack.client("dynamodb"))
    report = stop_run(view, stack.outputs, stack.client("stepfunctions"), stack.client("sns"), table, args.reason)
    print(report.text())  # read after the stop took effect: a round completed meanwhile is counted
    return 0


def _download(args: argparse.Namespace) -> int:
    from fedstep.aws.adapters import DynamoRoundTable
    from fedstep.operator.operate import download_model

    if args.approved:
        return _download_approved(args)
    if not args.run_id:
        raise FedstepError("give a run id, or --approved for the approved model")
    stack = _stack(args)
    view = _view(stack, args.run_id)
    round_number = args.round if args.round is not None else view.last_round
    out = args.out or model_file(args.run_id, round_number)
    table = DynamoRoundTable(stack.outputs.table, stack.client("dynamodb"))
    path = download_model(view, stack.outputs, stack.client("s3"), table, args.round, out)
    print(f"wrote {path}: the global model after round {round_number}; keras.models.load_model({str(path)!r})")
    return 0


def _download_approved(args: argparse.Namespace) -> int:
    from fedstep.operator.registry import download_approved

    if args.run_id or args.round is not None:
        raise FedstepError("--approved downloads the approved model: give no run id or --round with it")
    stack = _stack(args)
    pointer, path = download_approved(stack.outputs, stack.client("s3"), args.name, args.out)
    print(
        f"wrote {path}: the approved model {args.name!r} (run {pointer['run_id']} round {pointer['round']}, "
        f"approved {pointer['approved_at']}), sha256 checked against its card"
    )
    return 0


def _promote(args: argparse.Namespace) -> int:
    from fedstep.aws.adapters import DynamoRoundTable
    from fedstep.operator.registry import promote

    stack = _stack(args)
    view = _view(stack, args.run_id)
    table = DynamoRoundTable(stack.outputs.table, stack.client("dynamodb"))
    done = promote(view, args.round, args.note, args.name, stack.outputs, stack.client("s3"), table)
    before = done.previous
    print(f"approved run {args.run_id} round {args.round} as model {args.name!r}; card {done.card_ref.key}")
    if before:
        print(f"it replaces run {before['run_id']} round {before['round']} (approved {before['approved_at']})")
    print(f"history: {done.pointer['history_key']}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    """Exit 0 when every object matches its record, 1 naming each mismatch (2, by `main`: no check)."""
    from fedstep.operator.integrity import verify_run
    from fedstep.render.integrity import render_json, render_text

    stack = _stack(args)
    report = verify_run(args.run_id, stack.outputs, stack.client("s3"), stack.table)
    print(render_json(report) if args.json else render_text(report))
    return 0 if report.ok else 1


def _report(args: argparse.Namespace) -> int:
    from fedstep.operator.views import with_partition
    from fedstep.report import plots, write_report

    stack = _stack(args)
    view = with_partition(_view(stack, args.run_id), stack.outputs, stack.client("s3"))
    view = _with_clients(stack, view, None)
    from fedstep.operator.registry import card_of_round

    card = card_of_round(view, view.last_round, stack.outputs, stack.client("s3"))
    page = write_report(view, args.out or report_folder(args.run_id), card=card)
    print(f"wrote {page} and {', '.join(f'{p}.png' for p in plots(view))} beside it")
    return 0


def _client_config(args: argparse.Namespace) -> int:
    import json

    stack = _stack(args)
    config = stack.outputs.client_config(args.client_id, stack.session.region_name, data=args.data)
    if args.endpoint_url:
        config["endpoint_url"] = args.endpoint_url
    text = json.dumps(config, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
        print(
            f'wrote {args.out}; set "data" to the organisation\'s loader, then: fedstep-client run --config {args.out}'
        )
    else:
        print(text)
    return 0


def _clients(args: argparse.Namespace) -> int:
    from fedstep.aws.adapters import DynamoRoundTable
    from fedstep.render.clients import render_json, render_table, statuses

    stack = _stack(args)
    ids = sorted(stack.outputs.queues)
    table = DynamoRoundTable(stack.outputs.table, stack.client("dynamodb"))
    rows = statuses(ids, table.get_heartbeats(ids), feedback=table.get_feedback(ids))
    print(render_json(rows) if args.json else render_table(rows))
    if stack.outputs.revoked and not args.json:
        revoked = ", ".join(sorted(stack.outputs.revoked))
        print(f"revoked: {revoked} (no run selects them; their queues and data stay; docs/operations.md)")
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _local(args: argparse.Namespace) -> int:
    import signal

    from fedstep.local.demo import demo_config
    from fedstep.local.engines import run_local

    signal.signal(signal.SIGTERM, _interrupt)  # stop like Ctrl-C: clients and the local cloud are shut down
    # Ctrl-C stops the run even when the parent started this process with SIGINT ignored (a shell's
    # background job does), where Python would leave it ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    config = demo_config(  # the same function as fedstep.simulate's
        dataset=args.dataset,
        partition=args.partition,
        clients=args.clients,
        out=args.out,
        model=args.model,
        seed=args.seed,
        keep_running=args.keep_running,
        run_file=_run_file(args),
        settings=run_flags(args),
        engine=args.engine,
        workers=args.workers,
    )
    run_local(config)
    return 0


def _reader_left() -> int:
    """The reader of our output closed the pipe (`fedstep runs | head`): end quietly, as a shell tool does,
    pointing stdout at /dev/null so that the interpreter's last flush raises nothing. Exit status 141,
    the shell's for a command ended by SIGPIPE."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 141


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
    from botocore.exceptions import BotoCoreError, ClientError

    from fedstep.aws.errors import OPERATOR, explain

    try:
        commands = {
            "start": _start,
            "runs": _runs,
            "status": _status,
            "stop": _stop,
            "download": _download,
            "promote": _promote,
            "report": _report,
            "verify": _verify,
            "evaluate": _evaluate,
            "stats": _stats,
            "clients": _clients,
            "client-config": _client_config,
            "local": _local,
            "strategies": _strategies,
            "codecs": _codecs,
            "cost": _cost,
        }
        code = commands[args.command](args)
        sys.stdout.flush()  # inside the try: a reader that left (`fedstep runs | head`) is seen here
        return code
    except BrokenPipeError:
        return _reader_left()
    except FedstepError as exc:
        print(f"fedstep: error: {clean(exc)}", file=sys.stderr)
        return 2
    except (ClientError, BotoCoreError) as exc:
        print(f"fedstep: error: {clean(explain(exc, who=OPERATOR))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedstep: interrupted; everything was stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
