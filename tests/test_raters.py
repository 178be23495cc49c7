"""Judge against people: Cohen's kappa equals its direct computation; agreement counts and position bias."""

import pytest

from alpaca_helpers.evaluate.outcomes import LOSS, TIE, UNPARSED, WIN
from alpaca_helpers.evaluate.raters import (
    JUDGE_POSITION_NOTE,
    cohen_kappa,
    human_position_bias,
    judge_caveat,
    judge_human_agreement,
    position_bias,
)
from alpaca_helpers.evaluate.votes import last_votes


def test_kappa_equals_the_direct_computation():
    judge = [WIN, WIN, TIE, LOSS, LOSS, WIN, TIE, LOSS, WIN, WIN]
    people = [WIN, TIE, TIE, LOSS, WIN, WIN, LOSS, LOSS, WIN, TIE]
    # By hand: 6 of 10 agree; judge win 5 tie 2 loss 3, people win 4 tie 3 loss 3.
    p_o, p_e = 6 / 10, (5 * 4 + 2 * 3 + 3 * 3) / 100
    assert cohen_kappa(judge, people) == pytest.approx((p_o - p_e) / (1 - p_e))
    assert cohen_kappa(people, people) == 1.0
    assert cohen_kappa([WIN, LOSS], [LOSS, WIN]) == pytest.approx(-1.0)
    assert cohen_kappa([TIE, TIE], [TIE, TIE]) is None and cohen_kappa([], []) is None
    assert cohen_kappa([TIE] * 4, [WIN, TIE, LOSS, TIE]) == 0.0  # a constant judge agrees only by chance
    with pytest.raises(ValueError, match="same items"):
        cohen_kappa([WIN], [])


def test_judge_against_people_per_vote():
    results = [{"id": "a", "outcome": WIN}, {"id": "b", "outcome": TIE}, {"id": "c", "outcome": UNPARSED}]
    human = [{"rater": "ann", "id": "a", "outcome": WIN}, {"rater": "bob", "id": "a", "outcome": LOSS},
             {"rater": "ann", "id": "b", "outcome": TIE}, {"rater": "ann", "id": "c", "outcome": WIN},
             {"rater": "ann", "id": "z", "outcome": WIN}]
    a = judge_human_agreement(results, human)
    assert (a["n"], a["n_items"], a["raters"]) == (3, 2, ["ann", "bob"])
    assert a["percent"] == pytest.approx(200 / 3) and a["kappa"] == cohen_kappa([WIN, WIN, TIE], [WIN, LOSS, TIE])
    assert a["confusion"] == {"judge tie, people tie": 1, "judge win, people loss": 1, "judge win, people win": 1}
    assert judge_human_agreement(results, [])["kappa"] is None


def test_position_bias_of_a_judge_and_of_people():
    always_first = position_bias([["1", "1"], ["1", "1"], ["tie", None]])
    assert always_first["first_position_share"] == 1.0 and always_first["n"] == 4
    fair = position_bias([["1", "2"], ["2", "1"]])
    assert fair["first_position_share"] == 0.5 and fair["se"] == pytest.approx((1 / 3) ** 0.5 / 2)
    rows = [{"rater": "ann", "id": "a", "choice": "B"}, {"rater": "ann", "id": "a", "choice": "A"},
            {"rater": "ann", "id": "b", "choice": "tie"}, {"rater": "bob", "id": "a", "choice": "B"}]
    assert last_votes(rows)[("ann", "a")] == "A"
    people = human_position_bias(rows)  # ann's last vote on a (A) and bob's (B); the tie is not decisive
    assert people["first_position_share"] == 0.5 and people["n"] == 2
    assert human_position_bias(rows, item_ids=["a"])["n"] == 2 and human_position_bias(rows, ["b"])["n"] == 0


def test_judge_caveat_only_for_a_judge_stuck_on_one_position_or_all_ties():
    stuck = position_bias([("1", "1")] * 6)
    assert stuck["first_position_share"] == 1.0
    assert JUDGE_POSITION_NOTE in judge_caveat(stuck, {"n": 6, "ties": 6})
    fair = position_bias([("1", "2"), ("2", "1"), ("1", "2"), ("2", "2")])
    assert judge_caveat(fair, {"n": 4, "ties": 1}) is None
    assert JUDGE_POSITION_NOTE in judge_caveat(fair, {"n": 4, "ties": 4})  # all ties: the note still explains them
