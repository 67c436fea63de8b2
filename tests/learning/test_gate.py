"""The promotion gate: beat the champion (or a flat book) out of sample by more than the margin, comparing
like with like."""

import pytest

from learning.gate import MIN_HEAD_TO_HEAD_BARS, gate_decision

SPEC = {"kind": "hgb", "horizon": 24, "taker_fee": 0.004, "timeframe": 60}
CHAMPION_ID = 7


def metrics(score, previous=None):
    return {"score": score, "previous": previous}


def head_to_head(candidate, champion, bars=MIN_HEAD_TO_HEAD_BARS, version_id=CHAMPION_ID):
    return {
        "version_id": version_id,
        "comparable_bars": bars,
        "candidate": {"strategy": {"sharpe": candidate}},
        "champion": {"strategy": {"sharpe": champion}},
    }


def decide(candidate, champion=None, *, margin=0.1, champion_id=CHAMPION_ID, spec=SPEC, champion_spec=SPEC):
    return gate_decision(
        candidate_metrics=candidate,
        champion_metrics=champion,
        margin=margin,
        champion_id=None if champion is None else champion_id,
        candidate_spec=spec,
        champion_spec=champion_spec,
    )


@pytest.mark.parametrize(("score", "promote"), [(0.09, False), (0.10, False), (0.11, True), (-1.0, False)])
def test_without_a_champion_the_bar_is_a_flat_book_plus_the_margin(score, promote):
    decision = decide(metrics(score), margin=0.10)
    assert decision.promote is promote
    assert decision.basis == "no champion"
    assert "a flat book" in decision.reason


def test_equal_scores_never_promote_and_a_model_that_never_trades_cannot_pass_with_margin_0():
    assert decide(metrics(0.0), margin=0.0).promote is False  # never trades: Sharpe 0, a flat book
    assert decide(metrics(0.5), metrics(0.5), margin=0.0).promote is False
    assert decide(metrics(0.2, head_to_head(0.4, 0.4)), metrics(0.1), margin=0.0).promote is False
    assert decide(metrics(0.0001), margin=0.0).promote is True


@pytest.mark.parametrize(("candidate", "promote"), [(1.05, False), (1.10, False), (1.2, True)])
def test_candidate_must_beat_the_recorded_champion_score_by_more_than_the_margin(candidate, promote):
    decision = decide(metrics(candidate), metrics(1.0), margin=0.1)
    assert decision.promote is promote
    assert (decision.basis, decision.champion_score, decision.champion_id) == ("recorded scores", 1.0, 7)


def test_head_to_head_on_unseen_bars_wins_over_recorded_scores():
    candidate = metrics(0.2, previous=head_to_head(candidate=0.9, champion=0.5))
    decision = decide(candidate, metrics(3.0), margin=0.1)
    assert decision.promote is True
    assert (decision.basis, decision.candidate_score, decision.champion_score) == ("head-to-head", 0.9, 0.5)
    assert f"head-to-head on {MIN_HEAD_TO_HEAD_BARS} bars" in decision.reason

    too_few = metrics(0.2, previous=head_to_head(0.9, 0.5, bars=MIN_HEAD_TO_HEAD_BARS - 1))
    decision = decide(too_few, metrics(3.0), margin=0.1)
    assert (decision.promote, decision.basis) == (False, "recorded scores")
    assert f"only {MIN_HEAD_TO_HEAD_BARS - 1} out-of-sample bars" in decision.reason


def test_head_to_head_against_another_champion_than_the_one_in_place_is_not_used():
    candidate = metrics(0.2, previous=head_to_head(candidate=0.9, champion=0.5, version_id=3))
    decision = decide(candidate, metrics(0.5), champion_id=CHAMPION_ID)
    assert (decision.promote, decision.basis, decision.candidate_score) == (False, "recorded scores", 0.2)
    assert "the champion changed since the comparison: #3 then, #7 now" in decision.reason


def test_a_changed_champion_with_another_specification_refuses_automatic_promotion():
    candidate = metrics(2.0, previous=head_to_head(candidate=0.9, champion=0.5, version_id=3))
    decision = decide(candidate, metrics(0.5), champion_spec={**SPEC, "horizon": 12})
    assert decision.promote is False
    assert decision.reason.startswith("automatic promotion refused: the champion changed since the compar")
    assert "horizon 24 vs the champion's 12" in decision.reason

    # The walk-forward ran with no champion at all, and one was crowned since.
    decision = decide(metrics(2.0), metrics(0.5), champion_spec={**SPEC, "kind": "logistic"})
    assert decision.promote is False
    assert "the walk-forward had none, now #7" in decision.reason
    assert "kind hgb vs the champion's logistic" in decision.reason


@pytest.mark.parametrize(
    ("change", "named"),
    [({"horizon": 12}, "horizon"), ({"taker_fee": 0.0026}, "taker fee"), ({"kind": "logistic"}, "kind"),
     ({"timeframe": 240}, "timeframe")],
)  # fmt: skip
def test_recorded_scores_of_different_specifications_are_not_compared(change, named):
    candidate = metrics(5.0, previous=head_to_head(0.9, 0.5, bars=10))
    decision = decide(candidate, metrics(0.1), champion_spec={**SPEC, **change})
    assert (decision.promote, decision.basis) == (False, "recorded scores")
    assert "the specifications differ" in decision.reason
    assert f"{named} " in decision.reason.split("differ")[1]


def test_an_unavailable_champion_can_be_replaced_only_by_beating_a_flat_book():
    why = "artifact failed its check"
    unavailable = {"version_id": CHAMPION_ID, "comparable_bars": 0, "unavailable": why}
    weak = decide(metrics(0.05, previous=unavailable), metrics(-3.0), margin=0.1)
    assert (weak.promote, weak.basis, weak.champion_score) == (False, "champion unavailable", None)
    assert "champion #7 was unavailable for the comparison (artifact failed its check)" in weak.reason
    assert "only by beating a flat book by the margin" in weak.reason
    strong = decide(metrics(0.3, previous=unavailable), metrics(9.0), margin=0.1)
    assert (strong.promote, strong.basis) == (True, "champion unavailable")


def test_negative_margin_is_refused():
    with pytest.raises(ValueError, match="margin"):
        gate_decision(candidate_metrics=metrics(1), champion_metrics=None, margin=-0.1)
