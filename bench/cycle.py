"""Benchmark: a strategy-cycle round — every simulated account's cycle on every traded pair for the newest
closed bar — and how it grows from 3 to 30 to 100 accounts.

Data: real hourly bars, the last ``--bars`` up to the end of Kraken's hourly XBTUSD file (2023-01-07):
BTC/USD and ETH/USD from Kraken's hourly files, SOL/USD from Binance's hourly SOLUSDT file (the shared data
has no Kraken hourly SOL; USDT prices, used for their shape). The times are shifted by a whole number of
hours so that the newest bar is the one that closed at the last full hour (the cycle refuses a stale bar);
the file's last hours are held back and stored as the clock reaches them, so a run that crosses the hour
still decides on a fresh bar. Prices and volumes are as recorded. The universe comes from the committed
AssetPairs snapshot (``sync_universe --from-file``); the feed's last price of each pair is its newest
close, stamped now.

Accounts: simulated, each funded with 100,000 USD through ``sim_balance_set``. Before anything is timed,
every account runs one warm-up cycle per pair on the bar before (it is stale by then, so it skips, but it
creates what an account's first cycle creates: thresholds, policies, the first NAV snapshot), so the timed
round is an account's steady state; the warm-up's time is printed as well. Each round size uses its own
accounts (a finished cycle is never run twice).

Strategy: ``--strategy rule`` runs without a champion (the rule strategy, as a fresh install does);
``champion`` first trains a pooled model on the stored bars (``model_train``, not timed) and promotes it;
``both`` (the default) measures the rule strategy, then the champion, on separate accounts.

What "in-process" means: one Python process calls ``trading.services.cycle.account_cycles_run`` account
after account (each runs the account's 3 pairs one after the other, as the ``trading.account_cycles`` task
that the feed's ``bar_closed`` fan-out queues per account does), sequentially, on one database connection,
with the process's per-bar market cache (features and the model's probability computed once per pair and
bar, as in a long-lived worker). Production runs the same function from the ``trading.account_cycles``
Celery task on workers in parallel; ``--celery`` also measures that: a real worker (prefork,
``--concurrency 2``, started once before the first round) on Redis (needs REDIS_URL and PostgreSQL), the
round timed from the first task sent to the last cycle finished. Each of the worker's processes computes a
bar's market inputs once (its own cache), and a task that meets another cycle of its account still
running is retried after ``CYCLE_BUSY_RETRY_SECONDS``, as in production.

Runs on PostgreSQL when DATABASE_URL names one (a throwaway database ``<name>_bench`` beside it, created
and dropped here), else on a fresh SQLite file under var/. ``DEBUG`` is off, as in production. Usage:
    uv run python bench/cycle.py [--sizes 3,30,100] [--strategy rule|champion|both] [--bars 3000]
                                 [--profile] [--celery]
The last line is the figures as name=value pairs (round seconds, ms per account and, in-process, SQL
statements per cycle for each size; with ``both``, the champion's figures carry a ``champion_`` prefix).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "market"
FILES = {
    "BTC/USD": SHARED / "kraken" / "XBTUSD_60.csv",
    "ETH/USD": SHARED / "kraken" / "ETHUSD_60.csv",
    "SOL/USD": SHARED / "binance" / "SOL_USDT-1h_2022-01_2023-03.json",
}
PAIRS = tuple(FILES)
FUNDING = Decimal("100000")
sys.path.insert(0, str(ROOT))

from bench.ingest import drop_postgres_database, recreate_postgres_database  # noqa: E402


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def read_bars(path: Path) -> list[tuple[datetime, str, str, str, str, str]]:
    """(open time, open, high, low, close, volume) as recorded, oldest first."""
    if path.suffix == ".json":
        rows = json.loads(path.read_text())
        return [
            (datetime.fromtimestamp(row[0] / 1000, UTC), *(repr(float(value)) for value in row[1:6]))
            for row in rows
        ]
    bars = []
    for line in path.read_text().splitlines():
        fields = line.split(",")
        bars.append((datetime.fromtimestamp(int(fields[0]), UTC), *fields[1:6]))
    return bars


#: Real bars held back, stored one by one as the clock reaches them, so that a run crossing the hour still
#: decides on a fresh bar (a cycle skips a bar older than one timeframe).
RESERVE_HOURS = 6


class History:
    """The last ``bars`` hours up to the end of the BTC file for every pair, shifted by whole hours so that
    the newest stored bar is the one that closed at the last full hour; the file's last ``RESERVE_HOURS``
    bars are stored when the clock reaches their (shifted) close."""

    def __init__(self, universe: dict, *, bars: int, now: datetime) -> None:
        series = {pair: read_bars(path) for pair, path in FILES.items()}
        end = series["BTC/USD"][-1][0]
        start = end - timedelta(hours=bars + RESERVE_HOURS - 1)
        self.shift = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=RESERVE_HOURS - 1) - end
        self.universe = universe
        self.rows = {}
        for pair, rows in series.items():
            window = [row for row in rows if start <= row[0] <= end]
            if not window or window[-1][0] != end:
                sys.exit(f"bench/cycle.py: {FILES[pair]} has no bar at {end.isoformat()}")
            self.rows[pair] = [(moment + self.shift, *values) for moment, *values in window]
        self.stored_through = None

    def newest(self) -> datetime:
        """Store every bar closed by now; the open time of the newest (the bar a round decides on)."""
        from django.utils import timezone

        from trading.candles import CandleRow
        from trading.models import Candle
        from trading.services import candles_upsert

        newest = timezone.now().replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
        if newest > self.rows["BTC/USD"][-1][0]:
            sys.exit(f"bench/cycle.py: ran past the {RESERVE_HOURS} hours of bars held back")
        if newest != self.stored_through:
            for pair, rows in self.rows.items():
                candles_upsert(
                    instrument=self.universe[pair],
                    timeframe=60,
                    rows=[
                        CandleRow(moment, *(Decimal(value) for value in values))
                        for moment, *values in rows
                        if moment <= newest and (self.stored_through is None or moment > self.stored_through)
                    ],
                    source=Candle.Source.KRAKEN_CSV,
                )
            self.stored_through = newest
        return newest


def feed_touch(universe: dict, newest_open: datetime) -> None:
    """The feed's view: last price = the newest close, heard from just now."""
    from django.utils import timezone

    from trading.models import Candle, FeedStatus

    for instrument in universe.values():
        close = Candle.objects.get(instrument=instrument, timeframe=60, open_time=newest_open).close
        FeedStatus.objects.update_or_create(
            instrument=instrument,
            defaults={"last_price": close, "last_message_at": timezone.now(), "stale": False},
        )


def accounts_create(prefix: str, count: int) -> list:
    from accounts.models import Account
    from governance.actors import SystemActor
    from trading.services.orders import sim_balance_set

    actor = SystemActor("bench")
    accounts = []
    for index in range(count):
        account = Account.objects.create(
            name=f"Bench {prefix} {index}", slug=f"bench-{prefix}-{index}", kind="director"
        )
        sim_balance_set(account=account, asset="USD", amount=FUNDING, actor=actor, reason="bench funding")
        accounts.append(account)
    return accounts


def champion_train(universe: dict) -> str:
    from django.contrib.auth import get_user_model

    from governance.actors import SystemActor
    from learning.models import ModelVersion
    from learning.services import default_spec, model_promote, model_train

    started = time.perf_counter()
    outcome = model_train(
        actor=SystemActor("bench"),
        instruments=[universe[pair] for pair in PAIRS],
        timeframe=60,
        scope=ModelVersion.POOLED,
        spec=default_spec(timeframe=60, n_folds=3),
        promote=False,
    )
    director = get_user_model().objects.create_superuser(username="bench-director", password=None)
    version = model_promote(actor=director, version=outcome.version, reason="benchmark champion")
    return (
        f"champion: pooled {version.kind} model #{version.pk} on {', '.join(PAIRS)}, trained in "
        f"{time.perf_counter() - started:.1f} s (not timed), OOS score {outcome.result.score:.3f}"
    )


def round_in_process(accounts: list, universe: dict, bar_open: datetime, profiler=None) -> tuple[float, int]:
    """(seconds, SQL statements sent) of one in-process round. The statements are counted by a connection
    wrapper (a deterministic measure where the machine is shared: the time is not)."""
    from django.db import connection

    from trading.services.cycle import account_cycles_run

    statements = 0

    def count(execute, sql, params, many, context):
        nonlocal statements
        statements += 1
        return execute(sql, params, many, context)

    if profiler is not None:
        profiler.enable()
    started = time.perf_counter()
    with connection.execute_wrapper(count):
        for account in accounts:  # one task per account, as the feed's bar_closed fan-out queues them
            cycles = account_cycles_run(account=account, bar_open_time=bar_open)
            if len(cycles) != len(PAIRS):
                sys.exit(f"bench/cycle.py: {account.slug} ran {len(cycles)} cycles, not {len(PAIRS)}")
    elapsed = time.perf_counter() - started
    if profiler is not None:
        profiler.disable()
    return elapsed, statements


def round_on_celery(accounts: list, universe: dict, bar_open: datetime, timeout: float = 600) -> float:
    from trading import tasks
    from trading.models import Cycle, CycleStatus

    ids = [account.pk for account in accounts]
    expected = len(ids) * len(PAIRS)
    started = time.perf_counter()
    for account_id in ids:  # one task per account, as the feed's bar_closed fan-out queues them
        tasks.account_cycles.delay(account_id, bar_open.isoformat())
    finished = Cycle.objects.filter(
        account_id__in=ids,
        bar_open_time=bar_open,
        status__in=[CycleStatus.DONE, CycleStatus.SKIPPED, CycleStatus.FAILED],
    )
    while finished.count() < expected:
        if time.perf_counter() - started > timeout:
            sys.exit(
                f"bench/cycle.py: the worker finished {finished.count()} of {expected} cycles in {timeout} s"
            )
        # A quarter of a second: the poll is a query the round's workers share the machine's cores with,
        # and its granularity is taken off the figure below anyway.
        time.sleep(0.25)
    last = max(cycle.finished_at for cycle in finished)
    # From the first task sent to the last cycle finished (the poll's granularity not included).
    return time.perf_counter() - started - max(0.0, (datetime.now(UTC) - last).total_seconds())


def round_summary(accounts: list, bar_open: datetime) -> str:
    from collections import Counter

    from trading.models import Cycle, Order

    cycles = list(Cycle.objects.filter(account__in=accounts, bar_open_time=bar_open))
    statuses = Counter(cycle.status for cycle in cycles)
    strategies = Counter(cycle.strategy for cycle in cycles)
    orders = Order.objects.filter(account__in=accounts, created_at__gte=min(c.started_at for c in cycles))
    median_ms = sorted(cycle.duration_ms for cycle in cycles)[len(cycles) // 2]
    failed = [cycle.error for cycle in cycles if cycle.status == "failed"]
    if failed:
        sys.exit(f"bench/cycle.py: {len(failed)} cycles failed, e.g. {failed[0]}")
    return (
        f"{len(cycles)} cycles {dict(statuses)}, strategies {dict(strategies)}, {orders.count()} orders, "
        f"median cycle {median_ms:.1f} ms (as recorded on the row)"
    )


def worker_start(queue_dir: str) -> subprocess.Popen:
    log = open(Path(queue_dir) / "worker.log", "w")  # noqa: SIM115
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "aether_site",
            "worker",
            "-Q",
            "trading",
            "--concurrency",
            "2",
            "--pool",
            "prefork",
            "--loglevel",
            "warning",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        cwd=ROOT,
        env=os.environ.copy(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="3,30,100", help="account counts, comma separated")
    parser.add_argument("--strategy", choices=("rule", "champion", "both"), default="both")
    parser.add_argument("--bars", type=int, default=3000, help="hourly bars stored per pair (≥ 300)")
    parser.add_argument(
        "--profile",
        nargs="?",
        const="",
        metavar="STATS_FILE",
        help="cProfile the largest in-process round of the last strategy (its time then includes the "
        "profiler) and print where the time goes; with a path, also dump the raw stats there",
    )
    parser.add_argument("--celery", action="store_true", help="also run each round on a real worker")
    args = parser.parse_args()
    sizes = sorted(int(size) for size in args.sizes.split(","))
    if args.bars < 300:
        sys.exit("bench/cycle.py: --bars must be at least 300 (features need their warm-up)")
    for path in FILES.values():
        if not path.is_file():
            sys.exit(f"bench/cycle.py: {path} not found (the shared market data sits beside the repository)")

    scratch = bench_db = admin_url = None
    url = os.environ.get("DATABASE_URL", "")
    if url.startswith(("postgres://", "postgresql://")):
        bench_db, admin_url = recreate_postgres_database(url)
        os.environ["DATABASE_URL"] = url.rsplit("/", 1)[0] + "/" + bench_db
    else:
        if args.celery:
            sys.exit("bench/cycle.py: --celery needs PostgreSQL and Redis (DATABASE_URL, REDIS_URL)")
        (ROOT / "var").mkdir(exist_ok=True)
        scratch = tempfile.mkdtemp(prefix="aether-bench-", dir=ROOT / "var")
        os.environ["DATABASE_URL"] = f"sqlite:///{scratch}/bench.sqlite3"
    if args.celery and not os.environ.get("REDIS_URL"):
        sys.exit("bench/cycle.py: --celery needs REDIS_URL (the worker's broker)")
    if not args.celery:
        os.environ.pop("REDIS_URL", None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aether_site.settings")
    os.environ.setdefault("LOG_LEVEL", "warning")
    os.environ.setdefault("DEBUG", "false")
    queue_dir = tempfile.mkdtemp(prefix="aether-bench-celery-")
    os.environ["CELERY_EMBEDDED_DIR"] = queue_dir  # what cycles queue (NAV snapshots…) stays out of var/
    os.environ["LEARNING_ARTIFACT_ROOT"] = f"{queue_dir}/artifacts"
    if scratch:
        os.environ.setdefault("KRAKEN_LOCK_DIR", f"{scratch}/locks")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection
    from django.utils import timezone

    from trading.models import Instrument

    profiler = None
    if args.profile is not None:
        import cProfile

        profiler = cProfile.Profile()
    strategies = ["rule", "champion"] if args.strategy == "both" else [args.strategy]
    figures: dict[str, float] = {}
    worker = None
    print(f"load average at start: {loadavg()}")
    try:
        call_command("migrate", verbosity=0)
        call_command("sync_universe", "--from-file", stdout=open(os.devnull, "w"))  # noqa: SIM115
        universe = {pair: Instrument.objects.get(symbol=pair) for pair in PAIRS}
        history = History(universe, bars=args.bars, now=timezone.now())
        newest = history.newest()
        vendor = connection.vendor
        print(
            f"engine: {vendor}; {args.bars} hourly bars per pair ({', '.join(PAIRS)}), newest bar opened "
            f"{newest:%Y-%m-%d %H:%M} UTC; sizes {sizes}; strategies {strategies}"
        )
        if args.celery:
            # Messages another run left on the broker (e.g. bench/order_path.py's fill snapshots, for
            # accounts of a database since dropped) would be worked through before this round's tasks.
            from aether_site.celery import app

            with app.connection_for_write() as broker:
                purged = app.control.purge(connection=broker)
            if purged:
                print(f"purged {purged} message(s) other runs left on the broker's queues")
            worker = worker_start(queue_dir)
            time.sleep(8)  # the worker's start-up (Django, the app) is not part of a round
        for strategy in strategies:
            if strategy == "champion":
                print(champion_train(universe))
            prefix = "" if strategy == "rule" or len(strategies) == 1 else "champion_"
            for size in sizes:
                for mode in ("in_process", "celery") if args.celery else ("in_process",):
                    accounts = accounts_create(f"{strategy}-{mode}-{size}", size)
                    newest = history.newest()
                    warm, _ = round_in_process(accounts, universe, newest - timedelta(hours=1))
                    newest = history.newest()
                    feed_touch(universe, newest)
                    before = loadavg()
                    statements = None
                    if mode == "in_process":
                        profiled = profiler if size == max(sizes) and strategy == strategies[-1] else None
                        seconds, statements = round_in_process(accounts, universe, newest, profiled)
                    else:
                        seconds = round_on_celery(accounts, universe, newest)
                    after = loadavg()
                    per_account_ms = seconds / size * 1000
                    label = prefix + ("" if mode == "in_process" else "celery_")
                    figures[f"{label}round_{size}_s"] = seconds
                    figures[f"{label}per_account_ms_{size}"] = per_account_ms
                    if statements is not None:
                        figures[f"{label}statements_per_cycle_{size}"] = statements / (size * len(PAIRS))
                    print(
                        f"[{strategy}, {mode.replace('_', '-')}] {size} accounts x {len(PAIRS)} pairs: round "
                        f"{seconds:.3f} s, {per_account_ms:.1f} ms per account, "
                        f"{size * len(PAIRS) / seconds:.1f} cycles/s "
                        f"(warm-up round {warm:.2f} s); load {before} → {after}"
                    )
                    print(f"    {round_summary(accounts, newest)}")
                    if statements is not None:
                        print(
                            f"    {statements / (size * len(PAIRS)):.1f} SQL statements per cycle "
                            "(counted by a connection wrapper)"
                        )
        connection.close()
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=30)
        if bench_db:
            drop_postgres_database(admin_url, bench_db)
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(queue_dir, ignore_errors=True)

    if profiler is not None:
        import pstats

        if args.profile:
            profiler.dump_stats(args.profile)
        stats = pstats.Stats(profiler).strip_dirs()
        print("--- cProfile of the largest in-process round, by cumulative time ---")
        stats.sort_stats("cumulative").print_stats(70)
        print("--- by own time ---")
        stats.sort_stats("tottime").print_stats(30)
    first, last = min(sizes), max(sizes)
    for prefix in ("", "champion_") if len(strategies) == 2 else ("",):
        growth = figures[f"{prefix}per_account_ms_{last}"] / figures[f"{prefix}per_account_ms_{first}"]
        print(
            f"{prefix or 'rule '}per-account growth {first} → {last} accounts: x{growth:.2f} (1.00 = linear)"
        )
    print(f"load average at end: {loadavg()}")
    print(f"engine={vendor} " + " ".join(f"{name}={value:.3f}" for name, value in figures.items()))


if __name__ == "__main__":
    main()
