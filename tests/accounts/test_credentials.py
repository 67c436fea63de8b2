"""Kraken credentials: two stores, the services that use them, set_kraken_key, and what never leaks.

Stores are exercised for real: Fernet files on disk (modes checked) and Secrets on a fake Kubernetes API
server speaking the REST protocol over HTTP (the stored objects are asserted). Keys are checked by the fake
Kraken server with real ccxt signing.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import kubernetes
import pytest
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured, PermissionDenied, ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from accounts.credential_services import (
    kraken_credentials_set,
    kraken_credentials_validate,
    kraken_keys_for,
)
from accounts.credentials import (
    CredentialError,
    CredentialNotFound,
    KubernetesSecretStore,
    LocalFernetStore,
    credential_store,
    fingerprint,
    secret_name,
)
from accounts.models import KrakenCredential
from aether_site.security import credential_store_problems
from governance.actors import SystemActor
from governance.models import AuditEvent
from tests.fakes.kraken_rest import Fault
from tests.fakes.kubernetes_api import FakeKubernetes
from trading.brokers.kraken import KrakenKeys
from trading.models import AccountFeeTier

BASE_DIR = Path(__file__).resolve().parents[2]
API_KEY = base64.b64encode(b"api-key-material-" * 3).decode()
SECRET = base64.b64encode(b"secret-material-which-is-long" * 2).decode()
KEYS = KrakenKeys(api_key=API_KEY, secret=SECRET)
OTHER = KrakenKeys(api_key=API_KEY[::-1], secret=base64.b64encode(b"another-secret" * 4).decode())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def assert_no_secrets(text: str, *keys: KrakenKeys) -> None:
    for pair in keys or (KEYS,):
        for value in (pair.api_key, pair.secret):
            assert value not in text
            assert base64.b64encode(value.encode()).decode() not in text


@pytest.fixture
def key_file(tmp_path) -> Path:
    path = tmp_path / "fernet.key"
    path.write_bytes(Fernet.generate_key())
    path.chmod(0o600)
    return path


@pytest.fixture
def local_store(settings, tmp_path, key_file):
    settings.AETHER_CREDENTIAL_STORE = "local"
    settings.KRAKEN_CREDENTIALS_DIR = str(tmp_path / "credentials")
    settings.KRAKEN_CREDENTIALS_KEY_FILE = str(key_file)
    settings.KRAKEN_LOCK_DIR = str(tmp_path / "locks")
    return LocalFernetStore.from_settings()


@pytest.fixture
def fake_kubernetes():
    with FakeKubernetes(namespaces={"aether"}) as fake:
        yield fake


def k8s_store(fake: FakeKubernetes, namespace: str = "aether") -> KubernetesSecretStore:
    return KubernetesSecretStore(
        namespace=namespace, configuration=kubernetes.client.Configuration(host=fake.url)
    )


# --- The local Fernet store ---------------------------------------------------------------------------------


def test_local_store_round_trips_in_0600_files(local_store, tmp_path):
    reference = local_store.put("alice", KEYS)
    path = tmp_path / "credentials" / reference
    assert reference == "kraken-alice.fernet"
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    assert local_store.get(reference) == KEYS
    assert_no_secrets(path.read_text())  # encrypted on disk

    assert local_store.put("alice", OTHER) == reference  # replaced in place, still 0600
    assert local_store.get(reference) == OTHER
    assert mode(path) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == [reference]  # no temporary file left

    local_store.delete(reference)
    with pytest.raises(CredentialNotFound):
        local_store.get(reference)
    local_store.delete(reference)  # nothing to delete is fine


def test_a_wrong_fernet_key_is_a_clear_error_not_an_empty_store(local_store, tmp_path):
    reference = local_store.put("alice", KEYS)
    other_key = tmp_path / "other.key"
    other_key.write_bytes(Fernet.generate_key())
    wrong = LocalFernetStore(
        directory=tmp_path / "credentials", key=other_key.read_bytes(), key_source="the other key"
    )
    with pytest.raises(CredentialError, match=r"cannot decrypt .* with the configured key") as caught:
        wrong.get(reference)
    assert_no_secrets(str(caught.value))


def test_a_key_file_without_a_fernet_key_is_refused(settings, tmp_path):
    junk = tmp_path / "junk.key"
    junk.write_text("not-a-fernet-key")
    settings.KRAKEN_CREDENTIALS_KEY_FILE = str(junk)
    with pytest.raises(ImproperlyConfigured, match="does not hold a Fernet key"):
        LocalFernetStore.from_settings()


def test_development_generates_its_key_once_with_mode_0600(settings, tmp_path):
    settings.PRODUCTION = False
    settings.KRAKEN_CREDENTIALS_KEY_FILE = None
    settings.KRAKEN_CREDENTIALS_DEV_KEY_FILE = tmp_path / "var" / "dev-kraken-credentials.key"
    settings.KRAKEN_CREDENTIALS_DIR = str(tmp_path / "credentials")
    reference = LocalFernetStore.from_settings().put("alice", KEYS)
    assert mode(settings.KRAKEN_CREDENTIALS_DEV_KEY_FILE) == 0o600
    assert LocalFernetStore.from_settings().get(reference) == KEYS  # a second instance reads the same key


def test_production_refuses_the_local_store_without_a_key_file(settings):
    settings.PRODUCTION = True
    settings.KRAKEN_CREDENTIALS_KEY_FILE = None
    with pytest.raises(ImproperlyConfigured, match="needs KRAKEN_CREDENTIALS_KEY_FILE"):
        LocalFernetStore.from_settings()


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({}, "AETHER_CREDENTIAL_STORE must be set"),
        ({"AETHER_CREDENTIAL_STORE": "local"}, "needs KRAKEN_CREDENTIALS_KEY_FILE"),
        ({"AETHER_CREDENTIAL_STORE": "kubernetes"}, "needs AETHER_K8S_NAMESPACE"),
        ({"AETHER_CREDENTIAL_STORE": "local", "KRAKEN_CREDENTIALS_KEY_FILE": "/run/key"}, None),
        ({"AETHER_CREDENTIAL_STORE": "kubernetes", "AETHER_K8S_NAMESPACE": "aether"}, None),
    ],
)
def test_production_credential_store_rules(values, problem):
    problems = credential_store_problems(values)
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1
        assert problem in problems[0]


def test_unknown_store_kind_is_refused(settings):
    settings.AETHER_CREDENTIAL_STORE = None
    with pytest.raises(ImproperlyConfigured, match="AETHER_CREDENTIAL_STORE=None"):
        credential_store()


# --- The Kubernetes Secret store ----------------------------------------------------------------------------


def test_secret_names_are_dns_safe_and_distinct():
    assert secret_name("alice") == "aether-kraken-alice"
    assert secret_name("Alice_1").startswith("aether-kraken-alice-1-")
    assert secret_name("Alice_1") != secret_name("alice-1")
    with pytest.raises(CredentialError):
        secret_name("../etc")


def test_kubernetes_store_creates_replaces_and_deletes_the_secret(fake_kubernetes, caplog):
    caplog.set_level(logging.DEBUG)
    store = k8s_store(fake_kubernetes)
    reference = store.put("alice", KEYS)
    assert reference == "aether/aether-kraken-alice"

    stored = fake_kubernetes.secret("aether", "aether-kraken-alice")
    assert stored["type"] == "Opaque"
    assert stored["metadata"]["labels"] == {
        "app.kubernetes.io/part-of": "aether",
        "app.kubernetes.io/managed-by": "aether",
        "aether.io/account": "alice",
        "aether.io/kind": "kraken-key",
    }
    assert base64.b64decode(stored["data"]["api_key"]).decode() == API_KEY
    assert base64.b64decode(stored["data"]["secret"]).decode() == SECRET
    assert store.get(reference) == KEYS

    assert store.put("alice", OTHER) == reference
    replaced = fake_kubernetes.secret("aether", "aether-kraken-alice")
    assert replaced["metadata"]["uid"] == stored["metadata"]["uid"]
    assert replaced["metadata"]["resourceVersion"] != stored["metadata"]["resourceVersion"]
    assert store.get(reference) == OTHER
    calls = [(r.method, r.path.rsplit("/", 1)[-1]) for r in fake_kubernetes.requests()]
    assert calls[-3:-1] == [("POST", "secrets"), ("PUT", "aether-kraken-alice")]  # 409, then replace

    store.delete(reference)
    assert fake_kubernetes.secret_names("aether") == []
    with pytest.raises(CredentialNotFound, match="does not exist"):
        store.get(reference)
    store.delete(reference)  # 404 on delete is fine
    assert_no_secrets(caplog.text, KEYS, OTHER)


def test_kubernetes_errors_are_clear_and_never_carry_keys(fake_kubernetes):
    with pytest.raises(CredentialError, match='HTTP 404 namespaces "elsewhere" not found') as caught:
        k8s_store(fake_kubernetes, "elsewhere").put("alice", KEYS)
    assert_no_secrets(str(caught.value))

    url = fake_kubernetes.url
    fake_kubernetes.stop()
    store = KubernetesSecretStore(
        namespace="aether",
        configuration=kubernetes.client.Configuration(host=url),
        timeout_seconds=2,
    )
    store._api.api_client.configuration.retries = 0
    with pytest.raises(CredentialError, match="unreachable") as caught:
        store.put("alice", KEYS)
    assert_no_secrets(str(caught.value))


def test_kubernetes_store_from_settings_uses_the_kubeconfig(settings, tmp_path):
    with FakeKubernetes(namespaces={"platform"}, token="sa-token-123") as fake:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            f"""apiVersion: v1
kind: Config
clusters: [{{name: fake, cluster: {{server: "{fake.url}"}}}}]
users: [{{name: aether, user: {{token: sa-token-123}}}}]
contexts: [{{name: fake, context: {{cluster: fake, user: aether, namespace: platform}}}}]
current-context: fake
"""
        )
        settings.AETHER_CREDENTIAL_STORE = "kubernetes"
        settings.AETHER_K8S_NAMESPACE = "platform"
        settings.AETHER_K8S_KUBECONFIG = str(kubeconfig)
        store = credential_store()
        reference = store.put("bob", KEYS)
        assert fake.secret_names("platform") == ["aether-kraken-bob"]
        assert store.get(reference) == KEYS

        kubeconfig.write_text(kubeconfig.read_text().replace("sa-token-123", "wrong"))
        with pytest.raises(CredentialError, match=r"HTTP 401 .*service account"):
            credential_store().get(reference)


def test_kubernetes_store_needs_a_namespace(settings):
    with pytest.raises(ImproperlyConfigured, match="AETHER_K8S_NAMESPACE"):
        KubernetesSecretStore(namespace="", configuration=kubernetes.client.Configuration(host="http://x"))


# --- Services -----------------------------------------------------------------------------------------------


@pytest.fixture
def kraken(settings, fake_kraken, local_store):
    settings.KRAKEN_API_URL = fake_kraken.url
    return fake_kraken


@pytest.fixture
def good_keys(kraken) -> KrakenKeys:
    creds = kraken.add_account(balances={"ZUSD": "5000"}, thirty_day_volume="60000")
    return KrakenKeys(api_key=creds.api_key, secret=creds.secret)


def audit(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("seq"))


def test_setting_a_valid_key_stores_it_and_refreshes_the_fee_tier(firm, universe, kraken, good_keys):
    result = kraken_credentials_set(account=firm.alice_account, keys=good_keys, actor=firm.owner)

    credential = KrakenCredential.objects.get(account=firm.alice_account)
    assert credential == result.credential
    assert (credential.store, credential.reference) == ("local", "kraken-alice.fernet")
    assert credential.fingerprint == fingerprint(good_keys)
    assert len(credential.fingerprint) == 16
    assert credential.validation_ok
    assert credential.validated_at is not None
    assert kraken_keys_for(firm.alice_account) == good_keys
    assert credential.history.get().history_user == firm.owner

    # TradeVolume's rates for a 60k 30-day volume (tier 50k: 0.14 / 0.24) are now the account's.
    assert result.fee_error is None
    assert result.fee_tiers_updated == len(universe)
    maker, taker = kraken.fee_rates(good_keys.api_key)
    tiers = AccountFeeTier.objects.filter(account=firm.alice_account)
    assert {(t.maker_pct, t.taker_pct) for t in tiers} == {(maker, taker)}
    assert (maker, taker) != (AccountFeeTier._meta.get_field("maker_pct").default, None)

    (event,) = audit("kraken_key.set")
    assert event.actor == "user:alice"
    assert event.account == firm.alice_account
    assert event.details == {
        "fingerprint": credential.fingerprint,
        "previous_fingerprint": None,
        "store": "local",
        "reference": "kraken-alice.fernet",
    }


def test_an_invalid_key_is_refused_with_krakens_message_and_nothing_is_stored(firm, kraken, tmp_path):
    with pytest.raises(ValidationError, match="EAPI:Invalid key") as caught:
        kraken_credentials_set(account=firm.alice_account, keys=KEYS, actor=firm.owner)
    assert_no_secrets(str(caught.value))
    assert not KrakenCredential.objects.exists()
    assert not (tmp_path / "credentials").exists() or not any((tmp_path / "credentials").iterdir())
    (event,) = audit("kraken_key.rejected")
    assert event.details == {"fingerprint": fingerprint(KEYS), "message": "EAPI:Invalid key"}


@pytest.mark.parametrize("persona", ["viewer", "outsider", "director", "superuser"])
def test_only_a_director_of_the_account_sets_its_key(firm, kraken, good_keys, persona):
    with pytest.raises(PermissionDenied):
        kraken_credentials_set(account=firm.alice_account, keys=good_keys, actor=getattr(firm, persona))
    assert kraken.requests() == []  # refused before Kraken is asked
    assert not KrakenCredential.objects.exists()


def test_a_failed_fee_refresh_keeps_the_key_and_says_so(firm, universe, kraken, good_keys):
    kraken.inject("TradeVolume", Fault.http_status(503), times=10)
    result = kraken_credentials_set(account=firm.alice_account, keys=good_keys, actor=SystemActor("test"))
    assert result.fee_error is not None
    assert "503" in result.fee_error
    assert result.fee_tiers_updated == 0
    assert KrakenCredential.objects.get(account=firm.alice_account).validation_ok
    assert kraken_keys_for(firm.alice_account) == good_keys


def test_replacing_a_key_records_the_previous_fingerprint(firm, universe, kraken, good_keys):
    kraken_credentials_set(account=firm.alice_account, keys=good_keys, actor=firm.owner)
    creds = kraken.add_account(balances={"ZUSD": "1"})
    newer = KrakenKeys(api_key=creds.api_key, secret=creds.secret)
    kraken_credentials_set(account=firm.alice_account, keys=newer, actor=firm.owner)
    assert kraken_keys_for(firm.alice_account) == newer
    last = audit("kraken_key.set")[-1]
    assert last.details["previous_fingerprint"] == fingerprint(good_keys)
    assert last.details["fingerprint"] == fingerprint(newer)


def test_keys_for_an_account_without_one_is_a_clear_error(firm, local_store):
    with pytest.raises(CredentialNotFound, match="set_kraken_key --account alice"):
        kraken_keys_for(firm.alice_account)


def test_a_key_changed_outside_aether_is_detected(firm, universe, kraken, good_keys, local_store):
    kraken_credentials_set(account=firm.alice_account, keys=good_keys, actor=firm.owner)
    local_store.put("alice", OTHER)  # someone replaced the stored key behind our back
    with pytest.raises(CredentialError, match="changed outside Aether") as caught:
        kraken_keys_for(firm.alice_account)
    assert_no_secrets(str(caught.value), OTHER, good_keys)
    credential = kraken_credentials_validate(account=firm.alice_account, actor=SystemActor("reconcile"))
    assert not credential.validation_ok
    assert "changed outside Aether" in credential.validation_message


def test_revalidation_records_krakens_answer_and_audits_changes(firm, universe, kraken, good_keys):
    kraken_credentials_set(account=firm.alice_account, keys=good_keys, actor=firm.owner)
    system = SystemActor("reconcile")
    assert kraken_credentials_validate(account=firm.alice_account, actor=system).validation_ok
    assert audit("kraken_key.validated") == []  # unchanged outcome, platform actor: no audit noise

    kraken.inject("Balance", Fault.kraken_error("EAPI:Invalid key"), api_key=good_keys.api_key)
    credential = kraken_credentials_validate(account=firm.alice_account, actor=system)
    assert not credential.validation_ok
    assert "EAPI:Invalid key" in credential.validation_message
    (event,) = audit("kraken_key.validated")
    assert event.details["ok"] is False
    assert event.details["fingerprint"] == credential.fingerprint

    with pytest.raises(PermissionDenied):
        kraken_credentials_validate(account=firm.alice_account, actor=firm.viewer)


def test_both_stores_serve_the_services(
    firm, universe, kraken, good_keys, settings, fake_kubernetes, tmp_path, django_capture_on_commit_callbacks
):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        f"""apiVersion: v1
kind: Config
clusters: [{{name: fake, cluster: {{server: "{fake_kubernetes.url}"}}}}]
users: [{{name: aether, user: {{token: t}}}}]
contexts: [{{name: fake, context: {{cluster: fake, user: aether}}}}]
current-context: fake
"""
    )
    kraken_credentials_set(account=firm.alice_account, keys=good_keys, actor=firm.owner)  # local
    settings.AETHER_CREDENTIAL_STORE = "kubernetes"
    settings.AETHER_K8S_NAMESPACE = "aether"
    settings.AETHER_K8S_KUBECONFIG = str(kubeconfig)
    with django_capture_on_commit_callbacks(execute=True):
        kraken_credentials_set(account=firm.alice_account, keys=good_keys, actor=firm.owner)  # to k8s
    credential = KrakenCredential.objects.get(account=firm.alice_account)
    assert (credential.store, credential.reference) == ("kubernetes", "aether/aether-kraken-alice")
    assert kraken_keys_for(firm.alice_account) == good_keys
    assert not (tmp_path / "credentials" / "kraken-alice.fernet").exists()  # the old local copy is gone


# --- What never leaks ---------------------------------------------------------------------------------------


def test_keys_never_reach_logs_audit_or_exceptions(firm, universe, kraken, good_keys, caplog):
    caplog.set_level(logging.DEBUG)
    errors = []
    with pytest.raises(ValidationError) as caught:
        kraken_credentials_set(account=firm.alice_account, keys=KEYS, actor=firm.owner)
    errors.append(str(caught.value))
    kraken.inject("TradeVolume", Fault.malformed_json(), times=10)
    result = kraken_credentials_set(account=firm.alice_account, keys=good_keys, actor=firm.owner)
    errors.append(result.fee_error)
    kraken.inject("Balance", Fault.kraken_error("EAPI:Invalid key"), api_key=good_keys.api_key)
    credential = kraken_credentials_validate(account=firm.alice_account, actor=firm.owner)

    assert caplog.records  # the paths above do log (ccxt, the services): and none of it carries a key
    everything = "\n".join(
        [caplog.text, *errors, credential.validation_message, repr(good_keys), repr(KEYS)]
        + [event.details_json for event in AuditEvent.objects.all()]
        + [str(row.__dict__) for row in KrakenCredential.history.all()]
    )
    assert_no_secrets(everything, KEYS, good_keys)


@pytest.fixture
def alice_key(firm, universe, kraken, good_keys):
    kraken_credentials_set(account=firm.alice_account, keys=good_keys, actor=firm.owner)
    return good_keys


def test_admin_shows_the_fingerprint_and_validation_never_the_key(firm, client, alice_key):
    credential = KrakenCredential.objects.get()
    pages = [
        reverse("admin:accounts_krakencredential_changelist"),
        reverse("admin:accounts_krakencredential_change", args=[credential.pk]),
        reverse("admin:accounts_krakencredential_history", args=[credential.pk]),
    ]
    for persona in (firm.owner, firm.viewer, firm.superuser):
        client.force_login(persona)
        for url in pages:
            response = client.get(url)
            assert response.status_code == 200, (persona, url)
            html = response.content.decode()
            assert credential.fingerprint in html or url.endswith("/history/")
            assert_no_secrets(html, alice_key)
    client.force_login(firm.owner)
    change = client.get(pages[1])
    assert change.context["has_change_permission"] is False
    assert change.context["has_delete_permission"] is False


def test_admin_hides_credentials_of_other_accounts(firm, client, alice_key):
    credential = KrakenCredential.objects.get()
    for persona in (firm.outsider, firm.director):
        client.force_login(persona)
        listing = client.get(reverse("admin:accounts_krakencredential_changelist"))
        assert credential.fingerprint not in listing.content.decode()
        response = client.get(reverse("admin:accounts_krakencredential_change", args=[credential.pk]))
        assert response.status_code == 404


def test_admin_revalidate_action_is_for_directors(firm, client, alice_key, kraken):
    credential = KrakenCredential.objects.get()
    url = reverse("admin:accounts_krakencredential_changelist")
    client.force_login(firm.owner)
    response = client.post(url, {"action": "revalidate", "_selected_action": [credential.pk]}, follow=True)
    assert f"key {credential.fingerprint} accepted" in response.content.decode()
    assert audit("kraken_key.validated")[-1].actor == "user:alice"

    client.force_login(firm.viewer)
    response = client.post(url, {"action": "revalidate", "_selected_action": [credential.pk]})
    assert len(audit("kraken_key.validated")) == 1  # the viewer has no such action


# --- manage.py set_kraken_key -------------------------------------------------------------------------------


def run_set_key(stdin: str, account: str = "alice") -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("set_kraken_key", "--account", account, stdin=io.StringIO(stdin), stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_set_kraken_key_reads_stdin_validates_stores_and_refreshes_fees(firm, universe, kraken, good_keys):
    out, err = run_set_key(f"{good_keys.api_key}\n{good_keys.secret}\n")
    credential = KrakenCredential.objects.get(account=firm.alice_account)
    assert out.strip().splitlines() == [
        f"set_kraken_key: alice key {credential.fingerprint} validated by Kraken and stored "
        f"(local: kraken-alice.fernet); fee tier refreshed for 3 pair(s)"
    ]
    assert err == ""
    assert_no_secrets(out, good_keys)
    assert kraken_keys_for(firm.alice_account) == good_keys
    trade_volume = [r for r in kraken.requests() if r.endpoint == "TradeVolume"]
    assert len(trade_volume) == 1
    assert AccountFeeTier.objects.filter(account=firm.alice_account).count() == 3
    assert audit("kraken_key.set")[0].actor == "system:set_kraken_key"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_set_kraken_key_on_a_terminal_reads_without_echo(firm, universe, kraken, good_keys, monkeypatch):
    prompts = []
    answers = iter([good_keys.api_key, good_keys.secret])

    def getpass(prompt, stream=None):
        prompts.append(prompt)
        return next(answers)

    monkeypatch.setattr("getpass.getpass", getpass)
    out = io.StringIO()
    call_command("set_kraken_key", "--account", "alice", stdin=Terminal(), stdout=out)
    assert prompts == ["Kraken API key: ", "Kraken API secret: "]
    assert kraken_keys_for(firm.alice_account) == good_keys
    assert_no_secrets(out.getvalue(), good_keys)


def test_set_kraken_key_exits_1_with_krakens_message_for_an_invalid_key(firm, kraken):
    with pytest.raises(CommandError, match="EAPI:Invalid key") as caught:
        run_set_key(f"{KEYS.api_key}\n{KEYS.secret}\n")
    assert caught.value.returncode == 1
    assert_no_secrets(str(caught.value))
    assert not KrakenCredential.objects.exists()


@pytest.mark.parametrize(
    ("stdin", "account", "message"),
    [
        ("only-one-line\n", "alice", "one per line"),
        ("", "alice", "one per line"),
        ("a key\nsecret\n", "alice", "spaces"),
        ("key\nsecret\n", "nobody", "no such account"),
    ],
)
def test_set_kraken_key_exits_2_on_bad_usage(firm, kraken, stdin, account, message):
    with pytest.raises(CommandError, match=message) as caught:
        run_set_key(stdin, account)
    assert caught.value.returncode == 2
    assert kraken.requests() == []


def test_set_kraken_key_never_takes_keys_from_the_command_line():
    result = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "set_kraken_key",
            "--account",
            "alice",
            "--api-key",
            "K",
            "--secret",
            "S",
        ],
        cwd=BASE_DIR,
        env={key: value for key, value in os.environ.items() if key in ("PATH", "HOME", "LANG")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert "unrecognized arguments" in result.stderr
