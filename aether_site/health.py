"""Liveness, readiness and metrics endpoints.

``/healthz`` says the process is alive and touches nothing else. ``/readyz`` checks the database and, when
``REDIS_URL`` is set, Redis; it answers 503 with a JSON reason when either is unreachable. Both, and
``/metrics``, are answered by :class:`ProbeMiddleware` ahead of host validation and the HTTPS redirect,
because Kubernetes probes and Prometheus scrapes reach the pod by IP over plain HTTP.
"""

from __future__ import annotations

import redis
from django.conf import settings
from django.db import DatabaseError, connections
from django.http import HttpRequest, HttpResponse, JsonResponse
from django_prometheus.exports import ExportToDjangoView

from aether_site.redaction import redact_url


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
        # A broken connection must not be reused by the next probe.
        connection.close_if_unusable_or_obsolete()
        return {"ok": False, "error": _first_line(exc)}
    return {"ok": True}


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
        return {"ok": False, "error": _first_line(exc), "url": redact_url(settings.REDIS_URL)}
    finally:
        client.close()
    return {"ok": True}


def healthz(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"status": "ok"})


def readyz(request: HttpRequest) -> HttpResponse:
    checks = {"database": check_database(), "redis": check_redis()}
    ready = all(check["ok"] for check in checks.values())
    return JsonResponse(
        {"status": "ready" if ready else "unavailable", "checks": checks}, status=200 if ready else 503
    )


PROBES = {"/healthz": healthz, "/readyz": readyz, "/metrics": ExportToDjangoView}


class ProbeMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        view = PROBES.get(request.path_info.rstrip("/") or "/")
        if view is not None and request.method in ("GET", "HEAD"):
            return view(request)
        return self.get_response(request)
