"""One market feed per database."""

import time

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from trading.marketdata.feed_lock import FEED_LOCK_KEY, FeedAlreadyRunning, feed_instance_lock, file_lock


def test_a_second_holder_of_the_file_lock_is_refused(tmp_path):
    path = tmp_path / "aether.feed.lock"
    with file_lock(path), pytest.raises(FeedAlreadyRunning), file_lock(path):
        pass
    with file_lock(path):  # released when the first holder is done
        pass


@pytest.mark.postgres
def test_a_second_feed_on_postgresql_is_refused(universe):
    import psycopg

    settings = connection.settings_dict
    other = psycopg.connect(
        dbname=settings["NAME"], user=settings["USER"], host=settings["HOST"], port=settings["PORT"] or 5432
    )
    try:
        other.execute("SELECT pg_advisory_lock(%s)", [FEED_LOCK_KEY])  # a feed already running elsewhere
        with pytest.raises(CommandError, match="run one market feed per database"):
            call_command("run_market_feed", "--source", "replay", "--pairs", "BTC/USD")
    finally:
        other.close()
    # Free again once that feed is gone: the server drops a closed session's locks when its backend
    # exits, a moment after the client closes, so allow it that moment.
    deadline = time.monotonic() + 10
    while True:
        try:
            with feed_instance_lock():
                break
        except FeedAlreadyRunning:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_replay_is_refused_in_production(universe, settings):
    settings.PRODUCTION = True
    with pytest.raises(CommandError, match="refused with AETHER_ENV=production"):
        call_command("run_market_feed", "--source", "replay", "--pairs", "BTC/USD")
