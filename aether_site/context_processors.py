from django.conf import settings


def environment(request) -> dict:
    """Tell every admin page which profile it runs in, so nobody mistakes development for production."""
    if settings.PRODUCTION:
        label = "production"
    else:
        label = "development" + ("" if settings.REDIS_URL else ", embedded mode")
    return {"aether_environment": label}


def market_data(request) -> dict:
    """Every admin page says so when the stored market history was generated (embedded mode offline): no
    chart, trade or PnL there may be mistaken for the market's."""
    from django.core.cache import cache
    from django.db import DatabaseError

    from trading.services.embedded import synthetic_data_present

    if settings.PRODUCTION:  # generated history is only ever stored by prepare_embedded, refused there
        return {"aether_synthetic_market_data": False}
    try:
        synthetic = cache.get_or_set("aether:synthetic-market-data", synthetic_data_present, 30)
    except DatabaseError:  # before migrations: the page shows its own error
        synthetic = False
    return {"aether_synthetic_market_data": synthetic}
