"""Reads of the risk shell: the engine's view of an account's policy and kill switch, and NAV history."""

from __future__ import annotations

from aether_site.rows import select_rows
from risk import engine
from risk.models import KillSwitch, NavSnapshot, RiskPolicy


def engine_policy_for(*, account) -> engine.RiskPolicy:
    """The account's policy as the decision core reads it; the engine's defaults until one is stored
    (``risk_policy_for`` stores exactly those on first use)."""
    policy = RiskPolicy.objects.filter(account=account).first()
    return engine.RiskPolicy() if policy is None else policy.to_engine()


def switch_state_for(*, account) -> engine.SwitchState:
    """The kill switch's state; an account whose switch was never touched is armed and not halted."""
    # One row per account (a unique key): read without the ORM's statement building, on the order path.
    found = select_rows(KillSwitch, "account_id = %s", [account.pk], limit=1)
    return engine.SwitchState() if not found else found[0].to_engine()


def entries_allowed(account) -> bool:
    """May the account open new exposure now? False while the kill switch is tripped (latched) or a
    director halted the account. Exits are never blocked here. (The account's ``trading_enabled`` switch
    is a separate gate of the pre-trade check.)"""
    return engine.entries_allowed(switch_state_for(account=account))


def nav_snapshot_list(*, user, account=None, since=None):
    """NAV snapshots the user may see, newest first."""
    snapshots = NavSnapshot.objects.for_user(user).select_related("account")
    if account is not None:
        snapshots = snapshots.filter(account=account)
    if since is not None:
        snapshots = snapshots.filter(taken_at__gte=since)
    return snapshots.order_by("-taken_at", "-id")


def nav_latest(*, account) -> NavSnapshot | None:
    return NavSnapshot.objects.filter(account=account).order_by("-taken_at", "-id").first()
