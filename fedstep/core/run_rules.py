"""The rules a run keeps, in one place: each part of the run record (its schedule, its participation,
its strategy, its privacy, its secure aggregation, its model's size) checked against the consortium
(its clients, the clients per round) and the deployment (the slice size).

`fedstep start` (`fedstep.operator.settings`, `fedstep.operator.start`) checks each part as soon as it
knows it: the schedule and the strategy from the settings alone, before any AWS call; participation
and privacy once it knows the run's clients; the model's size once it has built the model. The
aggregation function checks the whole record it reads before it publishes a round (`check_run`), so a
run record written by anything else than `fedstep start` is refused with the same message. Every
refusal is `InvalidRun`, a `FedstepError` whose message names the setting and how to fix it.
"""

from __future__ import annotations

from fedstep.core import codecs, execution_history, limits, sliced, strategies
from fedstep.core.dp import Accountant, DPAggregation, DPSettings, round_epsilon
from fedstep.core.errors import FedstepError
from fedstep.core.schemas import Bounds, RunRecord, SecAggSettings
from fedstep.core.selection import SELECTIONS

MAX_ROUND_RETRIES = 10
"""How often a round that cannot be aggregated may be published again."""


class InvalidRun(FedstepError):
    """A run that breaks one of the rules; the message says which and how to fix it."""


# -- the schedule ----------------------------------------------------------------------------------


def check_schedule(rounds: int, round_retries: int, round_timeout_s: int) -> None:
    """Rounds 1-`limits.MAX_ROUNDS`, 0-`MAX_ROUND_RETRIES` retries, a deadline of 1 s to a year (that
    the rounds fit one execution is checked when a run starts or resumes: `check_fits_one_execution`)."""
    if not 1 <= rounds <= limits.MAX_ROUNDS:
        raise InvalidRun(f"rounds must be 1 to {limits.MAX_ROUNDS}, got {rounds}")
    if not 0 <= round_retries <= MAX_ROUND_RETRIES:
        raise InvalidRun(f"round_retries must be 0-{MAX_ROUND_RETRIES}, got {round_retries}")
    if not 1 <= round_timeout_s <= limits.MAX_ROUND_TIMEOUT_S:
        raise InvalidRun(f"round_timeout_s must be 1 s to 1 year, got {round_timeout_s}")


def check_fits_one_execution(
    rounds: int, round_retries: int, done: int = 0, run_id: str | None = None, secure: bool = False
) -> None:
    """InvalidRun, saying how to go on, when the rounds after `done` up to `rounds` (a new run: all
    of them; a continuation of `run_id`: those after its last completed round) do not fit one
    execution's history in the worst case (`execution_history.FEDSTEP`; `FEDSTEP_SECURE` for a run
    with secure aggregation, `secure`, whose rounds pass three more phases)."""
    budget = execution_history.budget(secure)
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
    raise InvalidRun(
        f"{why}. To run {rounds} rounds, {how}: each continuation runs up to {most} more rounds after the "
        "last completed one (resume the newest continuation each time)"
    )


# -- the strategy and the participation ---------------------------------------------------------------


def check_floors(quorum: int | None, min_participants: int, selection: str, strategy: strategies.Strategy) -> None:
    """A quorum (when set) and a participants floor of at least 1, a known selection, and a floor the
    strategy can aggregate from."""
    if quorum is not None and quorum < 1:
        raise InvalidRun(f"quorum must be >= 1, got {quorum}")
    if selection not in SELECTIONS:
        raise InvalidRun(
            f"selection must be one of {', '.join(SELECTIONS)} (docs/privacy.md, Two conventions), got {selection!r}"
        )
    if min_participants < 1:
        raise InvalidRun(f"min_participants must be >= 1, got {min_participants}")
    needs, why = strategy.min_updates()
    if min_participants < needs:
        raise InvalidRun(
            f"strategy {strategy.name!r} needs at least {needs} valid updates in every round ({why}), but "
            f"min_participants is {min_participants}: a round with fewer could not be aggregated. Set "
            f"--min-participants {needs} (min_participants in a run file) and select at least {needs} clients "
            "per round"
        )


def check_participation(clients: int, per_round: int, quorum: int, min_participants: int) -> None:
    """At most `limits.MAX_CLIENTS_PER_RUN` clients, and a quorum and a participants floor that the
    clients selected per round can meet."""
    if clients > limits.MAX_CLIENTS_PER_RUN:
        raise InvalidRun(f"a run takes at most {limits.MAX_CLIENTS_PER_RUN} clients; the stack has {clients}")
    if quorum > per_round:
        raise InvalidRun(f"quorum {quorum} is more than the {per_round} clients selected per round")
    if min_participants > per_round:
        raise InvalidRun(
            f"min_participants {min_participants} is more than the {per_round} client(s) selected per "
            "round; set it to 1 (--min-participants 1) only if a round may publish a single client's update"
        )


# -- privacy ------------------------------------------------------------------------------------------


def check_privacy(
    dp: DPSettings | None,
    strategy: strategies.Strategy,
    per_round: int,
    population: int,
    selection: str,
    accountant: Accountant | None = None,
) -> None:
    """Refuse client-level DP settings (central modes, distributed) that make no sense for this
    consortium: delta >= 1/clients (client-level DP protects a client among `population`), a wrapped
    strategy without calibrated noise, an adaptive clip that leaves no noise for the updates, and
    (with an `accountant`) a budget one round already exceeds."""
    if dp is None or not dp.client_level:
        return
    if dp.delta >= 1 / population:
        raise InvalidRun(
            f"--dp-delta {dp.delta:g} is not below 1/clients = {1 / population:.3g}: a guarantee that weak "
            "would allow publishing a client's update outright; use a smaller delta (e.g. 1e-5)"
        )
    if dp.central:
        try:
            DPAggregation(strategy, dp, per_round, selection)
        except ValueError as exc:
            raise InvalidRun(str(exc)) from None
    if dp.epsilon_budget is not None and accountant is not None:
        first = round_epsilon(dp, accountant, per_round, population, 1, 0, selection)
        if first > dp.epsilon_budget:
            raise InvalidRun(
                f"--dp-epsilon {dp.epsilon_budget:g} is unreachable: one round with noise multiplier "
                f"{dp.noise_multiplier:g} and {per_round} of {population} clients per round already costs "
                f"epsilon {first:.3g} (delta {dp.delta:g}); raise the noise multiplier or the budget"
            )


def check_distributed(dp: DPSettings | None, secure: bool, secagg_clip: float | None = None) -> None:
    """Distributed DP's rules: it needs secure aggregation (`secure`: the run has it), a fixed clip
    (adaptive clipping moves C by the updates' norms, which the server never sees), and the clip the
    clients apply under secure aggregation (`secagg_clip`, when set) equal to its clip."""
    if dp is None or dp.mode != "distributed":
        return
    if not secure:
        raise InvalidRun(
            "--dp distributed needs --secure-aggregation: each client adds only its share of the noise "
            "(z C / sqrt(threshold)), which protects nothing unless the server sees the sum alone; use --dp "
            "central without secure aggregation"
        )
    if dp.clip is None:
        raise InvalidRun(
            "--dp distributed needs a fixed --dp-clip C: adaptive clipping moves C by the norms of the updates, "
            "which under secure aggregation the server never sees"
        )
    if secagg_clip is not None and secagg_clip != dp.clip:
        raise InvalidRun(
            f"--secagg-clip {secagg_clip:g} differs from --dp-clip {dp.clip:g}: under --dp distributed each client "
            "clips its update to --dp-clip, the norm its noise is calibrated to; give --dp-clip alone"
        )


# -- secure aggregation ---------------------------------------------------------------------------------


def _secure_strategies() -> str:
    return ", ".join(sorted(name for name, cls in strategies.STRATEGIES.items() if cls.secure_aggregation))


def check_secure_aggregation(
    strategy: strategies.Strategy, codec: codecs.Codec, dp: DPSettings | None, bounds: Bounds
) -> None:
    """What secure aggregation cannot do, the server seeing only the sum of a round's updates (each
    masked): a strategy that reads each update (`Strategy.secure_aggregation`), a server-side norm
    bound or a rejection beyond the bounds (the server cannot measure a masked update: each client
    clips its own), a weight cap per client (every client caps its weight at the one `max_examples`
    the round message carries), a codec other than float32 (the masked input is the protocol's own
    fixed point), and the central DP modes (the server cannot clip a masked update, and noise added
    to the sum by the server would not hide any update from the server)."""
    if not strategy.secure_aggregation:
        raise InvalidRun(
            f"--secure-aggregation shows the server only the sum of a round's updates, and strategy "
            f"{strategy.name!r} {strategy.secure_refusal}; use an averaging strategy ({_secure_strategies()})"
        )
    if bounds.max_update_norm is not None:
        raise InvalidRun(
            f"--max-update-norm {bounds.max_update_norm:g} is a bound the server applies to each update, and under "
            "--secure-aggregation it cannot measure a masked update; each client clips its own update to "
            "--secagg-clip (--dp-clip under --dp distributed) instead: drop --max-update-norm"
        )
    if bounds.action != "clip":
        raise InvalidRun(
            f"--bound-action {bounds.action} asks the server to reject an update beyond the bounds, and under "
            "--secure-aggregation it cannot see a masked update to reject it (each client clips its own): use "
            "--bound-action clip"
        )
    if bounds.client_max_examples:
        raise InvalidRun(
            "client_max_examples sets a weight cap per client, and under --secure-aggregation each client caps its "
            "own weight at the one --max-examples its round message carries (the server cannot see a masked "
            "update's weight): drop client_max_examples and set --max-examples"
        )
    if codec.name != codecs.DEFAULT:
        raise InvalidRun(
            f"--codec {codec.name} cannot be used with --secure-aggregation: a masked update is the client's "
            f"float32 delta quantised by the protocol itself; use --codec {codecs.DEFAULT} (the default)"
        )
    if dp is not None and dp.central:
        raise InvalidRun(
            f"--dp {dp.mode} cannot be used with --secure-aggregation: the server cannot clip a masked update, and "
            "noise it added to the sum would hide nothing from itself; use --dp distributed (each client clips "
            "and adds its share of the noise) or --dp dp-sgd"
        )


def check_threshold(secagg: SecAggSettings, quorum: int, min_participants: int, per_round: int) -> None:
    """A threshold t the run's rounds can meet and that keeps its floors: at least `min_participants`
    (a sum is never unmasked from fewer clients than a round may be aggregated from), at most the
    clients per round, a quorum of at least t (a secure round is never aggregated from fewer than t
    survivors), and a neighbourhood that can hold t shares: each client shares its secrets among
    itself and its k neighbours, and t of those shares rebuild one (k + 1 >= t; k = 0: everyone)."""
    t, k = secagg.threshold, secagg.neighbours
    if t > per_round:
        raise InvalidRun(
            f"--secagg-threshold {t} is more than the {per_round} client(s) selected per round: no round could "
            f"have {t} survivors; lower the threshold or select more clients per round"
            + (" (secure aggregation needs at least 2)" if per_round < 2 else "")
        )
    if t < min_participants:
        raise InvalidRun(
            f"--secagg-threshold {t} is below min_participants {min_participants}: the sum of {t} clients could "
            f"be unmasked, fewer than a round may be aggregated from; set --secagg-threshold {min_participants} "
            "or more"
        )
    if quorum < t:
        raise InvalidRun(
            f"quorum {quorum} is below --secagg-threshold {t}: a secure round is never aggregated from fewer than "
            f"{t} survivors; set --quorum {t} or more (or lower the threshold)"
        )
    if k != 0 and k + 1 < t:
        raise InvalidRun(
            f"--secagg-neighbours {k} is too few for --secagg-threshold {t}: each client shares its secrets among "
            f"itself and its {k} neighbours, and {t} shares are needed to rebuild one; set --secagg-neighbours "
            f"{t - 1 + (t - 1) % 2} or more (even), or 0 for every other selected client"
        )


# -- the model's size -----------------------------------------------------------------------------------


def check_sliceable(
    strategy: strategies.Strategy,
    dp: DPSettings | None,
    model_bytes: int,
    slice_bytes: int | None,
    secure: bool = False,
) -> None:
    """Refuse a run whose model the stack aggregates by slices with a strategy (or central DP, which
    clips whole updates) that cannot slice (`fedstep.core.sliced`). Under secure aggregation
    (`secure`) each slice unmasks its own range of the sum, so the same strategies slice."""
    if not sliced.needs_slices(model_bytes, slice_bytes):
        return
    try:
        sliced.check_sliceable(strategy, model_bytes, slice_bytes)
    except sliced.NotSliceable as exc:
        raise InvalidRun(str(exc)) from None
    if dp is not None and dp.mode in ("central", "client-clip"):
        raise InvalidRun(
            f"--dp {dp.mode} clips and noises whole updates, so it cannot aggregate this model of "
            f"{model_bytes / 2**20:.0f} MiB by slices (the deployment's slice_mb); use --dp dp-sgd or a smaller model"
        )


# -- the update codec ---------------------------------------------------------------------------------


def check_codec(
    codec: codecs.Codec,
    strategy: strategies.Strategy,
    dp: DPSettings | None,
    model_bytes: int | None = None,
    slice_bytes: int | None = None,
) -> None:
    """Refuse a codec the run cannot use: a sparse codec (top-k) with a strategy that reads every
    coordinate of every update (median, trimmed mean, Krum: most coordinates of a sparse update are
    zero, so their coordinate-wise or distance-based choice would be made of zeros); error feedback
    with differential privacy (the residual carries the update's unnoised, unclipped remainder into
    later rounds, outside the guarantee's accounting); a codec that cannot be read by slices on a
    model the stack aggregates by slices (`model_bytes`, `slice_bytes` as `check_sliceable`)."""
    if codec.sparse and not strategy.accepts_sparse:
        raise InvalidRun(
            f"--codec {codec.name} sends sparse updates (most coordinates zero), and {strategy.name} "
            f"{strategy.sparse_refusal}; use a dense codec (float32, float16, int8) or an averaging strategy"
        )
    if codec.error_feedback and dp is not None:
        raise InvalidRun(
            f"--codec {codec.name} keeps error feedback on each client (what top-k left out is added to the next "
            f"round's update), which --dp {dp.mode} does not account for: a client's data would reach later rounds "
            "outside the privacy guarantee; use a codec without error feedback (float32, float16, int8) with --dp"
        )
    if model_bytes is not None and not codec.sliceable and sliced.needs_slices(model_bytes, slice_bytes):
        raise InvalidRun(
            f"--codec {codec.name} cannot be read by slices, and the stack aggregates this model of "
            f"{model_bytes / 2**20:.0f} MiB by slices (the deployment's slice_mb); use a block-wise codec"
        )


# -- the whole record ---------------------------------------------------------------------------------


def check_run(
    run: RunRecord,
    accountant: Accountant | None = None,
    model_bytes: int | None = None,
    slice_bytes: int | None = None,
) -> None:
    """Every rule above but the execution's length (a continuation's record holds the run's total), for a
    run record as it is stored. InvalidRun naming the first rule broken."""
    try:
        strategy = strategies.build(run.strategy, run.strategy_params)
    except ValueError as exc:
        raise InvalidRun(f"run {run.run_id}: {exc}") from None
    check_schedule(run.rounds, run.round_retries, run.round_timeout_s)
    check_floors(run.quorum, run.min_participants, run.selection, strategy)
    per_round = run.clients_per_round or len(run.clients)
    check_participation(len(run.clients), per_round, run.quorum, run.min_participants)
    check_privacy(run.dp, strategy, per_round, len(run.clients), run.selection, accountant)
    try:
        codec = codecs.get(run.codec)
    except ValueError as exc:
        raise InvalidRun(f"run {run.run_id}: {exc}") from None
    check_codec(codec, strategy, run.dp, model_bytes, slice_bytes)
    secure = run.secagg is not None
    check_distributed(run.dp, secure, run.secagg.clip if run.secagg is not None else None)
    if run.secagg is not None:
        check_secure_aggregation(strategy, codec, run.dp, run.bounds)
        check_threshold(run.secagg, run.quorum, run.min_participants, per_round)
    if model_bytes is not None:
        check_sliceable(strategy, run.dp, model_bytes, slice_bytes, secure)
