"""The production profile's refusal rules, as a plain function over the computed settings.

``AETHER_ENV=production`` must never start with debug on, a missing or placeholder secret key, SQLite, no
Redis, or without HTTPS protections; settings.py calls :func:`production_problems` and raises one
``SettingsError`` listing every problem at once, so an operator fixes them in one pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MIN_SECRET_KEY_LENGTH = 50
MIN_SECRET_KEY_UNIQUE_CHARACTERS = 5
ONE_YEAR_SECONDS = 31_536_000
PLACEHOLDER_SECRET_KEYS = frozenset({"changeme", "change-me", "secret", "insecure", "development"})


def secret_key_problem(key: str | None, *, development_key: str | None = None) -> str | None:
    """Why ``key`` is unfit for production, or ``None`` when it is fit."""
    if not key:
        return "SECRET_KEY is missing: set SECRET_KEY or SECRET_KEY_FILE."
    if key.startswith("django-insecure") or key.lower() in PLACEHOLDER_SECRET_KEYS:
        return "SECRET_KEY is a placeholder value: generate a new random key."
    if development_key is not None and key == development_key:
        return "SECRET_KEY is the development key from var/: generate a new random key for production."
    if len(key) < MIN_SECRET_KEY_LENGTH or len(set(key)) < MIN_SECRET_KEY_UNIQUE_CHARACTERS:
        return f"SECRET_KEY is too weak: use at least {MIN_SECRET_KEY_LENGTH} random characters."
    return None


def production_problems(values: Mapping[str, Any], *, development_key: str | None = None) -> list[str]:
    """Every reason the given settings are unsafe for production; an empty list means safe."""
    problems: list[str] = []
    if values["DEBUG"]:
        problems.append("DEBUG must be off.")
    if (problem := secret_key_problem(values["SECRET_KEY"], development_key=development_key)) is not None:
        problems.append(problem)
    if "sqlite" in values["DATABASES"]["default"]["ENGINE"]:
        problems.append("DATABASE_URL must point to PostgreSQL, not SQLite.")
    if not values["REDIS_URL"]:
        problems.append("REDIS_URL must be set (embedded mode is for development only).")
    hosts = values["ALLOWED_HOSTS"]
    if not hosts or "*" in hosts:
        problems.append("ALLOWED_HOSTS must list the site's host names (no '*').")
    for name in ("SECURE_SSL_REDIRECT", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE"):
        if not values[name]:
            problems.append(f"{name} must be on.")
    if values["SECURE_HSTS_SECONDS"] < ONE_YEAR_SECONDS:
        problems.append(f"SECURE_HSTS_SECONDS must be at least {ONE_YEAR_SECONDS} (one year).")
    for name in ("SECURE_HSTS_INCLUDE_SUBDOMAINS", "SECURE_HSTS_PRELOAD"):
        if not values[name]:
            problems.append(f"{name} must be on.")
    policy = values.get("CONTENT_SECURITY_POLICY") or {}
    if values.get("CONTENT_SECURITY_POLICY_REPORT_ONLY") or "default-src" not in policy.get("DIRECTIVES", {}):
        problems.append("CSP must be enforced (CSP_REPORT_ONLY off, a default-src directive set).")
    if not values.get("METRICS_TOKEN"):
        problems.append("METRICS_TOKEN must be set (/metrics is reachable by anyone who reaches a pod).")
    if "csp.middleware.CSPMiddleware" not in values["MIDDLEWARE"]:
        problems.append("CSP middleware (csp.middleware.CSPMiddleware) must be installed.")
    problems.extend(credential_store_problems(values))
    return problems


def credential_store_problems(values: Mapping[str, Any]) -> list[str]:
    """Where Kraken keys are kept must be chosen explicitly in production, with what that store needs."""
    store = values.get("AETHER_CREDENTIAL_STORE")
    if not store:
        return [
            "AETHER_CREDENTIAL_STORE must be set: kubernetes (a Secret per account) or local "
            "(Fernet-encrypted files, with KRAKEN_CREDENTIALS_KEY_FILE)."
        ]
    if store == "kubernetes" and not values.get("AETHER_K8S_NAMESPACE"):
        return ["AETHER_CREDENTIAL_STORE=kubernetes needs AETHER_K8S_NAMESPACE (the platform's namespace)."]
    if store == "local" and not values.get("KRAKEN_CREDENTIALS_KEY_FILE"):
        return [
            "AETHER_CREDENTIAL_STORE=local needs KRAKEN_CREDENTIALS_KEY_FILE (a Fernet key mounted as a "
            "file)."
        ]
    return []


def load_or_create_development_key(path) -> str:
    """The per-checkout development secret key, created (mode 0600) on first use.

    Development and tests need a key but must not share a hard-coded one; production refuses this key.
    """
    import os
    import secrets

    from aether_site.env import SettingsError

    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        pass
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SettingsError(
            f"SECRET_KEY is unset and the development key file {path} cannot be created ({exc.strerror}); "
            "set SECRET_KEY or SECRET_KEY_FILE."
        ) from None
    key = secrets.token_urlsafe(64)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(key + "\n")
    return key
