"""Real platform processes for the end-to-end tests: a Celery worker and beat, each in its own process group
with its own environment, logging to a file that the test prints when it fails."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

REPO_ROOT = Path(__file__).resolve().parents[2]
#: The worker consumes every queue the platform routes to (aether_site/settings.py CELERY_TASK_ROUTES).
WORKER_QUEUES = "trading,market_data,learning"


def database_url(settings_dict: dict) -> str:
    """A ``postgres://`` URL for the database Django is connected to (pytest-django's ``test_<name>``)."""
    user = quote(settings_dict.get("USER") or "", safe="")
    password = settings_dict.get("PASSWORD") or ""
    credentials = f"{user}:{quote(password, safe='')}@" if password else (f"{user}@" if user else "")
    host = settings_dict.get("HOST") or "127.0.0.1"
    port = f":{settings_dict['PORT']}" if settings_dict.get("PORT") else ""
    return f"postgres://{credentials}{host}{port}/{settings_dict['NAME']}"


def redis_database(url: str) -> int:
    """The database number of a ``redis://`` URL (0 when it names none)."""
    path = urlsplit(url).path.strip("/")
    return int(path) if path else 0


def with_redis_database(url: str, number: int) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{number}", parts.query, parts.fragment))


@dataclass
class Process:
    """One long-running command in its own session (so its whole process group can be killed)."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_dir: Path
    popen: subprocess.Popen | None = None
    logs: list[Path] = field(default_factory=list)

    def start(self) -> Process:
        if self.popen is not None and self.popen.poll() is None:
            raise RuntimeError(f"{self.name} is already running (pid {self.popen.pid})")
        log = self.log_dir / f"{self.name}-{len(self.logs) + 1}.log"
        self.logs.append(log)
        with log.open("wb") as handle:
            self.popen = subprocess.Popen(
                self.argv,
                cwd=REPO_ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: killpg reaches the pool's children too
            )
        return self

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log_text(self) -> str:
        return self.logs[-1].read_text(errors="replace") if self.logs else ""

    def wait_for_log(self, needle: str, *, timeout: float) -> None:
        """Wait until the current log contains ``needle``; fail if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.log_text():
                return
            if not self.running:
                code = self.popen.returncode
                raise AssertionError(f"{self.name} exited ({code}) before logging {needle!r}")
            time.sleep(0.1)
        raise AssertionError(f"{self.name} did not log {needle!r} within {timeout:g} s")

    def kill(self) -> None:
        """SIGKILL the whole process group at once (no warm shutdown: nothing is acknowledged or restored)."""
        if self.popen is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)

    def stop(self, *, grace: float = 10.0) -> None:
        """SIGTERM the process group, then SIGKILL whatever is left after ``grace`` seconds."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=grace)
        with contextlib.suppress(ProcessLookupError):  # the pool's children may outlive their parent
            os.killpg(self.popen.pid, signal.SIGKILL)
        if self.popen.poll() is None:
            self.popen.wait(timeout=10)


def celery(*arguments: str) -> list[str]:
    """``celery -A aether_site …`` with this interpreter (the project's environment, as ``uv run`` gives)."""
    return [sys.executable, "-m", "celery", "-A", "aether_site", *arguments]


def worker(env: dict[str, str], log_dir: Path, *, concurrency: int = 2) -> Process:
    return Process(
        "worker",
        celery(
            "worker",
            "-Q",
            WORKER_QUEUES,
            "--pool=prefork",
            f"--concurrency={concurrency}",
            "--without-mingle",
            "--without-gossip",
            "--without-heartbeat",
            f"--hostname=e2e-{os.getpid()}@%h",
            "--loglevel=INFO",
        ),
        env,
        log_dir,
    )


def beat(env: dict[str, str], log_dir: Path) -> Process:
    return Process(
        "beat",
        celery(
            "beat",
            "--scheduler=django_celery_beat.schedulers:DatabaseScheduler",
            f"--pidfile={log_dir / 'beat.pid'}",
            "--loglevel=INFO",
        ),
        env,
        log_dir,
    )
