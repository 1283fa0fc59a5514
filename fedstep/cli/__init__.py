"""`fedstep`: the operator's command line (start runs, client configs, who is online; run everything locally)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from fedstep import __version__
from fedstep.errors import FedstepError


def _settings_args(parser: argparse.ArgumentParser, rounds: int, timeout: int) -> None:
    parser.add_argument("--rounds", type=int, default=rounds, help=f"number of rounds (default {rounds})")
    parser.add_argument("--epochs", type=int, default=1, help="local epochs per round (default 1)")
    parser.add_argument("--batch-size", type=int, default=32, help="local batch size (default 32)")
    parser.add_argument("--learning-rate", type=float, default=0.1, help="local learning rate (default 0.1)")
    parser.add_argument("--strategy", default="fedavg", help="aggregation strategy (default fedavg)")
    parser.add_argument(
        "--clients-per-round", help="clients each round selects: a number (3) or a fraction (0.5); default all"
    )
    parser.add_argument(
        "--round-retries",
        type=int,
        default=0,
        help="publish a round that misses its quorum again, up to N times (default 0)",
    )
    parser.add_argument(
        "--target", help="stop early when a round's weighted metric meets this, e.g. test_accuracy>=0.9"
    )
    parser.add_argument(
        "--quorum", type=int, help="fewest valid updates a round may be aggregated from (default: half the clients)"
    )
    parser.add_argument(
        "--round-timeout",
        type=int,
        default=timeout,
        dest="round_timeout_s",
        help=f"round deadline, s (default {timeout})",
    )


def _settings(args: argparse.Namespace):  # -> RunSettings
    from fedstep.cli.start import RunSettings

    return RunSettings(
        rounds=args.rounds,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        strategy=args.strategy,
        round_timeout_s=args.round_timeout_s,
        quorum=args.quorum,
        target=args.target,
        clients_per_round=args.clients_per_round,
        round_retries=args.round_retries,
        seed=args.seed or 0,
    )


def _stack_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stack", default="fedstep", help="CloudFormation stack name (default fedstep)")
    parser.add_argument("--region", help="AWS region (default: the AWS configuration's)")
    parser.add_argument("--endpoint-url", help="AWS endpoint override (e.g. the embedded local cloud)")


class _Stack:
    """The deployed stack the command works on: its outputs and clients for its services."""

    def __init__(self, args: argparse.Namespace) -> None:
        import boto3

        from fedstep.stack import StackOutputs

        self.session = boto3.Session(region_name=args.region)
        self.endpoint_url = args.endpoint_url
        self.outputs = StackOutputs.of_stack(self.client("cloudformation"), args.stack)

    def client(self, service: str):  # -> botocore client
        from fedstep import aws

        return aws.client(service, self.session, self.endpoint_url)


def _parser() -> argparse.ArgumentParser:
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
    _settings_args(start, rounds=5, timeout=3600)

    client_config = sub.add_parser("client-config", help="print a ready client config file for a client")
    client_config.add_argument("client_id", help="the client's id in the deployment config")
    _stack_args(client_config)
    client_config.add_argument("--data", default="module:function", help="the client's data loader to fill in")
    client_config.add_argument("-o", "--out", type=Path, help="write to this file instead of printing")

    clients = sub.add_parser("clients", help="which client agents are online (from their heartbeats)")
    _stack_args(clients)
    clients.add_argument("--json", action="store_true", help="print JSON instead of a table")

    local = sub.add_parser("local", help="run a real federated training on the embedded local cloud")
    local.add_argument("--dataset", default="digits", help="digits, mnist or heart (default digits)")
    local.add_argument("--clients", type=int, default=3, help="number of client agents (default 3)")
    local.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default runs/demo)")
    local.add_argument("--model", help="module:function returning a compiled Keras model (default: per data set)")
    local.add_argument(
        "--seed", type=int, default=0, help="seed for the initial weights and the client selection (default 0)"
    )
    _settings_args(local, rounds=5, timeout=600)
    return parser


def _start(args: argparse.Namespace) -> int:
    from fedstep.cli.start import build_model, keras_payload, resume_run, start_run

    if bool(args.model) == bool(args.resume):
        raise FedstepError("give --model to start a new run, or --resume RUN_ID to continue one")
    stack = _Stack(args)
    client, outputs = stack.client, stack.outputs
    if args.resume:
        started = resume_run(
            args.resume, outputs, s3=client("s3"), dynamodb=client("dynamodb"), stepfunctions=client("stepfunctions")
        )
        print(f"resumed run {args.resume} as run {started.run_id}")
        print(f"execution: {started.execution_arn}")
        return 0
    started = start_run(
        *keras_payload(build_model(args.model, args.seed)),
        _settings(args),
        outputs,
        s3=client("s3"),
        dynamodb=client("dynamodb"),
        stepfunctions=client("stepfunctions"),
        run_id=args.run_id,
    )
    print(f"started run {started.run_id} with clients {', '.join(started.clients)}")
    print(f"execution: {started.execution_arn}")
    return 0


def _client_config(args: argparse.Namespace) -> int:
    import json

    stack = _Stack(args)
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
    from fedstep.aws import DynamoRoundTable
    from fedstep.cli.clients import render_json, render_table, statuses

    stack = _Stack(args)
    ids = sorted(stack.outputs.queues)
    rows = statuses(ids, DynamoRoundTable(stack.outputs.table, stack.client("dynamodb")).get_heartbeats(ids))
    print(render_json(rows) if args.json else render_table(rows))
    return 0


def _local(args: argparse.Namespace) -> int:
    from fedstep.local.demo import DemoConfig, run_demo

    config = DemoConfig(
        dataset=args.dataset,
        clients=args.clients,
        out=args.out,
        model=args.model,
        seed=args.seed,
        settings=_settings(args),
    )
    run_demo(config)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
    from botocore.exceptions import BotoCoreError, ClientError

    from fedstep.aws_errors import explain

    try:
        commands = {"start": _start, "client-config": _client_config, "clients": _clients, "local": _local}
        return commands[args.command](args)
    except FedstepError as exc:
        print(f"fedstep: error: {exc}", file=sys.stderr)
        return 2
    except (ClientError, BotoCoreError) as exc:
        print(f"fedstep: error: {explain(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedstep: interrupted; everything was stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
