"""The promotion gate. Plain Python, no Django.

A candidate replaces the champion of its scope only when its out-of-sample score (the walk-forward net
Sharpe of its signal, after fees) beats the champion's by more than ``margin`` (strictly: equal scores
never promote, and with a margin of 0 a model that never trades, Sharpe 0, cannot beat a flat book).

What the candidate is compared with, in order:

1. **no champion**: a flat book (Sharpe 0) — a model that cannot beat staying out of the market by the
   margin is not deployed.
2. **champion unavailable**: the walk-forward could not load the champion it was given (its artifact
   failed the integrity check, or its features no longer exist), and that champion is still the one in
   place: again a flat book plus the margin — the only way a candidate may replace a broken champion.
3. **head-to-head**: the walk-forward evaluated the champion on the candidate's out-of-sample bars that
   come after the champion's training data (plus the purge), at least ``MIN_HEAD_TO_HEAD_BARS`` of them,
   and that champion is still the one in place (same version id): both Sharpes on those same bars.
4. **recorded scores**: otherwise each model's own walk-forward score — figures from different periods,
   so only when both were made under the same specification (kind, horizon, taker fee, timeframe). If the
   specifications differ, automatic promotion is refused and the reason says why (and whether the
   champion changed since the walk-forward); a director may still promote by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SPEC_KEYS = ("kind", "horizon", "taker_fee", "timeframe")
MIN_HEAD_TO_HEAD_BARS = 24 * 30


@dataclass(frozen=True, slots=True)
class GateDecision:
    promote: bool
    candidate_score: float
    champion_score: float | None
    margin: float
    basis: str  # "no champion" | "champion unavailable" | "head-to-head" | "recorded scores"
    reason: str
    champion_id: int | None = None

    def as_dict(self) -> dict:
        return {
            "promote": self.promote,
            "candidate_score": self.candidate_score,
            "champion_score": self.champion_score,
            "margin": self.margin,
            "basis": self.basis,
            "reason": self.reason,
            "champion_id": self.champion_id,
        }


def spec_differences(candidate: dict | None, champion: dict | None) -> list[str]:
    """The :data:`SPEC_KEYS` on which two specifications differ (an unknown value differs)."""
    candidate, champion = candidate or {}, champion or {}
    differences = []
    for key in SPEC_KEYS:
        mine, theirs = candidate.get(key), champion.get(key)
        if isinstance(mine, int | float) and isinstance(theirs, int | float):
            same = math.isclose(float(mine), float(theirs), rel_tol=1e-12, abs_tol=0.0)
        else:
            same = mine is not None and mine == theirs
        if not same:
            differences.append(f"{key.replace('_', ' ')} {mine} vs the champion's {theirs}")
    return differences


def _verdict(candidate: float, champion: float | None, margin: float) -> tuple[bool, str]:
    bar = margin if champion is None else champion + margin
    promote = candidate > bar
    against = "a flat book (0)" if champion is None else f"the champion's {champion:.3f}"
    return promote, (
        f"out-of-sample Sharpe {candidate:.3f} {'beats' if promote else 'does not beat'} {against} "
        f"by more than the margin {margin:.3f}"
    )


def gate_decision(
    *,
    candidate_metrics: dict,
    champion_metrics: dict | None,
    margin: float,
    champion_id: int | None = None,
    candidate_spec: dict | None = None,
    champion_spec: dict | None = None,
) -> GateDecision:
    """``*_metrics`` are the walk-forward result dicts stored on the model versions; ``champion_id`` is the
    id of the champion in place now (head-to-head figures count only if they were made against it);
    ``*_spec`` hold :data:`SPEC_KEYS` (needed to fall back on recorded scores)."""
    if margin < 0:
        raise ValueError("the promotion margin cannot be negative")
    candidate = float(candidate_metrics["score"])
    if champion_metrics is None:
        promote, verdict = _verdict(candidate, None, margin)
        return GateDecision(promote, candidate, None, margin, "no champion", f"{verdict} (no champion)")

    previous = candidate_metrics.get("previous") or {}
    compared_id = previous.get("version_id")
    same_champion = compared_id is not None and champion_id is not None and compared_id == champion_id
    bars = int(previous.get("comparable_bars") or 0)

    if same_champion and previous.get("unavailable"):
        promote, verdict = _verdict(candidate, None, margin)
        reason = (
            f"champion #{champion_id} was unavailable for the comparison ({previous['unavailable']}); a "
            f"candidate may replace it only by beating a flat book by the margin: {verdict} "
            "(champion unavailable)"
        )
        return GateDecision(promote, candidate, None, margin, "champion unavailable", reason, champion_id)

    if same_champion and bars >= MIN_HEAD_TO_HEAD_BARS:
        candidate = float(previous["candidate"]["strategy"]["sharpe"])
        champion = float(previous["champion"]["strategy"]["sharpe"])
        promote, verdict = _verdict(candidate, champion, margin)
        reason = f"{verdict} (head-to-head on {bars} bars the champion had not trained on)"
        return GateDecision(promote, candidate, champion, margin, "head-to-head", reason, champion_id)

    if same_champion:
        why = (
            f"only {bars} out-of-sample bars after champion #{champion_id}'s training "
            f"(need {MIN_HEAD_TO_HEAD_BARS} for a head-to-head)"
        )
    elif compared_id is None:
        why = f"the champion changed since the comparison: the walk-forward had none, now #{champion_id}"
    else:
        why = f"the champion changed since the comparison: #{compared_id} then, #{champion_id} now"
    champion = float(champion_metrics["score"])
    differences = spec_differences(candidate_spec, champion_spec)
    if differences:
        reason = (
            f"automatic promotion refused: {why}, so no head-to-head comparison; and the recorded scores are "
            f"not comparable, the specifications differ ({'; '.join(differences)}) (recorded scores)"
        )
        return GateDecision(False, candidate, champion, margin, "recorded scores", reason, champion_id)
    promote, verdict = _verdict(candidate, champion, margin)
    reason = f"{verdict} (recorded scores, from different periods: {why})"
    return GateDecision(promote, candidate, champion, margin, "recorded scores", reason, champion_id)
