"""Start-up as an operator sees it: real processes, real environment variables.

The production profile refuses insecure settings; configuration and database faults print one clear line
(no traceback) and exit 2.
"""

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from aether_site.security import production_problems

BASE_DIR = Path(__file__).resolve().parents[2]
STRONG_KEY = secrets.token_urlsafe(64)
GOOD_PRODUCTION = {
    "AETHER_ENV": "production",
    "SECRET_KEY": STRONG_KEY,
    "DATABASE_URL": "postgres://aether@db.internal:5432/aether",
    "REDIS_URL": "redis://redis.internal:6379/0",
    "ALLOWED_HOSTS": "aether.example.com",
    "METRICS_TOKEN": secrets.token_urlsafe(32),
    "AETHER_CREDENTIAL_STORE": "kubernetes",
    "AETHER_K8S_NAMESPACE": "aether",
}


def manage(*args, env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {key: os.environ[key] for key in ("PATH", "HOME", "LANG") if key in os.environ}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=BASE_DIR,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def assert_one_clear_line(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_production_profile_passes_the_deploy_check():
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=GOOD_PRODUCTION)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ({"DEBUG": "true"}, "DEBUG must be off"),
        ({"SECRET_KEY": ""}, "SECRET_KEY is missing"),
        ({"SECRET_KEY": "django-insecure-" + STRONG_KEY}, "placeholder"),
        ({"SECRET_KEY": "changeme"}, "placeholder"),
        ({"SECRET_KEY": "short-key"}, "too weak"),
        ({"DATABASE_URL": "sqlite:///var/prod.sqlite3"}, "not SQLite"),
        ({"REDIS_URL": ""}, "REDIS_URL must be set"),
        ({"ALLOWED_HOSTS": "*"}, "ALLOWED_HOSTS"),
        ({"SECURE_SSL_REDIRECT": "false"}, "SECURE_SSL_REDIRECT must be on"),
        ({"SESSION_COOKIE_SECURE": "false"}, "SESSION_COOKIE_SECURE must be on"),
        ({"CSRF_COOKIE_SECURE": "off"}, "CSRF_COOKIE_SECURE must be on"),
        ({"SECURE_HSTS_SECONDS": "3600"}, "SECURE_HSTS_SECONDS"),
        ({"SECURE_HSTS_PRELOAD": "no"}, "SECURE_HSTS_PRELOAD"),
        ({"CSP_REPORT_ONLY": "true"}, "CSP must be enforced"),
        ({"METRICS_TOKEN": ""}, "METRICS_TOKEN must be set"),
        ({"AETHER_CREDENTIAL_STORE": ""}, "AETHER_CREDENTIAL_STORE must be set"),
        ({"AETHER_K8S_NAMESPACE": ""}, "needs AETHER_K8S_NAMESPACE"),
        ({"AETHER_CREDENTIAL_STORE": "local"}, "needs KRAKEN_CREDENTIALS_KEY_FILE"),
    ],
)
def test_production_profile_refuses_insecure_settings(override, fragment):
    result = manage("check", env={**GOOD_PRODUCTION, **override})
    assert_one_clear_line(result, "configuration error", "AETHER_ENV=production refuses to start", fragment)


def test_production_refuses_the_development_key():
    # Development created this checkout's key (var/dev-secret-key) when the test settings loaded.
    dev_key = (BASE_DIR / "var" / "dev-secret-key").read_text().strip()
    result = manage("check", env={**GOOD_PRODUCTION, "SECRET_KEY": dev_key})
    assert_one_clear_line(result, "development key")


def test_production_problems_lists_every_problem_at_once():
    values = {
        "DEBUG": True,
        "SECRET_KEY": None,
        "DATABASES": {"default": {"ENGINE": "django.db.backends.sqlite3"}},
        "REDIS_URL": None,
        "ALLOWED_HOSTS": [],
        "SECURE_SSL_REDIRECT": False,
        "SESSION_COOKIE_SECURE": False,
        "CSRF_COOKIE_SECURE": False,
        "SECURE_HSTS_SECONDS": 0,
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": False,
        "SECURE_HSTS_PRELOAD": False,
        "CONTENT_SECURITY_POLICY": None,
        "MIDDLEWARE": [],
    }
    assert len(production_problems(values)) == 15  # the 15th: AETHER_CREDENTIAL_STORE unset


@pytest.mark.parametrize(
    ("env", "fragments"),
    [
        ({"DEBUG": "maybe"}, ["DEBUG='maybe'", "expected a boolean"]),
        (
            {"SECRET_KEY_FILE": "/nonexistent/secret"},
            ["SECRET_KEY_FILE=/nonexistent/secret", "file not found"],
        ),
        ({"DATABASE_URL": "mysql://u@h/db"}, ["DATABASE_URL", "only PostgreSQL"]),
        ({"REDIS_URL": "http://cache"}, ["REDIS_URL"]),
        ({"AETHER_ENV": "staging"}, ["AETHER_ENV='staging'"]),
        ({"DATABASE_CONN_MAX_AGE": "forever"}, ["DATABASE_CONN_MAX_AGE"]),
        ({"DATABASE_URL": "sqlite://"}, ["in-memory SQLite"]),
        ({"SECRET_KEY_FILE": ""}, ["SECRET_KEY_FILE is set but empty"]),
        ({"KRAKEN_WS_URL": "http://ws.example"}, ["KRAKEN_WS_URL", "ws://"]),
        ({"KRAKEN_API_URL": "api.kraken.com"}, ["KRAKEN_API_URL", "http://"]),
        ({"KRAKEN_CREDENTIALS_KEY": "a-key"}, ["KRAKEN_CREDENTIALS_KEY", "as a file"]),
        ({"KRAKEN_CREDENTIALS_KEY_FILE": "/nonexistent/key"}, ["KRAKEN_CREDENTIALS_KEY_FILE", "not found"]),
        ({"AETHER_CREDENTIAL_STORE": "vault"}, ["AETHER_CREDENTIAL_STORE='vault'", "local, kubernetes"]),
        ({"DATABASE_URL": "postgres://aether:pa#ss@db:5432/aether", "AETHER_ENV": "prod"}, ["AETHER_ENV"]),
        ({"ORDER_RESERVE_BUFFER_PCT": "lots"}, ["ORDER_RESERVE_BUFFER_PCT='lots'", "decimal number"]),
        ({"SIM_SLIPPAGE_BPS": "-1"}, ["SIM_SLIPPAGE_BPS=-1", "at least 0"]),
        ({"RECONCILE_GRACE_SECONDS": "30"}, ["RECONCILE_GRACE_SECONDS=30", "still being sent"]),
        ({"KRAKEN_PRIVATE_LOCK_TTL_SECONDS": "5"}, ["KRAKEN_PRIVATE_LOCK_TTL_SECONDS", "outlive a call"]),
    ],
)
def test_bad_environment_values_are_one_clear_line(env, fragments):
    assert_one_clear_line(manage("check", env=env), "aether: configuration error:", *fragments)


def test_unreachable_database_is_one_clear_line_without_the_password():
    result = manage("migrate", env={"DATABASE_URL": "postgres://aether:hunter2@127.0.0.1:9/aether"})
    assert_one_clear_line(
        result, "aether: database unreachable", "DATABASE_URL=postgres://aether:***@127.0.0.1:9"
    )
    assert "hunter2" not in result.stderr
