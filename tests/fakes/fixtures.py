"""pytest fixtures for the protocol fakes (registered in tests/conftest.py).

Kraken REST::

    def test_something(fake_kraken, make_kraken_client):
        creds = fake_kraken.add_account(balances={"ZUSD": "10000"})
        client = make_kraken_client(creds)             # a real ccxt.kraken aimed at the fake
        client.create_order("BTC/USD", "market", "buy", 0.001)
        assert fake_kraken.private_trading_calls(creds.api_key)

``fake_kraken`` skips the test, with the reason, when the shared Kraken reference data is absent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import ccxt
import pytest

from tests.fakes.kraken_rest import KRAKEN_DATA_DIR, RECORDED_PATH, Credentials, FakeKraken

#: Default ccxt timeout against the fake, in milliseconds: short, the fake answers in about a millisecond.
CLIENT_TIMEOUT_MS = 2_000

KRAKEN_DATA_MISSING = (
    f"needs Kraken reference data in {KRAKEN_DATA_DIR} "
    "(the 'shared' folder beside the repository root; CI has it)"
)

#: Mark tests that read ../shared/data/kraken directly.
requires_kraken_data = pytest.mark.skipif(not RECORDED_PATH.exists(), reason=KRAKEN_DATA_MISSING)


def kraken_client(
    fake: FakeKraken,
    api_key: str | Credentials | None = None,
    secret: str | None = None,
    *,
    timeout_ms: int = CLIENT_TIMEOUT_MS,
    **config: Any,
) -> ccxt.kraken:
    """A real ``ccxt.kraken`` pointed at ``fake``.

    ccxt builds request URLs as ``urls['api'][<'public'|'private'>] + '/0/<api>/<Method>'``, so both bases
    are set to ``fake.url``. Rate limiting is off and the timeout short; ``config`` overrides anything.
    ``api_key`` may be the :class:`Credentials` returned by ``fake.add_account``.
    """
    if isinstance(api_key, Credentials):
        api_key, secret = api_key.api_key, api_key.secret
    settings: dict[str, Any] = {
        "timeout": timeout_ms,
        "enableRateLimit": False,
        "urls": {"api": {"public": fake.url, "private": fake.url}},
    }
    if api_key is not None:
        settings |= {"apiKey": api_key, "secret": secret}
    return ccxt.kraken(settings | config)


@pytest.fixture
def fake_kraken() -> Iterator[FakeKraken]:
    """A running :class:`FakeKraken` on 127.0.0.1, stopped after the test."""
    if not RECORDED_PATH.exists():
        pytest.skip(KRAKEN_DATA_MISSING)
    with FakeKraken() as fake:
        yield fake


@pytest.fixture
def make_kraken_client(fake_kraken: FakeKraken) -> Iterator[Callable[..., ccxt.kraken]]:
    """Factory of :func:`kraken_client` bound to ``fake_kraken``; closes the clients' sessions afterwards."""
    clients: list[ccxt.kraken] = []

    def make(
        api_key: str | Credentials | None = None, secret: str | None = None, **kwargs: Any
    ) -> ccxt.kraken:
        client = kraken_client(fake_kraken, api_key, secret, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


# The CoinGecko fake's fixture lives beside its server; re-exported here so every test can use it.
from tests.fakes.coingecko import fake_coingecko  # noqa: E402, F401
