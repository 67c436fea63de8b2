"""Reconciliation: make our book agree with the broker's, and say what differed.

For the Kraken book: every order that may still execute (``NEW``, ``SUBMITTED``, ``UNKNOWN``, ``OPEN``,
``PARTIALLY_FILLED``) is looked up by its client order id (open orders, then closed) and what Kraken says
is applied. An order Kraken has never seen, older than ``RECONCILE_GRACE_SECONDS``, never reached it: it is
marked ``REJECTED`` and **not resent** (its intent is stale; the strategy decides again on the next bar).
Fills Kraken reports for our orders that we have not recorded are applied; open orders on Kraken that are
not ours are reported, never touched. Balances are set to Kraken's, and every difference is reported. The
whole run is one audit event.

For the simulated book there is no exchange to ask: interrupted orders are closed the same way, and the
reservations are checked against the open orders.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from accounts.models import Account
from governance.services import audit_record
from trading.brokers.base import OrderReport, Status
from trading.models import LIVE_STATUSES, Balance, BrokerName, Fill, Order, OrderStatus
from trading.selectors import book_of
from trading.services.orders import QUOTE_ASSET, BrokerFactory, default_broker, order_apply_report

NOT_SENT = (OrderStatus.NEW, OrderStatus.SUBMITTED, OrderStatus.UNKNOWN)


@dataclass
class ReconcileReport:
    account: str
    broker: str
    checked: int = 0
    resolved: list[str] = field(default_factory=list)  # "cid: UNKNOWN → FILLED"
    never_arrived: list[str] = field(default_factory=list)
    fills_added: int = 0
    foreign_open_orders: list[str] = field(default_factory=list)
    balance_drift: dict[str, dict[str, str]] = field(default_factory=dict)
    fee_tiers_updated: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # worth saying, not drift

    @property
    def drift(self) -> bool:
        return bool(self.never_arrived or self.foreign_open_orders or self.balance_drift or self.problems)

    def summary(self) -> str:
        parts = [
            f"reconcile {self.account} ({self.broker}): {self.checked} open orders checked",
            f"{len(self.resolved)} updated",
            f"{len(self.never_arrived)} never reached the exchange",
            f"{self.fills_added} fills recorded",
            f"{len(self.foreign_open_orders)} open orders not placed by Aether",
            f"{len(self.balance_drift)} balances corrected",
        ]
        if self.problems:
            parts.append(f"{len(self.problems)} problems: " + "; ".join(self.problems))
        parts.extend(self.notes)
        return ", ".join(parts)

    def details(self) -> dict:
        return {
            "broker": self.broker,
            "checked": self.checked,
            "resolved": self.resolved,
            "never_arrived": self.never_arrived,
            "fills_added": self.fills_added,
            "foreign_open_orders": self.foreign_open_orders,
            "balance_drift": self.balance_drift,
            "fee_tiers_updated": self.fee_tiers_updated,
            "problems": self.problems,
            "notes": self.notes,
        }


def _fills_recorded(order: Order) -> int:
    return order.fills.count()


def reconcile_account(
    *, account: Account, actor, broker_name: str | None = None, broker_factory: BrokerFactory | None = None
) -> ReconcileReport:
    """Reconcile one book of ``account``: ``kraken`` when it is live (or ``broker_name`` says so), else
    ``sim``."""
    name = broker_name or book_of(account)
    if name == BrokerName.SIM:
        return _reconcile_sim(account=account, actor=actor)
    factory = broker_factory or default_broker
    broker = factory(account, name)
    try:
        return _reconcile_kraken(account=account, actor=actor, broker=broker)
    finally:
        close = getattr(broker, "close", None)
        if close is not None:
            close()


def reconcile_account_books(
    *, account: Account, actor, broker_factory: BrokerFactory | None = None
) -> list[ReconcileReport]:
    """Every book of ``account`` that needs it: the one of its mode, and the Kraken book as long as orders
    placed while it was live may still execute there (a switch to simulation leaves them on Kraken)."""
    reports = [reconcile_account(account=account, actor=actor, broker_factory=broker_factory)]
    left_on_kraken = Order.objects.filter(account=account, broker=BrokerName.KRAKEN, status__in=LIVE_STATUSES)
    if account.simulation_mode and left_on_kraken.exists():
        reports.append(
            reconcile_account(
                account=account, actor=actor, broker_name=BrokerName.KRAKEN, broker_factory=broker_factory
            )
        )
    return reports


def _grace_passed(order: Order, now) -> bool:
    since = order.submitted_at or order.created_at
    return now - since >= timedelta(seconds=settings.RECONCILE_GRACE_SECONDS)


def _close_never_arrived(order: Order, report: ReconcileReport, actor, where: str) -> None:
    reason = (
        f"not found on {where} by client order id at reconciliation: it never arrived there and is not "
        "resent (the strategy decides again with fresh prices)"
    )
    updated = order_apply_report(
        order_id=order.pk,
        report=OrderReport(client_order_id=order.client_order_id, status=Status.REJECTED, reason=reason),
        actor=actor,
    )
    if updated.status == OrderStatus.REJECTED:
        report.never_arrived.append(order.client_order_id)


def _reconcile_kraken(*, account: Account, actor, broker) -> ReconcileReport:
    report = ReconcileReport(account=account.slug, broker=BrokerName.KRAKEN)
    now = timezone.now()
    ours = list(
        Order.objects.filter(account=account, broker=BrokerName.KRAKEN, status__in=LIVE_STATUSES).order_by(
            "pk"
        )
    )
    report.checked = len(ours)
    for order in ours:
        answer = broker.fetch_order(order.client_order_id)
        if answer is None:
            if order.status in NOT_SENT and _grace_passed(order, now):
                _close_never_arrived(order, report, actor, "Kraken")
            elif order.status not in NOT_SENT:
                report.problems.append(
                    f"{order.client_order_id} was {order.status} but Kraken no longer lists it"
                )
            continue
        before, fills_before = order.status, _fills_recorded(order)
        try:
            updated = order_apply_report(order_id=order.pk, report=answer, actor=actor)
        except Exception as exc:  # one order must not stop the run: say which and go on
            report.problems.append(f"{order.client_order_id}: not applied ({type(exc).__name__}: {exc})")
            continue
        report.fills_added += _fills_recorded(updated) - fills_before
        if updated.status != before:
            report.resolved.append(f"{order.client_order_id}: {before} → {updated.status}")

    # Fills of our orders that our book is missing (e.g. an order closed here before its last fill arrived).
    since = now - timedelta(days=settings.RECONCILE_FILLS_LOOKBACK_DAYS)
    missing = defaultdict(list)
    known = set(
        Fill.objects.filter(account=account, broker=BrokerName.KRAKEN, executed_at__gte=since).values_list(
            "trade_id", flat=True
        )
    )
    for fill in broker.fills_since(since):
        if fill.trade_id not in known:
            missing[(fill.client_order_id, fill.exchange_order_id)].append(fill)
    for (client_id, exchange_id), fills in missing.items():
        order = _our_order(account, client_id, exchange_id)
        if order is None:
            report.problems.append(
                f"{len(fills)} Kraken fills of order {exchange_id or client_id} that Aether did not place"
            )
            continue
        # The whole order as Kraken has it now (its status and all fills); the fills alone if it cannot say.
        answer = broker.fetch_order(order.client_order_id) or OrderReport(
            client_order_id=order.client_order_id, status=Status(order.status), fills=tuple(fills)
        )
        try:
            updated = order_apply_report(order_id=order.pk, report=answer, actor=actor)
        except Exception as exc:  # one order must not stop the run: say which and go on
            report.problems.append(
                f"{order.client_order_id}: fills not applied ({type(exc).__name__}: {exc})"
            )
            continue
        if order.status == OrderStatus.REJECTED and updated.status != OrderStatus.REJECTED:
            report.problems.append(
                f"{order.client_order_id} had been closed but exists on Kraken: now {updated.status}"
            )
        report.fills_added += len(fills)

    ours_ids = set(
        Order.objects.filter(account=account, broker=BrokerName.KRAKEN).values_list(
            "client_order_id", flat=True
        )
    )
    report.foreign_open_orders = [
        open_order.exchange_order_id or open_order.client_order_id
        for open_order in broker.open_orders()
        if open_order.client_order_id not in ours_ids
    ]
    _refresh_fees(account=account, report=report, actor=actor)
    _sync_balances(account=account, report=report, actor=actor, exchange=broker.balances())
    return report


def _refresh_fees(*, account: Account, report: ReconcileReport, actor) -> None:
    """The maker/taker rates follow the account's 30-day volume: refresh them with its stored key."""
    from accounts.credential_services import kraken_fee_tier_refresh
    from accounts.models import KrakenCredential

    if not KrakenCredential.objects.filter(account=account).exists():
        report.notes.append("fee tier not refreshed: no Kraken key stored for this account")
        return
    updated, error = kraken_fee_tier_refresh(account=account, actor=actor)
    if error:
        report.notes.append(f"fee tier not refreshed: {error}")
    report.fee_tiers_updated = updated


def _our_order(account: Account, client_id: str | None, exchange_id: str | None) -> Order | None:
    orders = Order.objects.filter(account=account, broker=BrokerName.KRAKEN)
    if client_id:
        found = orders.filter(client_order_id=client_id).first()
        if found is not None:
            return found
    if exchange_id:
        return orders.filter(kraken_order_id=exchange_id).first()
    return None


def _reserved_by_open_orders(account: Account, broker: str) -> dict[str, Decimal]:
    rows = (
        Order.objects.filter(account=account, broker=broker, status__in=LIVE_STATUSES)
        .exclude(reserved_asset="")
        .values("reserved_asset")
        .annotate(amount=Sum("reserved_amount"))
    )
    return {row["reserved_asset"]: row["amount"] or Decimal(0) for row in rows}


def _tolerance(asset: str) -> Decimal:
    """Differences this small are Kraken rounding its balances (USD to the cent it shows; crypto to 1e-8),
    not drift: they are corrected without a report."""
    return Decimal("0.01") if asset == "USD" else Decimal("1e-8")


def _sync_balances(*, account: Account, report: ReconcileReport, actor, exchange) -> None:
    theirs = {item.asset: item for item in exchange}
    with transaction.atomic():
        account = Account.objects.select_for_update(no_key=True).get(pk=account.pk)
        reserved = _reserved_by_open_orders(account, BrokerName.KRAKEN)
        rows = {
            row.asset: row
            for row in Balance.objects.select_for_update().filter(account=account, broker=BrokerName.KRAKEN)
        }
        usd_flow = Decimal(0)
        for asset in sorted(set(theirs) | set(rows)):
            row = rows.get(asset) or Balance(account=account, broker=BrokerName.KRAKEN, asset=asset)
            total = theirs[asset].total if asset in theirs else Decimal(0)
            held = min(reserved.get(asset, Decimal(0)), total)
            if row.pk is None or row.total != total or row.reserved != held:
                if row.pk is not None and abs(row.total - total) > _tolerance(asset):
                    report.balance_drift[asset] = {"ours": str(row.total), "kraken": str(total)}
                    if asset == QUOTE_ASSET:
                        # Our fills are applied by now: USD that Kraken holds beyond our book came in or
                        # went out from outside (a deposit, a withdrawal), not from trading.
                        usd_flow = total - row.total
                row.total, row.reserved = total, held
                row.save()
        if usd_flow:
            from risk.services import risk_external_flow

            risk_external_flow(
                account=account,
                broker=BrokerName.KRAKEN,
                amount=usd_flow,
                at=timezone.now(),
                source="reconcile: Kraken's USD balance differs from our book",
                actor=actor,
            )
            report.notes.append(f"USD {usd_flow:+} taken as a deposit/withdrawal by the kill switch")
        audit_record(actor=actor, action="reconcile", account=account, details=report.details())


def _reconcile_sim(*, account: Account, actor) -> ReconcileReport:
    report = ReconcileReport(account=account.slug, broker=BrokerName.SIM)
    now = timezone.now()
    stuck = Order.objects.filter(account=account, broker=BrokerName.SIM, status__in=NOT_SENT).order_by("pk")
    report.checked = Order.objects.filter(
        account=account, broker=BrokerName.SIM, status__in=LIVE_STATUSES
    ).count()
    for order in stuck:
        if _grace_passed(order, now):
            _close_never_arrived(order, report, actor, "the simulated broker")
    with transaction.atomic():
        account = Account.objects.select_for_update(no_key=True).get(pk=account.pk)
        reserved = _reserved_by_open_orders(account, BrokerName.SIM)
        for row in Balance.objects.select_for_update().filter(account=account, broker=BrokerName.SIM):
            expected = reserved.get(row.asset, Decimal(0))
            if row.reserved != expected:
                report.balance_drift[row.asset] = {
                    "reserved": str(row.reserved),
                    "open_orders": str(expected),
                }
                row.reserved = min(expected, row.total)
                row.save(update_fields=["reserved", "updated_at"])
        audit_record(actor=actor, action="reconcile", account=account, details=report.details())
    return report
