"""Liveness, readiness and metrics endpoints.

``/healthz`` says the process is alive and touches nothing else. ``/readyz`` checks the database and, when
``REDIS_URL`` is set, Redis, and that the audit table's append-only triggers are in place; it answers 503
with a JSON reason when any check fails (details go to the log, not to the public body). Both, and
``/metrics``, are answered by :class:`ProbeMiddleware` ahead of host validation and the HTTPS redirect,
because Kubernetes probes and Prometheus scrapes reach the pod by IP over plain HTTP.
"""

from __future__ import annotations

import hmac
import logging

import redis
from django.conf import settings
from django.db import DatabaseError, connections
from django.http import HttpRequest, HttpResponse, JsonResponse
from django_prometheus.exports import ExportToDjangoView
from prometheus_client import generate_latest

from aether_site.redaction import redact_url
from governance.protection import audit_triggers_missing
from trading.metrics import WEB_REGISTRY

logger = logging.getLogger(__name__)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def check_database(alias: str = "default") -> dict:
    connection = connections[alias]
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except DatabaseError as exc:
        logger.warning("readyz: database unreachable: %s", exc)
        # A broken connection must not be reused by the next probe.
        connection.close_if_unusable_or_obsolete()
        return {"ok": False, "error": _first_line(exc)}
    return {"ok": True}


def check_audit_protection() -> dict:
    try:
        missing = audit_triggers_missing()
    except DatabaseError as exc:
        return {"ok": False, "error": _first_line(exc)}
    if missing:
        logger.error("audit table unprotected: triggers missing: %s", ", ".join(missing))
        return {"ok": False, "error": "audit triggers missing: run manage.py migrate", "missing": missing}
    return {"ok": True}


def check_market_data() -> dict:
    """The traded pairs against the synced universe (a bad pair is not ready), plus which candle store
    this database gives."""
    from trading.selectors import UniverseError, traded_instruments
    from trading.storage import candle_store_kind

    report = {"ok": True, "candle_store": candle_store_kind(connections["default"])}
    try:
        report["pairs"] = [instrument.symbol for instrument in traded_instruments()]
    except UniverseError as exc:
        report.update(ok=False, error=str(exc))
    report["stale_pairs"] = stale_pairs()
    return report


def stale_pairs() -> list[str]:
    """Traded pairs the live feed has not heard from lately (``trading.selectors.pair_staleness``).
    Reported, not failing readiness: the admin must stay reachable while Kraken is quiet; risk refuses to
    trade a stale pair."""
    from trading.selectors import pair_staleness

    return [symbol for symbol, (stale, _) in pair_staleness().items() if stale]


def check_redis() -> dict:
    if not settings.REDIS_URL:
        return {"ok": True, "mode": "embedded (REDIS_URL not set)"}
    client = redis.Redis.from_url(
        settings.REDIS_URL,
        socket_connect_timeout=settings.REDIS_TIMEOUT_SECONDS,
        socket_timeout=settings.REDIS_TIMEOUT_SECONDS,
    )
    try:
        client.ping()
    except redis.RedisError as exc:
        logger.warning("readyz: Redis at %s unreachable: %s", redact_url(settings.REDIS_URL), exc)
        return {"ok": False, "error": _first_line(exc)}
    finally:
        client.close()
    return {"ok": True}


def healthz(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"status": "ok"})


def readyz(request: HttpRequest) -> HttpResponse:
    checks = {"database": check_database(), "redis": check_redis()}
    if checks["database"]["ok"]:
        checks["audit_protection"] = check_audit_protection()
        checks["market_data"] = check_market_data()
    ready = all(check["ok"] for check in checks.values())
    return JsonResponse(
        {"status": "ready" if ready else "unavailable", "checks": checks}, status=200 if ready else 503
    )


def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus exposition; when ``METRICS_TOKEN`` is set, only for ``Authorization: Bearer <token>``."""
    token = settings.METRICS_TOKEN
    if token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            response = JsonResponse(
                {"error": "metrics need Authorization: Bearer <METRICS_TOKEN>"}, status=401
            )
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return response
    response = ExportToDjangoView(request)
    response.content += generate_latest(WEB_REGISTRY)  # read from the database at scrape time
    return response


PROBES = {"/healthz": healthz, "/readyz": readyz, "/metrics": metrics}


class ProbeMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        view = PROBES.get(request.path_info.rstrip("/") or "/")
        if view is not None and request.method in ("GET", "HEAD"):
            return view(request)
        return self.get_response(request)
