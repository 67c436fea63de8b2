"""The only writers of the learning app: training and registration, promotion and rollback, regimes,
strategy thresholds. Keyword-only; each change in one transaction with its audit event."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

import pandas as pd
from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.core.files.base import ContentFile
from django.db import transaction
from django.utils import timezone

from accounts.selectors import user_can, user_has_role_anywhere
from governance.actors import SystemActor, actor_label
from governance.services import audit_record
from learning import selectors
from learning.adaptation import AdaptationPolicy, Bounds, Thresholds, adapt
from learning.errors import ArtifactIntegrityError, LearningDataError, PromotionRefused
from learning.features import BTC, MIN_TRAINING_BARS, WARMUP_BARS, PreparedCandles
from learning.gate import GateDecision, gate_decision
from learning.modeling import TrainedModel, dump_artifact
from learning.models import ModelVersion, RegimeObservation, StrategyThresholds
from learning.regime import RegimeRules, gmm_regimes, label_of, regime_codes, regime_inputs
from learning.storage import artifact_storage
from learning.walkforward import (
    PreviousModel,
    TrainingSpec,
    WalkForwardResult,
    build_dataset,
    fit_final,
    unavailable_previous,
    walk_forward,
)
from trading.fees import published_rates
from trading.models import Instrument

logger = logging.getLogger(__name__)


def default_spec(
    *, timeframe: int, kind: str | None = None, horizon: int | None = None, **overrides
) -> TrainingSpec:
    """The training specification from settings: models are shared, so fees are the published base tier
    (the most any account pays)."""
    return TrainingSpec(
        kind=kind or settings.LEARNING_MODEL_KIND,
        horizon=horizon or settings.LEARNING_HORIZON_BARS,
        timeframe=timeframe,
        taker_fee=float(published_rates().taker_pct) / 100.0,
        **overrides,
    )


# --- Training and registration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingOutcome:
    result: WalkForwardResult
    version: ModelVersion | None  # None for a dry run
    decision: GateDecision | None
    gaps: dict[str, list[str]]


def _load_history(
    *, instruments: Sequence[Instrument], timeframe: int, since, until
) -> tuple[list, PreparedCandles]:
    prepared = [
        selectors.prepared_candles(
            instrument=instrument, timeframe=timeframe, min_bars=MIN_TRAINING_BARS, since=since, until=until
        )
        for instrument in instruments
    ]
    btc = next((item for item in prepared if item.pair == BTC), None)
    if btc is None:
        btc = selectors.prepared_candles(
            instrument=selectors.btc_instrument(),
            timeframe=timeframe,
            min_bars=WARMUP_BARS,
            since=since,
            until=until,
        )
    return prepared, btc


def _previous(version: ModelVersion | None) -> tuple[PreviousModel | None, dict | None]:
    """The champion to compare the candidate with, or (None, why) when its artifact cannot be loaded: a
    broken champion must not block retraining; the gate then holds the candidate to a flat book."""
    if version is None:
        return None, None
    trained_until = pd.Timestamp(version.training_end)
    try:
        model = selectors.model_load(version)
    except ArtifactIntegrityError as exc:
        logger.warning("champion #%s unavailable for the walk-forward comparison: %s", version.pk, exc)
        return None, unavailable_previous(
            version_id=version.pk, trained_until=trained_until, why=f"artifact failed its check: {exc}"
        )
    return PreviousModel(model=model, version_id=version.pk, trained_until=trained_until), None


def model_train(
    *,
    actor,
    instruments: Sequence[Instrument],
    timeframe: int,
    scope: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    spec: TrainingSpec | None = None,
    register: bool = True,
    promote: bool = True,
    on_fold: Callable[[int, int], None] | None = None,
    on_registered: Callable[[ModelVersion], None] | None = None,
) -> TrainingOutcome:
    """Walk-forward evaluate a model on the stored closed candles, compare it with the scope's champion,
    fit it on everything, register it as a candidate and apply the promotion gate. Nothing is written
    until the model is complete; ``register=False`` is a dry run. ``on_registered`` is told of the
    candidate as soon as it exists (before the gate), so a caller interrupted later can say what exists.

    A champion whose artifact fails its integrity check does not stop the run: it is recorded as
    unavailable in the candidate's metrics (``previous.unavailable``) and its registration audit, and the
    gate holds the candidate to a flat book plus the margin."""
    if not instruments:
        raise ValueError("name at least one pair to train on")
    scope = scope or (instruments[0].symbol if len(instruments) == 1 else ModelVersion.POOLED)
    if scope != ModelVersion.POOLED and [i.symbol for i in instruments] != [scope]:
        raise ValueError(
            f"scope {scope} trains on that pair alone; use scope '{ModelVersion.POOLED}' for several"
        )
    spec = spec or default_spec(timeframe=timeframe)
    if spec.timeframe != timeframe:
        raise ValueError("the specification's timeframe differs from the candles'")
    prepared, btc = _load_history(instruments=instruments, timeframe=timeframe, since=since, until=until)
    dataset = build_dataset(prepared, btc=btc, spec=spec)
    champion = selectors.champion_for(scope=scope, timeframe=timeframe)
    previous, unavailable = _previous(champion)
    result = walk_forward(dataset, spec, previous=previous, on_fold=on_fold)
    if unavailable is not None:
        result.previous = unavailable
    gaps = {
        item.pair: [f"{gap.bars} bars from {gap.start.isoformat()}" for gap in item.unfilled_gaps]
        for item in prepared
    }
    if not register:
        return TrainingOutcome(result=result, version=None, decision=None, gaps=gaps)
    model, start, end = fit_final(dataset, spec)
    version = model_register(
        actor=actor, scope=scope, model=model, result=result, training_start=start, training_end=end
    )
    if on_registered is not None:
        on_registered(version)
    decision = model_gate(actor=actor, version=version, promote=promote)
    return TrainingOutcome(result=result, version=version, decision=decision, gaps=gaps)


def _artifact_name(scope: str, timeframe: int, sha: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", scope.lower()).strip("-")
    return f"models/{slug}-{timeframe}m-{sha[:16]}.joblib"


def _comparison_note(previous: dict | None) -> dict | None:
    """What the registration audit says about the champion the candidate was compared with."""
    if previous is None:
        return None
    note = {"version_id": previous.get("version_id"), "comparable_bars": previous.get("comparable_bars", 0)}
    if previous.get("unavailable"):
        note["unavailable"] = previous["unavailable"]
    return note


def model_register(
    *,
    actor,
    scope: str,
    model: TrainedModel,
    result: WalkForwardResult,
    training_start: pd.Timestamp,
    training_end: pd.Timestamp,
) -> ModelVersion:
    """Store the artifact, verify what was stored, then create the candidate row and its audit event in
    one transaction. If anything fails after the file was written, the file is deleted again; a process
    killed in between leaves at most an unreferenced file, which nothing ever loads (models are only
    loaded through a row and its hash)."""
    data, sha = dump_artifact(model)
    storage = artifact_storage()
    name = storage.save(_artifact_name(scope, model.timeframe, sha), ContentFile(data))
    try:
        with storage.open(name, "rb") as handle:
            if handle.read() != data:
                raise OSError(f"artifact {name} reads back different from what was written")
        with transaction.atomic():
            version = ModelVersion.objects.create(
                scope=scope,
                pairs=list(result.pairs),
                timeframe=model.timeframe,
                kind=model.kind,
                features=list(model.features),
                params=result.spec.to_dict(),
                horizon=model.horizon,
                training_start=training_start.to_pydatetime(),
                training_end=training_end.to_pydatetime(),
                data_sha256=result.data_sha256,
                metrics=result.to_dict(),
                artifact=name,
                artifact_sha256=sha,
                trained_by=actor_label(actor),
                status=ModelVersion.Status.CANDIDATE,
            )
            audit_record(
                actor=actor,
                action="learning.model_registered",
                target=version,
                details={
                    "scope": scope,
                    "timeframe": model.timeframe,
                    "kind": model.kind,
                    "artifact_sha256": sha,
                    "data_sha256": result.data_sha256,
                    "score": result.score,
                    "training_range": [training_start.isoformat(), training_end.isoformat()],
                    "compared_with": _comparison_note(result.previous),
                },
            )
    except BaseException:
        storage.delete(name)
        raise
    return version


def _spec_of(version: ModelVersion | None) -> dict | None:
    if version is None:
        return None
    return {
        "kind": version.kind,
        "horizon": version.horizon,
        "timeframe": version.timeframe,
        "taker_fee": (version.params or {}).get("taker_fee"),
    }


def _gate_against(version: ModelVersion, champion: ModelVersion | None) -> GateDecision:
    """The gate's verdict on ``version`` against ``champion`` (the one in place; None: no champion)."""
    return gate_decision(
        candidate_metrics=version.metrics,
        champion_metrics=None if champion is None else champion.metrics,
        champion_id=None if champion is None else champion.pk,
        candidate_spec=_spec_of(version),
        champion_spec=_spec_of(champion),
        margin=settings.LEARNING_PROMOTION_MARGIN,
    )


def _locked_champion(*, scope: str, timeframe: int) -> ModelVersion | None:
    return (
        ModelVersion.objects.select_for_update()
        .filter(scope=scope, timeframe=timeframe, status=ModelVersion.Status.CHAMPION)
        .first()
    )


def _record_gate(*, actor, target: ModelVersion, decision: GateDecision) -> None:
    """Store the verdict on the (locked) candidate and audit it; the caller holds the transaction."""
    target.gate = decision.as_dict()
    target.save(update_fields=["gate"])
    audit_record(
        actor=actor,
        action="learning.model_gate_passed" if decision.promote else "learning.model_gate_declined",
        target=target,
        details=decision.as_dict(),
    )


def model_gate(*, actor, version: ModelVersion, promote: bool = True) -> GateDecision:
    """Apply the promotion gate to a candidate; promote it when it passes (and ``promote``). The verdict
    is stored on the candidate either way. The verdict that counts is made under the lock of the champion
    row, against the champion in place at that moment (see :func:`_promote`)."""
    if promote:
        # A first, unlocked look only decides whether the artifact is worth verifying and a swap tried.
        champion = selectors.champion_for(scope=version.scope, timeframe=version.timeframe)
        if _gate_against(version, champion).promote:
            _, decision, _ = _promote(actor=actor, version=version, reason=None, automatic=True)
            return decision
    with transaction.atomic():
        champion = _locked_champion(scope=version.scope, timeframe=version.timeframe)
        target = ModelVersion.objects.select_for_update().get(pk=version.pk)
        decision = _gate_against(target, champion)
        _record_gate(actor=actor, target=target, decision=decision)
    if promote and decision.promote:  # the champion changed between the two looks, in the candidate's favour
        _, decision, _ = _promote(actor=actor, version=version, reason=None, automatic=True)
    return decision


def _require_director(actor, what: str) -> None:
    if isinstance(actor, SystemActor):
        return
    if not user_has_role_anywhere(user=actor, action="change"):
        raise PermissionDenied(f"Only a director may {what}.")


def _swap(*, actor, before: ModelVersion | None, target: ModelVersion, action: str, details: dict) -> None:
    """Retire ``before`` (locked by the caller) and crown ``target`` (locked), audited with both."""
    now = timezone.now()
    if before is not None:
        before.status, before.retired_at = ModelVersion.Status.RETIRED, now
        before.save(update_fields=["status", "retired_at"])
    target.status, target.promoted_at, target.retired_at = ModelVersion.Status.CHAMPION, now, None
    if details.get("gate"):
        target.gate = details["gate"]
    target.save(update_fields=["status", "promoted_at", "retired_at", "gate"])
    audit_record(
        actor=actor,
        action=action,
        target=target,
        details={
            "scope": target.scope,
            "timeframe": target.timeframe,
            "champion_before": None if before is None else before.pk,
            "champion_after": target.pk,
            "score_before": None if before is None else before.score,
            "score_after": target.score,
            **details,
        },
    )


def _lock_pair(version: ModelVersion) -> tuple[ModelVersion | None, ModelVersion]:
    """Lock order: the scope's champion, then the version to crown."""
    before = _locked_champion(scope=version.scope, timeframe=version.timeframe)
    target = ModelVersion.objects.select_for_update().get(pk=version.pk)
    if target.status == ModelVersion.Status.CHAMPION:
        raise PromotionRefused(
            f"model #{target.pk} is already the champion of {target.scope} {target.timeframe}m"
        )
    return before, target


def _promote(
    *, actor, version: ModelVersion, reason: str | None, automatic: bool
) -> tuple[ModelVersion, GateDecision, bool]:
    """Verify the artifact, then, holding the lock on the scope's champion row, re-make the gate's
    verdict against THAT champion and (for an automatic promotion, only if it passes) retire it and crown
    ``version``. A declined automatic promotion is recorded on the candidate instead. A version whose
    file fails its hash check is refused before anything changes. Returns (version, verdict, promoted)."""
    selectors.model_load(version)  # raises ArtifactIntegrityError before anything changes
    with transaction.atomic():
        before, target = _lock_pair(version)
        decision = _gate_against(target, before)
        if automatic and not decision.promote:
            _record_gate(actor=actor, target=target, decision=decision)
            return target, decision, False
        _swap(
            actor=actor,
            before=before,
            target=target,
            action="learning.model_promoted",
            details={
                "reason": reason or decision.reason,
                "manual": not automatic,
                "gate": decision.as_dict(),
            },
        )
    return target, decision, True


def model_promote(
    *, actor, version: ModelVersion, reason: str, decision: GateDecision | None = None
) -> ModelVersion:
    """Make ``version`` its scope's champion. The platform (a SystemActor) promotes only on a passing
    gate — the ``decision`` it brings is re-made under the champion's lock against the champion in place,
    and a refusal there is recorded and raised; a director may promote any candidate or retired version
    by hand, the gate's verdict recorded."""
    automatic = isinstance(actor, SystemActor)
    if automatic and (decision is None or not decision.promote):
        raise PromotionRefused("automatic promotion needs a passing gate; a director may promote by hand")
    _require_director(actor, "promote a model")
    if not reason.strip():
        raise ValueError("give a reason for the promotion")
    target, final, promoted = _promote(actor=actor, version=version, reason=reason, automatic=automatic)
    if not promoted:
        raise PromotionRefused(f"the gate, re-checked against the champion in place, refuses: {final.reason}")
    return target


def model_rollback(*, actor, scope: str, timeframe: int, reason: str) -> ModelVersion:
    """Reinstate the previous champion of a scope (the most recently retired one that was champion)."""
    _require_director(actor, "roll back a model")
    if isinstance(actor, SystemActor):
        raise PromotionRefused("a rollback is a director's decision")
    if not reason.strip():
        raise ValueError("give a reason for the rollback")
    current = selectors.champion_for(scope=scope, timeframe=timeframe)
    if current is None:
        raise PromotionRefused(f"{scope} {timeframe}m has no champion to roll back")
    previous = (
        ModelVersion.objects.filter(
            scope=scope, timeframe=timeframe, status=ModelVersion.Status.RETIRED, promoted_at__isnull=False
        )
        .order_by("-retired_at", "-pk")
        .first()
    )
    if previous is None:
        raise PromotionRefused(f"{scope} {timeframe}m has no earlier champion to return to")
    selectors.model_load(previous)  # raises ArtifactIntegrityError before anything changes
    with transaction.atomic():
        before, target = _lock_pair(previous)
        _swap(
            actor=actor,
            before=before,
            target=target,
            action="learning.model_rolled_back",
            details={"reason": reason, "manual": True},
        )
    return target


def model_retrain(*, actor, symbol: str, timeframe: int, now: datetime | None = None) -> TrainingOutcome:
    """The scheduled retrain of one pair: label its regimes up to the newest closed bar, then train on the
    last ``LEARNING_HISTORY_DAYS`` of stored candles (history and the newest live bars alike), register
    the candidate and apply the gate."""
    instrument = Instrument.objects.filter(symbol=symbol).first()
    if instrument is None:
        raise LearningDataError(symbol, "not in the synced spot USD universe (run manage.py sync_universe)")
    since = (now or timezone.now()) - timedelta(days=settings.LEARNING_HISTORY_DAYS)
    regimes_record(instrument=instrument, timeframe=timeframe)
    return model_train(actor=actor, instruments=[instrument], timeframe=timeframe, since=since)


# --- Regimes ------------------------------------------------------------------------------------------------


def regimes_record(
    *, instrument: Instrument, timeframe: int, since: datetime | None = None, method: str = "rules"
) -> int:
    """Label every closed bar from ``since`` (default: after the newest stored label) and store the labels
    with their inputs, idempotently. Derived market data like candles: not audited. Returns the rows
    written (0 when no bar closed since the last label). Candles that cannot be labelled raise
    :class:`LearningDataError`."""
    if method not in RegimeObservation.Method.values:
        raise ValueError(
            f"regime method {method!r} is not one of {', '.join(RegimeObservation.Method.values)}"
        )
    rules = RegimeRules()
    if since is None:
        newest = selectors.current_regime(
            instrument=instrument,
            timeframe=timeframe,
            as_of=timezone.now() + timedelta(days=1),
            method=method,
        )
        since = None if newest is None else newest.open_time + timedelta(minutes=timeframe)
    read_from = None if since is None else since - timedelta(minutes=timeframe * (rules.trend_window + 8))
    # No new bar is not an error (the window still holds the bars before ``since``; nothing is written).
    # Bad candles are: LearningDataError propagates, naming the pair and the problem, labels or not.
    prepared = selectors.prepared_candles(
        instrument=instrument, timeframe=timeframe, min_bars=rules.trend_window + 1, since=read_from
    )
    close = prepared.frame["close"].to_numpy()
    times = prepared.frame.index
    if method == "rules":
        inputs = regime_inputs(close, rules)
        codes = regime_codes(close, rules)
        labels = [label_of(code) for code in codes]
        extra = [
            {
                "slope": float(inputs.slope[i]),
                "volatility": float(inputs.volatility[i]),
                "strength": float(inputs.strength[i]),
            }
            if labels[i] is not None
            else {}
            for i in range(len(labels))
        ]
    else:
        labels = gmm_regimes(close, window=rules.trend_window)
        extra = [{} for _ in labels]
    rows = [
        RegimeObservation(
            instrument=instrument,
            timeframe=timeframe,
            open_time=times[i].to_pydatetime(),
            label=labels[i],
            method=method,
            inputs=extra[i],
        )
        for i in range(len(labels))
        if labels[i] is not None and (since is None or times[i] >= since)
    ]
    with transaction.atomic():
        RegimeObservation.objects.bulk_create(
            rows,
            batch_size=2000,
            update_conflicts=True,
            unique_fields=["instrument", "timeframe", "method", "open_time"],
            update_fields=["label", "inputs", "recorded_at"],
        )
    return len(rows)


# --- Strategy thresholds ------------------------------------------------------------------------------------

DEFAULT_THRESHOLDS = {
    "entry_probability": Decimal("0.55"),
    "stop_atr_multiple": Decimal("2.0"),
    "take_atr_multiple": Decimal("3.0"),
    "entry_probability_min": Decimal("0.50"),
    "entry_probability_max": Decimal("0.75"),
    "stop_atr_multiple_min": Decimal("1.0"),
    "stop_atr_multiple_max": Decimal("4.0"),
    "take_atr_multiple_min": Decimal("1.5"),
    "take_atr_multiple_max": Decimal("6.0"),
}
VALUES = ("entry_probability", "stop_atr_multiple", "take_atr_multiple")


def _quantized(name: str, value) -> Decimal:
    places = StrategyThresholds._meta.get_field(name).decimal_places
    return Decimal(str(value)).quantize(Decimal(1).scaleb(-places))


def _snapshot(row: StrategyThresholds) -> dict:
    return {name: str(getattr(row, name)) for name in DEFAULT_THRESHOLDS}


def _require_role(actor, account, action: str) -> None:
    if isinstance(actor, SystemActor):
        return
    if not user_can(user=actor, account=account, action=action):
        raise PermissionDenied(f"Your role in {account} does not allow changing its thresholds.")


def _check_bounds(values: dict) -> None:
    for name in VALUES:
        low, high, value = values[f"{name}_min"], values[f"{name}_max"], values[name]
        if not low <= value <= high:
            raise ValueError(f"{name.replace('_', ' ')} {value} is outside its bounds {low} … {high}")


def thresholds_ensure(*, actor, account) -> StrategyThresholds:
    """The account's thresholds, created with the defaults (and audited) the first time."""
    with transaction.atomic():
        row = StrategyThresholds.objects.select_for_update().filter(account=account).first()
        if row is not None:
            return row
        _require_role(actor, account, "add")
        row = StrategyThresholds.objects.create(account=account, reason="defaults", **DEFAULT_THRESHOLDS)
        audit_record(
            actor=actor,
            action="learning.thresholds_created",
            account=account,
            target=row,
            details=_snapshot(row),
        )
    return row


def thresholds_update(*, actor, account, reason: str, **values: Decimal) -> StrategyThresholds:
    """A director sets thresholds or their bounds by hand (audited, before and after)."""
    unknown = set(values) - set(DEFAULT_THRESHOLDS)
    if unknown:
        raise ValueError(f"unknown threshold field(s): {', '.join(sorted(unknown))}")
    if not reason.strip():
        raise ValueError("give a reason for the change")
    _require_role(actor, account, "change")
    thresholds_ensure(actor=actor, account=account)
    with transaction.atomic():
        row = StrategyThresholds.objects.select_for_update().get(account=account)
        before = _snapshot(row)
        merged = {name: _quantized(name, values.get(name, getattr(row, name))) for name in DEFAULT_THRESHOLDS}
        _check_bounds(merged)
        for name, value in merged.items():
            setattr(row, name, value)
        row.reason = reason
        row.save()
        audit_record(
            actor=actor,
            action="learning.thresholds_set",
            account=account,
            target=row,
            details={"before": before, "after": _snapshot(row), "reason": reason},
        )
    return row


def adaptation_policy() -> AdaptationPolicy:
    return AdaptationPolicy(
        window=settings.LEARNING_ADAPT_WINDOW,
        min_trades=settings.LEARNING_ADAPT_MIN_TRADES,
        min_interval=timedelta(hours=settings.LEARNING_ADAPT_MIN_INTERVAL_HOURS),
    )


def thresholds_adapt(
    *,
    actor,
    account,
    recent_trades: Sequence[tuple[datetime, Decimal | float | str]],
    now: datetime | None = None,
):
    """Adjust the account's thresholds from its latest closed trades, ``(closed_at, net_return)`` each:
    only trades closed after the last adaptation count, at least ``LEARNING_ADAPT_MIN_TRADES`` of them;
    within its bounds and at most once per ``LEARNING_ADAPT_MIN_INTERVAL_HOURS``. A change is audited with
    its reason and the figures behind it; no change, no event. Returns the :class:`Adaptation`."""
    now = now or timezone.now()
    thresholds_ensure(actor=actor, account=account)
    with transaction.atomic():
        row = StrategyThresholds.objects.select_for_update().get(account=account)
        current = Thresholds(row.entry_probability, row.stop_atr_multiple, row.take_atr_multiple)
        bounds = Bounds(
            low=Thresholds(row.entry_probability_min, row.stop_atr_multiple_min, row.take_atr_multiple_min),
            high=Thresholds(row.entry_probability_max, row.stop_atr_multiple_max, row.take_atr_multiple_max),
        )
        outcome = adapt(
            current=current,
            bounds=bounds,
            recent_trades=recent_trades,
            now=now,
            last_changed_at=row.adapted_at,
            policy=adaptation_policy(),
        )
        if not outcome.changed:
            return outcome
        before = _snapshot(row)
        for name in VALUES:
            setattr(row, name, _quantized(name, getattr(outcome.after, name)))
        row.adapted_at, row.reason = now, outcome.reason
        row.save()
        audit_record(
            actor=actor,
            action="learning.thresholds_adapted",
            account=account,
            target=row,
            details={
                "before": before,
                "after": _snapshot(row),
                "reason": outcome.reason,
                "stats": {key: None if value is None else str(value) for key, value in outcome.stats.items()},
            },
        )
    return outcome
