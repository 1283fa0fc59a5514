import pytest

from fedstep.core.selection import per_round_count, select

CLIENTS = [f"c{i}" for i in range(10)]


@pytest.mark.parametrize(("spec", "count"), [(None, 10), ("3", 3), (3, 3), ("0.5", 5), ("0.25", 3), ("1.0", 10)])
def test_clients_per_round_is_a_number_or_a_fraction(spec, count):
    assert per_round_count(spec, 10) == count


@pytest.mark.parametrize("spec", ["0", "11", "1.5", "-1", "half", "0.0"])
def test_impossible_selections_are_named(spec):
    with pytest.raises(ValueError, match="clients per round"):
        per_round_count(spec, 10)


def test_selection_is_reproducible_per_seed_and_round_and_varies_between_rounds():
    assert select(CLIENTS, 4, seed=7, round_number=3) == select(CLIENTS[::-1], 4, seed=7, round_number=3)
    picks = [tuple(select(CLIENTS, 4, seed=7, round_number=r)) for r in range(1, 21)]
    assert len(set(picks)) > 10 and all(len(p) == 4 and list(p) == sorted(p) for p in picks)
    assert select(CLIENTS, 10, seed=1, round_number=1) == sorted(CLIENTS)


# -- select_online: the clients whose heartbeat says offline ---------------------------------------

from fedstep.core.selection import select_round  # noqa: E402


def test_an_offline_client_is_left_out_and_the_round_keeps_its_size_from_the_others():
    away = {"c3": "stopped"}
    chosen = select_round(CLIENTS, 4, 7, 1, away, needs=2, redraw=True)
    assert len(chosen.selected) == 4 and "c3" not in chosen.selected
    assert chosen.skipped == {"c3": "stopped"} and chosen.kept_offline == {}
    everyone = select_round(CLIENTS, 10, 7, 1, away, needs=2, redraw=True)
    assert everyone.selected == [c for c in CLIENTS if c != "c3"]


def test_without_offline_clients_the_selection_is_the_seeded_sample():
    assert select_round(CLIENTS, 4, 7, 3, {}, needs=2, redraw=True).selected == select(CLIENTS, 4, 7, 3)


def test_under_central_dp_the_sample_is_drawn_from_everyone_and_its_offline_members_left_out():
    sample = select(CLIENTS, 4, 7, 1)
    gone = {sample[0]: "offline", "not-in-sample" if "c9" in sample else "c9": "offline"}
    chosen = select_round(CLIENTS, 4, 7, 1, gone, needs=2, redraw=False)
    assert chosen.selected == sample[1:]  # the accounted sample, less the one that is away: not re-drawn
    assert chosen.skipped == {sample[0]: "offline"}


@pytest.mark.parametrize("redraw", [True, False])
def test_when_too_few_are_online_the_plain_sample_is_selected_offline_clients_kept(redraw):
    clients = ["a", "b", "c"]
    chosen = select_round(clients, 3, 0, 1, {"b": "stopped", "c": "offline"}, needs=2, redraw=redraw)
    assert chosen.selected == clients and chosen.skipped == {}
    assert chosen.kept_offline == {"b": "stopped", "c": "offline"}
