"""fedstep's Python API, for notebooks and scripts: the same code as the command lines, called directly.

    import fedstep

    history = fedstep.simulate("digits", clients=3, rounds=2)   # `fedstep local`: a pandas DataFrame
    history.attrs["summary"]["final"]                           # what summary.json holds

    ops = fedstep.Operator(stack="fedstep", region="eu-west-1")  # `fedstep runs|status|start|...`
    run_id = ops.start("client_agent.models:digits_mlp", rounds=20, watch=True)
    ops.history(run_id)                                          # one row per round

    fedstep.Client("hospital-a.json").dry_run()                 # `fedstep-client run --dry-run`

Importing this module is light: TensorFlow, boto3, moto and pandas are imported by the calls that
need them. Errors a user can fix are `fedstep.core.errors.FedstepError`, with the CLIs' messages.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedstep.core.errors import FedstepError
from fedstep.operator.paths import model_file, report_folder

if TYPE_CHECKING:
    import pandas as pd

    from client_agent.config import AgentConfig


def _setting_names() -> set[str]:
    from fedstep.operator.settings import RunSettings

    return {f.name for f in fields(RunSettings)}


def _check_settings(settings: dict[str, Any], where: str) -> None:
    """Refuse keyword arguments that are no run setting, naming them and the ones there are."""
    known = _setting_names() - {"seed"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise FedstepError(f"{where}: unknown run setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")


def _run_file(path: str | Path | None) -> dict[str, Any]:
    from fedstep.operator.settings import load_run_file

    return load_run_file(str(path)) if path else {}


def _stderr(line: str) -> None:
    from fedstep.render.text import clean

    print(clean(line), file=sys.stderr, flush=True)


def _echo(verbose: bool) -> Any:
    return (lambda line: print(line, flush=True)) if verbose else (lambda line: None)


# -- simulate ---------------------------------------------------------------------------------------
def simulate(
    dataset: str = "digits",
    *,
    clients: int = 3,
    rounds: int | None = None,
    partition: str = "iid",
    model: str | None = None,
    seed: int | None = None,
    out: str | Path | None = None,
    keep_running: bool = False,
    run_file: str | Path | None = None,
    verbose: bool = True,
    engine: str = "cloud",
    workers: int | None = None,
    **settings: Any,
) -> pd.DataFrame:
    """A federated training on the embedded local cloud, as `fedstep local` runs it (the same function).

    Options are `fedstep local`'s: `dataset` (digits, mnist, heart, heart-raw, or module:function), `clients`
    (default 3), `rounds` (default 5), `partition` (iid), `model` (module:function; default the data
    set's), `seed` (0), `out` (default runs/<run>, runs/latest pointing at it: summary.json, clients/,
    logs/), `keep_running` (after the run, keep the cloud and its agents up until the kernel is
    interrupted), `run_file`, and any run setting by its snake-case name (`learning_rate=0.05`,
    `strategy="fedadam"`, `strategy_params={"eta": 0.01}`, `target="test_accuracy>=0.9"`,
    `round_timeout_s=600`, `dp="central"`, `standardize="federated"`, ...).
    `verbose=False` prints nothing. `engine="memory"` runs the same rounds in this process and a pool
    of `workers` worker processes (default one per core) instead of the local cloud, up to 1,000 clients
    (`fedstep local --engine memory`; docs/local-cloud.md, Two engines).

    Returns the run's history: a pandas DataFrame indexed by round, one row per round, with columns
    participants, rejected (count), loss and accuracy (the clients' weighted metrics after local
    training), heldout_accuracy and heldout_loss (the global model on the held-out set), each of the
    round summary's weighted metrics (train_loss, test_accuracy, test_accuracy_before, ...), the
    strategy's measurements (e.g. step_norm), epsilon and delta (DP runs, else None), operator_epsilon
    (distributed DP, else None) and duration_s.
    `history.attrs["summary"]` is the run's summary, as in `<out>/summary.json` (run_id, stop_reason,
    final held-out accuracy and loss, config, partition).
    """
    from fedstep.local.demo import demo_config
    from fedstep.local.engines import run_local

    _check_settings(settings, "simulate")
    if rounds is not None:
        settings["rounds"] = rounds
    config = demo_config(
        dataset=dataset,
        partition=partition,
        clients=clients,
        out=out,
        model=model,
        seed=seed,
        keep_running=keep_running,
        run_file=_run_file(run_file),
        settings=settings,
        engine=engine,
        workers=workers,
    )
    summary = run_local(config, echo=_echo(verbose))
    history = history_frame(summary["rounds"])
    history.attrs["summary"] = summary
    return history


def history_frame(rounds: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per round (index `round`) of `fedstep local`'s round entries (summary.json's `rounds`)."""
    import pandas as pd

    rows = []
    for entry in rounds:
        rows.append(
            {
                "round": entry["round"],
                "participants": entry["participants"],
                "rejected": len(entry.get("rejected") or []),
                "loss": entry.get("loss"),
                "accuracy": entry.get("accuracy"),
                "heldout_accuracy": entry.get("heldout_accuracy"),
                "heldout_loss": entry.get("heldout_loss"),
                **(entry.get("metrics") or {}),
                **(entry.get("measurements") or {}),
                "epsilon": entry.get("epsilon"),
                "operator_epsilon": entry.get("operator_epsilon"),
                "delta": entry.get("delta"),
                "duration_s": entry.get("duration_s"),
                "bytes_up": entry.get("bytes_up"),
            }
        )
    return pd.DataFrame(rows).set_index("round") if rows else pd.DataFrame(columns=["round"]).set_index("round")


# -- Operator ---------------------------------------------------------------------------------------
class Operator:
    """The operator commands against a deployed stack (or the local cloud: `endpoint_url`, or
    AWS_ENDPOINT_URL from `source runs/demo/local-cloud.env`). `stack` defaults to fedstep, `region` to
    AWS_REGION, else AWS_DEFAULT_REGION, else the profile's. The stack is read on first use."""

    def __init__(self, stack: str = "fedstep", region: str | None = None, endpoint_url: str | None = None) -> None:
        self.stack_name, self.region, self.endpoint_url = stack, region, endpoint_url
        self._stack: Any = None

    def __repr__(self) -> str:
        return f"Operator(stack={self.stack_name!r}, region={self.region!r}, endpoint_url={self.endpoint_url!r})"

    @property
    def stack(self) -> Any:
        """The deployed stack (`fedstep.operator.stack.Stack`): its outputs, and one AWS client per service."""
        if self._stack is None:
            from fedstep.operator.stack import Stack

            self._stack = Stack(self.stack_name, self.region, self.endpoint_url)
        return self._stack

    def _table(self) -> Any:
        return self.stack.table

    def _view(self, run_id: str) -> Any:
        from fedstep.operator.views import view_of

        return view_of(self.stack, run_id)

    def runs(self, limit: int = 20) -> pd.DataFrame:
        """`fedstep runs --json` as a DataFrame, newest first: run_id, status, started, stopped (UTC
        datetimes, stopped None while running), duration_s, rounds_aggregated and rounds_planned."""
        import pandas as pd

        from fedstep.operator.views import list_runs
        from fedstep.render.status import run_rows

        table = self._table()

        def rounds_of(run_id: str) -> tuple[int, int | None]:
            record = table.get_run(run_id)
            return len(table.list_rounds(run_id)), record.rounds if record else None

        runs = list_runs(self.stack.outputs, self.stack.client("stepfunctions"), limit)
        columns = ["run_id", "status", "started", "stopped", "duration_s", "rounds_aggregated", "rounds_planned"]
        return pd.DataFrame(run_rows(runs, rounds_of), columns=columns)

    def status(self, run_id: str) -> dict[str, Any]:
        """`fedstep status <run> --json`: the run (status, stop_reason, strategy, dp, select_online, clients),
        its rounds, and the round in progress (`current_round`, None between rounds)."""
        import json

        from fedstep.render.status import render_status_json

        return json.loads(render_status_json(self._view(run_id)))

    def history(self, run_id: str) -> pd.DataFrame:
        """The run's rounds as a DataFrame indexed by round: selected, participants, rejected (count),
        num_examples, loss and accuracy (weighted, after local training), each weighted metric, the
        strategy's measurements, epsilon, operator_epsilon (distributed DP), delta, duration_s and
        aggregation_s."""
        import pandas as pd

        from fedstep.core.schemas import headline_metric

        rows = [
            {
                "round": s.round,
                "selected": len(s.selected) or len(s.participants),
                "participants": len(s.participants),
                "rejected": len(s.rejected),
                "num_examples": s.num_examples,
                "loss": headline_metric(s.metrics, "loss"),
                "accuracy": headline_metric(s.metrics, "accuracy"),
                **s.metrics,
                **s.measurements,
                "epsilon": s.epsilon,
                "operator_epsilon": s.operator_epsilon,
                "delta": s.delta,
                "duration_s": s.duration_s,
                "aggregation_s": s.aggregation_s,
            }
            for s in self._view(run_id).rounds
        ]
        return pd.DataFrame(rows).set_index("round") if rows else pd.DataFrame(columns=["round"]).set_index("round")

    def start(
        self,
        model: str | None = None,
        *,
        resume: str | None = None,
        run_id: str | None = None,
        seed: int | None = None,
        watch: bool = False,
        run_file: str | Path | None = None,
        **settings: Any,
    ) -> str:
        """`fedstep start`: a new run of `model` (module:function returning a compiled Keras model), or
        `resume=RUN_ID` (only `rounds` may be given then); the run id. Run settings by their snake-case
        names (rounds=20, learning_rate=0.1, ...), over the run file's. Warns on stderr, before
        starting, when fewer clients are online than the run's quorum. `watch=True` prints each round
        until the run ends, and raises FedstepError if it does not succeed."""
        from fedstep.operator.settings import START_DEFAULTS, RunSettings, merge_settings
        from fedstep.operator.start import launch, resume_rounds

        _check_settings(settings, "start")
        file_values = _run_file(run_file)
        model = model or file_values.get("model")
        if bool(model) == bool(resume):
            raise FedstepError("give a model (or model in the run file) to start a new run, or resume=RUN_ID")
        flags = {**settings, "seed": seed, "run_id": run_id}
        rounds = resume_rounds(resume, flags, file_values) if resume else None
        base = RunSettings(rounds=START_DEFAULTS.rounds, round_timeout_s=START_DEFAULTS.timeout)
        run_settings = None if resume else merge_settings(base, file_values, flags)  # a continuation keeps its own
        file_seed = seed if seed is not None else file_values.get("seed")
        started = launch(
            self.stack,
            run_settings,
            model=model,
            seed=file_seed,
            run_id=run_id,
            resume=resume,
            rounds=rounds,
            warn=lambda line: _stderr(f"fedstep: warning: {line}"),
            note=lambda line: _stderr(f"fedstep: {line}"),
            progress=_stderr,
        )
        if watch:
            self.watch(started.run_id)
        return started.run_id

    def watch(self, run_id: str, interval_s: float = 2.0) -> dict[str, Any]:
        """`fedstep status <run> --watch`: print each round as it completes, until the run ends; its
        status (as `status`). FedstepError if it does not succeed."""
        from fedstep.render.status import watch

        view = watch(lambda: self._view(run_id), lambda line: print(line, flush=True), interval_s)
        if view.status != "SUCCEEDED":
            failure = view.execution.failure if view.execution else ""
            raise FedstepError(f"run {run_id} {view.status}" + (f": {failure}" if failure else ""))
        return self.status(run_id)

    def stop(self, run_id: str, reason: str = "stopped by an operator") -> str:
        """`fedstep stop`: abort a running run (no round of it is aggregated or published after this,
        no agent trains or uploads for it) and tell its clients it ended; what `fedstep stop` prints
        (the rounds completed and the round in flight)."""
        from fedstep.operator.operate import stop_run

        sfn, sns = self.stack.client("stepfunctions"), self.stack.client("sns")
        return stop_run(self._view(run_id), self.stack.outputs, sfn, sns, self._table(), reason).text()

    def download(self, run_id: str, round: int | None = None, out: str | Path | None = None) -> Path:
        """`fedstep download`: the global model after `round` (default the last completed; 0 the
        initial weights) as a .keras file (default `<run>-round<r>.keras`); its path."""
        from fedstep.operator.operate import download_model

        view = self._view(run_id)
        number = round if round is not None else view.last_round
        path = Path(out) if out else model_file(run_id, number)
        return download_model(view, self.stack.outputs, self.stack.client("s3"), self._table(), round, path)

    def report(self, run_id: str, out: str | Path | None = None) -> Path:
        """`fedstep report`: report.html and its plots as PNG in `out` (default runs/<run>/report); the page."""
        from fedstep.operator.views import with_partition
        from fedstep.report import write_report

        view = with_partition(self._view(run_id), self.stack.outputs, self.stack.client("s3"))
        return Path(write_report(view, Path(out) if out else report_folder(run_id)))

    def evaluate(
        self,
        run_id: str,
        round: int | None = None,
        clients: list[str] | None = None,
        deadline_s: int = 900,
        data: str | None = None,
    ) -> dict[str, Any]:
        """`fedstep evaluate --json`: the global model after `round` (default the last aggregated)
        evaluated on the test split of each client (or of `clients`), waiting up to `deadline_s`
        seconds for their answers; or, with `data` (module:function returning (x, y)), on your own
        data on this machine. Progress goes to stderr."""
        from fedstep.operator.evaluation import evaluate_run

        named = ",".join(clients) if clients else None
        view, stack = self._view(run_id), self.stack
        return evaluate_run(view, round, named, deadline_s, data, stack.outputs, stack.client, _stderr).data

    def cost(self, run_id: str) -> dict[str, Any]:
        """`fedstep cost --json`: the run's estimated AWS cost in USD, per service and per participant."""
        import json

        from fedstep.render.cost import estimate_run, render_json

        stack = self.stack
        estimate = estimate_run(self._view(run_id), stack.outputs, stack.client("stepfunctions"))
        return json.loads(render_json(estimate, stack.session.region_name))

    def verify(self, run_id: str) -> dict[str, Any]:
        """`fedstep verify --json`: every object the run's records name checked against its sha256:
        ok, objects_checked, bytes_hashed, runs (the run and those it continues) and mismatches (run_id,
        round, what, key, expected, found). A run that cannot be checked raises FedstepError."""
        from fedstep.operator.integrity import verify_run

        stack = self.stack
        return verify_run(run_id, stack.outputs, stack.client("s3"), stack.table).to_dict()

    def promote(self, run_id: str, round: int, note: str = "", name: str = "default") -> dict[str, Any]:
        """`fedstep promote`: approve the global model after `round` as the model `name`, with its
        model card; the registry's new approved pointer."""
        from fedstep.operator.registry import promote

        view, outputs, s3 = self._view(run_id), self.stack.outputs, self.stack.client("s3")
        return promote(view, round, note, name, outputs, s3, self._table()).pointer

    def download_approved(self, out: str | Path | None = None, name: str = "default") -> Path:
        """`fedstep download --approved`: the approved model `name` as a .keras file, checked against
        its card; its path."""
        from fedstep.operator.registry import download_approved

        _, path = download_approved(self.stack.outputs, self.stack.client("s3"), name, Path(out) if out else None)
        return path

    def clients(self) -> pd.DataFrame:
        """`fedstep clients`: one row per client: client_id, status (online, offline, stopped, never
        seen), activity, last_seen, seconds_ago, agent_version, hardware, last_rejection, epsilon, ..."""
        import pandas as pd

        from fedstep.operator.clients import statuses

        ids = sorted(self.stack.outputs.queues)
        table = self._table()
        rows = statuses(ids, table.get_heartbeats(ids), feedback=table.get_feedback(ids))
        return pd.DataFrame([asdict(r) for r in rows])


# -- Client ---------------------------------------------------------------------------------------
class Client:
    """A client agent, as `fedstep-client run` is (the same functions, without its signal handling):
    its config file (as `fedstep client-config` writes it), overridden by FEDSTEP_* environment
    variables, overridden by keyword arguments named as the file's fields (`data="mysite:load"`,
    `endpoint_url=...`, `poll_wait_s=5`, `trainer=...`, ...)."""

    def __init__(self, config: str | Path | None = None, **overrides: Any) -> None:
        from client_agent.runner import SETTINGS

        self.path = str(config) if config is not None else None
        self.overrides = overrides
        unknown = sorted(set(overrides) - set(SETTINGS))
        if unknown:
            names, fields_known = ", ".join(unknown), ", ".join(sorted(SETTINGS))
            raise FedstepError(f"Client: unknown config field(s) {names}; known: {fields_known}")

    def __repr__(self) -> str:
        return f"Client({self.path!r})"

    @property
    def config(self) -> AgentConfig:
        """The resolved, validated configuration (FedstepError naming a missing or wrong field)."""
        from client_agent.runner import load_config

        return load_config(self.path, self.overrides)

    def dry_run(self, verbose: bool = True) -> bool:
        """`--dry-run`: check config, data, credentials, permissions and connectivity, writing
        nothing; print the checklist (unless `verbose=False`); True when every check passed."""
        from client_agent.runner import dry_run

        say = (lambda line: print(line, flush=True)) if verbose else (lambda line: None)
        return dry_run(self.path, self.overrides, say=say) == 0

    def run_once(self) -> int:
        """`--once`: serve one round, then return 0 (an error that waiting cannot fix raises)."""
        return self._run(once=True)

    def run(self, follow: bool = False) -> int:
        """Serve rounds until a run ends (with `follow`, until interrupted); 0."""
        return self._run(follow=follow)

    def _run(self, **mode: bool) -> int:
        from client_agent.runner import RunOptions, run

        return run(RunOptions(config=self.path, overrides=self.overrides, progress=False, **mode))
