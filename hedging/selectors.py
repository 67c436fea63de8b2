"""Reads of the hedge shell: the target in force (what the risk engine caps buying power with) and history."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from hedging import policy as core
from hedging.models import HedgeMode, HedgePolicy, HedgeSnapshot
from trading.clock import platform_now

HUNDRED = Decimal(100)


def hedge_params_for(*, account) -> core.HedgeParams:
    """The account's hedge parameters as the core reads them; the core's defaults until a policy is stored."""
    policy = HedgePolicy.objects.filter(account=account).first()
    return core.HedgeParams() if policy is None else policy.to_params()


#: ``policy`` not given: the selectors read the account's hedge policy themselves.
READ = object()


def hedge_target_pct_for(*, account, now: datetime | None = None, policy=READ) -> Decimal:
    """The hedge target in force at ``now``, % of equity in USD (0..100).

    * a manual override that has not expired: its target;
    * otherwise the last automatic target ``hedge_evaluate`` computed, bounded by the policy's floor and
      ceiling as they are now (an expired override counts as automatic from its expiry on, even before the
      next evaluation records the lapse);
    * no automatic target computed yet (or no policy): the floor.

    Read-only: it never writes; ``hedge_evaluate`` records expiries and new targets. ``policy``: the
    account's ``HedgePolicy`` row (``None``: it has none) when the caller has just read it."""
    now = now or platform_now()
    if policy is READ:
        policy = HedgePolicy.objects.filter(account=account).first()
    if policy is None:
        return core.HedgeParams().floor_pct
    manual = policy.mode == HedgeMode.MANUAL and policy.manual_target_pct is not None
    if manual and (policy.manual_expires_at is None or now < policy.manual_expires_at):
        return policy.manual_target_pct
    last = (
        HedgeSnapshot.objects.filter(account=account, auto_target_pct__isnull=False, taken_at__lte=now)
        .order_by("-taken_at", "-id")
        .values_list("auto_target_pct", flat=True)
        .first()
    )
    if last is None:
        return policy.floor_pct
    return min(policy.ceiling_pct, max(policy.floor_pct, last))


def hedge_target_for(*, account, now: datetime | None = None, policy=READ) -> Decimal:
    """The hedge target in force as a **fraction** 0..1 (:func:`hedge_target_pct_for` / 100): the risk
    engine caps the strategy's buying power at ``equity x (1 - target)``
    (:func:`hedging.policy.buying_power_cap`)."""
    return hedge_target_pct_for(account=account, now=now, policy=policy) / HUNDRED


def hedge_snapshot_list(*, user, account=None, since=None):
    """Hedge snapshots the user may see, newest first."""
    snapshots = HedgeSnapshot.objects.for_user(user).select_related("account")
    if account is not None:
        snapshots = snapshots.filter(account=account)
    if since is not None:
        snapshots = snapshots.filter(taken_at__gte=since)
    return snapshots.order_by("-taken_at", "-id")


def hedge_latest(*, account) -> HedgeSnapshot | None:
    return HedgeSnapshot.objects.filter(account=account).order_by("-taken_at", "-id").first()
