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
from django.utils.text import slugify

from accounts import services
from accounts.models import Account, Membership, User
from accounts.roles import Role
from aether_site.env import Env
from governance.actors import SystemActor

ACTOR = SystemActor("bootstrap_accounts")
USERNAME = re.compile(r"^[A-Za-z0-9_.-]{1,150}$")


def password_env_name(username: str) -> str:
    return "AETHER_PASSWORD_" + re.sub(r"[^A-Z0-9]", "_", username.upper())


@dataclass
class Director:
    username: str
    email: str
    slug: str
    user: User | None = None
    password: str | None = None  # for a user still to be created
    generated: bool = False


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
        "(or AETHER_PASSWORD_<USER>_FILE), else a random one is generated and printed once. Every input is "
        "checked before anything is written."
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
        company_name = options["company"]
        company_slug = self._slug(company_name)
        directors = [self._parse_director(text) for text in options["director"]]
        self._check_unique(directors, company_slug)
        password_files = self._parse_password_files(options["password_file"], {d.username for d in directors})
        self._check_company(company_name, company_slug)
        for director in directors:
            self._plan_director(director, password_files.get(director.username))
        self._check_password_sources(directors, password_files)

        accounts, users, memberships = Tally(), Tally(), Tally()
        company = self._ensure_account(company_name, company_slug, Account.Kind.COMPANY, accounts)
        for director in directors:
            user = self._ensure_user(director, users)
            own = self._ensure_account(director.username, director.slug, Account.Kind.DIRECTOR, accounts)
            for account in (company, own):
                self._ensure_director(account, user, memberships)

        for note in accounts.notes + users.notes + memberships.notes:
            self.stdout.write(note)
        for director in directors:
            if director.generated:
                self.stdout.write(
                    self.style.WARNING(
                        f"Password for {director.username} (shown once, not stored in clear anywhere): "
                        f"{director.password}"
                    )
                )
        self.stdout.write(
            self.style.SUCCESS(
                f"bootstrap_accounts: {accounts.text('accounts')}, {users.text('directors')}, "
                f"{memberships.text('director memberships')}"
            )
        )

    # --- checking, before any write --------------------------------------------------------------------

    def _slug(self, name: str) -> str:
        slug = slugify(name)
        if not slug:
            raise CommandError(f"account name {name!r} gives an empty slug; use letters or digits.")
        return slug

    def _parse_director(self, text: str) -> Director:
        username, sep, email = text.partition(":")
        if not sep or not USERNAME.match(username):
            raise CommandError(f"--director {text!r}: expected USER:EMAIL (user: letters, digits, _ . -).")
        try:
            validate_email(email)
        except ValidationError:
            raise CommandError(f"--director {text!r}: {email!r} is not a valid e-mail address.") from None
        return Director(username=username, email=email, slug=self._slug(username))

    def _check_unique(self, directors: list[Director], company_slug: str) -> None:
        seen: dict[str, str] = {company_slug: "the company account"}
        names: set[str] = set()
        for director in directors:
            if director.username in names:
                raise CommandError(f"--director: {director.username} is named twice.")
            names.add(director.username)
            if director.slug in seen:
                raise CommandError(
                    f"--director {director.username}: their account slug {director.slug!r} is already taken "
                    f"by {seen[director.slug]}; choose distinct user names."
                )
            seen[director.slug] = f"{director.username}'s account"

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
            except (OSError, UnicodeDecodeError) as exc:
                reason = getattr(exc, "strerror", None) or "not UTF-8 text"
                raise CommandError(f"--password-file {item!r}: cannot read {path} ({reason}).") from None
            if not passwords[username]:
                raise CommandError(f"--password-file {item!r}: the file is empty.")
        return passwords

    def _check_company(self, name: str, slug: str) -> None:
        existing = Account.objects.filter(slug=slug).first()
        if existing is not None and existing.kind != Account.Kind.COMPANY:
            raise CommandError(
                f"--company {name!r}: account {slug!r} exists but is a {existing.kind} account."
            )
        other = Account.objects.filter(kind=Account.Kind.COMPANY).exclude(slug=slug).first()
        if other is not None:
            raise CommandError(f"--company {name!r}: the company account already exists as {other.name!r}.")

    def _plan_director(self, director: Director, password_from_file: str | None) -> None:
        director.user = User.objects.filter(username=director.username).first()
        account = Account.objects.filter(slug=director.slug).first()
        if account is not None:
            is_theirs = (
                account.kind == Account.Kind.DIRECTOR
                and director.user is not None
                and Membership.objects.filter(
                    account=account, user=director.user, role=Role.DIRECTOR
                ).exists()
            )
            if not is_theirs:
                raise CommandError(
                    f"--director {director.username}: account {director.slug!r} already exists and is not "
                    f"{director.username}'s own director account; choose another user name."
                )
        if director.user is not None:
            return
        password = password_from_file or Env().str(password_env_name(director.username))
        if password is None:
            password, director.generated = secrets.token_urlsafe(18), True
        try:
            validate_password(password, user=User(username=director.username, email=director.email))
        except ValidationError as exc:
            raise CommandError(f"password for {director.username}: {' '.join(exc.messages)}") from None
        director.password = password

    def _check_password_sources(self, directors: list[Director], password_files: dict[str, str]) -> None:
        by_variable: dict[str, list[str]] = {}
        for director in directors:
            if director.user is None and director.username not in password_files:
                by_variable.setdefault(password_env_name(director.username), []).append(director.username)
        for variable, usernames in by_variable.items():
            if len(usernames) > 1 and Env().raw(variable) is not None:
                raise CommandError(
                    f"{variable} would set the password of {' and '.join(usernames)}; "
                    "use --password-file USER=PATH for each instead."
                )

    # --- writing, one service call (one transaction, one audit event) at a time --------------------------

    def _ensure_account(self, name: str, slug: str, kind: str, tally: Tally) -> Account:
        account = Account.objects.filter(slug=slug).first()
        if account is None:
            account = services.account_create(actor=ACTOR, name=name, slug=slug, kind=kind)
            tally.created += 1
            tally.notes.append(f"account {slug}: created ({kind}, simulation)")
            return account
        tally.existing += 1
        tally.notes.append(f"account {slug}: exists")
        return account

    def _ensure_user(self, director: Director, tally: Tally) -> User:
        if director.user is not None:
            tally.existing += 1
            note = f"user {director.username}: exists, password unchanged"
            if director.user.email != director.email:
                note += f" (e-mail on record is {director.user.email!r}, not changed)"
            tally.notes.append(note)
            return director.user
        director.user = services.user_create(
            actor=ACTOR, username=director.username, email=director.email, password=director.password
        )
        tally.created += 1
        tally.notes.append(f"user {director.username}: created (staff, director)")
        return director.user

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
