"""`fedstep-client`: the on-prem agent's command line."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from client_agent import config as agent_config
from fedstep import __version__
from fedstep.errors import FedstepError


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
    run.add_argument("--data", help="built-in data set (digits, mnist, heart) or module:function")
    run.add_argument("--partition", help="i/n: this client's part of a built-in data set")
    run.add_argument("--poll-wait", type=int, dest="poll_wait_s", help="long-poll seconds, 0-20 (default 20)")
    run.add_argument("--follow", action="store_true", help="keep serving after a run ends")
    run.add_argument("--once", action="store_true", help="serve one round, then exit")
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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("botocore", "urllib3", "absl"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    signal.signal(signal.SIGTERM, _terminate)
    _exit_with_parent()
    overrides = {k: getattr(args, k) for k in agent_config.ENV if hasattr(args, k)}
    overrides.update(region=args.region, poll_wait_s=args.poll_wait_s)
    try:
        config = agent_config.load(args.config, overrides)
        from client_agent.agent import Agent
        from client_agent.data import load_local_data
        from client_agent.training import KerasTrainer

        trainer = KerasTrainer(load_local_data(config.data, config.partition))
        return Agent(config, trainer).run(follow=args.follow, once=args.once)
    except FedstepError as exc:
        print(f"fedstep-client: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
