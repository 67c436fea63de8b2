"""Kraken's public REST API through ccxt, pointed at ``KRAKEN_API_URL``."""

from __future__ import annotations

import ccxt
from django.conf import settings


def public_client(*, timeout_ms: int = 15_000, rate_limit: bool = True) -> ccxt.kraken:
    """A ccxt Kraken client for public endpoints only (no key): AssetPairs, OHLC, Ticker, Time. ccxt's own
    throttle keeps us within Kraken's public rate limit; only tests against a local fake turn it off."""
    base = settings.KRAKEN_API_URL.rstrip("/")
    return ccxt.kraken(
        {
            "timeout": timeout_ms,
            "enableRateLimit": rate_limit,
            "urls": {"api": {"public": base, "private": base}},
        }
    )


def fetch_asset_pairs(client: ccxt.kraken | None = None) -> dict:
    """The raw AssetPairs answer (``{"error": [], "result": {...}}``)."""
    return (client or public_client()).publicGetAssetPairs()


def describe_error(exc: BaseException) -> str:
    """A ccxt error and, when it wraps one (a refused connection inside a NetworkError), its cause: the
    part an operator needs."""
    text = f"{type(exc).__name__}: {exc}"
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause) and str(cause) not in text:
        text += f" ({cause})"
    return text
