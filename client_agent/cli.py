"""`fedstep-client`: the on-prem agent's command line."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import signal
import sys
import time
from typing import TYPE_CHECKING

from client_agent import config as agent_config
from client_agent.logs import FORMATS, configure
from fedstep import __version__
from fedstep.core.errors import FedstepError

if TYPE_CHECKING:
    from client_agent.training import FunctionTrainer, Split


def _parser() -> argparse.ArgumentParser:
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


def _load_config(args: argparse.Namespace) -> agent_config.AgentConfig:
    overrides = {k: getattr(args, k) for k in agent_config.ENV if hasattr(args, k)}
    overrides.update(
        region=args.region, endpoint_url=args.endpoint_url, poll_wait_s=args.poll_wait_s, heartbeat_s=args.heartbeat_s
    )
    return agent_config.load(args.config, overrides)


def _load_data(config: agent_config.AgentConfig) -> tuple[Split, str]:
    """Load the local data and resolve the trainer, as a run would; the data and one line saying what was found."""
    from client_agent.data import load_local_data

    data = load_local_data(config.data, config.partition, config.partition_scheme, config.data_seed)
    trainer = _trainer(config, data)
    part = f" part {config.partition}" if config.partition else ""
    if config.partition_scheme:
        part += f" ({config.partition_scheme})"
    (x_train, _), (x_test, _) = data
    test = f"{len(x_test)} test examples" if len(x_test) else "no test examples (so no test metrics)"
    return data, f"{config.data}{part}: {len(x_train)} training and {test}; trainer {trainer.name}"


def _trainer(config: agent_config.AgentConfig, data: Split) -> FunctionTrainer:
    """The configured train function (a placeholder `trainer` is refused with how to fill it in)."""
    from client_agent.data import user_callable
    from client_agent.training import load_trainer

    if config.trainer:
        user_callable("trainer", config.trainer, "trainer")
    return load_trainer(config.trainer, data)


def _dry_run(args: argparse.Namespace) -> int:
    from client_agent.checks import ModelChoice, dry_run

    choice = ModelChoice(path=args.check_model, run_id=args.check_run)
    checks = dry_run(lambda: _load_config(args), _load_data, choice)
    print(f"fedstep-client {__version__} dry run: nothing is trained, uploaded or written")
    for check in checks:
        print(check.line())
    failed = [c.name for c in checks if c.status == "FAIL"]
    print(f"{len(failed)} check(s) failed: {', '.join(failed)}" if failed else "all checks passed")
    return 1 if failed else 0


def _wait_for_config(path: str, timeout_s: float) -> None:
    """Import what training needs (TensorFlow takes seconds), then wait for the config file to appear
    (its writer renames it into place whole); FedstepError after `timeout_s`."""
    if os.path.exists(path):
        return
    started = time.monotonic()
    # imported now, while the launcher deploys; keras is the default trainer's (a custom one may not need it)
    for module in ("client_agent.agent", "client_agent.training", "keras"):
        with contextlib.suppress(ImportError):
            importlib.import_module(module)
    logging.getLogger("fedstep.client").info(
        "libraries imported in %.1f s; waiting for %s", time.monotonic() - started, path
    )
    while not os.path.exists(path):
        if time.monotonic() - started > timeout_s:
            raise FedstepError(f"the config file {path} did not appear within {timeout_s:g} s (--wait-for-config)")
        time.sleep(0.05)


def _run(args: argparse.Namespace) -> int:
    from client_agent.agent import Agent
    from client_agent.data import load_local_data

    progress = configure(args.log_format, args.verbose, progress=not args.no_progress)
    if args.wait_for_config is not None:
        if not args.config:
            raise FedstepError("--wait-for-config waits for the --config file: name one")
        _wait_for_config(args.config, args.wait_for_config)
    config = _load_config(args)
    data = load_local_data(config.data, config.partition, config.partition_scheme, config.data_seed)
    trainer = _trainer(config, data)
    return Agent(config, trainer, progress=progress).run(follow=args.follow, once=args.once)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.dry_run and (args.check_run or args.check_model):
        parser.error("--run and --model choose the model a --dry-run checks the data against; add --dry-run")
    signal.signal(signal.SIGTERM, _terminate)
    _exit_with_parent()
    if args.dry_run:
        configure(args.log_format, args.verbose, progress=False)
        return _dry_run(args)
    try:
        return _run(args)
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
