"""What the risk commands share: finding the account and the acting director."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied, ValidationError
from django.core.management.base import CommandError, CommandParser

from accounts.models import Account, User

USAGE, REFUSED = 2, 1


def add_account_and_director(parser: CommandParser) -> None:
    parser.add_argument("--account", required=True, metavar="SLUG")
    parser.add_argument(
        "--as-user",
        required=True,
        metavar="DIRECTOR",
        help="the director of the account on whose authority this runs (recorded in the audit)",
    )


def account_from(options) -> Account:
    account = Account.objects.filter(slug=options["account"]).first()
    if account is None:
        raise CommandError(f"--account {options['account']!r}: no such account.", returncode=USAGE)
    return account


def director_from(options) -> User:
    user = User.objects.filter(username=options["as_user"], is_active=True).first()
    if user is None:
        raise CommandError(f"--as-user {options['as_user']!r}: no such active user.", returncode=USAGE)
    return user


def refused(exc: Exception) -> CommandError:
    if isinstance(exc, ValidationError):
        return CommandError("; ".join(exc.messages), returncode=REFUSED)
    if isinstance(exc, PermissionDenied):
        return CommandError(str(exc), returncode=REFUSED)
    raise exc
