"""Store an account's Kraken API key, after Kraken has accepted it (a private Balance call)."""

from __future__ import annotations

import getpass
import sys

from django.core.exceptions import ImproperlyConfigured, PermissionDenied, ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.credential_services import kraken_credentials_set
from accounts.credentials import CredentialError
from accounts.models import Account
from governance.actors import SystemActor
from trading.brokers.kraken import KrakenKeys

ACTOR = SystemActor("set_kraken_key")
USAGE, INVALID = 2, 1


class Command(BaseCommand):
    help = (
        "Read an account's Kraken API key and secret from standard input (two lines; typed without echo on a "
        "terminal; never from the command line), check them with a private Balance call, store them in the "
        "configured credential store and refresh the account's fee tier. Prints the key's fingerprint, never "
        "the key. Exit status: 0 stored, 1 refused (Kraken's message) or not stored, 2 bad usage."
    )
    stealth_options = ("stdin",)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--account", required=True, metavar="SLUG", help="the account whose key this is")

    def handle(self, *args, **options) -> None:
        account = Account.objects.filter(slug=options["account"]).first()
        if account is None:
            raise CommandError(f"--account {options['account']!r}: no such account.", returncode=USAGE)
        keys = self._read_keys(options.get("stdin") or sys.stdin)
        try:
            result = kraken_credentials_set(account=account, keys=keys, actor=ACTOR)
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages), returncode=INVALID) from None
        except PermissionDenied as exc:
            raise CommandError(str(exc), returncode=INVALID) from None
        except (CredentialError, ImproperlyConfigured) as exc:
            raise CommandError(
                f"the key was accepted by Kraken but not stored: {exc}", returncode=INVALID
            ) from None
        credential = result.credential
        if result.fee_error:
            fees = f"fee tier NOT refreshed ({result.fee_error}); the published schedule applies until it is"
            self.stderr.write(self.style.WARNING(f"{account.slug}: {fees}"))
        else:
            fees = f"fee tier refreshed for {result.fee_tiers_updated} pair(s)"
        self.stdout.write(
            self.style.SUCCESS(
                f"set_kraken_key: {account.slug} key {credential.fingerprint} validated by Kraken and stored "
                f"({credential.store}: {credential.reference}); {fees}"
            )
        )

    def _read_keys(self, stream) -> KrakenKeys:
        if stream.isatty():
            api_key = getpass.getpass("Kraken API key: ", stream=sys.stderr)
            secret = getpass.getpass("Kraken API secret: ", stream=sys.stderr)
        else:
            api_key, secret = stream.readline(), stream.readline()
        api_key, secret = api_key.strip(), secret.strip()
        if not api_key or not secret:
            raise CommandError(
                "expected the API key and the secret on standard input, one per line.", returncode=USAGE
            )
        if any(character.isspace() for character in api_key + secret):
            raise CommandError("the API key and the secret may not contain spaces.", returncode=USAGE)
        return KrakenKeys(api_key=api_key, secret=secret)
