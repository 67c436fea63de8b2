"""Where the Kraken API keys live: never in the database, never in a log line, an exception or a page.

A :class:`CredentialStore` keeps one key pair per account and hands back a *reference* (what the database
stores, beside a fingerprint). Two implementations, chosen by ``AETHER_CREDENTIAL_STORE``:

- :class:`KubernetesSecretStore` (``kubernetes``): one Secret per account, ``aether-kraken-<slug>``, in the
  platform namespace (``AETHER_K8S_NAMESPACE``), through the official ``kubernetes`` client; in-cluster
  configuration, or a kubeconfig file (``AETHER_K8S_KUBECONFIG``).
- :class:`LocalFernetStore` (``local``, the embedded mode): one Fernet-encrypted file per account under
  ``KRAKEN_CREDENTIALS_DIR`` (mode 0600, in a 0700 directory). The Fernet key comes from the file named by
  ``KRAKEN_CREDENTIALS_KEY_FILE``; in development, when that is unset, a key is generated once under
  ``var/`` (mode 0600). A file that does not decrypt with the configured key is a loud error, never an empty
  store.

:func:`kraken_keys_for` loads an account's keys from the store its ``KrakenCredential`` row names. Errors
raised here carry the account slug, the reference and the store's complaint; never a key.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Protocol

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from accounts.models import KrakenCredential
from trading.brokers.kraken import KrakenKeys

LOCAL = "local"
KUBERNETES = "kubernetes"
STORE_KINDS = (LOCAL, KUBERNETES)


class CredentialError(Exception):
    """A credential could not be stored or read; the message says why and what to do (never the key)."""


class CredentialNotFound(CredentialError):
    """No key is stored under the reference (or for the account)."""


def fingerprint(keys: KrakenKeys) -> str:
    """First 16 hex digits of SHA-256 over the key and the secret: enough to tell keys apart in the admin
    and the audit trail, useless for recovering either."""
    digest = hashlib.sha256(f"{keys.api_key}\n{keys.secret}".encode()).hexdigest()
    return digest[:16]


class CredentialStore(Protocol):
    kind: str

    def put(self, account_slug: str, keys: KrakenKeys) -> str:
        """Store (create or replace) the account's keys; returns the reference to keep in the database."""

    def get(self, reference: str) -> KrakenKeys:
        """The keys stored under ``reference``; :class:`CredentialNotFound` when there are none."""

    def delete(self, reference: str) -> None:
        """Remove the keys under ``reference``; nothing to remove is not an error."""


def _check_slug(account_slug: str) -> None:
    if not re.fullmatch(r"[-a-zA-Z0-9_]+", account_slug or ""):
        raise CredentialError(f"account slug {account_slug!r} is not a slug (letters, digits, - and _).")


def _keys_from(api_key, secret, where: str) -> KrakenKeys:
    if not isinstance(api_key, str) or not isinstance(secret, str) or not api_key or not secret:
        raise CredentialError(f"{where} does not hold an api_key and a secret; store the key again.")
    return KrakenKeys(api_key=api_key, secret=secret)


# --- Local, Fernet-encrypted files (embedded mode) ----------------------------------------------------------


def load_or_create_fernet_key(path: Path) -> bytes:
    """The development Fernet key in ``path``, created (mode 0600) on first use."""
    from cryptography.fernet import Fernet

    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first
        return path.read_bytes().strip()
    except OSError as exc:
        raise ImproperlyConfigured(
            f"KRAKEN_CREDENTIALS_KEY_FILE is unset and the development key file {path} cannot be created "
            f"({exc.strerror}); set KRAKEN_CREDENTIALS_KEY_FILE."
        ) from None
    key = Fernet.generate_key()
    with os.fdopen(fd, "wb") as handle:
        handle.write(key + b"\n")
    return key


class LocalFernetStore:
    """One encrypted file per account, ``<directory>/kraken-<slug>.fernet``; the reference is its name."""

    kind = LOCAL

    def __init__(self, *, directory: Path, key: bytes, key_source: str) -> None:
        from cryptography.fernet import Fernet

        try:
            self._fernet = Fernet(key)
        except (ValueError, binascii.Error, TypeError):
            raise ImproperlyConfigured(
                f"{key_source} does not hold a Fernet key (32 url-safe base64-encoded bytes); generate one "
                "with: python -c 'from cryptography.fernet import Fernet; "
                "print(Fernet.generate_key().decode())'"
            ) from None
        self.directory = Path(directory)
        self.key_source = key_source

    @classmethod
    def from_settings(cls) -> LocalFernetStore:
        key_file = getattr(settings, "KRAKEN_CREDENTIALS_KEY_FILE", None)
        if key_file:
            try:
                key = Path(key_file).read_bytes().strip()
            except OSError as exc:
                raise ImproperlyConfigured(
                    f"KRAKEN_CREDENTIALS_KEY_FILE={key_file}: cannot be read ({exc.strerror})."
                ) from None
            source = f"KRAKEN_CREDENTIALS_KEY_FILE={key_file}"
        elif getattr(settings, "PRODUCTION", False):
            raise ImproperlyConfigured(
                "AETHER_CREDENTIAL_STORE=local needs KRAKEN_CREDENTIALS_KEY_FILE (a Fernet key mounted as a "
                "file) in production."
            )
        else:
            path = Path(settings.KRAKEN_CREDENTIALS_DEV_KEY_FILE)
            key, source = load_or_create_fernet_key(path), f"the development key file {path}"
        return cls(directory=Path(settings.KRAKEN_CREDENTIALS_DIR), key=key, key_source=source)

    def _path(self, reference: str) -> Path:
        if not re.fullmatch(r"kraken-[-a-zA-Z0-9_]+\.fernet", reference):
            raise CredentialError(f"{reference!r} is not a local credential reference.")
        return self.directory / reference

    def put(self, account_slug: str, keys: KrakenKeys) -> str:
        _check_slug(account_slug)
        reference = f"kraken-{account_slug}.fernet"
        token = self._fernet.encrypt(json.dumps({"api_key": keys.api_key, "secret": keys.secret}).encode())
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=self.directory, prefix=".kraken-", suffix=".tmp")  # mode 0600
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(token)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(temporary, 0o600)
            os.replace(temporary, self._path(reference))
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return reference

    def get(self, reference: str) -> KrakenKeys:
        from cryptography.fernet import InvalidToken

        path = self._path(reference)
        try:
            token = path.read_bytes()
        except FileNotFoundError:
            raise CredentialNotFound(
                f"no stored Kraken key at {path}; store one with manage.py set_kraken_key."
            ) from None
        except OSError as exc:
            raise CredentialError(f"cannot read {path} ({exc.strerror}).") from None
        try:
            payload = json.loads(self._fernet.decrypt(token))
        except InvalidToken:
            raise CredentialError(
                f"cannot decrypt {path} with the configured key ({self.key_source}); it was written with "
                "another key. Restore the right key file, or store the Kraken key again."
            ) from None
        except ValueError:
            raise CredentialError(
                f"{path} decrypts but does not hold a key pair; store the key again."
            ) from None
        if not isinstance(payload, dict):
            raise CredentialError(f"{path} decrypts but does not hold a key pair; store the key again.")
        return _keys_from(payload.get("api_key"), payload.get("secret"), str(path))

    def delete(self, reference: str) -> None:
        self._path(reference).unlink(missing_ok=True)


# --- Kubernetes Secrets -------------------------------------------------------------------------------------

SECRET_PREFIX = "aether-kraken-"  # noqa: S105 (a name prefix, not a secret)
MANAGED_LABELS = {"app.kubernetes.io/part-of": "aether", "app.kubernetes.io/managed-by": "aether"}


def secret_name(account_slug: str) -> str:
    """``aether-kraken-<slug>`` as a DNS-1123 name. A slug that needs changing (upper case, ``_``) gets a
    short hash of the original, so two slugs never share a Secret."""
    _check_slug(account_slug)
    safe = account_slug.lower().replace("_", "-").strip("-")
    if safe != account_slug:
        safe = f"{safe}-{hashlib.sha256(account_slug.encode()).hexdigest()[:8]}".strip("-")
    return SECRET_PREFIX + safe


def _b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


class KubernetesSecretStore:
    """One Opaque Secret per account in ``namespace``; the reference is ``<namespace>/<secret name>``."""

    kind = KUBERNETES

    def __init__(self, *, namespace: str, configuration=None, timeout_seconds: float = 10.0) -> None:
        import kubernetes

        if not namespace:
            raise ImproperlyConfigured(
                "AETHER_CREDENTIAL_STORE=kubernetes needs AETHER_K8S_NAMESPACE (the platform's namespace)."
            )
        self.namespace = namespace
        self.timeout = timeout_seconds
        self._api = kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(configuration))
        self._host = configuration.host if configuration is not None else "the in-cluster API server"

    @classmethod
    def from_settings(cls) -> KubernetesSecretStore:
        import kubernetes

        configuration = kubernetes.client.Configuration()
        kubeconfig = getattr(settings, "AETHER_K8S_KUBECONFIG", None)
        try:
            if kubeconfig:
                kubernetes.config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
            else:
                kubernetes.config.load_incluster_config(client_configuration=configuration)
        except kubernetes.config.ConfigException as exc:
            where = f"AETHER_K8S_KUBECONFIG={kubeconfig}" if kubeconfig else "the in-cluster service account"
            raise ImproperlyConfigured(
                f"cannot configure the Kubernetes client from {where} ({exc}); outside a cluster, set "
                "AETHER_K8S_KUBECONFIG to a kubeconfig file."
            ) from None
        return cls(namespace=settings.AETHER_K8S_NAMESPACE, configuration=configuration)

    def _split(self, reference: str) -> tuple[str, str]:
        namespace, sep, name = reference.partition("/")
        if not sep or not namespace or not name.startswith(SECRET_PREFIX):
            raise CredentialError(f"{reference!r} is not a Kubernetes credential reference.")
        return namespace, name

    def _failure(self, exc: Exception, what: str) -> CredentialError:
        """A store error naming the operation and the API server's answer (its Status message, which
        never echoes a Secret's data), without the request."""
        from kubernetes.client.exceptions import ApiException

        if isinstance(exc, ApiException):
            message = exc.reason or ""
            with contextlib.suppress(ValueError, AttributeError):
                message = json.loads(exc.body or "{}").get("message") or message
            hint = (
                " (does the service account have get/create/update/delete on secrets?)"
                if exc.status
                in (
                    401,
                    403,
                )
                else ""
            )
            return CredentialError(f"Kubernetes refused to {what}: HTTP {exc.status} {message}{hint}")
        return CredentialError(
            f"Kubernetes API at {self._host} unreachable while trying to {what}: {type(exc).__name__}"
        )

    def put(self, account_slug: str, keys: KrakenKeys) -> str:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        name = secret_name(account_slug)
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "labels": {
                    **MANAGED_LABELS,
                    "aether.io/account": account_slug,
                    "aether.io/kind": "kraken-key",
                },
            },
            "type": "Opaque",
            "data": {"api_key": _b64(keys.api_key), "secret": _b64(keys.secret)},
        }
        try:
            try:
                self._api.create_namespaced_secret(self.namespace, body, _request_timeout=self.timeout)
            except ApiException as exc:
                if exc.status != 409:
                    raise
                self._api.replace_namespaced_secret(name, self.namespace, body, _request_timeout=self.timeout)
        except (ApiException, HTTPError) as exc:
            raise self._failure(exc, f"store Secret {self.namespace}/{name}") from None
        return f"{self.namespace}/{name}"

    def get(self, reference: str) -> KrakenKeys:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        namespace, name = self._split(reference)
        try:
            secret = self._api.read_namespaced_secret(name, namespace, _request_timeout=self.timeout)
        except ApiException as exc:
            if exc.status == 404:
                raise CredentialNotFound(
                    f"Secret {reference} does not exist; store the key again with manage.py set_kraken_key."
                ) from None
            raise self._failure(exc, f"read Secret {reference}") from None
        except HTTPError as exc:
            raise self._failure(exc, f"read Secret {reference}") from None
        data = secret.data or {}
        try:
            api_key = base64.b64decode(data.get("api_key") or "", validate=True).decode()
            secret_value = base64.b64decode(data.get("secret") or "", validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise CredentialError(f"Secret {reference} holds data that is not base64 text.") from None
        return _keys_from(api_key, secret_value, f"Secret {reference}")

    def delete(self, reference: str) -> None:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        namespace, name = self._split(reference)
        try:
            self._api.delete_namespaced_secret(name, namespace, _request_timeout=self.timeout)
        except ApiException as exc:
            if exc.status != 404:
                raise self._failure(exc, f"delete Secret {reference}") from None
        except HTTPError as exc:
            raise self._failure(exc, f"delete Secret {reference}") from None


# --- Choosing the store -------------------------------------------------------------------------------------


def credential_store(kind: str | None = None) -> CredentialStore:
    """The store of ``kind`` (default: ``AETHER_CREDENTIAL_STORE``), configured from settings."""
    kind = kind or getattr(settings, "AETHER_CREDENTIAL_STORE", None)
    if kind == LOCAL:
        return LocalFernetStore.from_settings()
    if kind == KUBERNETES:
        return KubernetesSecretStore.from_settings()
    raise ImproperlyConfigured(
        f"AETHER_CREDENTIAL_STORE={kind!r}: set it to 'kubernetes' (a Secret per account) or 'local' "
        "(Fernet-encrypted files, with KRAKEN_CREDENTIALS_KEY_FILE)."
    )


def kraken_keys_for(account) -> KrakenKeys:
    """The account's Kraken keys, loaded from the store that holds them. ``CredentialNotFound`` when none
    are set; ``CredentialError`` when the store cannot give them, or gives keys that are not the ones on
    record (fingerprint mismatch)."""
    credential = KrakenCredential.objects.filter(account=account).first()
    if credential is None:
        raise CredentialNotFound(
            f"{account.slug} has no Kraken API key; set one with "
            f"manage.py set_kraken_key --account {account.slug}."
        )
    keys = credential_store(credential.store).get(credential.reference)
    if fingerprint(keys) != credential.fingerprint:
        raise CredentialError(
            f"the Kraken key stored at {credential.reference} (fingerprint {fingerprint(keys)}) is not "
            f"the one on record for {account.slug} ({credential.fingerprint}); it was changed outside "
            f"Aether. Set it again with manage.py set_kraken_key --account {account.slug}."
        )
    return keys
