"""Benchmark: `make run` from a fresh clone — how long until the platform answers, and until the first
simulated trade.

Clones this repository's committed HEAD into a scratch folder (with ``../shared`` beside it, as CI has
it), runs ``make run`` there with nothing of this shell's database, Redis or environment settings (the
Makefile's embedded mode drops them anyway), and polls:
- ``up_s``: from ``make run`` to the admin's login page answering (uv sync of a new ``.venv``, migrate,
  universe, accounts, history, initial models, beat schedule, web, worker, beat and feed started);
- ``first_fill_s``: from ``make run`` to the first fill in the clone's SQLite database;
- ``first_fill_after_up_s``: the same, counted from the admin answering.
It then keeps watching for ``--watch`` seconds after the first fill and reports what the platform did
(cycles by status, fills, NAV snapshots, audit events), stops the platform with SIGTERM (run_platform
stops its processes in order) and removes the clone unless ``--keep``. Needs uv (the Makefile finds it
on PATH or installs it into the clone's .tools/). Usage:
    uv run python bench/make_run.py [--timeout 600] [--watch 60] [--port 8765] [--keep]
The last line is the figures as name=value pairs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def admin_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (loopback, our own server)
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def count(database: Path, table: str, where: str = "") -> int | None:
    """Rows of ``table`` (``None`` while the database or the table does not exist yet)."""
    if not database.exists():
        return None
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=2) as connection:
            return connection.execute(f"SELECT COUNT(*) FROM {table} {where}").fetchone()[0]  # noqa: S608
    except sqlite3.Error:
        return None


def stop(process: subprocess.Popen, clone: Path) -> None:
    """SIGTERM to make and run_platform (one process group); run_platform stops web, worker, beat and
    feed. Anything of the clone still running after 30 s is killed."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    subprocess.run(["pkill", "-KILL", "-f", str(clone)], check=False)  # noqa: S603, S607


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=600, help="give up after this many seconds")
    parser.add_argument("--watch", type=float, default=60, help="seconds to keep watching after the fill")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--keep", action="store_true", help="leave the clone (and its log) in place")
    args = parser.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"bench/make_run.py: {SHARED} not found (the shared data sits beside the repository)")

    scratch = Path(tempfile.mkdtemp(prefix="aether-make-run-"))
    clone = scratch / "aether"
    (scratch / "shared").symlink_to(SHARED)
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)  # noqa: S603, S607
    head = subprocess.run(  # noqa: S603
        ["git", "-C", str(clone), "rev-parse", "--short", "HEAD"],  # noqa: S607
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("DATABASE_URL", "REDIS_URL", "AETHER_ENV", "VIRTUAL_ENV", "DJANGO_SETTINGS_MODULE")
    }
    log_path = scratch / "make-run.log"
    database = clone / "var" / "aether.sqlite3"
    login = f"http://127.0.0.1:{args.port}/admin/login/"
    print(f"clone of {head} in {clone}; log {log_path}", flush=True)

    up_s = first_fill_s = None
    with open(log_path, "w") as log:
        started = time.perf_counter()
        process = subprocess.Popen(  # noqa: S603
            ["make", "run", f"HOST=127.0.0.1:{args.port}"],  # noqa: S607
            cwd=clone,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            while True:
                elapsed = time.perf_counter() - started
                if process.poll() is not None:
                    sys.exit(f"bench/make_run.py: make run exited with {process.returncode}; see {log_path}")
                if elapsed > args.timeout:
                    sys.exit(f"bench/make_run.py: no fill after {args.timeout:.0f} s; see {log_path}")
                if up_s is None and admin_answers(login):
                    up_s = elapsed
                    print(f"admin answering after {up_s:.1f} s", flush=True)
                if first_fill_s is None and (count(database, "trading_fill") or 0) > 0:
                    first_fill_s = elapsed
                    print(f"first fill after {first_fill_s:.1f} s", flush=True)
                if first_fill_s is not None and up_s is not None:
                    break
                time.sleep(0.25)
            time.sleep(args.watch)
            cycles = {
                status: count(database, "trading_cycle", f"WHERE status = '{status}'")
                for status in ("done", "skipped", "failed", "running")
            }
            fills = count(database, "trading_fill")
            navs = count(database, "risk_navsnapshot")
            audits = count(database, "governance_auditevent")
        finally:
            stop(process, clone)
    errors = [
        line.rstrip()
        for line in log_path.read_text(errors="replace").splitlines()
        if " ERROR" in line or "Traceback" in line
    ]
    print(
        f"totals {args.watch:.0f} s after the first fill: cycles {cycles}, fills {fills}, "
        f"NAV snapshots {navs}, audit events {audits}; {len(errors)} error or traceback lines in the log"
    )
    for line in errors[:10]:
        print(f"  {line}")
    if not args.keep:
        shutil.rmtree(scratch, ignore_errors=True)
    after_up = first_fill_s - up_s
    print(
        f"commit={head} up_s={up_s:.1f} first_fill_s={first_fill_s:.1f} first_fill_after_up_s={after_up:.1f}"
    )


if __name__ == "__main__":
    main()
