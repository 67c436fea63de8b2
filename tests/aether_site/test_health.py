"""/healthz, /readyz and /metrics, against real connections."""

import json
import os
import socket

import pytest
from django.db import connection, connections
from django.db.utils import load_backend

from governance import triggers


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def unreachable_database(db, tmp_path):
    """Point the default alias at a database that cannot be reached: a closed port (PostgreSQL) or a
    file in a folder that does not exist (SQLite). The test's own connection is put back afterwards."""
    original = connections["default"]
    broken = dict(original.settings_dict)
    if original.vendor == "postgresql":
        broken.update(HOST="127.0.0.1", PORT=str(closed_port()))
    else:
        broken.update(NAME=str(tmp_path / "missing-folder" / "db.sqlite3"))
    connections["default"] = load_backend(broken["ENGINE"]).DatabaseWrapper(broken, "default")
    yield
    connections["default"].close()
    connections["default"] = original


def test_healthz_needs_nothing(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_is_ready_when_the_database_answers(universe, client, settings):
    settings.REDIS_URL = None
    response = client.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    assert body["checks"]["database"] == {"ok": True}
    assert "embedded" in body["checks"]["redis"]["mode"]
    assert body["checks"]["market_data"]["pairs"] == ["BTC/USD", "ETH/USD", "SOL/USD"]
    assert body["checks"]["market_data"]["candle_store"].startswith("plain indexed table")
    assert body["checks"]["market_data"]["stale_pairs"] == ["BTC/USD", "ETH/USD", "SOL/USD"]  # no feed yet


def test_readyz_names_pairs_the_feed_has_not_heard_from_lately(universe, client, settings):
    from datetime import timedelta

    from django.utils import timezone

    from trading.models import FeedStatus

    settings.REDIS_URL = None
    now = timezone.now()
    FeedStatus.objects.create(instrument=universe["BTC/USD"], last_message_at=now, stale=False)
    FeedStatus.objects.create(
        instrument=universe["ETH/USD"], last_message_at=now - timedelta(hours=1), stale=False
    )
    FeedStatus.objects.create(instrument=universe["SOL/USD"], last_message_at=now, stale=True)
    response = client.get("/readyz")
    assert response.status_code == 200  # staleness is reported; it does not take the admin down
    assert response.json()["checks"]["market_data"]["stale_pairs"] == ["ETH/USD", "SOL/USD"]


def test_readyz_is_503_until_the_traded_pairs_are_in_the_universe(universe, client, settings):
    settings.REDIS_URL = None
    settings.AETHER_PAIRS = ["BTC/USD", "BTC/EUR", "DOGE/USD"]
    response = client.get("/readyz")
    assert response.status_code == 503
    check = response.json()["checks"]["market_data"]
    assert check["ok"] is False
    assert "BTC/EUR is not quoted in USD" in check["error"]
    assert "DOGE/USD is not in the synced spot USD universe" in check["error"]


def test_readyz_is_503_with_a_reason_when_the_database_is_unreachable(unreachable_database, client, settings):
    settings.REDIS_URL = None
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response["Content-Type"] == "application/json"
    body = json.loads(response.content)
    assert body["status"] == "unavailable"
    assert body["checks"]["database"]["ok"] is False
    assert body["checks"]["database"]["error"]


def test_readyz_is_503_when_redis_is_configured_but_unreachable(db, client, settings):
    settings.REDIS_URL = f"redis://:hunter2@127.0.0.1:{closed_port()}/0"
    response = client.get("/readyz")
    assert response.status_code == 503
    redis_check = response.json()["checks"]["redis"]
    assert redis_check["ok"] is False
    assert redis_check["error"]
    assert "hunter2" not in response.content.decode()


@pytest.mark.redis
def test_readyz_checks_the_configured_redis(universe, client, settings):
    if not os.environ.get("REDIS_URL"):
        pytest.skip("needs REDIS_URL (CI sets it)")
    settings.REDIS_URL = os.environ["REDIS_URL"]
    response = client.get("/readyz")
    assert response.status_code == 200, response.content
    assert response.json()["checks"]["redis"] == {"ok": True}


def metric_value(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


def test_metrics_are_exported_and_count_requests(db, client, settings):
    settings.METRICS_TOKEN = None
    counter = "django_http_requests_before_middlewares_total"
    before = metric_value(client.get("/metrics").content.decode(), counter)
    client.get("/admin/login/")
    response = client.get("/metrics")
    assert response.status_code == 200
    text = response.content.decode()
    assert metric_value(text, counter) >= before + 1
    assert "django_db_new_connections_total" in text


def test_metrics_want_the_bearer_token_when_one_is_set(db, client, settings):
    settings.METRICS_TOKEN = "s3cret-token"
    refused = client.get("/metrics")
    assert refused.status_code == 401
    assert refused["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    allowed = client.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-token")
    assert allowed.status_code == 200
    assert b"django_http_requests" in allowed.content


def test_readyz_is_503_when_the_audit_triggers_are_missing(universe, client, settings):
    settings.REDIS_URL = None
    with connection.cursor() as cursor:
        triggers.uninstall(cursor, connection.vendor)  # rolled back with the test's transaction
    response = client.get("/readyz")
    assert response.status_code == 503
    check = response.json()["checks"]["audit_protection"]
    assert check["ok"] is False
    assert "migrate" in check["error"]


def test_debug_pages_hide_urls_that_carry_passwords(rf, settings):
    from django.views.debug import get_default_exception_reporter_filter

    settings.DATABASE_URL = "postgres://aether:hunter2@db/aether"
    safe = get_default_exception_reporter_filter().get_safe_settings()
    assert "hunter2" not in str(safe["DATABASE_URL"])


def test_probes_answer_any_host_over_plain_http(db, client, settings):
    # Kubernetes probes and Prometheus reach the pod by IP; the rest of the site keeps host validation
    # and the HTTPS redirect.
    settings.ALLOWED_HOSTS = ["aether.example.com"]
    settings.SECURE_SSL_REDIRECT = True
    assert client.get("/healthz", HTTP_HOST="10.1.2.3:8000").status_code == 200
    assert client.get("/metrics", HTTP_HOST="10.1.2.3:8000").status_code == 200
    assert client.get("/admin/", HTTP_HOST="10.1.2.3:8000").status_code == 400
    assert client.get("/admin/", HTTP_HOST="aether.example.com").status_code == 301


def test_security_headers_are_sent(db, client):
    response = client.get("/admin/login/")
    assert response.status_code == 200
    assert "default-src 'self'" in response["Content-Security-Policy"]
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"


def test_metrics_show_pair_staleness_from_the_database(universe, client, settings):
    from datetime import timedelta

    from django.utils import timezone

    from trading.models import FeedStatus

    settings.METRICS_TOKEN = None
    now = timezone.now()
    FeedStatus.objects.create(instrument=universe["BTC/USD"], last_message_at=now, stale=False)
    FeedStatus.objects.create(
        instrument=universe["ETH/USD"], last_message_at=now - timedelta(hours=1), stale=False
    )
    text = client.get("/metrics").content.decode()
    assert 'aether_pair_stale{symbol="BTC/USD"} 0.0' in text
    assert 'aether_pair_stale{symbol="ETH/USD"} 1.0' in text  # the feed went quiet without saying so
    assert 'aether_pair_stale{symbol="SOL/USD"} 1.0' in text  # never heard of
    assert 'aether_pair_last_message_age_seconds{symbol="ETH/USD"} 36' in text
