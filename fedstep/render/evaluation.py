"""`fedstep evaluate`'s output: one row per asked client and the weighted mean, or JSON."""

from __future__ import annotations

import json

from fedstep.operator.evaluation import NO_ANSWER, Evaluation, Outcome, to_json
from fedstep.render.text import lines, table

EVAL_HEADER = ("CLIENT", "STATUS", "EXAMPLES", "LOSS", "ACCURACY", "OTHER METRICS")


def _number(metrics: dict[str, float], name: str) -> str:
    value = metrics.get(name)
    return f"{value:.4f}" if value is not None else "-"


def _others(metrics: dict[str, float]) -> str:
    shown = [f"{k}={v:.4g}" for k, v in sorted(metrics.items()) if k not in ("test_loss", "test_accuracy")]
    return " ".join(shown) or "-"


def render(evaluation: Evaluation) -> str:
    """The per-client table, the reasons of rejected and unable clients, and the weighted mean."""
    msg = evaluation.message
    answers = evaluation.answers
    answered = sum(a.status != NO_ANSWER for a in answers)
    rows = [
        (
            a.client_id,
            a.status,
            a.num_examples if a.num_examples is not None else "-",
            _number(a.metrics, "test_loss"),
            _number(a.metrics, "test_accuracy"),
            _others(a.metrics),
        )
        for a in answers
    ]
    out = [
        f"evaluation of round {msg.round} of run {msg.run_id} (request {msg.request_id}): "
        f"{answered} of {len(answers)} client(s) answered",
        "",
        *table(EVAL_HEADER, rows),
    ]
    out += [f"  {a.client_id} {a.status}: {a.detail}" for a in answers if a.detail]
    clients, examples, means = evaluation.mean()
    if clients:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in means.items())
        out.append(f"weighted mean of {clients} client(s), {examples} examples: {shown}")
    else:
        out.append("no client evaluated the model")
    return lines(out)


def render_json(evaluation: Evaluation) -> str:
    return json.dumps(to_json(evaluation), indent=2)


def render_outcome(outcome: Outcome) -> str:
    """The table of the clients' answers, or the one line of an evaluation on the operator's data."""
    if outcome.evaluation is not None:
        return render(outcome.evaluation)
    d = outcome.data
    shown = ", ".join(f"{k} {v:.4f}" for k, v in d["metrics"].items())
    return f"round {d['round']} of run {d['run_id']} on {d['data']} ({d['num_examples']} examples): {shown}"
