"""`fedstep local` and `fedstep.simulate`: a run on the engine its config names, "cloud" (the stack on
the embedded local cloud, `fedstep.local.demo.run_demo`) or "memory" (the round code in-process,
`fedstep.local.memory_engine.run_memory`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fedstep.local.demo import DemoConfig


def run_local(config: DemoConfig, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run `config` on its engine, options one engine cannot take refused first; the run's summary."""
    from fedstep.local import memory_engine

    memory_engine.check_engine_options(config.engine, config.workers, config.keep_running)
    if config.engine == "memory":
        return memory_engine.run_memory(config, echo)
    from fedstep.local.demo import run_demo

    return run_demo(config, echo)
