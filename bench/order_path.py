"""Benchmark: the order path, end to end through ``order_submit``.

1. Simulated: submit → SimBroker fill → order, fill, position, balances, audit persisted; N market orders
   alternating buy and sell of 0.001 BTC.
2. Kraken: submit → acknowledged by the fake Kraken server over loopback (real HTTP, real ccxt, real
   API-Sign and nonce checks) → persisted; N market orders, alternating sides.

Each sample is one ``order_submit`` call, from the call to its return with everything committed. Runs on
PostgreSQL when DATABASE_URL names one (a throwaway database ``<name>_bench`` beside it, created and
dropped here), else on a fresh SQLite file under var/. Usage:
    uv run python bench/order_path.py [--orders 1000] [--profile sim|kraken]
The last line is the figures as name=value pairs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.ingest import drop_postgres_database, recreate_postgres_database  # noqa: E402


def percentile(samples: list[float], pct: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=1000)
    parser.add_argument(
        "--profile",
        choices=("sim", "kraken"),
        help="run that path under cProfile and print where its time goes (the latencies then include "
        "the profiler's overhead)",
    )
    parser.add_argument(
        "--profile-out",
        metavar="FILE",
        help="with --profile: also write the raw cProfile statistics to FILE (for pstats, A/B comparisons)",
    )
    args = parser.parse_args()
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()

    from tests.fakes.kraken_rest import RECORDED_PATH, FakeKraken

    if not RECORDED_PATH.exists():
        sys.exit(
            f"bench/order_path.py: {RECORDED_PATH} not found (the shared data sits beside the repository)"
        )

    scratch = bench_db = admin_url = None
    url = os.environ.get("DATABASE_URL", "")
    if url.startswith(("postgres://", "postgresql://")):
        bench_db, admin_url = recreate_postgres_database(url)
        os.environ["DATABASE_URL"] = url.rsplit("/", 1)[0] + "/" + bench_db
    else:
        (ROOT / "var").mkdir(exist_ok=True)
        scratch = tempfile.mkdtemp(prefix="aether-bench-", dir=ROOT / "var")
        os.environ["DATABASE_URL"] = f"sqlite:///{scratch}/bench.sqlite3"
    # As in production: with REDIS_URL the fill's NAV snapshot is published to Redis and the private-call
    # lock is Redis's; without it, the embedded broker and the database's (or a file) lock.
    fake = FakeKraken().start()
    os.environ["KRAKEN_API_URL"] = fake.url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aether_site.settings")
    os.environ.setdefault("LOG_LEVEL", "warning")
    os.environ.setdefault("DEBUG", "false")  # as in production: no query log kept in memory
    # The fill snapshots it queues go to a scratch broker folder, never the developer's var/celery.
    queue_dir = tempfile.mkdtemp(prefix="aether-bench-celery-")
    os.environ["CELERY_EMBEDDED_DIR"] = queue_dir
    if scratch:
        os.environ.setdefault("KRAKEN_LOCK_DIR", f"{scratch}/locks")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection
    from django.utils import timezone

    from accounts.models import Account
    from aether_site.celery import app
    from governance.actors import SystemActor
    from trading.brokers.kraken import KrakenKeys
    from trading.models import FeedStatus, Instrument, Order, OrderStatus
    from trading.services.orders import kraken_broker, order_submit, sim_balance_set
    from trading.services.reconcile import reconcile_account

    def queued() -> int:
        """Messages waiting on the broker's default queue (where the fills' NAV snapshots go)."""
        from kombu.exceptions import ChannelError

        with app.connection_for_write() as broker:
            try:
                return broker.default_channel.queue_declare(queue="trading", passive=True).message_count
            except ChannelError:  # no such queue yet: nothing waits
                return 0

    waiting_before = queued()
    try:
        call_command("migrate", verbosity=0)
        call_command("sync_universe", "--from-file", stdout=open(os.devnull, "w"))  # noqa: SIM115
        btc = Instrument.objects.get(symbol="BTC/USD")
        actor = SystemActor("bench")
        quantity = Decimal("0.001")

        # --- simulated -------------------------------------------------------------------------------
        sim_account = Account.objects.create(name="Bench sim", slug="bench-sim", kind="director")
        sim_balance_set(
            account=sim_account, asset="USD", amount=Decimal("1000000"), actor=actor, reason="bench"
        )
        FeedStatus.objects.update_or_create(
            instrument=btc,
            defaults={"last_price": Decimal("60000"), "last_message_at": timezone.now(), "stale": False},
        )
        sim_ms = []
        for index in range(args.orders):
            if index % 100 == 0:  # keep the price fresh for the simulator
                FeedStatus.objects.filter(instrument=btc).update(last_message_at=timezone.now())
            side = "buy" if index % 2 == 0 else "sell"
            if args.profile == "sim":
                profiler.enable()
            started = time.perf_counter()
            order = order_submit(
                account=sim_account,
                actor=actor,
                instrument=btc,
                side=side,
                order_type="market",
                quantity=quantity,
            )
            sim_ms.append((time.perf_counter() - started) * 1000)
            if args.profile == "sim":
                profiler.disable()
            if order.status != OrderStatus.FILLED:
                sys.exit(
                    f"bench/order_path.py: simulated order {index} is {order.status}: {order.status_reason}"
                )

        # --- Kraken (fake, loopback) ---------------------------------------------------------------------
        credentials = fake.add_account(balances={"ZUSD": "1000000", "XXBT": "100"})
        fake.set_price("XXBTZUSD", "60000", bid="59999.9", ask="60000.1")
        live = Account.objects.create(
            name="Bench live", slug="bench-live", kind="director", simulation_mode=False
        )
        keys = KrakenKeys(api_key=credentials.api_key, secret=credentials.secret)

        def kraken(account, name):
            # What default_broker builds, with the keys at hand instead of the credential store's.
            return kraken_broker(account, keys=keys)

        reconcile_account(account=live, actor=actor, broker_factory=kraken)  # balances before trading
        kraken_ms = []
        for index in range(args.orders):
            side = "buy" if index % 2 == 0 else "sell"
            if args.profile == "kraken":
                profiler.enable()
            started = time.perf_counter()
            order = order_submit(
                account=live,
                actor=actor,
                instrument=btc,
                side=side,
                order_type="market",
                quantity=quantity,
                broker_factory=kraken,
            )
            kraken_ms.append((time.perf_counter() - started) * 1000)
            if args.profile == "kraken":
                profiler.disable()
            if order.status not in (OrderStatus.FILLED, OrderStatus.OPEN):
                sys.exit(
                    f"bench/order_path.py: Kraken order {index} is {order.status}: {order.status_reason}"
                )
        on_exchange = len(fake.orders(credentials.api_key))
        ours = Order.objects.filter(account=live).count()
        vendor = connection.vendor
        connection.close()
    finally:
        # No worker consumes the fills' NAV snapshots here: take them off the broker again (they name
        # accounts of the throwaway database), unless something else was waiting there before the run.
        if waiting_before == 0:
            with app.connection_for_write() as broker:
                app.control.purge(connection=broker)
        else:
            print(f"bench/order_path.py: {waiting_before} message(s) were already queued; left in place")
        fake.stop()
        if bench_db:
            drop_postgres_database(admin_url, bench_db)
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(queue_dir, ignore_errors=True)
    if on_exchange != ours:
        sys.exit(f"bench/order_path.py: {ours} orders in the book but {on_exchange} on the fake Kraken")

    if profiler is not None:
        import pstats

        if args.profile_out:
            profiler.dump_stats(args.profile_out)
        stats = pstats.Stats(profiler).strip_dirs()
        print(f"--- cProfile of the {args.profile} path, by own time ---")
        stats.sort_stats("tottime").print_stats(40)
        print(f"--- cProfile of the {args.profile} path, by cumulative time ---")
        stats.sort_stats("cumulative").print_stats(60)
    figures = {
        "sim_p50_ms": statistics.median(sim_ms),
        "sim_p99_ms": percentile(sim_ms, 99),
        "kraken_p50_ms": statistics.median(kraken_ms),
        "kraken_p99_ms": percentile(kraken_ms, 99),
    }
    from django.conf import settings

    from trading.brokers.private_lock import backend_name

    broker = settings.CELERY_BROKER_URL.split(":", 1)[0]
    print(
        f"engine: {vendor}; Celery broker: {broker}; private-call lock: {backend_name()}; "
        f"orders per path: {args.orders}; Kraken orders on the fake: {on_exchange}"
    )
    print(
        f"simulated mean {statistics.fmean(sim_ms):.2f} ms; "
        f"Kraken (fake) mean {statistics.fmean(kraken_ms):.2f} ms"
    )
    print(
        f"engine={vendor} orders={args.orders} "
        + " ".join(f"{name}={value:.2f}" for name, value in figures.items())
    )


if __name__ == "__main__":
    main()
