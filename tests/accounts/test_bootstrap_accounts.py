import re

import pytest
from django.core.management import CommandError, call_command

from accounts.models import Account, Membership, User
from accounts.roles import Role
from governance.models import AuditEvent
from governance.selectors import audit_chain_verify

ARGS = ["--company", "Firm", "--director", "alice:alice@example.com", "--director", "bob:bob@example.com"]
PASSWORD_LINE = re.compile(r"Password for (\w+) \(shown once[^)]*\): (\S+)")


def bootstrap(*extra, capsys):
    call_command("bootstrap_accounts", *ARGS, *extra)
    return capsys.readouterr().out


@pytest.mark.django_db
def test_creates_three_accounts_two_directors_and_their_memberships(capsys):
    out = bootstrap(capsys=capsys)
    accounts = {a.slug: a for a in Account.objects.all()}
    assert set(accounts) == {"firm", "alice", "bob"}
    assert accounts["firm"].kind == Account.Kind.COMPANY
    assert {accounts["alice"].kind, accounts["bob"].kind} == {Account.Kind.DIRECTOR}
    assert all(a.simulation_mode for a in accounts.values())
    seats = set(Membership.objects.values_list("user__username", "account__slug", "role"))
    assert seats == {
        ("alice", "firm", Role.DIRECTOR),
        ("alice", "alice", Role.DIRECTOR),
        ("bob", "firm", Role.DIRECTOR),
        ("bob", "bob", Role.DIRECTOR),
    }
    passwords = dict(PASSWORD_LINE.findall(out))
    assert set(passwords) == {"alice", "bob"}
    for username, password in passwords.items():
        user = User.objects.get(username=username)
        assert user.is_staff
        assert not user.is_superuser
        assert user.check_password(password)
    assert passwords["alice"] != passwords["bob"]
    assert out.strip().splitlines()[-1] == (
        "bootstrap_accounts: 3 accounts (3 created), 2 directors (2 created), "
        "4 director memberships (4 created)"
    )
    assert AuditEvent.objects.filter(action="account.created").count() == 3
    assert AuditEvent.objects.filter(action="user.created").count() == 2
    assert AuditEvent.objects.filter(action="membership.added").count() == 4
    assert set(AuditEvent.objects.values_list("actor", flat=True)) == {"system:bootstrap_accounts"}
    assert audit_chain_verify() is None


@pytest.mark.django_db
def test_rerun_changes_nothing_and_prints_no_password(capsys):
    first = bootstrap(capsys=capsys)
    alice_password = dict(PASSWORD_LINE.findall(first))["alice"]
    events = AuditEvent.objects.count()
    second = bootstrap(capsys=capsys)
    assert PASSWORD_LINE.search(second) is None
    assert "0 created" in second.splitlines()[-1]
    assert AuditEvent.objects.count() == events
    assert Account.objects.count() == 3
    assert Membership.objects.count() == 4
    assert User.objects.get(username="alice").check_password(alice_password)


@pytest.mark.django_db
def test_passwords_from_a_file_and_from_the_environment(tmp_path, monkeypatch, capsys):
    secret = tmp_path / "alice.txt"
    secret.write_text("a-long-file-password-42\n")
    monkeypatch.setenv("AETHER_PASSWORD_BOB", "a-long-env-password-42")
    out = bootstrap("--password-file", f"alice={secret}", capsys=capsys)
    assert PASSWORD_LINE.search(out) is None
    assert User.objects.get(username="alice").check_password("a-long-file-password-42")
    assert User.objects.get(username="bob").check_password("a-long-env-password-42")


@pytest.mark.django_db
def test_weak_password_is_refused_and_nothing_is_created(tmp_path):
    weak = tmp_path / "weak.txt"
    weak.write_text("password")
    with pytest.raises(CommandError, match="password for alice"):
        call_command("bootstrap_accounts", *ARGS, "--password-file", f"alice={weak}")
    assert Account.objects.count() == 0
    assert User.objects.count() == 0
    assert AuditEvent.objects.count() == 0


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--company", "Firm", "--director", "alice"], "expected USER:EMAIL"),
        (["--company", "Firm", "--director", "alice:not-an-email"], "not a valid e-mail"),
        (
            ["--company", "Firm", "--director", "a:a@example.com", "--director", "a:b@example.com"],
            "named twice",
        ),
        (["--company", "!!!", "--director", "alice:alice@example.com"], "empty slug"),
        (
            ["--company", "Firm", "--director", "a:a@example.com", "--password-file", "zed=/x"],
            "named by --director",
        ),
        (
            ["--company", "Firm", "--director", "a:a@example.com", "--password-file", "a=/nonexistent"],
            "cannot read",
        ),
    ],
)
def test_bad_arguments_are_clear_errors(args, message):
    with pytest.raises(CommandError, match=message):
        call_command("bootstrap_accounts", *args)
    assert Account.objects.count() == 0


@pytest.mark.django_db
def test_a_second_company_is_refused(capsys):
    bootstrap(capsys=capsys)
    with pytest.raises(CommandError, match="already exists as 'Firm'"):
        call_command("bootstrap_accounts", "--company", "Other Firm", "--director", "alice:alice@example.com")


@pytest.mark.django_db
def test_user_names_with_the_same_slug_are_refused():
    with pytest.raises(CommandError, match="already taken by johnsmith's account"):
        call_command(
            "bootstrap_accounts",
            "--company",
            "Firm",
            "--director",
            "johnsmith:j@example.com",
            "--director",
            "john.smith:js@example.com",
        )
    assert Account.objects.count() == 0


@pytest.mark.django_db
def test_a_new_director_never_joins_someone_elses_account(capsys):
    call_command("bootstrap_accounts", "--company", "Firm", "--director", "johnsmith:j@example.com")
    with pytest.raises(CommandError, match=r"is not john\.smith's own director account"):
        call_command("bootstrap_accounts", "--company", "Firm", "--director", "john.smith:js@example.com")
    assert not User.objects.filter(username="john.smith").exists()
    assert set(Membership.objects.values_list("user__username", flat=True)) == {"johnsmith"}


@pytest.mark.django_db
def test_one_password_variable_for_two_users_is_refused(monkeypatch):
    monkeypatch.setenv("AETHER_PASSWORD_JOHN_SMITH", "a-long-env-password-42")
    with pytest.raises(CommandError, match="AETHER_PASSWORD_JOHN_SMITH would set the password of"):
        call_command(
            "bootstrap_accounts",
            "--company",
            "Firm",
            "--director",
            "john.smith:a@example.com",
            "--director",
            "john_smith:b@example.com",
        )
    assert User.objects.count() == 0


@pytest.mark.django_db
def test_audit_details_carry_no_email(capsys):
    bootstrap(capsys=capsys)
    created = AuditEvent.objects.filter(action="user.created")
    assert created.count() == 2
    assert all("@" not in event.details_json for event in created)
