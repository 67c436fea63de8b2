"""Create the company account, the director accounts and the director users, idempotently."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.core.validators import validate_email
from django.db import transaction
from django.utils.text import slugify

from accounts import services
from accounts.models import Account, Membership, User
from accounts.roles import Role
from aether_site.env import Env
from governance.actors import SystemActor
from governance.services import audit_record

ACTOR = SystemActor("bootstrap_accounts")
USERNAME = re.compile(r"^[A-Za-z0-9_.-]{1,150}$")


def password_env_name(username: str) -> str:
    return "AETHER_PASSWORD_" + re.sub(r"[^A-Z0-9]", "_", username.upper())


@dataclass
class Tally:
    created: int = 0
    existing: int = 0
    notes: list[str] = field(default_factory=list)

    def text(self, noun: str) -> str:
        return f"{self.created + self.existing} {noun} ({self.created} created)"


class Command(BaseCommand):
    help = (
        "Create the company account, one account per director and the director users (directors of the "
        "company account and of their own). Safe to re-run: what exists is kept, passwords are never reset. "
        "A new user's password comes from --password-file USER=PATH, else from AETHER_PASSWORD_<USER> "
        "(or AETHER_PASSWORD_<USER>_FILE), else a random one is generated and printed once."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--company", required=True, metavar="NAME", help="name of the company account")
        parser.add_argument(
            "--director",
            action="append",
            required=True,
            metavar="USER:EMAIL",
            help="a director (repeat for each)",
        )
        parser.add_argument(
            "--password-file",
            action="append",
            default=[],
            metavar="USER=PATH",
            help="read USER's password from PATH",
        )

    def handle(self, *args, **options) -> None:
        directors = [self._parse_director(text) for text in options["director"]]
        if len({name for name, _ in directors}) != len(directors):
            raise CommandError("--director: the same user is named twice.")
        password_files = self._parse_password_files(options["password_file"], {name for name, _ in directors})

        accounts, users, memberships = Tally(), Tally(), Tally()
        printed_passwords: list[tuple[str, str]] = []
        with transaction.atomic():
            company = self._ensure_account(options["company"], Account.Kind.COMPANY, accounts)
            for username, email in directors:
                user, generated = self._ensure_user(username, email, password_files.get(username), users)
                if generated:
                    printed_passwords.append((username, generated))
                own = self._ensure_account(username, Account.Kind.DIRECTOR, accounts)
                for account in (company, own):
                    self._ensure_director(account, user, memberships)

        for note in accounts.notes + users.notes + memberships.notes:
            self.stdout.write(note)
        for username, password in printed_passwords:
            self.stdout.write(
                self.style.WARNING(
                    f"Password for {username} (shown once, not stored in clear anywhere): {password}"
                )
            )
        self.stdout.write(
            self.style.SUCCESS(
                f"bootstrap_accounts: {accounts.text('accounts')}, {users.text('directors')}, "
                f"{memberships.text('director memberships')}"
            )
        )

    # --- parsing -------------------------------------------------------------------------------------------

    def _parse_director(self, text: str) -> tuple[str, str]:
        username, sep, email = text.partition(":")
        if not sep or not USERNAME.match(username):
            raise CommandError(f"--director {text!r}: expected USER:EMAIL (user: letters, digits, _ . -).")
        try:
            validate_email(email)
        except ValidationError:
            raise CommandError(f"--director {text!r}: {email!r} is not a valid e-mail address.") from None
        return username, email

    def _parse_password_files(self, items: list[str], usernames: set[str]) -> dict[str, str]:
        passwords = {}
        for item in items:
            username, sep, path = item.partition("=")
            if not sep or username not in usernames:
                raise CommandError(
                    f"--password-file {item!r}: expected USER=PATH for a user named by --director."
                )
            try:
                passwords[username] = Path(path).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise CommandError(
                    f"--password-file {item!r}: cannot read {path} ({exc.strerror})."
                ) from None
            if not passwords[username]:
                raise CommandError(f"--password-file {item!r}: the file is empty.")
        return passwords

    # --- ensuring ------------------------------------------------------------------------------------------

    def _ensure_account(self, name: str, kind: str, tally: Tally) -> Account:
        slug = slugify(name)
        if not slug:
            raise CommandError(f"account name {name!r} gives an empty slug; use letters or digits.")
        account = Account.objects.filter(slug=slug).first()
        if account is None:
            if kind == Account.Kind.COMPANY and Account.objects.filter(kind=kind).exists():
                other = Account.objects.get(kind=kind)
                raise CommandError(
                    f"--company {name!r}: the company account already exists as {other.name!r}."
                )
            account = services.account_create(actor=ACTOR, name=name, slug=slug, kind=kind)
            tally.created += 1
            tally.notes.append(f"account {slug}: created ({kind}, simulation)")
            return account
        if account.kind != kind:
            raise CommandError(f"account {slug!r} exists but is a {account.kind} account, not a {kind} one.")
        tally.existing += 1
        tally.notes.append(f"account {slug}: exists")
        return account

    def _ensure_user(
        self, username: str, email: str, password: str | None, tally: Tally
    ) -> tuple[User, str | None]:
        user = User.objects.filter(username=username).first()
        if user is not None:
            tally.existing += 1
            note = f"user {username}: exists, password unchanged"
            if user.email != email:
                note += f" (e-mail on record is {user.email!r}, not changed)"
            tally.notes.append(note)
            return user, None
        generated = None
        if password is None:
            password = Env().str(password_env_name(username))
        if password is None:
            password = generated = secrets.token_urlsafe(18)
        user = User(username=username, email=email, is_staff=True)
        try:
            validate_password(password, user=user)
        except ValidationError as exc:
            raise CommandError(f"password for {username}: {' '.join(exc.messages)}") from None
        user.set_password(password)
        user.save()
        audit_record(
            actor=ACTOR,
            action="user.created",
            target=user,
            details={"username": username, "email": email, "staff": True},
        )
        tally.created += 1
        tally.notes.append(f"user {username}: created (staff, director)")
        return user, generated

    def _ensure_director(self, account: Account, user: User, tally: Tally) -> None:
        membership = Membership.objects.filter(account=account, user=user).first()
        if membership is None:
            services.membership_add(actor=ACTOR, account=account, user=user, role=Role.DIRECTOR)
            tally.created += 1
            tally.notes.append(f"membership {user.username} in {account.slug}: director, created")
            return
        if membership.role != Role.DIRECTOR:
            services.membership_set_role(actor=ACTOR, membership=membership, role=Role.DIRECTOR)
            tally.notes.append(f"membership {user.username} in {account.slug}: raised to director")
        tally.existing += 1
