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
