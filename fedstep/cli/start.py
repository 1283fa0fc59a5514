"""Starting a run: publish the architecture and the round-0 weights, record the run, start an execution."""

from __future__ import annotations

import json
import math
import secrets
import sys
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime
from typing import Any

from fedstep import SCHEMA_VERSION
from fedstep.aws.adapters import DynamoRoundTable, S3ModelStore
from fedstep.aws.stack import StackOutputs
from fedstep.cli.run_view import execution_arn
from fedstep.cli.text import clean
from fedstep.core import execution_history, keys, limits, sliced, strategies, tensors
from fedstep.core.clock import utc_now
from fedstep.core.errors import FedstepError
from fedstep.core.imports import load_callable
from fedstep.core.json_files import load_json_object
from fedstep.core.rounds import round_history
from fedstep.core.schemas import (
    DP_MODES,
    Bounds,
    DPSettings,
    InvalidMessage,
    ObjectRef,
    RoundSummary,
    RunRecord,
    Target,
    TrainingConfig,
)
from fedstep.core.selection import SELECTIONS, per_round_count


@dataclass(frozen=True)
class RunSettings:
    """How a run trains, and how far it trusts any one client. Defaults: 5 rounds, 1 local epoch,
    batch 32, the learning rate the model's optimizer was compiled with, FedAvg, a 1-hour round
    deadline, a quorum of half the clients per round (rounded up), at least 2 participants per round,
    each client's weight capped at 100,000 examples, update norms bounded by 10 x the larger of the
    initial model's norm and sqrt(parameters), updates beyond a bound clipped."""

    rounds: int = 5
    epochs: int = 1
    batch_size: int = 32
    learning_rate: float | None = None
    """The clients' learning rate, set on the model's optimizer each round; None: the optimizer's own."""
    train_params: dict[str, Any] | None = None
    """Settings for the clients' train functions, as `training.params` (`--train-param NAME=VALUE`;
    booleans, numbers or texts, bounded by `TrainingConfig`)."""
    standardize: str = "none"
    """How clients scale their features: "none", "local" (each its own statistics) or "federated" (the
    statistics of every client, asked before the run starts: `fedstep.cli.statistics`)."""
    strategy: str = "fedavg"
    """The aggregation strategy's name (`fedstep strategies` lists them)."""
    strategy_params: dict[str, Any] | None = None
    """The strategy's parameters by name (JSON values, or text from `--strategy-param NAME=VALUE`);
    the others take their defaults."""
    round_timeout_s: int = 3600
    quorum: int | None = None
    """Fewest valid updates a round may be aggregated from; default: half the clients, rounded up."""
    target: str | None = None
    """Stop early when a round's weighted metric meets this, e.g. "test_accuracy>=0.9"."""
    clients_per_round: str | None = None
    """Clients each round selects: a number ("3") or a fraction ("0.5"); default all."""
    round_retries: int = 0
    """How often a round that cannot be aggregated is published again before the run fails."""
    seed: int = 0
    """Seed of the per-round client selection."""
    min_participants: int = 2
    """A round is never aggregated from fewer valid updates (1 publishes a single client's update)."""
    max_examples: int = 100_000
    """Cap on the examples a client's update is weighted by."""
    client_max_examples: dict[str, int] | None = None
    """Per-client caps, by client id (run file only), instead of max_examples."""
    max_update_norm: float | None = None
    """Bound on an update's L2 norm (trained minus global weights); None: the default bound, 10 x the
    larger of the initial model's norm and sqrt(parameters) (`fedstep.core.influence`)."""
    bound_action: str = "clip"
    """What happens to an update beyond max_examples or max_update_norm: "clip" or "reject"."""
    dp: str | None = None
    """Differential privacy: "central", "client-clip" or "dp-sgd" (docs/privacy.md); None: none."""
    dp_noise_multiplier: float | None = None
    """z: the noise's standard deviation over the clip norm (required with dp)."""
    dp_clip: str | None = None
    """The clip norm: a number, or "adaptive" (central modes; default adaptive there, 1.0 for dp-sgd)."""
    dp_delta: float | None = None
    """The delta of the (epsilon, delta) guarantee (default 1e-5)."""
    dp_epsilon: float | None = None
    """The run's epsilon budget (central modes): the run stops before a round would exceed it."""
    selection: str = "fixed"
    """How a round samples clients_per_round of the clients: "fixed" (exactly that many) or "poisson"
    (each with probability clients_per_round / clients; central DP accounted under add/remove)."""
    select_online: bool = True
    """Leave out of each round the clients whose heartbeat says offline or stopped (fedstep.core.selection)."""
    select: list[str] | None = None
    """The stack's clients the run takes part with, by name (`--select a,b`); None: all of them."""
    exclude: list[str] | None = None
    """The stack's clients the run leaves out, by name (`--exclude c`)."""

    def validated(self) -> RunSettings:
        if not 1 <= self.rounds <= limits.MAX_ROUNDS:
            raise FedstepError(f"rounds must be 1 to {limits.MAX_ROUNDS}, got {self.rounds}")
        if not 0 <= self.round_retries <= 10:
            raise FedstepError(f"round_retries must be 0-10, got {self.round_retries}")
        check_fits_one_execution(self.rounds, self.round_retries)
        if self.quorum is not None and self.quorum < 1:
            raise FedstepError(f"quorum must be >= 1, got {self.quorum}")
        if self.selection not in SELECTIONS:
            raise FedstepError(
                f"selection must be one of {', '.join(SELECTIONS)} (docs/privacy.md, Two conventions), "
                f"got {self.selection!r}"
            )
        if self.min_participants < 1:
            raise FedstepError(f"min_participants must be >= 1, got {self.min_participants}")
        if self.target is not None:
            try:
                Target.parse_text(self.target)
            except InvalidMessage as exc:
                raise FedstepError(str(exc)) from None
        if not 1 <= self.round_timeout_s <= limits.MAX_ROUND_TIMEOUT_S:
            raise FedstepError(f"round_timeout_s must be 1 s to 1 year, got {self.round_timeout_s}")
        try:
            strategy = self.strategy_instance()
            self.training()
            self.bounds()
            self.privacy()
        except (ValueError, InvalidMessage) as exc:
            raise FedstepError(str(exc)) from None
        needs, why = strategy.min_updates()
        if self.min_participants < needs:
            raise FedstepError(
                f"strategy {self.strategy!r} needs at least {needs} valid updates in every round ({why}), but "
                f"min_participants is {self.min_participants}: a round with fewer could not be aggregated. Set "
                f"--min-participants {needs} (min_participants in a run file) and select at least {needs} clients "
                "per round"
            )
        return self

    def privacy(self) -> DPSettings | None:
        """The run's DP settings; ValueError naming a setting that makes no sense on its own."""
        given = [name for name in ("dp_noise_multiplier", "dp_clip", "dp_delta", "dp_epsilon") if getattr(self, name)]
        if self.dp is None:
            if given:
                flags = ", ".join("--" + name.replace("_", "-") for name in given)
                raise ValueError(f"{flags} given without --dp (central, client-clip or dp-sgd)")
            return None
        if self.dp not in DP_MODES:
            raise ValueError(f"--dp must be one of {', '.join(DP_MODES)}, got {self.dp!r}")
        z = self.dp_noise_multiplier
        if z is None or not 0 < z <= 1000:
            raise ValueError(f"--dp {self.dp} needs --dp-noise-multiplier, a number > 0 (got {z})")
        delta = 1e-5 if self.dp_delta is None else self.dp_delta
        if not 0 < delta < 1:
            raise ValueError(f"--dp-delta must be between 0 and 1, got {delta}")
        if self.dp_clip in (None, "adaptive"):
            clip = None if self.dp in ("central", "client-clip") else 1.0
        else:
            try:
                clip = float(self.dp_clip)
            except ValueError:
                raise ValueError(f"--dp-clip must be a number > 0 or 'adaptive', got {self.dp_clip!r}") from None
            if not 0 < clip < math.inf:
                raise ValueError(f"--dp-clip must be a number > 0 or 'adaptive', got {self.dp_clip!r}")
        if self.dp == "dp-sgd" and self.dp_epsilon is not None:
            raise ValueError(
                "--dp-epsilon is a run's client-level budget (central, client-clip); under dp-sgd each data owner "
                "sets its own budget (dp_epsilon_budget in the client config)"
            )
        if self.dp_epsilon is not None and not self.dp_epsilon > 0:
            raise ValueError(f"--dp-epsilon must be > 0, got {self.dp_epsilon}")
        return DPSettings(self.dp, z, clip, delta, self.dp_epsilon)

    def run_clients(self, stack_clients: list[str], revoked: Collection[str] = ()) -> list[str]:
        """The run's clients (sorted): the stack's, or those `select` names, less those `exclude` names.
        FedstepError for a name the stack does not have or has revoked (`revoked`), or when none is left."""
        known = set(stack_clients)
        gone = sorted(set(self.select or []) & set(revoked))
        if gone:
            raise FedstepError(
                f"--select names client(s) revoked in the deployment config: {', '.join(gone)}; no run selects them "
                "(docs/operations.md)"
            )
        for flag, names in (("--select", self.select), ("--exclude", self.exclude)):
            unknown = sorted(set(names or []) - known - set(revoked))
            if unknown:
                raise FedstepError(
                    f"{flag} names client(s) the stack does not have: {', '.join(unknown)}; its clients are "
                    f"{', '.join(sorted(known))} (`fedstep clients` lists them)"
                )
        chosen = sorted(set(self.select) if self.select else known)
        chosen = [c for c in chosen if c not in set(self.exclude or [])]
        if not chosen:
            raise FedstepError("--select and --exclude leave no client to take part in the run")
        return chosen

    def for_clients(self, clients: list[str]) -> tuple[int, int]:
        """(clients per round, quorum) of these settings for a run of `clients`; FedstepError when the
        settings cannot work with them (too many clients, a quorum or participants floor above the
        clients per round, a cap for an unknown client)."""
        if len(clients) > limits.MAX_CLIENTS_PER_RUN:
            raise FedstepError(
                f"a run takes at most {limits.MAX_CLIENTS_PER_RUN} clients; the stack has {len(clients)}"
            )
        chosen = self.select is not None or self.exclude is not None
        floor = max(self.min_participants, self.quorum or 1)
        if chosen and len(clients) < floor:
            what = f"min_participants {self.min_participants}" + (f" and quorum {self.quorum}" if self.quorum else "")
            raise FedstepError(
                f"--select/--exclude leave {len(clients)} client(s) ({', '.join(clients)}), fewer than the run's "
                f"{what}: no round could be aggregated; select at least {floor}"
            )
        try:
            per_round = per_round_count(self.clients_per_round, len(clients))
        except ValueError as exc:
            raise FedstepError(str(exc)) from None
        quorum = self.quorum or (
            min(self.min_participants, per_round) if self.selection == "poisson" else (per_round + 1) // 2
        )
        if quorum > per_round:
            raise FedstepError(f"quorum {quorum} is more than the {per_round} clients selected per round")
        if self.min_participants > per_round:
            raise FedstepError(
                f"min_participants {self.min_participants} is more than the {per_round} client(s) selected per "
                "round; set it to 1 (--min-participants 1) only if a round may publish a single client's update"
            )
        unknown = sorted(set(self.client_max_examples or {}) - set(clients))
        if unknown:
            raise FedstepError(f"client_max_examples names clients the stack does not have: {unknown}")
        self._check_privacy(per_round, len(clients))
        return per_round, quorum

    def _check_privacy(self, per_round: int, population: int) -> None:
        """Refuse DP settings that make no sense for this consortium: delta >= 1/clients (client-level
        DP protects a client among `population`), an unreachable budget, a wrapped strategy without
        calibrated noise, an adaptive clip that leaves no noise for the updates."""
        dp = self.privacy()
        if dp is None or not dp.central:
            return
        from fedstep.core.dp import DPAggregation
        from fedstep.privacy.accounting import client_epsilon

        if dp.delta >= 1 / population:
            raise FedstepError(
                f"--dp-delta {dp.delta:g} is not below 1/clients = {1 / population:.3g}: a guarantee that weak "
                "would allow publishing a client's update outright; use a smaller delta (e.g. 1e-5)"
            )
        try:
            DPAggregation(self.strategy_instance(), dp, per_round, self.selection)
        except ValueError as exc:
            raise FedstepError(str(exc)) from None
        if dp.epsilon_budget is not None:
            first = client_epsilon(dp.noise_multiplier, per_round, population, 1, dp.delta, selection=self.selection)
            if first > dp.epsilon_budget:
                raise FedstepError(
                    f"--dp-epsilon {dp.epsilon_budget:g} is unreachable: one round with noise multiplier "
                    f"{dp.noise_multiplier:g} and {per_round} of {population} clients per round already costs "
                    f"epsilon {first:.3g} (delta {dp.delta:g}); raise the noise multiplier or the budget"
                )

    def strategy_instance(self) -> strategies.Strategy:
        """The strategy with its parameters; ValueError naming an unknown or ill-typed one."""
        return strategies.build(self.strategy, self.strategy_params)

    def training(self) -> TrainingConfig:
        return TrainingConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            params=dict(self.train_params or {}),
            standardize=self.standardize,
            standardization=_PENDING if self.standardize == "federated" else None,
        )

    def bounds(self) -> Bounds:
        return Bounds(
            max_examples=self.max_examples,
            client_max_examples=dict(self.client_max_examples or {}),
            max_update_norm=self.max_update_norm,
            action=self.bound_action,
        )


_PENDING = ObjectRef("pending", "0" * 64, 0)
"""Stands for a run's federated statistics until `start_run` has them."""

RUN_FILE_FIELDS = {f.name for f in fields(RunSettings)} | {"model"}
_TYPES: dict[str, type] = {
    "learning_rate": float,
    "quorum": int,
    "target": str,
    "clients_per_round": str,
    "client_max_examples": dict,
    "max_update_norm": float,
    "strategy_params": dict,
    "train_params": dict,
    "dp": str,
    "dp_noise_multiplier": float,
    "dp_clip": str,
    "dp_delta": float,
    "dp_epsilon": float,
    "select": list,
    "exclude": list,
}
"""Types of the settings whose default is None (the others' defaults give theirs)."""


def load_run_file(path: str) -> dict[str, Any]:
    """A run file: a JSON object of RunSettings fields plus `model` (module:function), e.g.

    {"model": "client_agent.models:digits_mlp", "rounds": 20, "clients_per_round": "0.5",
     "target": "test_accuracy>=0.9", "max_examples": 5000, "max_update_norm": 10,
     "strategy": {"name": "fedadam", "params": {"eta": 0.01}}}

    `strategy` is a name, or an object of `name` and `params`.
    """
    data = load_json_object(path, "run file", RUN_FILE_FIELDS - {"strategy_params"})
    strategy = data.get("strategy")
    if isinstance(strategy, dict):
        unknown = sorted(set(strategy) - {"name", "params"})
        if unknown or not isinstance(strategy.get("name"), str) or not isinstance(strategy.get("params", {}), dict):
            raise FedstepError(
                f"{path}: strategy must be a name or an object of name (text) and params (an object); got {strategy!r}"
            )
        data["strategy"], data["strategy_params"] = strategy["name"], dict(strategy.get("params", {}))
    return data


_ADDED_UP = ("strategy_params", "train_params")
"""Settings whose entries each layer adds to the one below, instead of replacing it."""


def merge_settings(base: RunSettings, *layers: dict[str, Any]) -> RunSettings:
    """`base` overridden by each layer's non-None values in turn (run file, then flags), type-checked."""
    values = asdict(base)
    for layer in layers:
        values.update({k: v for k, v in layer.items() if k in values and v is not None and k not in _ADDED_UP})
        for name in _ADDED_UP:  # parameters add up: flags override the run file's one by one
            if isinstance(layer.get(name), dict) and layer[name]:
                values[name] = {**(values.get(name) or {}), **layer[name]}
            elif layer.get(name) is not None:
                values[name] = layer[name]  # not an object: refused below, naming the setting
    for name, value in values.items():
        kind = _TYPES.get(name) or type(getattr(RunSettings(), name))
        if name in ("clients_per_round", "dp_clip") and isinstance(value, int | float) and not isinstance(value, bool):
            values[name] = value = str(value)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            values[name] = value = float(value)
        if value is None:
            continue
        if name in ("select", "exclude") and isinstance(value, str):
            values[name] = value = client_names(value, name)
        if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
            raise FedstepError(f"run setting {name} must be {kind.__name__}, got {value!r}")
        if kind is list and not all(isinstance(v, str) for v in value):
            raise FedstepError(f"run setting {name} must be a list of client names, got {value!r}")
    return RunSettings(**values).validated()


def client_names(text: str, setting: str) -> list[str]:
    """Client names from `a,b` (`--select`, `--exclude`); FedstepError for an empty or malformed one."""
    names = [n.strip() for n in text.split(",")]
    if not all(names):
        raise FedstepError(f"--{setting} takes client names separated by commas, e.g. client-1,client-2; got {text!r}")
    try:
        return [keys.check_id("client id", n) for n in names]
    except ValueError as exc:
        raise FedstepError(f"--{setting}: {exc}") from None


def offline_warning(
    table: DynamoRoundTable, clients: list[str], quorum: int, round_timeout_s: int, round_retries: int = 0
) -> str | None:
    """The warning `fedstep start` gives before starting a run when fewer of its clients are online
    (by their heartbeats, as `fedstep clients` shows them) than its quorum; None when enough are."""
    from fedstep.cli.clients import statuses
    from fedstep.cli.text import duration

    rows = statuses(clients, table.get_heartbeats(clients))
    online = sum(r.status == "online" for r in rows)
    if online >= quorum:
        return None
    away = ", ".join(f"{r.client_id} ({r.status})" for r in rows if r.status != "online")
    retries = f", after {round_retries} retries," if round_retries else ""
    return (
        f"only {online} of {len(clients)} client(s) online, fewer than the run's quorum of {quorum}: {away}. "
        f"Unless enough agents come online, round 1 waits until its deadline ({duration(round_timeout_s)}) and "
        f"then{retries} the run fails with QuorumNotMet. `fedstep clients` shows who is online."
    )


def selection_notes(table: DynamoRoundTable, run: RunRecord, round_number: int = 1) -> tuple[list[str], list[str]]:
    """(warnings, notes) `fedstep start` gives about the first round's selection, as the aggregation
    function will make it from the heartbeats now: a warning for each selected client whose heartbeat
    says offline or stopped (the round waits for it up to its deadline), a note for those left out."""
    from fedstep.cli.text import duration
    from fedstep.core.presence import away
    from fedstep.core.rounds import choose_clients

    items = table.get_heartbeats(run.clients)
    chosen = choose_clients(run, round_number, items)
    gone = away(run.clients, items, datetime.now(UTC))
    waiting = {c: gone[c] for c in chosen.selected if c in gone}
    warnings, notes = [], []
    if waiting:
        named = ", ".join(f"{c} ({status})" for c, status in waiting.items())
        why = (
            "too few of its clients are online to leave them out"
            if chosen.kept_offline
            else "select_online is off"
            if not run.select_online
            else "they are selected"
        )
        warnings.append(
            f"round {round_number} is sent to {named}, whose heartbeat says offline ({why}): unless its agent "
            f"comes back, the round waits for it until its deadline ({duration(run.round_timeout_s)}). Start the "
            f"agent, or leave the client out (--exclude {','.join(waiting)})."
        )
    if chosen.skipped:
        named = ", ".join(f"{c} ({status})" for c, status in chosen.skipped.items())
        notes.append(
            f"round {round_number} leaves out {named}: its heartbeat says offline (select_online; a later round "
            "selects it again once it is online; --no-select-online waits for every selected client)"
        )
    return warnings, notes


def poisson_warning(run: RunRecord) -> str | None:
    """Under Poisson selection, the warning `fedstep start` gives when some round of the run may well
    select fewer clients than it needs (its quorum and min_participants): the chance of that over the
    run's rounds, when 1 % or more; None otherwise."""
    per_round, population = run.clients_per_round or len(run.clients), len(run.clients)
    needs = max(run.quorum, run.min_participants)
    if run.selection != "poisson" or per_round >= population:
        return None
    q = per_round / population
    short = sum(math.comb(population, k) * q**k * (1 - q) ** (population - k) for k in range(needs))
    anywhere = 1 - (1 - short) ** run.rounds
    if anywhere < 0.01:
        return None
    return (
        f"with --selection poisson each round selects each of the {population} clients with probability "
        f"{q:.3g}: a round selects fewer than the {needs} it needs (quorum {run.quorum}, min_participants "
        f"{run.min_participants}) with probability {short:.2%}, some round of the {run.rounds} with probability "
        f"{anywhere:.0%}. Such a round fails at its deadline (QuorumNotMet or TooFewParticipants) and its retries "
        "select the same clients. Select more clients per round, or lower --min-participants and --quorum (1 is "
        "safe under central DP; docs/privacy.md, Two conventions)."
    )


@dataclass(frozen=True)
class StartedRun:
    run_id: str
    execution_arn: str
    clients: list[str]


def new_run_id() -> str:
    return f"run-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def build_model(model_ref: str, seed: int | None = None) -> Any:
    """Call the user's `module:function` and check it returns a compiled Keras model.

    With `seed`, Keras' random generators are seeded first, so the initial weights are reproducible."""
    if seed is not None:
        from client_agent.keras_model import import_keras

        import_keras().utils.set_random_seed(seed)
    model = load_callable(model_ref, "model")()
    if not hasattr(model, "save") or not hasattr(model, "weights"):
        raise FedstepError(f"model {model_ref!r} must return a Keras model, got {type(model).__name__}")
    if getattr(model, "optimizer", None) is None or not getattr(model, "compiled", True):
        raise FedstepError(f"model {model_ref!r} must return a compiled model (call model.compile(...))")
    return model


def keras_payload(model: Any) -> tuple[bytes, tensors.Tensors]:
    """The `.keras` architecture file and the initial weights of a Keras model."""
    from client_agent.keras_model import get_tensors, model_to_bytes

    return model_to_bytes(model), get_tensors(model)


def _check_sliceable(settings: RunSettings, model_bytes: int, slice_bytes: int | None) -> None:
    """Refuse, before anything is written, a run whose model the stack aggregates by slices with a
    strategy (or central DP, which clips whole updates) that cannot slice (`fedstep.core.sliced`)."""
    if not sliced.needs_slices(model_bytes, slice_bytes):
        return
    try:
        sliced.check_sliceable(settings.strategy_instance(), model_bytes, slice_bytes)
    except sliced.NotSliceable as exc:
        raise FedstepError(str(exc)) from None
    if settings.dp in ("central", "client-clip"):
        raise FedstepError(
            f"--dp {settings.dp} clips and noises whole updates, so it cannot aggregate this model of "
            f"{model_bytes / 2**20:.0f} MiB by slices (the deployment's slice_mb); use --dp dp-sgd or a smaller model"
        )


def start_run(
    architecture: bytes,
    initial_weights: tensors.Tensors,
    settings: RunSettings,
    outputs: StackOutputs,
    *,
    s3: Any,
    dynamodb: Any,
    stepfunctions: Any,
    sns: Any = None,
    run_id: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> StartedRun:
    """Upload the architecture and round-0 weights, write the run record, start the state machine. A run
    with `standardize: federated` first asks its clients for their statistics (`sns` publishes the
    request; `progress` hears how it goes, default stderr)."""
    settings = settings.validated()
    run_id = keys.check_id("run id", run_id or new_run_id())
    record = plan_run(settings, sorted(outputs.queues), run_id, outputs.revoked)
    weights = tensors.encode(
        initial_weights, {"schema": SCHEMA_VERSION, "run_id": run_id, "round": 0, "kind": "global"}
    )
    if len(weights) > outputs.max_model_bytes:
        raise FedstepError(
            f"the model is {len(weights)} bytes; the stack aggregates models of at most {outputs.max_model_bytes} "
            "bytes (deployment config max_model_mb)"
        )
    _check_sliceable(settings, len(weights), outputs.slice_bytes)
    if settings.standardize == "federated":
        record = _with_statistics(record, outputs, s3, dynamodb, sns, progress)
    launched = _launch(record, architecture, weights, 0, keys.INITIAL_VERSION, outputs, s3, dynamodb, stepfunctions)
    if launched is None:
        raise FedstepError(f"run {run_id} exists already; choose another run id")
    return launched


def _with_statistics(
    record: RunRecord, outputs: StackOutputs, s3: Any, dynamodb: Any, sns: Any, progress: Callable[[str], None] | None
) -> RunRecord:
    """The run record with its federated statistics, asked from its clients and written once."""
    from fedstep.cli.statistics import statistics_for_run

    if sns is None:
        raise FedstepError("standardize federated asks the clients for their statistics: it needs an SNS client")
    table = DynamoRoundTable(outputs.table, dynamodb)
    if table.get_run(record.run_id) is not None:
        raise FedstepError(f"run {record.run_id} exists already; choose another run id")
    say = progress or (lambda line: print(clean(line), file=sys.stderr, flush=True))
    ref = statistics_for_run(record, outputs, s3, sns, table, say)
    return replace(record, training=replace(record.training, standardization=ref))


def plan_run(settings: RunSettings, stack_clients: list[str], run_id: str, revoked: Collection[str] = ()) -> RunRecord:
    """The run record `settings` give a run of the stack's clients (its model not yet written; `revoked`:
    the stack's revoked clients, which it never takes); FedstepError when they cannot work with those clients."""
    if not stack_clients:
        raise FedstepError("the stack has no clients; add them to the deployment config and deploy")
    clients = settings.run_clients(stack_clients, revoked)
    per_round, quorum = settings.for_clients(clients)
    return RunRecord(
        run_id=run_id,
        clients=clients,
        rounds=settings.rounds,
        training=settings.training(),
        strategy=settings.strategy,
        strategy_params=strategies.params.to_json(settings.strategy_instance().params),
        created_at=utc_now(),
        quorum=quorum,
        target=Target.parse_text(settings.target) if settings.target else None,
        clients_per_round=per_round,
        seed=settings.seed,
        round_timeout_s=settings.round_timeout_s,
        round_retries=settings.round_retries,
        min_participants=settings.min_participants,
        bounds=settings.bounds(),
        dp=settings.privacy(),
        select_online=settings.select_online,
        selection=settings.selection,
    )


def model_of_round(
    table: DynamoRoundTable, run: RunRecord, round_number: int, history: list[RoundSummary] | None = None
) -> str:
    """The S3 key of a run's global model after `round_number` (0: the initial weights of the run
    that began the lineage); FedstepError if that round is not completed. `history`: the run's
    `round_history`, when the caller has read it already."""
    if round_number == 0:
        root = run
        while root.resumed_from:
            earlier = table.get_run(root.resumed_from)
            if earlier is None:
                break
            root = earlier
        return keys.global_key(root.run_id, 0, keys.INITIAL_VERSION)
    for summary in history if history is not None else round_history(table, run.run_id, round_number, run):
        if summary.round == round_number:
            return summary.global_model.key
    raise FedstepError(f"run {run.run_id} has no completed round {round_number}")


def check_fits_one_execution(rounds: int, round_retries: int, done: int = 0, run_id: str | None = None) -> None:
    """FedstepError, saying how to go on, when the rounds after `done` up to `rounds` (a new run: all
    of them; a continuation of `run_id`: those after its last completed round) do not fit one
    execution's history in the worst case (`execution_history.FEDSTEP`)."""
    budget = execution_history.FEDSTEP
    most = budget.rounds_per_execution(round_retries)
    if rounds - done <= most:
        return
    retries = f" with {round_retries} round retries" if round_retries else ""
    why = (
        f"{rounds - done} rounds do not fit one Step Functions execution: its history holds "
        f"{execution_history.HISTORY_EVENTS:,} events, and a round{retries} may add up to "
        f"{budget.per_round(round_retries)}, so one execution runs at most {most} rounds"
    )
    if run_id is None:
        how = f"start with --rounds {most}, then continue with `fedstep start --resume <run id> --rounds {rounds}`"
    else:
        how = (
            f"resume run {run_id} with --rounds {done + most}, then resume that continuation (the run id "
            f"`fedstep start` prints) with --rounds {rounds}"
        )
    raise FedstepError(
        f"{why}. To run {rounds} rounds, {how}: each continuation runs up to {most} more rounds after the "
        "last completed one (resume the newest continuation each time)"
    )


def _flag(name: str) -> str:
    return {"round_timeout_s": "--round-timeout", "strategy_params": "--strategy-param"}.get(
        name, "--" + name.replace("_", "-")
    )


def resume_rounds(run_id: str, flags: dict[str, Any], run_file: dict[str, Any]) -> int | None:
    """The `--rounds` of `fedstep start --resume RUN_ID` (None: the run's own). A continuation keeps
    the run's settings: any other run setting given as a flag (`flags`: the parsed arguments) or in
    the run file is refused by name, and so is `--run-id` (the continuation is `<run id>-r<n>`)."""
    given = [
        _flag(name) for name in RUN_FILE_FIELDS - {"model", "rounds", "strategy_params"} if flags.get(name) is not None
    ]
    given += ["--strategy-param"] if flags.get("strategy_param") else []
    given += [f"{name} (run file)" for name in run_file if name not in ("model", "rounds")]
    if given:
        names = ", ".join(sorted(given))
        raise FedstepError(
            f"--resume continues run {run_id} with its own settings; {names} cannot be changed "
            "(only --rounds can: the total the continuation runs up to)"
        )
    if flags.get("run_id") is not None:
        raise FedstepError(f"--resume names the continuation of run {run_id} itself ({run_id}-r1, ...); drop --run-id")
    rounds = flags.get("rounds")
    return rounds if rounds is not None else run_file.get("rounds")


def resume_run(
    run_id: str,
    outputs: StackOutputs,
    *,
    s3: Any,
    dynamodb: Any,
    stepfunctions: Any,
    rounds: int | None = None,
) -> StartedRun:
    """Continue a failed or stopped run from its last completed round's global model.

    The continuation is a new run, `<run id>-r1` (then -r2, ...): messages and update items still in
    flight for the old execution carry the old run id, so they can never mix into the new one. It
    reads the earlier rounds from the runs it continues; nothing of them is copied. It keeps the run's
    settings, except `rounds`: the total number of rounds it runs up to (default the run's own), which
    may also extend a run that completed all its rounds."""
    if rounds is not None and (isinstance(rounds, bool) or not isinstance(rounds, int)):
        raise FedstepError(f"run setting rounds must be int, got {rounds!r}")
    if rounds is not None and not 1 <= rounds <= limits.MAX_ROUNDS:
        raise FedstepError(f"rounds must be 1 to {limits.MAX_ROUNDS}, got {rounds}")
    table = DynamoRoundTable(outputs.table, dynamodb)
    old = table.get_run(run_id)
    if old is None:
        raise FedstepError(f"there is no run {run_id!r} in table {outputs.table}")
    status = stepfunctions.describe_execution(executionArn=execution_arn(outputs, run_id))["status"]
    if status == "RUNNING":
        raise FedstepError(f"run {run_id} is still running; stop it before resuming it")
    history = round_history(table, run_id, old.rounds, old)  # also the rounds of the runs it continues
    done = [s.round for s in history]
    last = next((i for i, r in enumerate(done) if r != i + 1), len(done))  # last of rounds 1..k all done
    if rounds is not None and last >= rounds:
        raise FedstepError(
            f"run {run_id} completed {last} rounds already; --rounds is the total to run up to, "
            f"so give more than {last}"
        )
    if last >= (rounds or old.rounds):
        raise FedstepError(
            f"run {run_id} completed all {old.rounds} rounds ({status}); nothing to resume "
            "(--rounds N continues it up to N rounds in total)"
        )
    check_fits_one_execution(rounds or old.rounds, old.round_retries, last, run_id)
    old = without_revoked(old, outputs)
    store = S3ModelStore(outputs.bucket, s3)
    architecture = store.get(keys.model_key(run_id))
    global_bytes = store.get(model_of_round(table, old, last, history))
    state_ref = next((h.state for h in history if h.round == last), None) if last else old.initial_state
    state_bytes = store.get(state_ref.key) if state_ref else None
    for attempt in range(1, 100):
        new_id = keys.check_id("run id", f"{run_id}-r{attempt}")
        record = replace(
            old,
            run_id=new_id,
            rounds=rounds or old.rounds,
            created_at=utc_now(),
            resumed_from=run_id,
            initial_state=None,
        )
        launched = _launch(
            record,
            architecture,
            global_bytes,
            last,
            keys.RESUMED_VERSION,
            outputs,
            s3,
            dynamodb,
            stepfunctions,
            state_bytes=state_bytes,
        )
        if launched is not None:
            return launched
    raise FedstepError(f"run {run_id} was resumed 99 times already")


def without_revoked(run: RunRecord, outputs: StackOutputs) -> RunRecord:
    """`run` less the clients revoked since it started (`outputs.revoked`; docs/operations.md), for the
    run that continues it: a revoked client can no longer act, and a continuation is a new run. Its
    clients per round shrink to those left; FedstepError when too few are left for its quorum and
    `min_participants`, or when its client-level DP accounted for the run's population."""
    gone = [c for c in run.clients if c in outputs.revoked]
    if not gone:
        return run
    left = [c for c in run.clients if c not in outputs.revoked]
    named = ", ".join(gone)
    if run.dp is not None and run.dp.central:
        raise FedstepError(
            f"run {run.run_id}'s privacy guarantee was accounted over its {len(run.clients)} clients, and some are "
            f"revoked now ({named}): resuming without them would change the population of that guarantee. Start a "
            'new run (fedstep start), or reinstate them ("revoked": false and deploy)'
        )
    per_round = min(run.clients_per_round or len(left), len(left))
    needs = max(run.quorum, run.min_participants)
    if per_round < needs:
        raise FedstepError(
            f"revoked clients ({named}) leave run {run.run_id} {len(left)} client(s), fewer than its quorum and "
            f"min_participants ({needs}): no round could be aggregated. Start a new run with fitting settings"
        )
    return replace(run, clients=left, clients_per_round=0 if per_round == len(left) else per_round)


def _launch(
    record: RunRecord,
    architecture: bytes,
    global_bytes: bytes,
    start_round: int,
    version: str,
    outputs: StackOutputs,
    s3: Any,
    dynamodb: Any,
    stepfunctions: Any,
    state_bytes: bytes | None = None,
) -> StartedRun | None:
    """Write the run record (None if that run id is taken), publish its models (and the strategy
    state it continues, `state_bytes`), start its execution after `start_round`. The execution's
    input holds no history: its size is the same for any round."""
    model_ref = ObjectRef(keys.model_key(record.run_id), tensors.sha256_hex(architecture), len(architecture))
    state_ref = None
    if state_bytes is not None:
        key = keys.state_key(record.run_id, start_round, version)
        state_ref = ObjectRef(key, tensors.sha256_hex(state_bytes), len(state_bytes))
    record = replace(record, model=model_ref, initial_state=state_ref)
    if not DynamoRoundTable(outputs.table, dynamodb).put_once(record.to_item()):
        return None
    store = S3ModelStore(outputs.bucket, s3)
    global_ref = ObjectRef(
        keys.global_key(record.run_id, start_round, version), tensors.sha256_hex(global_bytes), len(global_bytes)
    )
    store.put(model_ref.key, architecture)
    store.put(global_ref.key, global_bytes)
    if state_ref is not None and state_bytes is not None:
        store.put(state_ref.key, state_bytes)
    execution_input = {
        "run": {
            "run_id": record.run_id,
            "rounds": record.rounds,
            "clients": record.clients,
            "round_timeout_s": record.round_timeout_s,
            "round_retries": record.round_retries,
        },
        "round": start_round,
        "attempt": 0,
        "global_model": asdict(global_ref),
        "round_summary": {},
    }
    execution = stepfunctions.start_execution(
        stateMachineArn=outputs.state_machine_arn, name=record.run_id, input=json.dumps(execution_input)
    )
    return StartedRun(record.run_id, execution["executionArn"], record.clients)
