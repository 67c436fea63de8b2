"""The only writers of trading data, split by subdomain: ``market`` (universe, candles, fee tiers, feed
status), ``orders`` (order management), ``mode`` (simulation / live), ``reconcile``. Market-data writers
are re-exported here, where their callers have always imported them from."""

from trading.services.market import (
    CANDLE_LOCK_NAMESPACE,
    FACT_FIELDS,
    INSERT_ONLY_SOURCES,
    UPDATE_FIELDS,
    FileImportResult,
    UniverseSyncReport,
    UpsertResult,
    candles_import_kraken_file,
    candles_upsert,
    fee_tier_record,
    fee_tier_refresh,
    feed_bars_store,
    feed_status_set_stale,
    feed_status_touch,
    feed_statuses_prepare,
    universe_sync,
)

__all__ = [
    "CANDLE_LOCK_NAMESPACE",
    "FACT_FIELDS",
    "INSERT_ONLY_SOURCES",
    "UPDATE_FIELDS",
    "FileImportResult",
    "UniverseSyncReport",
    "UpsertResult",
    "candles_import_kraken_file",
    "candles_upsert",
    "fee_tier_record",
    "fee_tier_refresh",
    "feed_bars_store",
    "feed_status_set_stale",
    "feed_status_touch",
    "feed_statuses_prepare",
    "universe_sync",
]
