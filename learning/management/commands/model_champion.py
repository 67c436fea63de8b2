"""A director promotes a model version to champion, or rolls a scope back to its previous champion."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.models import User
from learning import services
from learning.errors import ArtifactIntegrityError, PromotionRefused
from learning.models import ModelVersion


class Command(BaseCommand):
    help = (
        "promote VERSION_ID, or rollback SCOPE (e.g. BTC/USD) --timeframe N: done in a director's name "
        "(--by USERNAME) with --reason; audited with the champion before and after. --by names the "
        "director who takes responsibility for the change: the command does not authenticate, so anyone "
        "with shell access can name any director; the audit records the name given. The authenticated "
        "path is the admin's promote / roll back actions, done as the logged-in director."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("operation", choices=("promote", "rollback"))
        parser.add_argument("target", help="promote: the model version id; rollback: the scope")
        parser.add_argument("--timeframe", type=int, default=60, help="rollback: minutes")
        parser.add_argument(
            "--by",
            required=True,
            metavar="USERNAME",
            help="the director who takes responsibility (named, not authenticated: see the help above)",
        )
        parser.add_argument("--reason", required=True)

    def handle(self, *args, **options) -> None:
        user = User.objects.filter(username=options["by"], is_active=True).first()
        if user is None:
            raise CommandError(f"--by {options['by']}: no such active user")
        try:
            if options["operation"] == "promote":
                version = (
                    ModelVersion.objects.filter(pk=options["target"]).first()
                    if options["target"].isdigit()
                    else None
                )
                if version is None:
                    raise CommandError(f"no model version #{options['target']}")
                result = services.model_promote(actor=user, version=version, reason=options["reason"])
            else:
                result = services.model_rollback(
                    actor=user,
                    scope=options["target"],
                    timeframe=options["timeframe"],
                    reason=options["reason"],
                )
        except (PromotionRefused, ArtifactIntegrityError, PermissionDenied, ValueError) as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            self.style.SUCCESS(
                f"model_champion {options['operation']}: #{result.pk} is the champion of {result.scope}"
            )
        )
