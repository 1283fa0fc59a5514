"""`fedstep evaluate <run>`: evaluate a run's global model, on the clients' data or on the operator's.

Federated (the default): publish an evaluate message (`EvaluateMessage`) on the run's topic to the
clients asked (default: the run's clients), then wait until each has written its evaluation item
(`EvalItem`, in its own partition) or the deadline passes, and show one row per client and the
example-weighted mean. An answer is the client's claim: `EvalItem.parse` bounds every field
(`fedstep.core.limits`: metric names and values, accuracies in [0, 1], finite numbers, examples);
an answer that fails is shown as rejected, with the reason, and counts for nothing. A client's
weight in the mean is capped like its updates' (the run's `max_examples`). Works for finished runs:
agents answer evaluate messages of ended runs, and skip them once past their deadline.

Server-side (`--data module:function`): evaluate the model on the operator's own data set, on this
machine: the loader returns `(x, y)`; the model is the one `fedstep download` writes, loaded with
Keras' safe mode.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from fedstep.aws.stack import StackOutputs
from fedstep.operator.evaluation import (  # noqa: F401 (re-exported: the command's names)
    CANNOT,
    EVALUATED,
    NO_ANSWER,
    REJECTED,
    Answer,
    Evaluation,
    asked_clients,
    evaluate_on_data,
    evaluate_run,
    evaluated_round,
    judge,
    load_xy,
    send_request,
    to_json,
    wait_for_answers,
)
from fedstep.operator.views import RunView
from fedstep.render.evaluation import render, render_json, render_outcome  # noqa: F401 (the command prints these)
from fedstep.render.text import clean

# -- the command --------------------------------------------------------------------------------


def _stderr(line: str) -> None:
    print(clean(line), file=sys.stderr, flush=True)


def evaluate_command(args: Any, view: RunView, outputs: StackOutputs, client: Callable[[str], Any]) -> int:
    """`fedstep evaluate`: 0 when every asked client answered (or `--data` evaluated), 1 when some did
    not answer by the deadline. Progress goes to stderr, the result to stdout."""
    outcome = evaluate_run(view, args.round, args.clients, args.deadline, args.data, outputs, client, _stderr)
    print(json.dumps(outcome.data, indent=2) if args.json else render_outcome(outcome))
    return 0 if outcome.complete else 1
