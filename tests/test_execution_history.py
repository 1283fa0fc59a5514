"""How many rounds one Step Functions execution holds (`fedstep.core.execution_history`), and the
run settings that refuse more (issue 20, finding 6: runs stopped near round 1,530).

The worst case is counted from the synthesized definition here; the histories of real executions on
the local cloud are checked against it in `tests/test_adversarial.py::test_20_6_*`."""

from __future__ import annotations

import pytest

from fedstep import cli
from fedstep.core.errors import FedstepError
from fedstep.core.execution_history import (
    FEDSTEP,
    FEDSTEP_SECURE,
    HISTORY_EVENTS,
    HISTORY_MARGIN,
    EventBudget,
    fedstep_budget,
    phases_in_order,
    without_states,
)
from fedstep.core.run_rules import check_fits_one_execution
from fedstep.operator.settings import RunSettings


def test_fedsteps_budget_is_the_worst_case_of_the_synthesized_state_machine():
    from tests.synthesized import state_machine_definition

    definition = state_machine_definition()
    assert fedstep_budget(definition, secure=False) == FEDSTEP
    assert fedstep_budget(definition, secure=True) == FEDSTEP_SECURE
    # a round: 4 attempts of each of 3 function calls (notify, deadline, assemble), the slices' map,
    # and the 6 other states ("Next secure-aggregation phase?" among them); far above the 18 events of
    # a round that goes well
    assert FEDSTEP.per_round(0) == 72 and FEDSTEP.rounds_per_execution(0) == 332
    assert FEDSTEP.rounds_per_execution(10) == 50
    # a secure round: each of its 3 later phases may be retried and reach its deadline, and comes back
    # to the Choice; a retry of the round starts again from its first phase, and may fail in its last
    assert FEDSTEP_SECURE.per_round(0) == FEDSTEP.per_round(0) + 3 * (18 + 18 + 2)
    assert FEDSTEP_SECURE.retry == FEDSTEP.retry + 2 + 3 * (18 + 18 + 2) - 2
    assert FEDSTEP_SECURE.rounds_per_execution(0) == 128 and FEDSTEP_SECURE.rounds_per_execution(10) == 13
    for budget in (FEDSTEP, FEDSTEP_SECURE):
        for retries in range(11):
            most = budget.rounds_per_execution(retries)
            assert most * budget.per_round(retries) + budget.fixed <= HISTORY_EVENTS - HISTORY_MARGIN
    with pytest.raises(ValueError, match="bounded by no Choice"):  # the phases' loop, taken as it stands
        EventBudget.of_definition(definition)


def loop(*middle: dict, retry_choice: bool = True) -> dict:
    """A definition: "Start" (Pass) -> the `middle` states in order -> "More?" (back to Start, or End)."""
    names = [f"S{i}" for i in range(len(middle))]
    states = {"Start": {"Type": "Pass", "Next": names[0] if names else "More?"}}
    for i, state in enumerate(middle):
        states[names[i]] = {**state, "Next": names[i + 1] if i + 1 < len(names) else "More?"}
    states["More?"] = {"Type": "Choice", "Choices": [{"Next": "Start"}], "Default": "Done"}
    states["Done"] = {"Type": "Pass", "End": True}
    return {"StartAt": "Start", "States": states}


def test_a_task_counts_one_attempt_more_for_each_retry_its_rules_allow():
    plain = EventBudget.of_definition(loop({"Type": "Task"}))
    assert plain == EventBudget(round=2 + 6 + 2, retry=0, fixed=2 + 2)
    retried = {"Type": "Task", "Retry": [{"ErrorEquals": ["A"], "MaxAttempts": 2}, {"ErrorEquals": ["States.ALL"]}]}
    assert EventBudget.of_definition(loop(retried)).round == 2 + (2 + (1 + 2 + 3) * 4) + 2  # default: 3
    assert EventBudget.of_definition(loop({"Type": "Task", "Retry": [{"MaxAttempts": 0}]})).round == 10


def test_a_caught_error_takes_the_longest_way():
    definition = loop({"Type": "Task", "Catch": [{"ErrorEquals": ["X"], "Next": "Slow"}]})
    definition["States"]["Slow"] = {"Type": "Task", "Retry": [{"MaxAttempts": 1}], "Next": "More?"}
    assert EventBudget.of_definition(definition).round == 2 + 6 + (2 + 2 * 4) + 2


def test_a_loop_within_a_round_counts_per_round_retry_and_must_be_bounded_by_them():
    definition = loop({"Type": "Task"})
    definition["States"]["S0"]["Catch"] = [{"ErrorEquals": ["QuorumNotMet"], "Next": "Retry?"}]
    definition["States"]["Retry?"] = {
        "Type": "Choice",
        "Choices": [{"Variable": "$.attempt", "NumericLessThanPath": "$.run.round_retries", "Next": "Again"}],
        "Default": "Failed",
    }
    definition["States"]["Again"] = {"Type": "Pass", "Next": "S0"}
    definition["States"]["Failed"] = {"Type": "Fail"}
    budget = EventBudget.of_definition(definition)
    assert budget.retry == 6 + 2 + 2  # the task, "Retry?", "Again"
    assert budget.per_round(3) == budget.round + 3 * budget.retry
    definition["States"]["Retry?"]["Choices"][0]["NumericLessThanPath"] = "$.other"
    with pytest.raises(ValueError, match="the loop 'Again' -> 'S0' is bounded by no Choice on"):
        EventBudget.of_definition(definition)


def phased() -> dict:
    """A round whose task's output may name phases "A" then "B" (each a task with a deadline task),
    opened by one Choice they all come back to."""
    definition = loop({"Type": "Task"})
    states = definition["States"]
    states["S0"]["Next"] = "Phase?"
    states["Phase?"] = {
        "Type": "Choice",
        "Choices": [{"Next": "More?"}, {"Next": "A"}, {"Next": "B"}],
        "Default": "More?",
    }
    for name in ("A", "B"):
        states[name] = {"Type": "Task", "Next": "Phase?", "Catch": [{"ErrorEquals": ["Timeout"], "Next": f"{name}!"}]}
        states[f"{name}!"] = {"Type": "Task", "Next": "Phase?"}
    return definition


def test_phases_that_one_choice_opens_in_order_are_counted_once_each():
    definition = phased()
    with pytest.raises(ValueError, match="the loop 'A' -> 'Phase\\?' is bounded by no Choice"):
        EventBudget.of_definition(definition)
    unrolled = phases_in_order(definition, "Phase?", [("A", "A!"), ("B", "B!")])
    assert unrolled["States"]["A!"]["Next"] == "Phase? #1" and unrolled["States"]["B"]["Next"] == "Phase? #2"
    assert [r["Next"] for r in unrolled["States"]["Phase? #1"]["Choices"]] == ["More?", "B"]
    # Start, the task, the Choice, then each phase's task and deadline task and the Choice again, More?
    assert EventBudget.of_definition(unrolled).round == 2 + 6 + 2 + 2 * (6 + 6 + 2) + 2


def test_states_a_run_never_enters_are_left_out_with_the_ways_to_them():
    plain = without_states(phased(), {"A", "A!", "B", "B!"})
    assert plain["States"]["Phase?"]["Choices"] == [{"Next": "More?"}]
    assert EventBudget.of_definition(plain).round == 2 + 6 + 2 + 2
    with pytest.raises(ValueError, match="state 'S0' always goes on to a state left out"):
        without_states(phased(), {"Phase?"})


@pytest.mark.parametrize(
    "state",
    [{"Type": "Map", "ItemProcessor": {"ProcessorConfig": {"Mode": "INLINE"}}}, {"Type": "Parallel", "Branches": []}],
)
def test_a_state_whose_events_grow_with_its_items_cannot_be_counted(state):
    with pytest.raises(ValueError, match="adds events per branch or item"):
        EventBudget.of_definition(loop(state))


def test_run_settings_refuse_more_rounds_than_one_execution_holds_and_say_how_to_continue():
    assert RunSettings(rounds=332).validated().rounds == 332
    with pytest.raises(FedstepError) as info:
        RunSettings(rounds=333).validated()
    message = str(info.value)
    assert message.startswith("333 rounds do not fit one Step Functions execution: its history holds 25,000 events")
    assert "start with --rounds 332, then continue with `fedstep start --resume <run id> --rounds 333`" in message
    with pytest.raises(FedstepError, match="a round with 2 round retries may add up to 152, so one execution runs at"):
        RunSettings(rounds=200, round_retries=2).validated()
    with pytest.raises(FedstepError, match="resume run run-x with --rounds 390, then resume that continuation"):
        check_fits_one_execution(1000, 0, done=58, run_id="run-x")
    check_fits_one_execution(390, 0, done=58, run_id="run-x")  # 332 more fit


def test_a_secure_run_fits_fewer_rounds_in_one_execution_its_rounds_pass_three_more_phases():
    check_fits_one_execution(128, 0, secure=True)
    with pytest.raises(FedstepError, match=r"129 rounds do not fit one Step Functions execution.* up to 186, so"):
        check_fits_one_execution(129, 0, secure=True)
    check_fits_one_execution(129, 0)  # a plain run's rounds fit


def test_fedstep_start_and_a_run_file_refuse_99999_rounds_before_any_aws_call(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_stack", lambda args: pytest.fail("refused before any AWS call"))
    assert cli.main(["start", "--model", "client_agent.models:digits_mlp", "--rounds", "99999"]) == 2
    assert "99999 rounds do not fit one Step Functions execution" in capsys.readouterr().err
    run_file = tmp_path / "run.json"
    run_file.write_text('{"model": "client_agent.models:digits_mlp", "rounds": 1000}')
    assert cli.main(["start", "--run-file", str(run_file)]) == 2
    assert "1000 rounds do not fit" in capsys.readouterr().err
    assert cli.main(["local", "--rounds", "5000"]) == 2  # before any client or cloud starts
    assert "5000 rounds do not fit" in capsys.readouterr().err
