"""Run the whole platform in one terminal: web, Celery worker and beat, and the market feed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import Max

from trading.management.commands.prepare_embedded import PLAN
from trading.models import Candle
from trading.selectors import traded_instruments


class Command(BaseCommand):
    help = (
        "Start the web server, a Celery worker (trading, market_data and learning queues), Celery beat and "
        "the market feed as child processes, with their output prefixed, until Ctrl-C (or one of them "
        "exits: then all stop). With AETHER_MARKET_DATA=replay the feed plays prepare_embedded's replay "
        "files on an accelerated clock (EMBEDDED_SECONDS_PER_BAR per bar), resuming after the newest stored "
        "bar; with live, Kraken's WebSocket feed."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1:8000", help="address:port of the web server")
        parser.add_argument("--worker-threads", type=int, default=2, help="Celery worker threads")

    def handle(self, *args, **options) -> None:
        if settings.PRODUCTION:
            raise CommandError("run_platform is for development and embedded mode; production runs the chart")
        python = sys.executable
        manage = [python, str(Path(settings.BASE_DIR) / "manage.py")]
        processes = {
            "web": [*manage, "runserver", options["host"], "--noreload"],
            "worker": [
                python,
                "-m",
                "celery",
                "-A",
                "aether_site",
                "worker",
                "-Q",
                "trading,market_data,learning",
                "--pool=threads",
                f"--concurrency={options['worker_threads']}",
                "--without-mingle",
                "--without-gossip",
                "--without-heartbeat",
                "-l",
                "INFO",
            ],
            "beat": [python, "-m", "celery", "-A", "aether_site", "beat", "-l", "INFO"],
            "feed": [*manage, "run_market_feed", *self._feed_arguments()],
        }
        self.stdout.write(
            f"Aether: admin at http://{options['host']}/admin/ (sign in as a director; passwords were "
            "printed once, when the users were created). Ctrl-C stops everything."
        )
        self._supervise(processes)

    def _feed_arguments(self) -> list[str]:
        if settings.AETHER_MARKET_DATA == "live":
            return ["--source", "live"]
        plan_path = settings.EMBEDDED_DIR / PLAN
        if not plan_path.exists():
            raise CommandError(
                f"{plan_path} is missing: run manage.py prepare_embedded first (make run does)"
            )
        plan = json.loads(plan_path.read_text(encoding="utf-8"))
        if plan.get("synthetic"):
            self.stdout.write(
                self.style.WARNING(
                    "market data: SYNTHETIC (generated, not market data); the admin header says so"
                )
            )
        timeframe = settings.AETHER_TIMEFRAME
        newest = Candle.objects.filter(
            instrument__in=traded_instruments(), timeframe=timeframe, closed=True
        ).aggregate(newest=Max("open_time"))["newest"]
        arguments = ["--source", "replay"]
        for symbol, path in plan["replay"].items():
            arguments += ["--from-csv", f"{symbol}={path}"]
        seconds = Decimal(plan.get("seconds_per_bar") or settings.EMBEDDED_SECONDS_PER_BAR)
        arguments += ["--speed", str(timeframe * 60 / float(seconds))]
        if newest is not None:
            arguments += ["--since", (newest + timedelta(minutes=timeframe)).isoformat()]
        return arguments

    def _supervise(self, commands: dict[str, list[str]]) -> None:
        env = dict(os.environ)
        children: dict[str, subprocess.Popen] = {}
        stopping = threading.Event()

        def pump(name: str, stream) -> None:
            for line in iter(stream.readline, ""):
                self.stdout.write(f"{name:>6} | {line.rstrip()}")
            stream.close()

        def stop(*_):
            stopping.set()

        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            for name, command in commands.items():
                child = subprocess.Popen(  # noqa: S603 (our own interpreter and arguments)
                    command,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    bufsize=1,
                    start_new_session=True,  # Ctrl-C reaches this supervisor, which stops them in order
                )
                children[name] = child
                threading.Thread(target=pump, args=(name, child.stdout), daemon=True).start()
            played_out = False
            while not stopping.is_set():
                ended = {
                    name: child.returncode for name, child in children.items() if child.poll() is not None
                }
                if ended.get("feed") == 0:  # a replay played to its end: the rest keep running
                    del ended["feed"]
                    if not played_out:
                        played_out = True
                        self.stdout.write(
                            "the replay is played out; the platform keeps running (Ctrl-C stops)"
                        )
                if ended:
                    name, code = next(iter(ended.items()))
                    self.stderr.write(f"{name} exited with status {code}: stopping the platform")
                    break
                time.sleep(0.5)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._stop(children)

    def _stop(self, children: dict[str, subprocess.Popen]) -> None:
        for child in children.values():
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for name, child in children.items():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.stderr.write(f"{name} did not stop within 20 s: killed")
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
