from django.conf import settings


def environment(request) -> dict:
    """Tell every admin page which profile it runs in, so nobody mistakes development for production."""
    if settings.PRODUCTION:
        label = "production"
    else:
        label = "development" + ("" if settings.REDIS_URL else ", embedded mode")
    return {"aether_environment": label}
