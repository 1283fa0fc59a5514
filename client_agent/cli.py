"""`fedstep-client`: the on-prem agent's command line."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import Any

from client_agent import runner
from client_agent.logs import FORMATS, configure
from fedstep.core.errors import FedstepError
from fedstep.core.version import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedstep-client", description="fedstep's on-prem client agent")
    parser.add_argument("--version", action="version", version=f"fedstep-client {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="poll the client's queue and serve rounds")
    run.add_argument("--config", help="client config JSON (as written by `fedstep client-config`)")
    run.add_argument("--client-id")
    run.add_argument("--queue-url")
    run.add_argument("--bucket")
    run.add_argument("--table")
    run.add_argument("--region")
    run.add_argument("--endpoint-url", help="AWS endpoint override (e.g. the embedded local cloud)")
    run.add_argument("--role-arn", help="the client's IAM role to assume (stack output RoleArn...)")
    run.add_argument("--profile", help="AWS named profile whose credentials to use or assume the role with")
    run.add_argument("--data", help="built-in data set (digits, mnist, heart, heart-raw) or module:function")
    run.add_argument("--partition", help="i/n: this client's part of a built-in data set (or a loader's whole (x, y))")
    run.add_argument(
        "--partition-scheme",
        help="how the data set is divided: iid (default), dirichlet:ALPHA, shards:K, quantity:ALPHA",
    )
    run.add_argument("--data-seed", type=int, help="seed of the data split, the same for every client (default 0)")
    run.add_argument("--trainer", help="train function module:function (default: Keras fit)")
    run.add_argument(
        "--dp-epsilon-budget",
        type=float,
        help="record-level privacy budget over every DP-SGD run in the ledger: decline rounds that would exceed it "
        "(default: none)",
    )
    run.add_argument("--dp-max-delta", type=float, help="decline DP-SGD rounds whose dp_delta is larger (default: any)")
    run.add_argument("--poll-wait", type=int, dest="poll_wait_s", help="long-poll seconds, 0-20 (default 20)")
    run.add_argument("--heartbeat", type=int, dest="heartbeat_s", help="heartbeat every N s (default 60; 0: off)")
    mode = run.add_mutually_exclusive_group()
    mode.add_argument("--follow", action="store_true", help="keep serving runs after one ends")
    mode.add_argument("--once", action="store_true", help="serve one round, then exit")
    mode.add_argument(
        "--dry-run",
        action="store_true",
        help="check config, data, credentials, permissions and connectivity; print a checklist; exit 0 or 1",
    )
    run.add_argument(
        "--run",
        dest="check_run",
        metavar="RUN",
        help="with --dry-run: check the data against this run's model (default: the run of a waiting round message)",
    )
    run.add_argument(
        "--model",
        dest="check_model",
        metavar="FILE.keras",
        help="with --dry-run: check the data against this local .keras model file",
    )
    run.add_argument(
        "--wait-for-config",
        type=float,
        metavar="S",
        help="if the --config file does not exist yet, import the training libraries and wait up to S seconds "
        "for it (a launcher such as `fedstep local` writes it once the stack is up)",
    )
    run.add_argument("--log-format", choices=FORMATS, default="text", help="text (default) or json (one per line)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars (they show only on a terminal)")
    run.add_argument("-v", "--verbose", action="store_true")
    return parser


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _exit_with_parent() -> None:
    """When started by `fedstep local` (FEDSTEP_EXIT_WITH_PARENT=<pid>): get SIGTERM if it dies."""
    parent = os.environ.get("FEDSTEP_EXIT_WITH_PARENT")
    if not parent or not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != int(parent):  # the parent died before prctl took effect
        raise SystemExit(143)


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields the flags set (None: not given)."""
    return {name: getattr(args, name) for name in runner.SETTINGS if hasattr(args, name)}


def _options(args: argparse.Namespace) -> runner.RunOptions:
    return runner.RunOptions(
        config=args.config,
        overrides=config_overrides(args),
        log_format=args.log_format,
        verbose=args.verbose,
        progress=not args.no_progress,
        follow=args.follow,
        once=args.once,
        wait_for_config=args.wait_for_config,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.dry_run and (args.check_run or args.check_model):
        parser.error("--run and --model choose the model a --dry-run checks the data against; add --dry-run")
    signal.signal(signal.SIGTERM, _terminate)
    _exit_with_parent()
    if args.dry_run:
        configure(args.log_format, args.verbose, progress=False)
        return runner.dry_run(args.config, config_overrides(args), args.check_run, args.check_model)
    try:
        return runner.run(_options(args))
    except FedstepError as exc:
        if args.log_format == "json":
            logging.getLogger("fedstep.client").error("%s", exc, extra={"error": type(exc).__name__})
        else:
            print(f"fedstep-client: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
