"""How many rounds one Step Functions execution can hold.

A standard execution's history holds at most 25,000 events; an execution that needs more fails
(`States.Runtime`), so a run longer than that would stop part-way. Every round adds events: two per
state it passes (entered, exited), and per task attempt its scheduled, started, submitted and
outcome events. `EventBudget.of_definition` counts the worst case from a definition (Amazon States
Language): the longest way through a round, every task retried as often as its Retry rules allow,
and every retry of the round that a Choice guarded by `$.run.round_retries` allows.

`FEDSTEP` is that count for fedstep's own state machine (`infra/state_machine.py`) as a plain run
takes it, and `FEDSTEP_SECURE` as a run with secure aggregation does (`fedstep_budget`: a plain round
never enters the secure phases' states; a secure round enters each once, in order). tests/test_
execution_history.py derives both from the synthesized definition, and checks the plain one against
the histories of real executions on the local cloud, so the operator's tools need no definition at
run time.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fedstep.core.machine import SECURE_PHASE_STATES, State

HISTORY_EVENTS = 25_000
"""The events a standard execution's history holds (Step Functions' quota; it cannot be raised)."""
HISTORY_MARGIN = 1_000
"""Events kept free of the budget, for events the count does not foresee (4% of the history)."""
STATE_EVENTS = 2
"""Every state: entered and exited."""
ATTEMPT_EVENTS = 4
"""Every attempt of a task (a Lambda function's has 3: scheduled, started, outcome; a service
integration's 4, with submitted) or of a Distributed Map (started, map run started, map run
outcome, outcome): counted as 4."""
DEFAULT_MAX_ATTEMPTS = 3
"""A Retry rule without MaxAttempts retries 3 times."""
EXECUTION_EVENTS = 2
"""The execution's own: started and its outcome."""
ROUND_RETRIES = "$.run.round_retries"
"""The execution input's path that bounds a loop within a round (fedstep's "Retry round?")."""


@dataclass(frozen=True)
class EventBudget:
    """Worst-case history events: `round` for one round, `retry` more for each time the round is
    published again (up to the run's `round_retries`), and `fixed` for the execution's start and end
    and the way from the last round to the end."""

    round: int
    retry: int
    fixed: int

    def per_round(self, round_retries: int) -> int:
        return self.round + round_retries * self.retry

    def rounds_per_execution(self, round_retries: int) -> int:
        """The most rounds one execution holds in the worst case, with `HISTORY_MARGIN` to spare."""
        return (HISTORY_EVENTS - HISTORY_MARGIN - self.fixed) // self.per_round(round_retries)

    @classmethod
    def of_definition(cls, definition: Mapping[str, Any]) -> EventBudget:
        """The worst case of a definition whose StartAt begins a round and whose loop returns to it.
        ValueError names what cannot be bounded: an inline Map or a Parallel state (their events grow
        with their branches or items), or a loop within a round that no Choice on `ROUND_RETRIES` guards."""
        states: Mapping[str, Mapping[str, Any]] = definition["States"]
        start = definition["StartAt"]
        loops = _inner_loops(states, start)
        for entry, exit_ in loops:
            if not any(_guards_retries(states[s]) for s in _between(states, start, entry, exit_)):
                raise ValueError(f"the loop {exit_!r} -> {entry!r} is bounded by no Choice on {ROUND_RETRIES}")
        longest = _longest_paths(states, start, {(exit_, entry) for entry, exit_ in loops})
        round_ = longest(start, "round")
        retry = max((longest(entry, exit_) for entry, exit_ in loops), default=0)
        last = longest(start, "end")
        return cls(round_, retry, EXECUTION_EVENTS + max(0, last - round_))


def _successors(state: Mapping[str, Any]) -> list[str]:
    nexts = [state.get("Next"), state.get("Default")]
    nexts += [c.get("Next") for c in state.get("Choices", [])]
    nexts += [c.get("Next") for c in state.get("Catch", [])]
    return list(dict.fromkeys(n for n in nexts if n))


def state_events(state: Mapping[str, Any]) -> int:
    """The most history events one pass through `state` adds (ValueError for states that can add
    events without bound)."""
    kind = state.get("Type")
    if kind == "Parallel" or (kind == "Map" and _map_mode(state) != "DISTRIBUTED"):
        raise ValueError(f"a {kind} state adds events per branch or item; count it before allowing it")
    if kind not in ("Task", "Map"):
        return STATE_EVENTS
    retries = sum(r.get("MaxAttempts", DEFAULT_MAX_ATTEMPTS) for r in state.get("Retry", []))
    return STATE_EVENTS + (1 + retries) * ATTEMPT_EVENTS


def _map_mode(state: Mapping[str, Any]) -> str:
    processor = state.get("ItemProcessor") or state.get("Iterator") or {}
    return str(processor.get("ProcessorConfig", {}).get("Mode", "INLINE"))


def _guards_retries(state: Mapping[str, Any]) -> bool:
    return state.get("Type") == "Choice" and ROUND_RETRIES in repr(state.get("Choices", []))


def _inner_loops(states: Mapping[str, Mapping[str, Any]], start: str) -> list[tuple[str, str]]:
    """(entry, exit) of every loop within a round: an edge exit -> entry back to a state on the way to
    `exit` (found depth first from `start`), other than the round's own loop back to `start`."""
    loops: list[tuple[str, str]] = []
    on_path: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> None:
        on_path.append(name)
        for nxt in _successors(states[name]):
            if nxt in on_path:
                if nxt != start:
                    loops.append((nxt, name))
            elif nxt not in done:
                visit(nxt)
        on_path.pop()
        done.add(name)

    visit(start)
    return loops


def _between(states: Mapping[str, Mapping[str, Any]], start: str, entry: str, exit_: str) -> set[str]:
    """The states of the loop exit -> entry: those on some way from `entry` to `exit_` (not via `start`)."""
    reach: dict[str, set[str]] = {}

    def reachable(name: str) -> set[str]:
        if name not in reach:
            reach[name] = set()
            for nxt in _successors(states[name]):
                if nxt not in (start, entry):
                    reach[name] |= {nxt} | reachable(nxt)
        return reach[name]

    return {s for s in {entry} | reachable(entry) if s == exit_ or exit_ in reachable(s)}


def _longest_paths(
    states: Mapping[str, Mapping[str, Any]], start: str, cut: set[tuple[str, str]]
) -> Callable[[str, str], int]:
    """`longest(from, to)`: the most events on a way from state `from` to, by `to`: "round" the state
    that goes back to `start`, "end" a state that ends the execution, or a state's name; each edge
    (exit, entry) in `cut` (the loops' ways back) and every edge back to `start` removed, which leaves
    no cycle. -1 when there is no such way."""

    @functools.cache
    def longest(name: str, to: str) -> int:
        state = states[name]
        nexts = _successors(state)
        if (
            to == name
            or (to == "round" and start in nexts)
            or (to == "end" and (state.get("End") or state.get("Type") in ("Succeed", "Fail")))
        ):
            return state_events(state)
        ways = [longest(n, to) for n in nexts if n != start and (name, n) not in cut]
        best = max(ways, default=-1)
        return -1 if best < 0 else state_events(state) + best

    return longest


def without_states(definition: Mapping[str, Any], names: Collection[str]) -> dict[str, Any]:
    """`definition` less the states `names` and every Choice rule and Catch that goes to one of them
    (the ways a run that never enters them does not take). ValueError when a state's Next or Default
    is one of them: that way cannot be left out."""
    states: dict[str, Any] = {}
    for name, state in definition["States"].items():
        if name in names:
            continue
        if state.get("Next") in names or state.get("Default") in names:
            raise ValueError(f"state {name!r} always goes on to a state left out")
        kept = dict(state)
        for ways in ("Choices", "Catch"):
            if ways in state:
                kept[ways] = [w for w in state[ways] if w.get("Next") not in names]
        states[name] = kept
    return {**definition, "States": states}


def phases_in_order(definition: Mapping[str, Any], choice: str, phases: Sequence[Sequence[str]]) -> dict[str, Any]:
    """`definition` with the loop through the Choice `choice` undone: `choice` opens each group of
    `phases` (a phase's states, each of which goes back to `choice`) at most once and in order, as
    its runs do. The Choice is copied after each phase (`"<choice> #<n>"`), each copy keeping only
    the rules to later phases and to states outside them, so the worst case can be counted."""
    states = {name: dict(state) for name, state in definition["States"].items()}
    index = {name: i for i, group in enumerate(phases) for name in group}

    def copy(n: int) -> str:
        return choice if n == 0 else f"{choice} #{n}"

    original = states[choice]
    for n in range(len(phases) + 1):
        rules = [r for r in original.get("Choices", []) if index.get(r.get("Next"), len(phases)) >= n]
        states[copy(n)] = {**original, "Choices": rules}
    for name, i in index.items():
        state = states[name]
        if state.get("Next") == choice:
            state["Next"] = copy(i + 1)
        if "Catch" in state:
            state["Catch"] = [{**c, "Next": copy(i + 1)} if c.get("Next") == choice else c for c in state["Catch"]]
    return {**definition, "States": states}


def fedstep_budget(definition: Mapping[str, Any], secure: bool) -> EventBudget:
    """The worst case of fedstep's state machine (`definition`, as synthesized or deployed) for a plain
    run, whose rounds never enter the secure phases' states (no round output names a phase), or for a
    secure one, whose rounds enter each phase once, in order (`fedstep.core.machine.SECURE_PHASE_STATES`)."""
    phases = list(SECURE_PHASE_STATES.values())
    if secure:
        return EventBudget.of_definition(phases_in_order(definition, State.NEXT_SECURE_PHASE, phases))
    return EventBudget.of_definition(without_states(definition, {name for group in phases for name in group}))


FEDSTEP = EventBudget(round=72, retry=40, fixed=26)
"""fedstep's own state machine (`infra/state_machine.py`) as a plain run takes it: `fedstep_budget`."""
FEDSTEP_SECURE = EventBudget(round=186, retry=154, fixed=26)
"""fedstep's own state machine as a run with secure aggregation takes it (its three later phases in
each round, each of which may reach its deadline): `fedstep_budget`."""


def budget(secure: bool) -> EventBudget:
    """fedstep's worst case for a run with secure aggregation (`secure`) or without."""
    return FEDSTEP_SECURE if secure else FEDSTEP
