"""The run settings: how a run trains and how far it trusts any one client, from flags, run files
and keyword arguments (each layer over the one below), checked against the clients before anything
starts, and mapped onto the run record."""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import asdict, dataclass, fields
from typing import Any, NamedTuple

from fedstep.core import codecs, keys, limits, run_rules, strategies
from fedstep.core.errors import FedstepError
from fedstep.core.json_files import load_json_object
from fedstep.core.schemas import (
    DP_MODES,
    Bounds,
    DPSettings,
    InvalidMessage,
    ObjectRef,
    SecAggSettings,
    Target,
    TrainingConfig,
)
from fedstep.core.schemas.run_record import DEFAULT_SECAGG_PHASE_TIMEOUT_S
from fedstep.core.selection import per_round_count


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
    statistics of every client, asked before the run starts: `fedstep.operator.statistics`)."""
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
    """Differential privacy: "central", "client-clip", "distributed" (with secure_aggregation) or
    "dp-sgd" (docs/privacy.md); None: none."""
    dp_noise_multiplier: float | None = None
    """z: the noise's standard deviation over the clip norm (required with dp)."""
    dp_clip: str | None = None
    """The clip norm: a number, or "adaptive" (central modes; default adaptive there, 1.0 for dp-sgd;
    required under distributed)."""
    dp_delta: float | None = None
    """The delta of the (epsilon, delta) guarantee (default 1e-5)."""
    dp_epsilon: float | None = None
    """The run's epsilon budget (client-level modes; under distributed, the published model's): the run
    stops before a round would exceed it."""
    secure_aggregation: bool = False
    """Secure aggregation (SecAgg+): the server learns only the sum of each round's updates."""
    secagg_threshold: int | None = None
    """t: the fewest clients a secure round's sum is unmasked from (and the shares that rebuild a
    secret); default max(2, min_participants, quorum), at most the clients per round."""
    secagg_neighbours: int | None = None
    """k: how many others each client masks with and shares its secrets to; 0 (the default): every
    other selected client; else an even number with k + 1 >= t."""
    secagg_clip: float | None = None
    """The L2 norm each client clips its update to before quantising it (default 10.0; under
    dp distributed it is dp_clip)."""
    secagg_phase_timeout_s: int | None = None
    """Each later phase's deadline, s (sharing keys, uploading masked inputs, revealing shares)."""
    selection: str = "fixed"
    """How a round samples clients_per_round of the clients: "fixed" (exactly that many) or "poisson"
    (each with probability clients_per_round / clients; central DP accounted under add/remove)."""
    codec: str = "float32"
    """How the clients encode their updates: float32 (default), float16, int8, topk:FRACTION or
    topk:FRACTION+int8 (`fedstep codecs` lists them; docs/codecs.md)."""
    select_online: bool = True
    """Leave out of each round the clients whose heartbeat says offline or stopped (fedstep.core.selection)."""
    select: list[str] | None = None
    """The stack's clients the run takes part with, by name (`--select a,b`); None: all of them."""
    exclude: list[str] | None = None
    """The stack's clients the run leaves out, by name (`--exclude c`)."""

    def validated(self) -> RunSettings:
        """These settings, when each part keeps the run's rules on its own (`fedstep.core.run_rules`:
        the schedule, the floors and the strategy, the training, bounds and privacy settings);
        FedstepError naming the first that does not."""
        run_rules.check_schedule(self.rounds, self.round_retries, self.round_timeout_s)
        run_rules.check_fits_one_execution(self.rounds, self.round_retries, secure=self.secure_aggregation)
        if self.target is not None:
            try:
                Target.parse_text(self.target)
            except InvalidMessage as exc:
                raise FedstepError(str(exc)) from None
        try:
            strategy = self.strategy_instance()
            self.training()
            self.bounds()
            privacy = self.privacy()
            codec = self.codec_instance()
        except (ValueError, InvalidMessage) as exc:
            raise FedstepError(str(exc)) from None
        run_rules.check_floors(self.quorum, self.min_participants, self.selection, strategy)
        run_rules.check_codec(codec, strategy, privacy)
        self._check_secagg_values()
        run_rules.check_distributed(privacy, self.secure_aggregation, self.secagg_clip)
        if self.secure_aggregation:
            run_rules.check_secure_aggregation(strategy, codec, privacy, self.bounds())
        return self

    def _check_secagg_values(self) -> None:
        """The secure-aggregation settings, each on its own; FedstepError naming the flag."""
        given = [name for name in _SECAGG_SETTINGS if getattr(self, name) is not None]
        if not self.secure_aggregation:
            if given:
                flags = ", ".join(_flag(name) for name in given)
                raise FedstepError(f"{flags} given without --secure-aggregation")
            return
        t, k = self.secagg_threshold, self.secagg_neighbours
        if t is not None and t < 2:
            raise FedstepError(f"--secagg-threshold must be 2 or more (the fewest survivors of a round), got {t}")
        if k is not None and k != 0 and (k < 2 or k % 2):
            raise FedstepError(
                f"--secagg-neighbours must be 0 (every other selected client) or an even number >= 2, got {k}"
            )
        if self.secagg_clip is not None and not 0 < self.secagg_clip < math.inf:
            raise FedstepError(f"--secagg-clip must be a number > 0, got {self.secagg_clip}")
        timeout = self.secagg_phase_timeout_s
        if timeout is not None and not 1 <= timeout <= limits.MAX_ROUND_TIMEOUT_S:
            raise FedstepError(f"--secagg-phase-timeout must be 1 s to {limits.MAX_ROUND_TIMEOUT_S} s, got {timeout}")

    def secagg(self, per_round: int, quorum: int) -> SecAggSettings | None:
        """The run's secure aggregation for `per_round` clients per round and its `quorum`, or None
        without it: the threshold given, else max(2, min_participants, quorum) at most `per_round`;
        under distributed DP the clip is dp_clip. InvalidRun when the rounds cannot keep it
        (`fedstep.core.run_rules.check_threshold`)."""
        if not self.secure_aggregation:
            return None
        threshold = self._threshold(per_round, quorum)
        dp = self.privacy()
        clip = dp.clip if dp is not None and dp.mode == "distributed" and dp.clip is not None else self.secagg_clip
        settings = SecAggSettings(
            threshold=threshold,
            neighbours=self.secagg_neighbours or 0,
            clip=10.0 if clip is None else clip,
            phase_timeout_s=self.secagg_phase_timeout_s or DEFAULT_SECAGG_PHASE_TIMEOUT_S,
        )
        run_rules.check_threshold(settings, quorum, self.min_participants, per_round)
        return settings

    def privacy(self) -> DPSettings | None:
        """The run's DP settings; ValueError naming a setting that makes no sense on its own."""
        given = [name for name in ("dp_noise_multiplier", "dp_clip", "dp_delta", "dp_epsilon") if getattr(self, name)]
        if self.dp is None:
            if given:
                flags = ", ".join("--" + name.replace("_", "-") for name in given)
                raise ValueError(f"{flags} given without --dp (central, client-clip, distributed or dp-sgd)")
            return None
        if self.dp not in DP_MODES:
            raise ValueError(f"--dp must be one of {', '.join(DP_MODES)}, got {self.dp!r}")
        z = self.dp_noise_multiplier
        if z is None or not 0 < z <= 1000:
            raise ValueError(f"--dp {self.dp} needs --dp-noise-multiplier, a number > 0 (got {z})")
        delta = 1e-5 if self.dp_delta is None else self.dp_delta
        if not 0 < delta < 1:
            raise ValueError(f"--dp-delta must be between 0 and 1, got {delta}")
        if self.dp == "distributed" and self.dp_clip in (None, "adaptive"):
            raise ValueError(
                "--dp distributed needs --dp-clip C, a number > 0: each client clips its update to C and calibrates "
                "its noise to it, and adaptive clipping would move C by the updates' norms, which under secure "
                "aggregation the server never sees"
            )
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
                "--dp-epsilon is a run's client-level budget (central, client-clip, distributed); under dp-sgd each "
                "data owner sets its own budget (dp_epsilon_budget in the client config)"
            )
        if self.dp_epsilon is not None and not self.dp_epsilon > 0:
            raise ValueError(f"--dp-epsilon must be > 0, got {self.dp_epsilon}")
        return DPSettings(self.dp, z, clip, delta, self.dp_epsilon)

    def _threshold(self, per_round: int, quorum: int) -> int:
        return self.secagg_threshold or max(2, min(per_round, max(self.min_participants, quorum)))

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
        clients per round, a secure-aggregation threshold they cannot keep, a cap for an unknown client,
        privacy settings that make no sense for them). Under secure aggregation the default quorum is
        raised to the threshold."""
        if len(clients) > limits.MAX_CLIENTS_PER_RUN:
            run_rules.check_participation(len(clients), 1, 1, 1)  # names the limit
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
        if self.secure_aggregation and self.quorum is None:  # a secure round needs t survivors: so does its quorum
            quorum = max(quorum, min(per_round, self._threshold(per_round, quorum)))
        run_rules.check_participation(len(clients), per_round, quorum, self.min_participants)
        self.secagg(per_round, quorum)
        unknown = sorted(set(self.client_max_examples or {}) - set(clients))
        if unknown:
            raise FedstepError(f"client_max_examples names clients the stack does not have: {unknown}")
        from fedstep.privacy.accounting import client_epsilon

        strategy = self.strategy_instance()
        run_rules.check_privacy(self.privacy(), strategy, per_round, len(clients), self.selection, client_epsilon)
        return per_round, quorum

    def strategy_instance(self) -> strategies.Strategy:
        """The strategy with its parameters; ValueError naming an unknown or ill-typed one."""
        return strategies.build(self.strategy, self.strategy_params)

    def codec_instance(self) -> codecs.Codec:
        """The update codec; ValueError naming an unknown one (and the codecs there are)."""
        return codecs.get(self.codec)

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


_SECAGG_SETTINGS = ("secagg_threshold", "secagg_neighbours", "secagg_clip", "secagg_phase_timeout_s")
"""The settings that tune secure aggregation (each needs secure_aggregation)."""


def _flag(name: str) -> str:
    """A run setting's flag: `--secagg-phase-timeout` for secagg_phase_timeout_s, `--dp-clip` for dp_clip."""
    return {"round_timeout_s": "--round-timeout", "secagg_phase_timeout_s": "--secagg-phase-timeout"}.get(
        name, "--" + name.replace("_", "-")
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
    "secagg_threshold": int,
    "secagg_neighbours": int,
    "secagg_clip": float,
    "secagg_phase_timeout_s": int,
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


class RunSettingsDefaults(NamedTuple):
    rounds: int
    timeout: int
    """The defaults that differ between `fedstep start` and `fedstep local`: rounds and the round deadline (s)."""


START_DEFAULTS = RunSettingsDefaults(rounds=5, timeout=3600)
LOCAL_DEFAULTS = RunSettingsDefaults(rounds=5, timeout=600)
