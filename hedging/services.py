"""The only writers of the hedge shell: the hedge policy, the directors' override, evaluation and rebalancing.

Each service locks the account row first, then the hedge policy (lock order: account → hedge policy → the
rows the order services take), calls :mod:`hedging.policy`, and persists the result with its audit event in
one transaction. A rebalance's sells are submitted after that commit, each through the risk engine's
checked order path (``risk.pretrade.order_submit_checked``), never straight to the order service.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from itertools import pairwise

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Count, Max, Sum
from prometheus_client import Counter, Gauge

from accounts.models import Account
from accounts.selectors import require_director
from aether_site.caching import BoundedCache
from aether_site.rows import select_rows
from governance.actors import SystemActor, actor_label
from governance.models import AuditEvent
from governance.services import audit_record
from hedging import policy as core
from hedging.models import HedgeMode, HedgePolicy, HedgeSnapshot
from trading.clock import platform_now
from trading.fees import FeeRates, published_rates
from trading.models import LIVE_STATUSES, Candle, Fill, Instrument, Order, Position, Side
from trading.selectors import book_of, fee_rates_for, pair_rules_for

logger = logging.getLogger(__name__)

HEDGE_REBALANCES = Counter(
    "aether_hedge_rebalances",
    "Hedge rebalances by action (sell: crypto sold; release: USD released)",
    ["account", "action"],
)
HEDGE_KILLSWITCH_RECOMMENDATIONS = Counter(
    "aether_hedge_killswitch_recommendations",
    "The hedge recommended the kill switch (the UTC day's drawdown neared the daily limit)",
    ["account"],
)
HEDGE_TARGET = Gauge("aether_hedge_target_pct", "The hedge target in force, % of equity in USD", ["account"])

#: The platform evaluating the hedge (the Celery task, the cycle).
HEDGE = SystemActor("hedge")
#: Creates an account's default hedge policy on first use.
POLICY_DEFAULTS = SystemActor("hedge_policy")

QUOTE_ASSET = "USD"
#: Order ids of a rebalance are derived from its snapshot: a retried submission is never a second order.
ORDER_NAMESPACE = uuid.UUID("6f1d8c52-3b7e-4a55-9a1e-5d0c2f6b9e41")
HUNDRED = Decimal(100)


class HedgeUnavailable(ValidationError):
    """The hedge cannot be evaluated now (no price to mark a holding, not enough closed candles for the
    automatic target, an invalid policy). Nothing is written and nothing is traded."""


def _lock_account(account: Account) -> Account:
    found = select_rows(Account, "id = %s", [account.pk], limit=1, for_update="no key")
    if not found:
        raise Account.DoesNotExist(f"account {account.pk} does not exist")
    return found[0]


def _text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return str(value)
    return str(value)


# ----------------------------------------------------------------------------------------------------------
# Policy
# ----------------------------------------------------------------------------------------------------------


def _values(policy: HedgePolicy, names) -> dict[str, str | int | None]:
    """Fields as stored (decimals at their column's places), JSON-ready for the audit."""
    values = {}
    for name in names:
        value = getattr(policy, name)
        if isinstance(value, Decimal):
            places = HedgePolicy._meta.get_field(name).decimal_places
            value = str(value.quantize(Decimal(1).scaleb(-places)))
        elif isinstance(value, int) and not isinstance(value, bool):
            pass
        else:
            value = _text(value)
        values[name] = value
    return values


def hedge_policy_for(*, account: Account, actor=POLICY_DEFAULTS) -> HedgePolicy:
    """The account's hedge policy, created with the core's defaults (automatic mode) on first use, audited."""
    found = select_rows(HedgePolicy, "account_id = %s", [account.pk], limit=1)  # one per account
    if found:
        return found[0]
    with transaction.atomic():
        locked = _lock_account(account)
        policy, created = HedgePolicy.objects.get_or_create(account=locked)
        if created:
            audit_record(
                actor=actor,
                action="hedge_policy.created",
                account=locked,
                target=policy,
                details={
                    "after": _values(policy, (*HedgePolicy.OVERRIDE, *HedgePolicy.EDITABLE)),
                    "note": "the hedge core's defaults",
                },
            )
    return policy


def hedge_policy_problems(policy: HedgePolicy) -> list[str]:
    """Every problem with a (possibly unsaved) policy row: its fields' own rules, then the core's."""
    problems: list[str] = []
    try:
        policy.clean_fields(exclude=["account"])
    except ValidationError as exc:
        for name, errors in exc.message_dict.items():
            label = HedgePolicy._meta.get_field(name).verbose_name
            problems += [f"{label}: {error}" for error in errors]
        return problems
    return list(policy.to_params().validate())


def hedge_policy_update(*, account: Account, actor, **changes) -> HedgePolicy:
    """Change the automatic target's parameters (``HedgePolicy.EDITABLE``). Directors only; the whole
    change is refused with every problem listed when the result would be invalid; the changed fields'
    before and after are audited (``hedge_policy.updated``). A change that changes nothing records
    nothing. The mode has its own services (``hedge_set_manual`` / ``hedge_set_auto``)."""
    require_director(actor, account, "change the hedge policy")
    unknown = sorted(set(changes) - set(HedgePolicy.EDITABLE))
    if unknown:
        raise ValidationError(
            f"unknown or not editable hedge policy field(s): {', '.join(unknown)}"
            + (" (the mode changes through hedge_set_manual / hedge_set_auto)" if "mode" in unknown else "")
        )
    hedge_policy_for(account=account)
    with transaction.atomic():
        locked = _lock_account(account)
        policy = HedgePolicy.objects.select_for_update().get(account=locked)
        before = _values(policy, HedgePolicy.EDITABLE)
        for name, value in changes.items():
            setattr(policy, name, value)
        problems = hedge_policy_problems(policy)
        if problems:
            raise ValidationError(problems)
        policy.full_clean(exclude=["account"], validate_unique=False)
        after = _values(policy, HedgePolicy.EDITABLE)
        changed = [name for name in HedgePolicy.EDITABLE if before[name] != after[name]]
        if not changed:
            return policy
        policy.save()
        audit_record(
            actor=actor,
            action="hedge_policy.updated",
            account=locked,
            target=policy,
            details={
                "before": {name: before[name] for name in changed},
                "after": {name: after[name] for name in changed},
            },
        )
    return policy


# ----------------------------------------------------------------------------------------------------------
# Reading the account and the market (inside the caller's transaction)
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Book:
    broker: str
    usd: Decimal
    equity: Decimal  # risk's marked equity (per-instrument fees)
    holdings: tuple[core.Holding, ...]
    fees: FeeRates  # the dearest taker rate of the held pairs: the plan's fee assumption


def _closes(instrument: Instrument | int, *, bars: int, now: datetime) -> list[Decimal]:
    """The closes of the last ``bars`` closed candles (``AETHER_TIMEFRAME``) that closed by ``now``
    (``instrument``: the instrument or its id)."""
    timeframe = timedelta(minutes=settings.AETHER_TIMEFRAME)
    rows = (
        Candle.objects.filter(
            instrument=instrument,
            timeframe=settings.AETHER_TIMEFRAME,
            closed=True,
            open_time__lte=now - timeframe,
            open_time__gte=now - timeframe * (bars + 1),
        )
        .order_by("open_time")
        .values_list("close", flat=True)
    )
    return list(rows)


#: Volatility inputs by the candles they were measured on: the same for every account on a bar.
_VOLATILITY_CACHE = BoundedCache(256)
_NOT_MEASURED = object()


def _volatility_of(
    instrument_id: int, params: core.HedgeParams, now: datetime, shape: tuple
) -> tuple[float, float] | None:
    """``(vol_now, vol_reference)`` of one pair, or ``None`` without enough closed candles. Measured once per
    process for the same candles: ``shape`` (the window's newest bar, its bars and its newest write) is part
    of the key."""
    key = (instrument_id, params.vol_window, params.vol_lookback, *shape)
    cached = _VOLATILITY_CACHE.get(key, _NOT_MEASURED)  # None is a result: too few candles
    if cached is not _NOT_MEASURED:
        return cached
    closes = _closes(instrument_id, bars=params.vol_lookback + params.vol_window + 1, now=now)
    measured = None
    if len(closes) >= params.vol_window + 1 and all(close > 0 for close in closes):
        measured = core.volatility_inputs(closes, window=params.vol_window, lookback=params.vol_lookback)
    _VOLATILITY_CACHE.put(key, measured)
    return measured


def _volatilities(
    params: core.HedgeParams, symbols: set[str], now: datetime
) -> dict[str, tuple[float, float]]:
    """``(vol_now, vol_reference)`` per symbol that has enough closed candles. Every pair's window shape
    (:func:`_volatility_of`'s cache key) is read in one grouped query; only a pair whose candles changed
    reads them."""
    bars = params.vol_lookback + params.vol_window + 1
    timeframe = timedelta(minutes=settings.AETHER_TIMEFRAME)
    shapes = (
        Candle.objects.filter(
            instrument__symbol__in=symbols,
            timeframe=settings.AETHER_TIMEFRAME,
            closed=True,
            open_time__lte=now - timeframe,
            open_time__gte=now - timeframe * (bars + 1),
        )
        .values("instrument_id", "instrument__symbol")
        .annotate(last=Max("open_time"), bars=Count("id"), written=Max("updated_at"))
        .order_by()
        .values_list("instrument_id", "instrument__symbol", "last", "bars", "written")
    )
    found = {}
    for instrument_id, symbol, *shape in sorted(shapes, key=lambda row: row[1]):
        measured = _volatility_of(instrument_id, params, now, tuple(shape))
        if measured is not None:
            found[symbol] = measured
    return found


def _open_positions(account: Account, broker: str) -> list[Position]:
    """The book's positions with ``quantity > 0``, their instrument loaded, by symbol."""
    return list(
        Position.objects.filter(account=account, broker=broker, quantity__gt=0)
        .select_related("instrument")
        .order_by("instrument__symbol")
    )


def _mark_book(
    account: Account,
    *,
    quotes,
    now: datetime,
    volatilities: dict,
    positions: list[Position] | None = None,
) -> _Book:
    """The book marked now; ``positions``: the book's open positions when the caller has just read them in
    the same transaction (:func:`_open_positions`), else they are read here."""
    from risk.services import NavUnavailable, nav_mark_book

    broker = book_of(account)
    if positions is None:
        positions = _open_positions(account, broker)
    try:
        marked = nav_mark_book(account=account, broker=broker, quotes=quotes, now=now, positions=positions)
    except NavUnavailable as exc:
        raise HedgeUnavailable(f"cannot evaluate {account}'s hedge: {exc.messages[0]}") from None
    offered = dict(
        Order.objects.filter(account=account, broker=broker, side=Side.SELL, status__in=LIVE_STATUSES)
        .values("instrument__symbol")
        .annotate(total=Sum("reserved_amount"))
        .values_list("instrument__symbol", "total")
    )
    holdings, taker = [], []
    for position in positions:
        instrument = position.instrument
        quote = quotes.quote(instrument)  # nav_mark_book refused a missing or stale one already
        vol = volatilities.get(instrument.symbol)
        holdings.append(
            core.Holding(
                symbol=instrument.symbol,
                pair=pair_rules_for(instrument),
                quantity=position.quantity,
                free=position.quantity - (offered.get(instrument.symbol) or Decimal(0)),
                price=quote.bid,
                volatility=vol[0] if vol else None,
            )
        )
        taker.append(fee_rates_for(account=account, instrument=instrument))
    fees = max(taker, key=lambda rates: rates.taker_pct) if taker else published_rates()
    return _Book(broker=broker, usd=marked.cash, equity=marked.equity, holdings=tuple(holdings), fees=fees)


def _drawdowns(
    account: Account, *, book: _Book, params: core.HedgeParams, now: datetime
) -> tuple[Decimal, Decimal]:
    """(drawdown from the high-water mark over the look-back, the UTC day's drawdown), in %. The high-water
    mark is the highest NAV snapshot of the book in the look-back, or the equity now when higher."""
    from risk.engine import utc_day
    from risk.models import KillSwitch, NavSnapshot

    since = now - timedelta(days=params.drawdown_lookback_days)
    high = NavSnapshot.objects.filter(
        account=account, broker=book.broker, taken_at__gte=since, taken_at__lte=now
    ).aggregate(high=Max("equity"))["high"]
    high = max(high or book.equity, book.equity)
    drawdown = core.drawdown_pct(equity=book.equity, high_water=high)
    day = Decimal(0)
    switch = KillSwitch.objects.filter(account=account).first()
    record = switch.day_record(book.broker) if switch is not None else None
    if record is not None and record.day == utc_day(now):
        day = core.drawdown_pct(equity=book.equity, high_water=max(record.high_water, book.equity))
    return drawdown, day


def _inputs(
    params: core.HedgeParams, volatilities: dict[str, tuple[float, float]], drawdown: Decimal
) -> tuple[core.HedgeInputs | None, dict]:
    """The core's inputs: the market's volatility is that of the pair whose volatility is furthest above its
    usual level (the most turbulent market drives the hedge); ``None`` when no pair has the history."""
    detail = {
        "drawdown_pct": str(drawdown.quantize(Decimal("0.0001"))),
        "pairs": {
            symbol: {"vol_now": vol_now, "vol_reference": reference, "ratio": vol_now / reference}
            for symbol, (vol_now, reference) in sorted(volatilities.items())
        },
    }
    if not volatilities:
        detail["problem"] = "no traded or held pair has enough closed candles for its volatility"
        return None, detail
    symbol = max(volatilities, key=lambda name: (volatilities[name][0] / volatilities[name][1], name))
    vol_now, reference = volatilities[symbol]
    inputs = core.HedgeInputs(vol_now=vol_now, vol_reference=reference, drawdown_pct=drawdown)
    s_v, s_d = core.scores(params, inputs)
    detail.update(
        {
            "driver": symbol,
            "vol_now": vol_now,
            "vol_reference": reference,
            "vol_ratio": str(inputs.vol_ratio.quantize(Decimal("0.0001"))),
            "vol_score": str(s_v.quantize(Decimal("0.0001"))),
            "drawdown_score": str(s_d.quantize(Decimal("0.0001"))),
        }
    )
    return inputs, detail


def _last_snapshot(account: Account) -> HedgeSnapshot | None:
    found = select_rows(
        HedgeSnapshot, "account_id = %s", [account.pk], order_by="taken_at DESC, id DESC", limit=1
    )
    return found[0] if found else None


def _last_rebalance_at(account: Account) -> datetime | None:
    return (
        HedgeSnapshot.objects.filter(account=account, event__in=HedgeSnapshot.REBALANCES)
        .order_by("-taken_at", "-id")
        .values_list("taken_at", flat=True)
        .first()
    )


def _set_target_gauge(account: Account, target_pct: Decimal) -> None:
    transaction.on_commit(lambda: HEDGE_TARGET.labels(account=account.slug).set(float(target_pct)))


# ----------------------------------------------------------------------------------------------------------
# The directors' override
# ----------------------------------------------------------------------------------------------------------


def _override_values(policy: HedgePolicy) -> dict:
    return _values(policy, HedgePolicy.OVERRIDE)


def _book_now(account: Account, *, quotes, now: datetime) -> _Book | None:
    """The marked book for a snapshot's "actual", or ``None`` when it cannot be marked now."""
    from trading.quotes import DatabaseQuoteSource

    try:
        return _mark_book(account, quotes=quotes or DatabaseQuoteSource(), now=now, volatilities={})
    except HedgeUnavailable:
        return None


def _snapshot(
    *,
    account: Account,
    now: datetime,
    event: str,
    mode: str,
    target_pct: Decimal,
    auto_pct: Decimal | None,
    book: _Book | None,
    inputs: dict,
    reason: str,
    orders: list | None = None,
) -> HedgeSnapshot:
    return HedgeSnapshot.objects.create(
        account=account,
        taken_at=now,
        event=event,
        mode=mode,
        target_pct=target_pct,
        auto_target_pct=auto_pct,
        actual_pct=core.usd_share_pct(usd=book.usd, equity=book.equity) if book is not None else None,
        broker=book.broker if book is not None else "",
        equity=book.equity if book is not None else None,
        usd=book.usd if book is not None else None,
        inputs=inputs,
        orders=orders or [],
        reason=reason,
    )


def hedge_set_manual(
    *,
    account: Account,
    target_pct: Decimal,
    actor,
    expires_at: datetime | None = None,
    reason: str,
    now: datetime | None = None,
    quotes=None,
) -> HedgePolicy:
    """A director fixes the account's hedge target at ``target_pct`` % of equity in USD (0..100; floor and
    ceiling bound only the automatic target) until ``expires_at`` (aware, in the future) or until
    ``hedge_set_auto``. Audited (``hedge.manual_set``, before and after) with a ``manual_set`` snapshot.
    The next ``hedge_evaluate`` rebalances towards it (band and minimum interval apply)."""
    require_director(actor, account, "override the hedge")
    now = now or platform_now()
    try:
        target = Decimal(target_pct)
    except (ArithmeticError, TypeError, ValueError):
        raise ValidationError(f"the manual target {target_pct!r} is not a number") from None
    if not target.is_finite() or not Decimal(0) <= target <= HUNDRED:
        raise ValidationError(f"the manual target must be between 0 % and 100 %, not {target_pct}")
    target = target.quantize(core.PCT_PLACES)
    if expires_at is not None:
        if expires_at.tzinfo is None:
            raise ValidationError(f"the expiry {expires_at.isoformat()} has no time zone")
        if expires_at <= now:
            raise ValidationError(f"the expiry {expires_at.isoformat()} is not in the future")
    if not reason.strip():
        raise ValidationError("say why the hedge is overridden")
    hedge_policy_for(account=account)
    with transaction.atomic():
        locked = _lock_account(account)
        policy = HedgePolicy.objects.select_for_update().get(account=locked)
        before = _override_values(policy)
        policy.mode = HedgeMode.MANUAL
        policy.manual_target_pct = target
        policy.manual_expires_at = expires_at
        policy.manual_reason = reason.strip()
        policy.save()
        after = _override_values(policy)
        last = _last_snapshot(locked)
        auto = last.auto_target_pct if last is not None else None
        book = _book_now(locked, quotes=quotes, now=now)
        snapshot = _snapshot(
            account=locked,
            now=now,
            event=HedgeSnapshot.Event.MANUAL_SET,
            mode=HedgeMode.MANUAL,
            target_pct=target,
            auto_pct=auto,
            book=book,
            inputs={},
            reason=f"{actor_label(actor)}: {reason.strip()}",
        )
        audit_record(
            actor=actor,
            action="hedge.manual_set",
            account=locked,
            target=policy,
            details={"before": before, "after": after, "reason": reason.strip(), "snapshot_id": snapshot.pk},
        )
        _set_target_gauge(locked, target)
    return policy


def hedge_set_auto(
    *, account: Account, actor, reason: str = "", now: datetime | None = None, quotes=None
) -> HedgePolicy:
    """A director ends a manual override: the automatic target resumes. Audited (``hedge.auto_set``, before
    and after) with an ``auto_set`` snapshot whose target is the last automatic target known (the floor
    when none was ever computed) until the next ``hedge_evaluate``. Already automatic: nothing recorded."""
    require_director(actor, account, "set the hedge to automatic")
    now = now or platform_now()
    hedge_policy_for(account=account)
    with transaction.atomic():
        locked = _lock_account(account)
        policy = HedgePolicy.objects.select_for_update().get(account=locked)
        if policy.mode == HedgeMode.AUTO:
            return policy
        before = _override_values(policy)
        _clear_override(policy)
        policy.save()
        target = _known_auto_pct(locked, policy)
        snapshot = _snapshot(
            account=locked,
            now=now,
            event=HedgeSnapshot.Event.AUTO_SET,
            mode=HedgeMode.AUTO,
            target_pct=target,
            auto_pct=target,
            book=_book_now(locked, quotes=quotes, now=now),
            inputs={},
            reason=f"{actor_label(actor)}: {reason.strip() or 'back to the automatic target'}",
        )
        audit_record(
            actor=actor,
            action="hedge.auto_set",
            account=locked,
            target=policy,
            details={
                "before": before,
                "after": _override_values(policy),
                "reason": reason.strip(),
                "snapshot_id": snapshot.pk,
            },
        )
        _set_target_gauge(locked, target)
    return policy


def _clear_override(policy: HedgePolicy) -> None:
    policy.mode = HedgeMode.AUTO
    policy.manual_target_pct = None
    policy.manual_expires_at = None
    policy.manual_reason = ""


def _known_auto_pct(account: Account, policy: HedgePolicy) -> Decimal:
    """The last automatic target computed (bounded by the policy's floor and ceiling as they are now), or
    the floor when none was ever computed."""
    last = (
        HedgeSnapshot.objects.filter(account=account, auto_target_pct__isnull=False)
        .order_by("-taken_at", "-id")
        .values_list("auto_target_pct", flat=True)
        .first()
    )
    if last is None:
        return policy.floor_pct
    return min(policy.ceiling_pct, max(policy.floor_pct, last))


# ----------------------------------------------------------------------------------------------------------
# Evaluation and rebalancing
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HedgeOrderOutcome:
    symbol: str
    quantity: Decimal
    client_order_id: str
    verdict: str  # the risk engine's: accept / resize / reject; "error" when the submission raised
    order_id: int | None
    status: str
    filled_quantity: Decimal
    message: str

    def as_dict(self) -> dict:
        return {
            "symbol": self.symbol,
            "quantity": str(self.quantity),
            "client_order_id": self.client_order_id,
            "verdict": self.verdict,
            "order_id": self.order_id,
            "status": self.status,
            "filled_quantity": str(self.filled_quantity),
            "message": self.message,
        }


@dataclass(frozen=True)
class HedgeEvaluation:
    """What one evaluation decided and did."""

    decision: core.TargetDecision
    plan: core.RebalancePlan
    snapshots: tuple[HedgeSnapshot, ...]  # written by this evaluation (empty: nothing changed)
    outcomes: tuple[HedgeOrderOutcome, ...] = ()
    killswitch_recommendation: str | None = None
    inputs: dict = field(default_factory=dict)
    #: The account's hedge policy as the evaluation read it under its lock and left it (created with the
    #: defaults on first use, a lapsed manual override ended): a caller holding an older copy reads again.
    policy: HedgePolicy | None = None

    def summary(self) -> str:
        text = (
            f"target {self.decision.target_pct} % ({self.decision.mode}), actual {self.plan.actual_pct} %: "
            f"{self.plan.action}"
        )
        if self.outcomes:
            text += "; " + ", ".join(f"{o.symbol} {o.verdict} {o.status}" for o in self.outcomes)
        if self.killswitch_recommendation:
            text += "; kill switch recommended"
        return text


def _client_order_id(snapshot: HedgeSnapshot, symbol: str) -> str:
    return str(uuid.uuid5(ORDER_NAMESPACE, f"hedge:{snapshot.account_id}:{snapshot.pk}:{symbol}"))


def hedge_evaluate(
    *, account: Account, actor, now: datetime | None = None, quotes=None, broker_factory=None
) -> HedgeEvaluation:
    """Evaluate the account's hedge now and rebalance when it is due.

    Under the account's and the policy's locks: measure the inputs (each traded or held pair's realised
    volatility against its own history, from closed candles; the equity's drawdown from its high-water
    mark over the look-back), decide the target (a lapsed manual override goes back to automatic, audited
    ``hedge.manual_expired`` with a ``manual_expired`` snapshot), and plan the rebalance
    (:func:`hedging.policy.rebalance_plan`). Written in the same transaction: a ``target_changed``
    snapshot when the target in force changed, a ``rebalance`` (sells, audited ``hedge.rebalanced``) or
    ``release`` snapshot when the USD share left the band and the minimum interval has passed; and, once
    per UTC day, a kill-switch recommendation (``hedge.killswitch_recommended``, counted) when the day's
    drawdown nears the risk policy's limit. The hedge never trips the switch itself.

    After the commit, each planned sell goes through ``risk.pretrade.order_submit_checked`` (the risk
    engine cuts a sell to the free holding and refuses what Kraken's minimums refuse) with a client order
    id derived from the snapshot; the outcomes are stored on the rebalance snapshot. Must not run inside a
    transaction (the order path commits its intent before any network call). Raises
    :class:`HedgeUnavailable` (nothing written) when the book cannot be marked or the automatic target has
    no inputs."""
    from risk.pretrade import slippage_pct
    from risk.selectors import engine_policy_for
    from trading.quotes import DatabaseQuoteSource

    require_director(actor, account, "evaluate the hedge", platform_allowed=True)
    quotes = quotes or DatabaseQuoteSource()
    with transaction.atomic():
        locked = _lock_account(account)
        policy = HedgePolicy.objects.select_for_update().filter(account=locked).first()
        if policy is None:  # the core's defaults, created (audited) on first use
            hedge_policy_for(account=locked)
            policy = HedgePolicy.objects.select_for_update().get(account=locked)
        now = now or platform_now()
        params = policy.to_params()
        problems = params.validate()
        if problems:
            raise HedgeUnavailable(f"{account}'s hedge policy is invalid: " + "; ".join(problems))
        positions = _open_positions(locked, book_of(locked))
        held = {position.instrument.symbol for position in positions}
        volatilities = _volatilities(params, set(settings.AETHER_PAIRS) | held, now)
        book = _mark_book(locked, quotes=quotes, now=now, volatilities=volatilities, positions=positions)
        drawdown, day_drawdown = _drawdowns(locked, book=book, params=params, now=now)
        inputs, detail = _inputs(params, volatilities, drawdown)
        try:
            decision = core.decide_target(
                params,
                inputs,
                mode=policy.mode,
                manual_target_pct=policy.manual_target_pct,
                manual_expires_at=policy.manual_expires_at,
                now=now,
            )
        except core.HedgeInputError as exc:
            raise HedgeUnavailable(f"cannot evaluate {account}'s hedge: {exc}") from None
        detail["day_drawdown_pct"] = str(day_drawdown.quantize(Decimal("0.0001")))
        snapshots: list[HedgeSnapshot] = []
        last = _last_snapshot(locked)

        def write(event: str, reason: str, orders: list | None = None) -> HedgeSnapshot:
            snapshot = _snapshot(
                account=locked,
                now=now,
                event=event,
                mode=decision.mode,
                target_pct=decision.target_pct,
                auto_pct=decision.auto_pct,
                book=book,
                inputs=detail,
                reason=reason,
                orders=orders,
            )
            snapshots.append(snapshot)
            return snapshot

        if decision.expired:
            before = _override_values(policy)
            _clear_override(policy)
            policy.save()
            snapshot = write(HedgeSnapshot.Event.MANUAL_EXPIRED, decision.reason)
            audit_record(
                actor=actor,
                action="hedge.manual_expired",
                account=locked,
                target=policy,
                details={
                    "before": before,
                    "after": _override_values(policy),
                    "target_pct": str(decision.target_pct),
                    "snapshot_id": snapshot.pk,
                },
            )
        elif last is None or last.target_pct != decision.target_pct or last.mode != decision.mode:
            was = "none" if last is None else f"{last.target_pct} % ({last.mode})"
            snapshot = write(
                HedgeSnapshot.Event.TARGET_CHANGED,
                f"{decision.reason}: target {was} -> {decision.target_pct} %",
            )
            audit_record(
                actor=actor,
                action="hedge.target_changed",
                account=locked,
                target=snapshot,
                details={
                    "before": None if last is None else str(last.target_pct),
                    "after": str(decision.target_pct),
                    "mode": str(decision.mode),
                    "inputs": detail,
                },
            )

        plan = core.rebalance_plan(
            params=params,
            target_pct=decision.target_pct,
            usd=book.usd,
            holdings=book.holdings,
            fees=book.fees,
            now=now,
            last_rebalance_at=_last_rebalance_at(locked),
            slippage_pct=slippage_pct(),
        )
        rebalance = None
        if plan.action == core.Action.SELL:
            planned = [
                {
                    "symbol": order.symbol,
                    "side": str(order.side),
                    "quantity": str(order.quantity),
                    "price": str(order.price),
                }
                for order in plan.orders
            ]
            rebalance = write(HedgeSnapshot.Event.REBALANCE, plan.reason, planned)
            for item in rebalance.orders:
                item["client_order_id"] = _client_order_id(rebalance, item["symbol"])
            rebalance.save(update_fields=["orders"])
            audit_record(
                actor=actor,
                action="hedge.rebalanced",
                account=locked,
                target=rebalance,
                details={
                    "target_pct": str(plan.target_pct),
                    "actual_pct": str(plan.actual_pct),
                    "equity": str(plan.equity),
                    "orders": rebalance.orders,
                    "skipped": list(plan.skipped),
                    "expected_fees": str(plan.expected_fees),
                },
            )
            transaction.on_commit(HEDGE_REBALANCES.labels(account=locked.slug, action="sell").inc)
        elif plan.action == core.Action.RELEASE:
            write(HedgeSnapshot.Event.RELEASE, plan.reason)
            transaction.on_commit(HEDGE_REBALANCES.labels(account=locked.slug, action="release").inc)

        # A day without drawdown never reaches a share (in (0, 1], validated above) of a positive limit:
        # the risk policy is read only when there is a drawdown to compare with it.
        recommendation = (
            core.killswitch_recommendation(
                day_drawdown_pct=day_drawdown,
                max_daily_drawdown_pct=engine_policy_for(account=locked).max_daily_drawdown_pct,
                warn_ratio=params.killswitch_warn_ratio,
            )
            if day_drawdown > 0
            else None
        )
        if recommendation is not None:
            _recommend_killswitch(
                locked, actor=actor, now=now, sentence=recommendation, day_drawdown=day_drawdown
            )
        _set_target_gauge(locked, decision.target_pct)

    outcomes = ()
    if rebalance is not None:
        outcomes = _submit(
            rebalance, plan=plan, actor=actor, quotes=quotes, broker_factory=broker_factory, now=now
        )
    return HedgeEvaluation(
        decision=decision,
        plan=plan,
        snapshots=tuple(snapshots),
        outcomes=outcomes,
        killswitch_recommendation=recommendation,
        inputs=detail,
        policy=policy,
    )


def _recommend_killswitch(
    account: Account, *, actor, now: datetime, sentence: str, day_drawdown: Decimal
) -> None:
    """Record the recommendation for the risk engine and the directors (once per UTC day): an audit event
    and a counter. It is not acted on here: tripping is the risk engine's (``risk.services``)."""
    from risk.engine import utc_day

    day = utc_day(now).isoformat()
    already = AuditEvent.objects.filter(
        account=account, action="hedge.killswitch_recommended", details_json__contains=f'"utc_day":"{day}"'
    ).exists()
    if already:
        return
    audit_record(
        actor=actor,
        action="hedge.killswitch_recommended",
        account=account,
        details={
            "utc_day": day,
            "day_drawdown_pct": str(day_drawdown.quantize(Decimal("0.0001"))),
            "reason": sentence,
        },
    )
    transaction.on_commit(HEDGE_KILLSWITCH_RECOMMENDATIONS.labels(account=account.slug).inc)
    logger.warning("%s: %s", account.slug, sentence)


def _submit(
    snapshot: HedgeSnapshot, *, plan: core.RebalancePlan, actor, quotes, broker_factory, now: datetime
) -> tuple[HedgeOrderOutcome, ...]:
    """Each planned sell through the risk engine's checked order path; one that raises is reported and the
    rest still go. The outcomes are stored on the rebalance snapshot."""
    from risk.pretrade import order_submit_checked

    account = snapshot.account
    instruments = {
        item.symbol: item for item in Instrument.objects.filter(symbol__in=[o.symbol for o in plan.orders])
    }
    outcomes = []
    for order, item in zip(plan.orders, snapshot.orders, strict=True):
        client_order_id = item["client_order_id"]
        try:
            checked = order_submit_checked(
                account=account,
                actor=actor,
                instrument=instruments[order.symbol],
                side=Side.SELL,
                order_type="market",
                quantity=order.quantity,
                client_order_id=client_order_id,
                reason=f"hedge: rebalance to {plan.target_pct} % of equity in USD (snapshot {snapshot.pk})",
                quotes=quotes,
                broker_factory=broker_factory,
                now=now,
            )
        except Exception as exc:
            logger.exception("%s: hedge sell of %s %s failed", account.slug, order.quantity, order.symbol)
            outcomes.append(
                HedgeOrderOutcome(
                    order.symbol,
                    order.quantity,
                    client_order_id,
                    "error",
                    None,
                    "",
                    Decimal(0),
                    f"{type(exc).__name__}: {exc}",
                )
            )
            continue
        placed = checked.order
        outcomes.append(
            HedgeOrderOutcome(
                symbol=order.symbol,
                quantity=checked.decision.quantity,
                client_order_id=client_order_id,
                verdict=str(checked.decision.verdict),
                order_id=placed.pk if placed is not None else None,
                status=placed.status if placed is not None else "",
                filled_quantity=placed.filled_quantity if placed is not None else Decimal(0),
                message=checked.decision.message,
            )
        )
    HedgeSnapshot.objects.filter(pk=snapshot.pk).update(
        orders=[
            item | {"outcome": outcome.as_dict()}
            for item, outcome in zip(snapshot.orders, outcomes, strict=True)
        ]
    )
    return tuple(outcomes)


# ----------------------------------------------------------------------------------------------------------
# Performance
# ----------------------------------------------------------------------------------------------------------


def hedge_performance(*, account: Account, start: datetime, end: datetime) -> core.HedgePerformance:
    """The account's return over ``[start, end]`` against a counterfactual whose hedge stayed at the
    policy's floor, fees included (:func:`hedging.policy.hedge_performance_of`; method in
    ``docs/hedging.md``). Built from the book's NAV snapshots in the period (at least two), the USD share
    at each, the crypto sleeve's return between them (its marked value plus what was sold minus what was
    bought in between, over its value before; the traded pairs' equal-weight price return when nothing was
    held) and the fees of the hedge's own orders. Raises :class:`HedgeUnavailable` without enough data."""
    from risk.models import NavSnapshot

    if start >= end:
        raise HedgeUnavailable(f"the period {start.isoformat()} .. {end.isoformat()} is empty")
    policy = hedge_policy_for(account=account)
    broker = book_of(account)
    marks = list(
        NavSnapshot.objects.filter(
            account=account, broker=broker, taken_at__gte=start, taken_at__lte=end
        ).order_by("taken_at", "id")
    )
    if len(marks) < 2:
        raise HedgeUnavailable(
            f"{account} has {len(marks)} NAV snapshot(s) of its {broker} book between {start.isoformat()} "
            f"and {end.isoformat()}: at least two are needed"
        )
    fills = list(
        Fill.objects.filter(
            account=account,
            broker=broker,
            executed_at__gt=marks[0].taken_at,
            executed_at__lte=marks[-1].taken_at,
        )
        .select_related("order")
        .order_by("executed_at", "id")
    )
    steps = []
    for before, after in pairwise(marks):
        inside = [fill for fill in fills if before.taken_at < fill.executed_at <= after.taken_at]
        sold = sum((f.price * f.quantity for f in inside if f.side == Side.SELL), Decimal(0))
        bought = sum((f.price * f.quantity for f in inside if f.side == Side.BUY), Decimal(0))
        hedge_fees = sum((f.fee for f in inside if f.order.reason.startswith("hedge:")), Decimal(0))
        sleeve = before.positions_value
        if sleeve > 0:
            sleeve_return = (after.positions_value + sold - bought) / sleeve - 1
        else:
            sleeve_return = _market_return(before.taken_at, after.taken_at)
        steps.append(
            core.PerformanceStep(
                equity_start=before.equity,
                equity_end=after.equity,
                usd_share=before.cash / before.equity if before.equity > 0 else Decimal(0),
                sleeve_return=sleeve_return,
                hedge_fees=hedge_fees,
            )
        )
    try:
        return core.hedge_performance_of(steps, floor_pct=policy.floor_pct)
    except core.HedgeInputError as exc:
        raise HedgeUnavailable(str(exc)) from None


def _market_return(start: datetime, end: datetime) -> Decimal:
    """The traded pairs' equal-weight price return between the last closed candles at ``start`` and at
    ``end`` (0 when no pair has both)."""
    returns = []
    for instrument in Instrument.objects.filter(symbol__in=settings.AETHER_PAIRS):
        at_start, at_end = (_closes(instrument, bars=3, now=moment)[-1:] or [None] for moment in (start, end))
        if at_start[0] and at_end[0]:
            returns.append(at_end[0] / at_start[0] - 1)
    return sum(returns, Decimal(0)) / len(returns) if returns else Decimal(0)
