"""Start-up guards shared by manage.py, WSGI and ASGI: configuration and database faults become one clear
line on stderr and exit status 2, instead of a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable


def fail(message: str) -> None:
    sys.stderr.write(f"aether: {message}\n")
    raise SystemExit(2)


def load_settings() -> None:
    """Import the settings now, turning a :class:`SettingsError` into one line and exit status 2."""
    from django.conf import settings

    from aether_site.env import SettingsError

    try:
        settings.INSTALLED_APPS  # noqa: B018 (forces the settings module to load)
    except SettingsError as exc:
        fail(f"configuration error: {exc}")


def database_unreachable_reason() -> str | None:
    """Why the default database cannot be reached, or ``None`` when it answers."""
    from django.db import DatabaseError, connection

    try:
        connection.close()
        connection.ensure_connection()
    except DatabaseError as exc:
        return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return None


def run_guarded(main: Callable[[], None]) -> None:
    """Run ``main``; if it dies because the database is unreachable, say so in one line."""
    from django.db import OperationalError

    load_settings()
    try:
        main()
    except OperationalError:
        reason = database_unreachable_reason()
        if reason is None:
            raise
        from django.conf import settings

        from aether_site.redaction import redact_url

        fail(f"database unreachable: DATABASE_URL={redact_url(settings.DATABASE_URL)}: {reason}")
