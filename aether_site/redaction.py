"""Hide credentials before they reach a log line, an error message, a health report or a debug page."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from django.utils.regex_helper import _lazy_re_compile
from django.views.debug import SafeExceptionReporterFilter

SECRET_WORDS = re.compile(r"pass|secret|token|key|auth|credential", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` with its password, and the values of secret-looking query parameters, replaced by ``***``.

    A URL that does not parse cleanly (e.g. an unencoded ``#`` in a password) is reduced to its scheme."""
    scheme = url.split(":", 1)[0] if ":" in url else "?"
    try:
        parts = urlsplit(url)
        if parts.fragment:
            return f"{scheme}://***"
        pairs = parse_qsl(parts.query)
        if parts.password is None and not any(SECRET_WORDS.search(name) for name, _ in pairs):
            return url  # nothing to hide; rebuilding could change the URL's spelling
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, hostinfo = netloc.rsplit("@", 1)
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:***@{hostinfo}" if ":" in userinfo else f"{user}@{hostinfo}"
        query = urlencode(
            [(name, "***" if SECRET_WORDS.search(name) else value) for name, value in pairs],
            safe="*",
        )
        return urlunsplit(parts._replace(netloc=netloc, query=query))
    except ValueError:
        return f"{scheme}://***"


class SettingsReporterFilter(SafeExceptionReporterFilter):
    """Django's filter, also hiding URL and DSN settings (``DATABASE_URL``, ``REDIS_URL``), which can carry
    passwords, from debug pages and error reports."""

    hidden_settings = _lazy_re_compile(
        "API|TOKEN|KEY|SECRET|PASS|SIGNATURE|HTTP_COOKIE|URL|DSN", flags=re.IGNORECASE
    )
