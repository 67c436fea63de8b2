"""Strict readers for settings that come from the environment.

Every reader raises :class:`SettingsError` (an ``ImproperlyConfigured``) naming the variable when a value is
junk, so a typo never silently becomes a default. A secret ``NAME`` may instead be given as a file path in
``NAME_FILE`` (the Kubernetes way of mounting secrets); setting both is an error, because it is ambiguous
which one wins.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})


class SettingsError(ImproperlyConfigured):
    """A setting read from the environment is missing or invalid; the message names it."""


class Env:
    """Reads typed values from a mapping (``os.environ`` by default)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.environ = os.environ if environ is None else environ

    def raw(self, name: str) -> str | None:
        """The value of ``name``, read from ``NAME_FILE`` when that is set; ``None`` when neither is set."""
        file_var = f"{name}_FILE"
        direct = self.environ.get(name)
        path = self.environ.get(file_var)
        if path is None:
            return direct
        if path.strip() == "":
            raise SettingsError(f"{file_var} is set but empty: give the secret file's path, or unset it.")
        if direct is not None:
            raise SettingsError(f"{name} and {file_var} are both set; set only one of them.")
        try:
            return Path(path).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise SettingsError(f"{file_var}={path}: file not found.") from None
        except UnicodeDecodeError:
            raise SettingsError(f"{file_var}={path}: not UTF-8 text.") from None
        except OSError as exc:
            raise SettingsError(f"{file_var}={path}: cannot be read ({exc.strerror}).") from None

    def str(self, name: str, default: str | None = None) -> str | None:
        value = self.raw(name)
        if value is None or value == "":
            return default
        return value

    def bool(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None or value.strip() == "":
            return default
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
        raise SettingsError(f"{name}={value!r}: expected a boolean (true/false, yes/no, on/off, 1/0).")

    def int(self, name: str, default: int, *, minimum: int | None = None) -> int:
        value = self.raw(name)
        if value is None or value.strip() == "":
            return default
        try:
            number = int(value.strip())
        except ValueError:
            raise SettingsError(f"{name}={value!r}: expected a whole number.") from None
        if minimum is not None and number < minimum:
            raise SettingsError(f"{name}={number}: must be at least {minimum}.")
        return number

    def decimal(
        self, name: str, default: str, *, minimum: str | None = None, maximum: str | None = None
    ) -> Decimal:
        """A decimal number (money, percentages): never a float."""
        value = self.raw(name)
        text = default if value is None or value.strip() == "" else value.strip()
        try:
            number = Decimal(text)
        except InvalidOperation:
            raise SettingsError(f"{name}={value!r}: expected a decimal number.") from None
        if not number.is_finite():
            raise SettingsError(f"{name}={value!r}: expected a finite decimal number.")
        if minimum is not None and number < Decimal(minimum):
            raise SettingsError(f"{name}={number}: must be at least {minimum}.")
        if maximum is not None and number > Decimal(maximum):
            raise SettingsError(f"{name}={number}: must be at most {maximum}.")
        return number

    def list(self, name: str, default: list[str] | None = None) -> list[str]:
        value = self.raw(name)
        if value is None or value.strip() == "":
            return list(default or [])
        items = [item.strip() for item in value.split(",")]
        if any(item == "" for item in items):
            raise SettingsError(f"{name}={value!r}: empty item in comma-separated list.")
        return items

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.raw(name)
        if value is None or value.strip() == "":
            return default
        word = value.strip().lower()
        if word not in choices:
            raise SettingsError(f"{name}={value!r}: expected one of {', '.join(choices)}.")
        return word
