"""A fake Kubernetes API server for Secrets, speaking the real REST protocol over real HTTP on 127.0.0.1.

It serves what the credential store uses from the core/v1 API, the way kube-apiserver answers it:

- ``GET    /api/v1/namespaces/{ns}/secrets``          → ``SecretList``
- ``POST   /api/v1/namespaces/{ns}/secrets``          → 201 ``Secret``; 409 ``AlreadyExists``
- ``GET    /api/v1/namespaces/{ns}/secrets/{name}``   → 200 ``Secret``; 404 ``NotFound``
- ``PUT    /api/v1/namespaces/{ns}/secrets/{name}``   → 200 ``Secret``; 404; 409 ``Conflict`` on a stale
  ``resourceVersion``
- ``DELETE /api/v1/namespaces/{ns}/secrets/{name}``   → 200 ``Status`` Success; 404

Errors are ``Status`` objects (``kind: Status``, ``status: Failure``, ``reason``, ``code``, ``details``)
with the real messages (``secrets "x" not found``, ``secrets "x" already exists``,
``namespaces "x" not found``).
``data`` values must be base64 (``stringData`` is folded into ``data`` on write, as the API server does);
names must be DNS-1123 subdomains (else 422 ``Invalid``). With ``token`` set, requests need
``Authorization: Bearer <token>`` (else 401). Each request is logged (method, path) for assertions; the
stored objects are readable with :meth:`FakeKubernetes.secret`.

Usage::

    with FakeKubernetes(namespaces={"aether"}) as fake:
        configuration = kubernetes.client.Configuration(host=fake.url)
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import json
import re
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_SECRETS_PATH = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/secrets(?:/(?P<name>[^/]+))?$")


@dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str


def _status(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    status = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details is not None:
        status["details"] = details
    return status


class _ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.body = _status(code, reason, message, details)


def _not_found(kind: str, name: str) -> _ApiError:
    return _ApiError(404, "NotFound", f'{kind} "{name}" not found', {"name": name, "kind": kind})


class FakeKubernetes:
    """The Secrets part of kube-apiserver, in memory, behind a real HTTP server."""

    def __init__(self, *, namespaces: set[str] | None = None, token: str | None = None) -> None:
        self.namespaces = set(namespaces or {"aether"})
        self.token = token
        self._secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self._version = 1000
        self._lock = threading.Lock()
        self._log: list[RequestRecord] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> FakeKubernetes:
        self._server = _Server(self)
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-k8s", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeKubernetes:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeKubernetes is not running: call start() or use it as a context manager")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # ---------------------------------------------------------------- inspection

    def secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The stored Secret object (a deep copy), or ``None``."""
        with self._lock:
            found = self._secrets.get((namespace, name))
            return copy.deepcopy(found)

    def secret_names(self, namespace: str) -> list[str]:
        with self._lock:
            return sorted(name for ns, name in self._secrets if ns == namespace)

    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._log)

    # ---------------------------------------------------------------- protocol

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
        path = urlsplit(target).path
        with self._lock:
            self._log.append(RequestRecord(method, path))
            try:
                self._authorize(headers)
                match = _SECRETS_PATH.match(path)
                if match is None:
                    raise _ApiError(404, "NotFound", "the server could not find the requested resource")
                namespace, name = match["ns"], match["name"]
                if name is None:
                    if method == "GET":
                        return 200, self._list(namespace)
                    if method == "POST":
                        return 201, self._create(namespace, self._json(body))
                else:
                    if method == "GET":
                        return 200, self._read(namespace, name)
                    if method == "PUT":
                        return 200, self._replace(namespace, name, self._json(body))
                    if method == "DELETE":
                        return 200, self._delete(namespace, name)
                raise _ApiError(405, "MethodNotAllowed", f"the server does not allow this method: {method}")
            except _ApiError as exc:
                return exc.code, exc.body

    def _authorize(self, headers: dict[str, str]) -> None:
        if self.token is None:
            return
        given = {key.lower(): value for key, value in headers.items()}.get("authorization", "")
        if given != f"Bearer {self.token}":
            raise _ApiError(401, "Unauthorized", "Unauthorized")

    @staticmethod
    def _json(body: bytes) -> dict[str, Any]:
        try:
            value = json.loads(body or b"null")
        except ValueError as exc:
            raise _ApiError(400, "BadRequest", f"the object provided is unrecognized: {exc}") from None
        if not isinstance(value, dict):
            raise _ApiError(400, "BadRequest", "the object provided is unrecognized")
        return value

    def _namespace(self, namespace: str) -> None:
        if namespace not in self.namespaces:
            raise _not_found("namespaces", namespace)

    def _list(self, namespace: str) -> dict[str, Any]:
        items = [copy.deepcopy(obj) for (ns, _), obj in sorted(self._secrets.items()) if ns == namespace]
        return {
            "kind": "SecretList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": str(self._version)},
            "items": items,
        }

    def _read(self, namespace: str, name: str) -> dict[str, Any]:
        found = self._secrets.get((namespace, name))
        if found is None:
            raise _not_found("secrets", name)
        return copy.deepcopy(found)

    def _validated(self, namespace: str, body: dict[str, Any], name: str | None) -> dict[str, Any]:
        if body.get("kind", "Secret") != "Secret" or body.get("apiVersion", "v1") != "v1":
            raise _ApiError(400, "BadRequest", "the API version in the data (v1) does not match the expected")
        metadata = dict(body.get("metadata") or {})
        given_name = metadata.get("name")
        if name is not None and given_name != name:
            raise _ApiError(400, "BadRequest", "the name of the object does not match the name on the URL")
        if not given_name:
            raise _ApiError(422, "Invalid", 'Secret "" is invalid: metadata.name: Required value')
        if len(given_name) > 253 or not _DNS_SUBDOMAIN.match(given_name):
            raise _ApiError(
                422,
                "Invalid",
                f'Secret "{given_name}" is invalid: metadata.name: Invalid value: "{given_name}": '
                "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
                "'-' or '.'",
                {"name": given_name, "kind": "Secret"},
            )
        if metadata.get("namespace", namespace) != namespace:
            raise _ApiError(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the request",
            )
        data = dict(body.get("data") or {})
        for key, value in data.items():
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, TypeError, ValueError):
                raise _ApiError(
                    400, "BadRequest", f"illegal base64 data in Secret data key {key!r}"
                ) from None
        for key, value in (body.get("stringData") or {}).items():
            data[key] = base64.b64encode(str(value).encode()).decode()
        return {
            "kind": "Secret",
            "apiVersion": "v1",
            "metadata": {
                "name": given_name,
                "namespace": namespace,
                "labels": dict(metadata.get("labels") or {}),
                "annotations": dict(metadata.get("annotations") or {}),
                "resourceVersion": metadata.get("resourceVersion"),
            },
            "type": body.get("type") or "Opaque",
            "data": data,
            "immutable": body.get("immutable"),
        }

    def _next_version(self) -> str:
        self._version += 1
        return str(self._version)

    @staticmethod
    def _now() -> str:
        return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")

    def _create(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self._namespace(namespace)
        obj = self._validated(namespace, body, None)
        name = obj["metadata"]["name"]
        if (namespace, name) in self._secrets:
            raise _ApiError(
                409, "AlreadyExists", f'secrets "{name}" already exists', {"name": name, "kind": "secrets"}
            )
        obj["metadata"] |= {
            "uid": str(uuid.uuid4()),
            "resourceVersion": self._next_version(),
            "creationTimestamp": self._now(),
        }
        self._secrets[(namespace, name)] = self._clean(obj)
        return copy.deepcopy(self._secrets[(namespace, name)])

    def _replace(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self._namespace(namespace)
        current = self._secrets.get((namespace, name))
        if current is None:
            raise _not_found("secrets", name)
        obj = self._validated(namespace, body, name)
        given_version = obj["metadata"].get("resourceVersion")
        if given_version and given_version != current["metadata"]["resourceVersion"]:
            raise _ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on secrets "{name}": the object has been modified; '
                "please apply your changes to the latest version and try again",
                {"name": name, "kind": "secrets"},
            )
        if current.get("immutable"):
            raise _ApiError(
                422, "Invalid", f'Secret "{name}" is invalid: data: Forbidden: field is immutable'
            )
        obj["metadata"] |= {
            "uid": current["metadata"]["uid"],
            "creationTimestamp": current["metadata"]["creationTimestamp"],
            "resourceVersion": self._next_version(),
        }
        self._secrets[(namespace, name)] = self._clean(obj)
        return copy.deepcopy(self._secrets[(namespace, name)])

    def _delete(self, namespace: str, name: str) -> dict[str, Any]:
        current = self._secrets.pop((namespace, name), None)
        if current is None:
            raise _not_found("secrets", name)
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": {"name": name, "kind": "secrets", "uid": current["metadata"]["uid"]},
        }

    @staticmethod
    def _clean(obj: dict[str, Any]) -> dict[str, Any]:
        """Drop empty optional fields, as the API server's serialisation does."""
        metadata = {key: value for key, value in obj["metadata"].items() if value not in (None, {}, "")}
        cleaned = {key: value for key, value in obj.items() if value is not None}
        cleaned["metadata"] = metadata
        return cleaned


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, fake: FakeKubernetes) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.fake = fake


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeKubernetes/1.0"
    disable_nagle_algorithm = True
    server: _Server

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default stderr access log (the fake keeps its own)."""

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, payload = self.server.fake.handle(method, self.path, dict(self.headers.items()), body)
        data = json.dumps(payload).encode()
        with contextlib.suppress(OSError):
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
