"""On PostgreSQL, writers of one candle series take turns (the precedence rules see what is stored)."""

import threading

import pytest
from django.db import connection, connections, transaction

from tests.conftest import load_snapshot_universe
from tests.trading.test_candles import bar
from trading.models import Candle
from trading.services import CANDLE_LOCK_NAMESPACE, candles_upsert


@pytest.mark.postgres
def test_a_writer_waits_for_the_series_lock(audit_transactional_db):
    btc = load_snapshot_universe()["BTC/USD"]
    done = threading.Event()

    def writer():
        try:
            candles_upsert(instrument=btc, timeframe=60, rows=[bar(0, "101")], source=Candle.Source.KRAKEN_WS)
            done.set()
        finally:
            connections.close_all()

    with transaction.atomic():
        with connection.cursor() as cursor:  # hold the series lock the way another writer would
            cursor.execute(
                "SELECT pg_advisory_xact_lock(%s, %s)", [CANDLE_LOCK_NAMESPACE, btc.pk * 100_000 + 60]
            )
        thread = threading.Thread(target=writer)
        thread.start()
        assert not done.wait(timeout=1.0), "the writer did not wait for the series lock"
    thread.join(timeout=30)
    assert done.is_set()
    assert Candle.objects.filter(instrument=btc).count() == 1
