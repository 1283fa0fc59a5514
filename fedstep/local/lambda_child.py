"""One Lambda invocation in its own process, for the local cloud's memory-enforcing mode
(`fedstep.local.gaps.lambda_in_process.run_isolated`).

Reads {"handler", "event", "context", "answer"} as JSON on stdin, runs the handler and writes its
result (or its error) to the file `answer`, with the process's peak resident memory in MB
(`max_rss_mb`, what Lambda reports as "Max Memory Used").
"""

from __future__ import annotations

import importlib
import json
import resource
import sys
import traceback

from fedstep.core.errors import FedstepError


def peak_rss_mb() -> float:
    """This process's peak resident memory (MB): VmHWM of its own address space. Not getrusage's
    ru_maxrss, which after fork and exec starts from the parent's size."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # no /proc: the best there is


def main() -> None:
    request = json.load(sys.stdin)
    from fedstep.local.gaps.lambda_in_process import LocalLambdaContext

    outcome: dict[str, object] = {}
    try:
        module_name, func_name = request["handler"].rsplit(".", 1)
        handler = getattr(importlib.import_module(module_name), func_name)
        outcome["result"] = handler(request["event"], LocalLambdaContext(**request["context"]))
    except Exception as exc:  # a Lambda reports any exception as a function error
        outcome["error"] = {"errorMessage": str(exc), "errorType": type(exc).__name__}
        outcome["expected"] = isinstance(exc, FedstepError)  # a named error the round protocol expects
        outcome["trace"] = traceback.format_exc()
    outcome["max_rss_mb"] = peak_rss_mb()
    with open(request["answer"], "w") as answer:
        json.dump(outcome, answer)


if __name__ == "__main__":
    main()
