"""The run record: what `fedstep start` wrote for a run (clients, rounds, strategy, bounds, privacy,
target), read by the aggregation function at every step."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from fedstep.core import codecs, keys, limits
from fedstep.core.schemas.refs import ObjectRef
from fedstep.core.schemas.training import TrainingConfig
from fedstep.core.schemas.validation import (
    InvalidMessage,
    check_scalars,
    check_schema,
    get_field,
    id_field,
    positive_int,
)
from fedstep.core.selection import SELECTIONS, select
from fedstep.core.version import SCHEMA_VERSION


@dataclass(frozen=True)
class Target:
    """Stop early once the global model's `metric` is >= `value` (`at_least`) or <= `value` (otherwise).

    It is judged on the federated evaluation of a global model, never on the clients' metrics after
    their local training: round r's `test_<name>_before` metrics are the global model of round r-1
    evaluated on every participant's test split (weighted by examples), so `test_accuracy>=0.9` is
    reached after round r when round r-1's model scores 0.9 there. That model is the one that met
    the target (`met_by_round`); the run stops after round r.
    """

    metric: str
    value: float
    at_least: bool = True

    @property
    def judged_on(self) -> str:
        """The round metric the target is compared with: `test_<name>_before`."""
        return self.metric if self.metric.endswith("_before") else f"{self.metric}_before"

    @staticmethod
    def met_by_round(round_number: int) -> int:
        """The round whose global model met the target, when round `round_number` reached it."""
        return round_number - 1

    def reached(self, metrics: dict[str, float]) -> bool:
        current = metrics.get(self.judged_on)
        if current is None:
            return False
        return current >= self.value if self.at_least else current <= self.value

    def __str__(self) -> str:
        return f"{self.metric}{'>=' if self.at_least else '<='}{self.value:g}"

    @classmethod
    def parse_text(cls, text: str) -> Target:
        """'test_accuracy>=0.9' or 'test_loss<=0.3'."""
        for op, at_least in ((">=", True), ("<=", False)):
            name, sep, value = text.partition(op)
            if sep:
                try:
                    target = cls(name.strip(), float(value), at_least)
                except ValueError:
                    break
                if not target.metric.startswith("test_"):
                    raise InvalidMessage(
                        f"target {text!r}: a target is judged on the global model's federated evaluation, "
                        "so it names a test metric, e.g. test_accuracy>=0.9 or test_loss<=0.3 (train metrics "
                        "are each client's own after local training, not the global model's)"
                    )
                return target
        raise InvalidMessage(f"target {text!r} must look like test_accuracy>=0.9 or test_loss<=0.3")

    @classmethod
    def parse(cls, data: Any, where: str) -> Target:
        return cls(
            get_field(data, "metric", str, where),
            get_field(data, "value", float, where),
            get_field(data, "at_least", bool, where),
        )


BOUND_ACTIONS = ("clip", "reject")


@dataclass(frozen=True)
class Bounds:
    """How much one client may move a round (DESIGN "Trust model": influence is bounded).

    `max_examples` caps the examples a client's update is weighted by (default 100,000);
    `client_max_examples` sets a cap per client id instead. `max_update_norm` bounds the L2 norm of
    an update (the trained weights minus the global ones); None: the default bound, 10 x the larger
    of the initial model's norm and sqrt(parameters) (`fedstep.core.influence.default_norm_bound`,
    resolved by the aggregation; where a `Bounds` is used directly, None bounds nothing). `action` says
    what happens to an update beyond a bound: "clip" (weight capped, update scaled to the norm) or
    "reject"."""

    max_examples: int = 100_000
    client_max_examples: dict[str, int] = field(default_factory=dict)
    max_update_norm: float | None = None
    action: str = "clip"

    def __post_init__(self) -> None:
        caps = [self.max_examples, *self.client_max_examples.values()]
        if any(isinstance(c, bool) or not isinstance(c, int) or not 1 <= c <= limits.MAX_EXAMPLES for c in caps):
            raise InvalidMessage(f"max_examples must be whole numbers from 1 to {limits.MAX_EXAMPLES}")
        if self.max_update_norm is not None and not 0 < self.max_update_norm < math.inf:
            raise InvalidMessage(f"max_update_norm must be a positive number, got {self.max_update_norm}")
        if self.action not in BOUND_ACTIONS:
            raise InvalidMessage(f"bound action must be one of {BOUND_ACTIONS}, got {self.action!r}")

    def examples_cap(self, client_id: str) -> int:
        return self.client_max_examples.get(client_id, self.max_examples)

    @classmethod
    def parse(cls, data: Any, where: str) -> Bounds:
        if not isinstance(data, dict):
            raise InvalidMessage(f"{where}: bounds must be an object")
        norm = data.get("max_update_norm")
        return cls(
            max_examples=positive_int(data, "max_examples", where),
            client_max_examples={str(k): v for k, v in dict(data.get("client_max_examples") or {}).items()},
            max_update_norm=float(norm) if norm is not None else None,
            action=get_field(data, "action", str, where),
        )


DP_MODES = ("central", "client-clip", "dp-sgd", "distributed")


@dataclass(frozen=True)
class DPSettings:
    """A run's differential privacy (see docs/privacy.md).

    `mode`: "central" (client-level DP-FedAvg, the server clips each update and adds noise),
    "client-clip" (the same, but each client clips its update before upload), "distributed"
    (client-level, under secure aggregation: each client clips its update to `clip` and adds its share
    of the noise, so any `SecAggSettings.threshold` survivors' sum carries noise of std
    noise_multiplier x clip) or "dp-sgd" (record-level DP on each client: per-example clipping and
    noise in every local step).
    `noise_multiplier` z: the noise's standard deviation over the clip norm. `clip`: the clip norm C
    (an update's L2 norm; under dp-sgd an example's gradient norm), or None for adaptive clipping
    (central modes: C tracks the `target_quantile` of the update norms, Andrew et al. 2021, starting
    at `initial_clip` and moving by `clip_learning_rate`; the count of clipped updates is released
    with noise of std `clipped_count_stddev`). `delta`: the delta of the (epsilon, delta) guarantee.
    `epsilon_budget`: stop the run before a round would take epsilon past it (client-level modes; under
    "distributed", the published model's epsilon)."""

    mode: str
    noise_multiplier: float
    clip: float | None
    delta: float
    epsilon_budget: float | None = None
    target_quantile: float = 0.5
    clip_learning_rate: float = 0.2
    initial_clip: float = 0.1
    clipped_count_stddev: float = 0.0

    @property
    def central(self) -> bool:
        """Client-level DP applied by the server (clipping checked, noise added to the sum)."""
        return self.mode in ("central", "client-clip")

    @property
    def client_level(self) -> bool:
        """A client's whole contribution is protected, accounted by the server each round: the
        central modes, and "distributed" (the noise added by the clients, the sum noised as central
        DP's is)."""
        return self.central or self.mode == "distributed"

    @classmethod
    def parse(cls, data: Any, where: str) -> DPSettings:
        mode = get_field(data, "mode", str, where)
        if mode not in DP_MODES:
            raise InvalidMessage(f"{where}: mode must be one of {DP_MODES}, got {mode!r}")
        numbers = {
            name: get_field(data, name, float, where)
            for name in ("noise_multiplier", "delta", "target_quantile", "clip_learning_rate", "initial_clip")
            if name in data
        }
        numbers["clipped_count_stddev"] = float(data.get("clipped_count_stddev", 0.0))
        clip = data.get("clip")
        budget = data.get("epsilon_budget")
        if any(not math.isfinite(v) or v < 0 for v in numbers.values()):
            raise InvalidMessage(f"{where}: DP parameters must be finite numbers >= 0")
        return cls(
            mode=mode,
            clip=None if clip is None else get_field(data, "clip", float, where),
            epsilon_budget=None if budget is None else get_field(data, "epsilon_budget", float, where),
            **numbers,
        )


DEFAULT_SECAGG_PHASE_TIMEOUT_S = 300
"""How long each phase after the first (sharing keys, uploading masked inputs, revealing) waits, s."""


@dataclass(frozen=True)
class SecAggSettings:
    """A run's secure aggregation (SecAgg+, `fedstep.privacy.secagg`; docs/privacy.md).

    `threshold` t: the fewest clients that must survive a round (and the fewest shares that rebuild a
    secret). `neighbours` k: how many others each client masks with and shares to (0: every other
    selected client, the complete graph; else an even number >= 2). `clip`: the L2 norm each client
    clips its delta to before quantising (it sets the fixed-point range). `phase_timeout_s`: each later
    phase's deadline (the first phase, training and advertising keys, has the round's)."""

    threshold: int
    neighbours: int = 0
    clip: float = 10.0
    phase_timeout_s: int = DEFAULT_SECAGG_PHASE_TIMEOUT_S

    def __post_init__(self) -> None:
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, int) or self.threshold < 2:
            raise InvalidMessage(f"secure aggregation threshold must be a whole number >= 2, got {self.threshold!r}")
        if self.neighbours != 0 and (self.neighbours < 2 or self.neighbours % 2):
            raise InvalidMessage(
                f"secure aggregation neighbours must be 0 (everyone) or an even number >= 2, got {self.neighbours}"
            )
        if not 0 < self.clip < math.inf:
            raise InvalidMessage(f"secure aggregation clip must be a positive number, got {self.clip}")
        if not 1 <= self.phase_timeout_s <= limits.MAX_ROUND_TIMEOUT_S:
            raise InvalidMessage(f"secure aggregation phase timeout must be 1 to {limits.MAX_ROUND_TIMEOUT_S} s")

    @classmethod
    def parse(cls, data: Any, where: str) -> SecAggSettings:
        if not isinstance(data, dict):
            raise InvalidMessage(f"{where}: secure aggregation settings must be an object")
        return cls(
            threshold=positive_int(data, "threshold", where, 2, limits.MAX_CLIENTS_PER_RUN),
            neighbours=positive_int(data, "neighbours", where, 0, limits.MAX_CLIENTS_PER_RUN)
            if "neighbours" in data
            else 0,
            clip=get_field(data, "clip", float, where) if "clip" in data else 10.0,
            phase_timeout_s=positive_int(data, "phase_timeout_s", where, 1, limits.MAX_ROUND_TIMEOUT_S)
            if "phase_timeout_s" in data
            else DEFAULT_SECAGG_PHASE_TIMEOUT_S,
        )


@dataclass(frozen=True)
class RunRecord:
    """Written by `fedstep start`: who takes part in a run and how it trains."""

    run_id: str
    clients: list[str]
    rounds: int
    training: TrainingConfig
    strategy: str
    created_at: str
    quorum: int = 1
    """The fewest valid updates a round may be aggregated from (at its deadline, or after rejections)."""
    target: Target | None = None
    clients_per_round: int = 0
    """How many clients each round selects (0: all)."""
    seed: int = 0
    """Seed of the per-round client selection."""
    round_timeout_s: int = 3600
    round_retries: int = 0
    resumed_from: str = ""
    """The run this one continues (`fedstep start --resume`), or ""."""
    model: ObjectRef | None = None
    """The run's architecture file (`runs/<run>/model.keras`)."""
    min_participants: int = 2
    """A round is never aggregated from fewer valid updates: it would publish one client's update."""
    bounds: Bounds = field(default_factory=Bounds)
    strategy_params: dict[str, Any] = field(default_factory=dict)
    """The strategy's parameters, all of them (defaults included), as `fedstep strategies` names them."""
    initial_state: ObjectRef | None = None
    """The strategy's state the run starts from: the state a resumed run continues, or None."""
    dp: DPSettings | None = None
    """The run's differential privacy, or None."""
    select_online: bool = True
    """Leave out of each round's selection the clients whose heartbeat says offline or stopped
    (`fedstep.core.selection`); a record written before the setting existed reads False."""
    selection: str = "fixed"
    """How each round samples `clients_per_round` of the clients: "fixed" (exactly that many, without
    replacement) or "poisson" (each with probability clients_per_round / clients); a record written
    before the setting existed reads "fixed"."""
    codec: str = "float32"
    """How the clients encode their updates (`fedstep.core.codecs`, checked by `fedstep.core.run_rules`);
    a record written before codecs existed reads "float32" (today's files)."""
    secagg: SecAggSettings | None = None
    """Secure aggregation (`--secure-aggregation`): the server learns only the sum of each round's
    updates; None (a record written before it existed reads None): plain updates."""

    def selected(self, round_number: int) -> list[str]:
        """The seeded sample of `round_number`, heartbeats aside (see fedstep.core.selection); the
        round's own selection is in its round record (`fedstep.core.rounds.selected_in`)."""
        per_round = self.clients_per_round or len(self.clients)
        return select(self.clients, per_round, self.seed, round_number, self.selection)

    def to_item(self) -> dict[str, Any]:
        return {**keys.run_item_key(self.run_id), "schema": SCHEMA_VERSION, "kind": "run", **asdict(self)}

    @classmethod
    def parse(cls, data: dict[str, Any]) -> RunRecord:
        where = "run record"
        check_schema(data, where)
        clients = get_field(data, "clients", list, where)

        def optional_int(name: str, default: int, minimum: int) -> int:
            return positive_int(data, name, where, minimum) if name in data else default

        return cls(
            run_id=id_field(data, "run_id", "run id", where),
            clients=[id_field({"client": c}, "client", "client id", where) for c in clients],
            rounds=positive_int(data, "rounds", where, 1, limits.MAX_ROUNDS),
            training=TrainingConfig.parse(get_field(data, "training", dict, where)),
            strategy=get_field(data, "strategy", str, where),
            created_at=get_field(data, "created_at", str, where),
            quorum=optional_int("quorum", 1, 1),
            target=Target.parse(data["target"], f"{where} target") if data.get("target") else None,
            clients_per_round=optional_int("clients_per_round", 0, 0),
            seed=optional_int("seed", 0, 0),
            round_timeout_s=optional_int("round_timeout_s", 3600, 1),
            round_retries=optional_int("round_retries", 0, 0),
            resumed_from=str(data.get("resumed_from", "")),
            model=ObjectRef.parse(data["model"], f"{where} model") if data.get("model") else None,
            min_participants=optional_int("min_participants", 2, 1),
            bounds=Bounds.parse(data["bounds"], f"{where} bounds") if data.get("bounds") else Bounds(),
            strategy_params=check_scalars(data.get("strategy_params", {}), f"{where} strategy_params", 32),
            initial_state=(
                ObjectRef.parse(data["initial_state"], f"{where} initial_state") if data.get("initial_state") else None
            ),
            dp=DPSettings.parse(data["dp"], f"{where} dp") if data.get("dp") else None,
            select_online=get_field(data, "select_online", bool, where) if "select_online" in data else False,
            selection=_selection(data, where),
            codec=_codec(data, where),
            secagg=SecAggSettings.parse(data["secagg"], f"{where} secagg") if data.get("secagg") else None,
        )


def _codec(data: dict[str, Any], where: str) -> str:
    """A run record's `codec` name: "float32" when absent (written before codecs existed); a short text
    here, its meaning checked against the codecs by `fedstep.core.run_rules.check_codec`."""
    value = data.get("codec", "float32")
    if not isinstance(value, str) or not 0 < len(value) <= codecs.MAX_NAME_CHARS:
        raise InvalidMessage(
            f"{where}: codec must be a codec's name (text of at most {codecs.MAX_NAME_CHARS}), got {value!r}"
        )
    return value


def _selection(data: dict[str, Any], where: str) -> str:
    """A run record's `selection`: "fixed" when absent (written before the setting existed)."""
    value = data.get("selection", "fixed")
    if value not in SELECTIONS:
        raise InvalidMessage(f"{where}: selection must be one of {', '.join(SELECTIONS)}, got {value!r}")
    return str(value)
