"""Running the on-prem agent, without a command line: load its config, its data and its trainer, check
the setup (the dry run), serve rounds. `fedstep-client` (`client_agent.cli`) parses its flags into
these calls; `fedstep.Client` calls them with keyword arguments."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from client_agent import config as agent_config
from client_agent.logs import configure
from fedstep.core.errors import FedstepError
from fedstep.core.version import __version__

if TYPE_CHECKING:
    from client_agent.training import FunctionTrainer, Split

SETTINGS = (*agent_config.ENV, "region", "endpoint_url", "poll_wait_s", "heartbeat_s")
"""The config fields a flag, or a keyword argument of `fedstep.Client`, may set over the file."""


def load_config(path: str | None, overrides: dict[str, Any]) -> agent_config.AgentConfig:
    """The config file, then FEDSTEP_* variables, then the non-None `overrides` (`SETTINGS`), validated."""
    return agent_config.load(path, {k: v for k, v in overrides.items() if k in SETTINGS})


def load_data(config: agent_config.AgentConfig) -> tuple[Split, str]:
    """Load the local data and resolve the trainer, as a run would; the data and one line saying what was found."""
    from client_agent.data import load_local_data

    data = load_local_data(config.data, config.partition, config.partition_scheme, config.data_seed)
    trainer = trainer_for(config, data)
    part = f" part {config.partition}" if config.partition else ""
    if config.partition_scheme:
        part += f" ({config.partition_scheme})"
    (x_train, _), (x_test, _) = data
    test = f"{len(x_test)} test examples" if len(x_test) else "no test examples (so no test metrics)"
    return data, f"{config.data}{part}: {len(x_train)} training and {test}; trainer {trainer.name}"


def trainer_for(config: agent_config.AgentConfig, data: Split) -> FunctionTrainer:
    """The configured train function (a placeholder `trainer` is refused with how to fill it in)."""
    from client_agent.data import user_callable
    from client_agent.training import load_trainer

    if config.trainer:
        user_callable("trainer", config.trainer, "trainer")
    return load_trainer(config.trainer, data)


def dry_run(
    path: str | None,
    overrides: dict[str, Any],
    check_run: str | None = None,
    check_model: str | None = None,
    say: Callable[[str], None] = print,
) -> int:
    """Check config, data, credentials, permissions and connectivity, writing nothing; `say` each line
    of the checklist; 0 when every check passed, else 1."""
    from client_agent.checks import ModelChoice
    from client_agent.checks import dry_run as checks_of

    choice = ModelChoice(path=check_model, run_id=check_run)
    checks = checks_of(lambda: load_config(path, overrides), load_data, choice)
    say(f"fedstep-client {__version__} dry run: nothing is trained, uploaded or written")
    for check in checks:
        say(check.line())
    failed = [c.name for c in checks if c.status == "FAIL"]
    say(f"{len(failed)} check(s) failed: {', '.join(failed)}" if failed else "all checks passed")
    return 1 if failed else 0


def wait_for_config(path: str, timeout_s: float) -> None:
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


@dataclass(frozen=True)
class RunOptions:
    """How the agent runs: its config file and the settings over it (`SETTINGS`), its log format
    (text or json), whether it logs debug lines and shows progress bars, and whether it keeps serving
    after a run ends (`follow`), serves one round (`once`), or first waits up to `wait_for_config`
    seconds for its config file to appear."""

    config: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    log_format: str = "text"
    verbose: bool = False
    progress: bool = True
    follow: bool = False
    once: bool = False
    wait_for_config: float | None = None


def run(options: RunOptions) -> int:
    """Serve rounds as `options` say; 0 when the agent stopped as asked."""
    from client_agent.agent import Agent
    from client_agent.data import load_local_data

    progress = configure(options.log_format, options.verbose, progress=options.progress)
    if options.wait_for_config is not None:
        if not options.config:
            raise FedstepError("--wait-for-config waits for the --config file: name one")
        wait_for_config(options.config, options.wait_for_config)
    config = load_config(options.config, options.overrides)
    data = load_local_data(config.data, config.partition, config.partition_scheme, config.data_seed)
    trainer = trainer_for(config, data)
    return Agent(config, trainer, progress=progress).run(follow=options.follow, once=options.once)
