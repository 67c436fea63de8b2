"""Aether settings, read from the environment (see README "Configuration").

Two profiles, chosen by ``AETHER_ENV``: ``development`` (the default: embedded mode, SQLite unless
``DATABASE_URL`` says otherwise, no Redis unless ``REDIS_URL`` is set) and ``production`` (refuses to start
with any insecure value; see ``aether_site/security.py``).
"""

from pathlib import Path

import dj_database_url
from csp.constants import NONE, SELF

from aether_site.env import Env, SettingsError
from aether_site.security import load_or_create_development_key, production_problems

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"

env = Env()

AETHER_ENV = env.choice("AETHER_ENV", "development", ("development", "production"))
PRODUCTION = AETHER_ENV == "production"

DEBUG = env.bool("DEBUG", default=not PRODUCTION)

_DEVELOPMENT_KEY_PATH = VAR_DIR / "dev-secret-key"
SECRET_KEY = env.str("SECRET_KEY")
if SECRET_KEY is None and not PRODUCTION:
    SECRET_KEY = load_or_create_development_key(_DEVELOPMENT_KEY_PATH)

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", [] if PRODUCTION else ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_prometheus",
    "simple_history",
    "django_celery_beat",
    "accounts",
    "governance",
    "trading",
    "risk",
    "hedging",
    "learning",
    "reporting",
]

MIDDLEWARE = [
    # Probes and scrapes are answered first, before host validation and the HTTPS redirect: Kubernetes
    # probes and Prometheus address the pod by IP over plain HTTP.
    "aether_site.health.ProbeMiddleware",
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "simple_history.middleware.HistoryRequestMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "aether_site.urls"
WSGI_APPLICATION = "aether_site.wsgi.application"
ASGI_APPLICATION = "aether_site.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "aether_site.context_processors.environment",
                "aether_site.context_processors.market_data",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------------------

_PROMETHEUS_ENGINES = {
    "django.db.backends.postgresql": "django_prometheus.db.backends.postgresql",
    "django.db.backends.sqlite3": "django_prometheus.db.backends.sqlite3",
}


def _database_from_url(url: str) -> dict:
    from aether_site.redaction import redact_url

    try:
        config = dj_database_url.parse(url, conn_max_age=env.int("DATABASE_CONN_MAX_AGE", 60, minimum=0))
    except Exception as exc:  # dj-database-url raises several types for malformed URLs
        raise SettingsError(f"DATABASE_URL={redact_url(url)}: not a valid database URL ({exc}).") from None
    engine = config.get("ENGINE")
    if engine not in _PROMETHEUS_ENGINES:
        raise SettingsError(
            f"DATABASE_URL={redact_url(url)}: only PostgreSQL (postgres://) and SQLite (sqlite://) "
            "are supported."
        )
    if engine.endswith("sqlite3") and config.get("NAME") in (None, "", ":memory:"):
        raise SettingsError(
            f"DATABASE_URL={url}: an in-memory SQLite database loses everything at exit; "
            "give a file path, e.g. sqlite:////srv/aether/aether.sqlite3."
        )
    config["ENGINE"] = _PROMETHEUS_ENGINES[engine]
    options = config.setdefault("OPTIONS", {})
    if engine.endswith("postgresql"):
        options.setdefault("connect_timeout", env.int("DATABASE_CONNECT_TIMEOUT", 5, minimum=1))
        # Parameters bound by the server and statements prepared from their second use on a connection:
        # the order path and the strategy cycle repeat the same statements (docs/benchmarks.md). A
        # transaction-mode pooler (PgBouncer) in front would need its max_prepared_statements set.
        options.setdefault("server_side_binding", True)
        options.setdefault("prepare_threshold", 2)
    else:
        # Writers queue instead of failing half-way; WAL lets readers run beside one writer.
        config["CONN_MAX_AGE"] = 0
        options.setdefault("transaction_mode", "IMMEDIATE")
        options.setdefault("timeout", 20)
        options.setdefault("init_command", "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL")
    return config


DATABASE_URL = env.str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'aether.sqlite3'}")
DATABASES = {"default": _database_from_url(DATABASE_URL)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis (unset: embedded mode, no Redis used anywhere) ------------------------------------------------

REDIS_URL = env.str("REDIS_URL")
if REDIS_URL is not None and not REDIS_URL.startswith(("redis://", "rediss://", "unix://")):
    raise SettingsError(
        f"REDIS_URL: expected a redis://, rediss:// or unix:// URL, got {REDIS_URL.split(':')[0]}:…"
    )
REDIS_TIMEOUT_SECONDS = env.int("REDIS_TIMEOUT_SECONDS", 2, minimum=1)

if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "OPTIONS": {
                "socket_connect_timeout": REDIS_TIMEOUT_SECONDS,
                "socket_timeout": REDIS_TIMEOUT_SECONDS,
            },
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# --- Celery (tasks, worker, beat) --------------------------------------------------------------------------

# With REDIS_URL the broker is Redis. In embedded mode (no REDIS_URL) it is kombu's SQLAlchemy transport on a
# SQLite file under var/celery: a real broker that a worker, beat, the web and the feed on this machine share,
# so embedded mode runs the same task code as production without any service. (kombu's filesystem transport
# was dropped: a reader can take a message file before its writer has filled it, and the worker dies on
# the empty message.) CELERY_BROKER_URL overrides both.
CELERY_EMBEDDED_DIR = Path(env.str("CELERY_EMBEDDED_DIR", str(VAR_DIR / "celery")))
CELERY_BROKER_URL = env.str(
    "CELERY_BROKER_URL", REDIS_URL or f"sqla+sqlite:///{CELERY_EMBEDDED_DIR / 'broker.sqlite3'}"
)
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TASK_DEFAULT_QUEUE = "trading"
# Three queues, so a long retrain or backfill never delays a strategy cycle: `trading` (cycles, orders,
# reconciliation, NAV, risk), `market_data` (universe sync, closed-bar fan-out), `learning` (retraining).
CELERY_TASK_ROUTES = {
    "learning.*": {"queue": "learning"},
    "trading.universe_sync": {"queue": "market_data"},
    "trading.bar_closed": {"queue": "market_data"},
}
# Before a worker takes its first task it reconciles every account with its broker (UNKNOWN orders resolved,
# fills and balances synced), so no cycle trades on a book that a crash left behind. Off only in tests that
# start workers on purpose without it.
CELERY_RECONCILE_ON_START = env.bool("CELERY_RECONCILE_ON_START", True)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# How often beat reconciles every account with its broker (aether_site/beat.py).
RECONCILE_EVERY_SECONDS = env.int("RECONCILE_EVERY_SECONDS", 300, minimum=30)
# How often beat marks every account's book to market: how quickly the daily-drawdown kill switch reacts.
NAV_SNAPSHOT_EVERY_SECONDS = env.int("NAV_SNAPSHOT_EVERY_SECONDS", 60, minimum=10)

# --- Market data ------------------------------------------------------------------------------------------

# Endpoints are settings so tests and operators can point every client elsewhere.
KRAKEN_API_URL = env.str("KRAKEN_API_URL", "https://api.kraken.com")
KRAKEN_WS_URL = env.str("KRAKEN_WS_URL", "wss://ws.kraken.com/v2")
if not KRAKEN_WS_URL.startswith(("ws://", "wss://")):
    raise SettingsError(f"KRAKEN_WS_URL={KRAKEN_WS_URL!r}: expected a ws:// or wss:// URL")
COINGECKO_PLAN = env.choice("COINGECKO_PLAN", "demo", ("demo", "pro"))
COINGECKO_API_KEY = env.str("COINGECKO_API_KEY")
COINGECKO_API_URL = env.str(
    "COINGECKO_API_URL",
    "https://pro-api.coingecko.com/api/v3" if COINGECKO_PLAN == "pro" else "https://api.coingecko.com/api/v3",
)
for _name in ("KRAKEN_API_URL", "COINGECKO_API_URL"):
    if not globals()[_name].startswith(("http://", "https://")):
        raise SettingsError(f"{_name}={globals()[_name]!r}: expected an http:// or https:// URL")
# The pairs Aether trades: Kraken WebSocket v2 names, checked against the synced universe.
AETHER_PAIRS = env.list("AETHER_PAIRS", ["BTC/USD", "ETH/USD", "SOL/USD"])
# Where candles come from while the platform runs: "live" (Kraken's WebSocket feed; beat also refreshes the
# universe daily) or "replay" (stored history played on an accelerated clock: `make run`'s default, offline).
AETHER_MARKET_DATA = env.choice("AETHER_MARKET_DATA", "live", ("live", "replay"))
# Embedded mode (`make run`): Kraken OHLCVT files to learn from and replay (else a CoinGecko backfill when
# online, else generated history labelled synthetic); how much of it is replayed, how fast, and what each
# simulated account starts with. See trading/services/embedded.py.
AETHER_HISTORY_DIR = env.str("AETHER_HISTORY_DIR") or None
EMBEDDED_DIR = Path(env.str("EMBEDDED_DIR", str(VAR_DIR / "embedded")))
EMBEDDED_HISTORY_BARS = env.int("EMBEDDED_HISTORY_BARS", 24 * 120, minimum=400)
EMBEDDED_REPLAY_BARS = env.int("EMBEDDED_REPLAY_BARS", 24 * 14, minimum=2)
EMBEDDED_SECONDS_PER_BAR = env.decimal("EMBEDDED_SECONDS_PER_BAR", "2", minimum="0.1")
EMBEDDED_SIM_START_USD = env.decimal("EMBEDDED_SIM_START_USD", "100000", minimum="0")
AETHER_TIMEFRAME = int(env.choice("AETHER_TIMEFRAME", "60", ("1", "5", "15", "30", "60", "240", "1440")))
MARKET_STALE_SECONDS = env.int("MARKET_STALE_SECONDS", 90, minimum=5)
# run_market_feed serves its own Prometheus metrics on this port (0: not served).
MARKET_FEED_METRICS_PORT = env.int("MARKET_FEED_METRICS_PORT", 0, minimum=0)

# Live ticks go to websocket consumers through the channel layer: Redis when REDIS_URL is set; in
# embedded mode (no REDIS_URL, one machine) the in-process layer, which reaches consumers in the same process.
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [REDIS_URL]}}
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# --- Learning ---------------------------------------------------------------------------------------------

# Model artifacts (joblib files, each checked against its registered SHA-256 before loading). Several pods
# must share this directory (a ReadWriteMany volume) so workers that train and pods that predict agree.
LEARNING_ARTIFACT_ROOT = env.str("LEARNING_ARTIFACT_ROOT", str(VAR_DIR / "models"))
# A candidate becomes champion only if its out-of-sample net Sharpe beats the champion's by this much.
# A Sharpe ratio (analytics, so a float).
LEARNING_PROMOTION_MARGIN = float(env.decimal("LEARNING_PROMOTION_MARGIN", "0.10", minimum="0", maximum="5"))
LEARNING_MODEL_KIND = env.choice("LEARNING_MODEL_KIND", "hgb", ("hgb", "logistic"))
LEARNING_HORIZON_BARS = env.int("LEARNING_HORIZON_BARS", 24, minimum=1)
# How much history a scheduled retrain reads (the newest live candles included).
LEARNING_HISTORY_DAYS = env.int("LEARNING_HISTORY_DAYS", 3 * 365, minimum=30)
# Threshold adaptation: the last N trades, at least M of them, at most one change per interval.
LEARNING_ADAPT_WINDOW = env.int("LEARNING_ADAPT_WINDOW", 30, minimum=1)
LEARNING_ADAPT_MIN_TRADES = env.int("LEARNING_ADAPT_MIN_TRADES", 10, minimum=1)
LEARNING_ADAPT_MIN_INTERVAL_HOURS = env.int("LEARNING_ADAPT_MIN_INTERVAL_HOURS", 24, minimum=0)

# --- Credentials -----------------------------------------------------------------------------------------

# Kraken API keys never go into the database (it holds a reference, a fingerprint and the last validation):
# "kubernetes" keeps one Secret per account in AETHER_K8S_NAMESPACE (in-cluster config, or the kubeconfig in
# AETHER_K8S_KUBECONFIG); "local" (embedded mode) keeps one Fernet-encrypted file (0600) per account in
# KRAKEN_CREDENTIALS_DIR. Production must choose explicitly (see aether_site/security.py).
AETHER_CREDENTIAL_STORE = (
    env.choice("AETHER_CREDENTIAL_STORE", "" if PRODUCTION else "local", ("local", "kubernetes")) or None
)
AETHER_K8S_NAMESPACE = env.str("AETHER_K8S_NAMESPACE")
AETHER_K8S_KUBECONFIG = env.str("AETHER_K8S_KUBECONFIG")
KRAKEN_CREDENTIALS_DIR = env.str("KRAKEN_CREDENTIALS_DIR", str(VAR_DIR / "credentials"))
# The Fernet key of the local store is only ever read from a file (a mounted secret), never from the
# environment itself. In development, when unset, a key is generated once at KRAKEN_CREDENTIALS_DEV_KEY_FILE.
if env.environ.get("KRAKEN_CREDENTIALS_KEY") is not None:
    raise SettingsError(
        "KRAKEN_CREDENTIALS_KEY: give the Fernet key as a file (KRAKEN_CREDENTIALS_KEY_FILE=/path), "
        "not as a value."
    )
KRAKEN_CREDENTIALS_KEY_FILE = env.environ.get("KRAKEN_CREDENTIALS_KEY_FILE") or None
if KRAKEN_CREDENTIALS_KEY_FILE is not None and not Path(KRAKEN_CREDENTIALS_KEY_FILE).is_file():
    raise SettingsError(f"KRAKEN_CREDENTIALS_KEY_FILE={KRAKEN_CREDENTIALS_KEY_FILE}: file not found.")
KRAKEN_CREDENTIALS_DEV_KEY_FILE = VAR_DIR / "dev-kraken-credentials.key"

# --- Orders ---------------------------------------------------------------------------------------------

# A market or stop buy reserves its quantity at the last price raised by this margin (plus the taker fee),
# so a fill a little worse than the last price is still covered; a limit buy reserves at its limit.
ORDER_RESERVE_BUFFER_PCT = env.decimal("ORDER_RESERVE_BUFFER_PCT", "2", minimum="0", maximum="50")
# Reconciliation looks this far back for fills missing from the book. (RECONCILE_GRACE_SECONDS: below,
# after the Kraken call settings it depends on.)
RECONCILE_FILLS_LOOKBACK_DAYS = env.int("RECONCILE_FILLS_LOOKBACK_DAYS", 7, minimum=1)

# --- Simulation -------------------------------------------------------------------------------------------

# The simulator's slippage (trading/matching.py SlippageModel): a taker fill moves against the order by
# SIM_SLIPPAGE_BPS basis points plus SIM_SLIPPAGE_IMPACT * bar volatility * sqrt(order / bar notional).
SIM_SLIPPAGE_BPS = env.decimal("SIM_SLIPPAGE_BPS", "5", minimum="0", maximum="1000")
SIM_SLIPPAGE_IMPACT = env.decimal("SIM_SLIPPAGE_IMPACT", "1", minimum="0", maximum="100")

# --- Kraken private calls -------------------------------------------------------------------------------

# All private calls of one account are serialised (trading/brokers/private_lock.py): a Redis lock with
# REDIS_URL, else a PostgreSQL advisory lock, else a file lock in this directory (embedded mode).
KRAKEN_LOCK_DIR = env.str("KRAKEN_LOCK_DIR", str(VAR_DIR / "locks"))
KRAKEN_PRIVATE_LOCK_WAIT_SECONDS = env.int("KRAKEN_PRIVATE_LOCK_WAIT_SECONDS", 30, minimum=1)
# Expiry of the Redis lock: longer than any single private call (KRAKEN_PRIVATE_TIMEOUT_MS).
KRAKEN_PRIVATE_LOCK_TTL_SECONDS = env.int("KRAKEN_PRIVATE_LOCK_TTL_SECONDS", 60, minimum=5)
KRAKEN_PRIVATE_TIMEOUT_MS = env.int("KRAKEN_PRIVATE_TIMEOUT_MS", 10_000, minimum=100)
if KRAKEN_PRIVATE_LOCK_TTL_SECONDS * 1000 <= KRAKEN_PRIVATE_TIMEOUT_MS:
    raise SettingsError(
        "KRAKEN_PRIVATE_LOCK_TTL_SECONDS must exceed KRAKEN_PRIVATE_TIMEOUT_MS: the lock must outlive a call."
    )
# Retries of a private call Kraken answered with a rate limit, busy or invalid nonce (nothing done), with
# jittered exponential back-off from KRAKEN_PRIVATE_BACKOFF_MS.
KRAKEN_PRIVATE_RETRIES = env.int("KRAKEN_PRIVATE_RETRIES", 4, minimum=0)
KRAKEN_PRIVATE_BACKOFF_MS = env.int("KRAKEN_PRIVATE_BACKOFF_MS", 500, minimum=1)
# The longest one submission to Kraken can take: AddOrder and, after an uncertain answer, two lookups, each
# with all its retries, each retry waiting the full lock wait and the full call timeout, plus back-offs.
_ATTEMPTS = KRAKEN_PRIVATE_RETRIES + 1
KRAKEN_SUBMIT_WORST_SECONDS = 3 * (
    _ATTEMPTS * (KRAKEN_PRIVATE_LOCK_WAIT_SECONDS + KRAKEN_PRIVATE_TIMEOUT_MS / 1000)
    + KRAKEN_PRIVATE_RETRIES * 16 * KRAKEN_PRIVATE_BACKOFF_MS / 1000
)
# Reconciliation closes an order the exchange has never seen only once it is older than this: by then no
# worker can still be sending it. It may not be set below the worst case above.
RECONCILE_GRACE_SECONDS = env.int("RECONCILE_GRACE_SECONDS", int(KRAKEN_SUBMIT_WORST_SECONDS) + 60, minimum=0)
if RECONCILE_GRACE_SECONDS < KRAKEN_SUBMIT_WORST_SECONDS:
    raise SettingsError(
        f"RECONCILE_GRACE_SECONDS={RECONCILE_GRACE_SECONDS}: must be at least "
        f"{KRAKEN_SUBMIT_WORST_SECONDS:.0f}, the longest a submission to Kraken can take with the "
        "KRAKEN_PRIVATE_* settings; a shorter grace could close an order that is still being sent."
    )

# --- Risk -------------------------------------------------------------------------------------------------

# The resting protective stop on Kraken follows the trailing stop once the stop has risen this many %.
PROTECTIVE_STOP_STEP_PCT = env.decimal("PROTECTIVE_STOP_STEP_PCT", "1")

# --- Strategy cycle ---------------------------------------------------------------------------------------

# One cycle = one account, one pair, one closed bar (trading/services/cycle.py). Cycles of one account never
# overlap: a running cycle holds a lease this long; a cycle that finds another running waits and retries.
# A worker that dies mid-cycle leaves its lease to expire, then the retried cycle resumes it (its orders
# carry ids derived from the cycle, so none is placed twice). The lease outlasts the slowest cycle: a
# Kraken submission's worst case per order (entry, exit, protective stop).
CYCLE_LEASE_SECONDS = env.int("CYCLE_LEASE_SECONDS", int(3 * KRAKEN_SUBMIT_WORST_SECONDS) + 120, minimum=10)
CYCLE_BUSY_RETRY_SECONDS = env.int("CYCLE_BUSY_RETRY_SECONDS", 2, minimum=1)
# A closed bar whose traded pairs' bars of the same open time are not all stored yet queues the accounts'
# cycles this much later (the last pair's bar queues them at once).
CYCLE_PAIRS_WAIT_SECONDS = env.int("CYCLE_PAIRS_WAIT_SECONDS", 10, minimum=0)
# How often beat looks for closed bars without a cycle (the feed also starts cycles as each bar closes).
CYCLE_SWEEP_EVERY_SECONDS = env.int("CYCLE_SWEEP_EVERY_SECONDS", 60, minimum=5)
if CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
    # A task taken by a worker that died is delivered again after this long (late acknowledgement): a
    # strategy cycle (acks_late) then resumes. Longer than the longest account task (one lease per traded
    # pair, run one after the other), so a slow task is not delivered twice while it runs (a second
    # delivery would only wait for the lease anyway).
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": len(AETHER_PAIRS) * CYCLE_LEASE_SECONDS + 60}
# How often beat evaluates every account's hedge besides the cycles (a book moved by a director's order).
HEDGE_EVALUATE_EVERY_SECONDS = env.int("HEDGE_EVALUATE_EVERY_SECONDS", 900, minimum=60)

# --- Auth -----------------------------------------------------------------------------------------------

AUTH_USER_MODEL = "accounts.User"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 12}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "admin:login"

# --- HTTPS and browser protections -------------------------------------------------------------------------

SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", PRODUCTION)
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", PRODUCTION)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", PRODUCTION)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", 31_536_000 if PRODUCTION else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", PRODUCTION)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", PRODUCTION)
if env.bool("AETHER_BEHIND_TLS_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
DEFAULT_EXCEPTION_REPORTER_FILTER = "aether_site.redaction.SettingsReporterFilter"

# /metrics answers any host (Prometheus scrapes pods by IP); with a token set it wants
# "Authorization: Bearer <token>". Production requires one.
METRICS_TOKEN = env.str("METRICS_TOKEN")

_CSP = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        # The Django admin sets a few inline style attributes; scripts stay strictly same-origin.
        "style-src": [SELF, "'unsafe-inline'"],
        "img-src": [SELF, "data:"],
        "font-src": [SELF],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    }
}
if env.bool("CSP_REPORT_ONLY", False):
    CONTENT_SECURITY_POLICY = None
    CONTENT_SECURITY_POLICY_REPORT_ONLY = _CSP
else:
    CONTENT_SECURITY_POLICY = _CSP

# --- Static files, i18n ------------------------------------------------------------------------------------

STATIC_URL = "static/"
# Production serves collected files (collectstatic into STATIC_ROOT); development serves them from the apps.
STATIC_ROOT = env.str("STATIC_ROOT", str(VAR_DIR / "static") if PRODUCTION else None)
WHITENOISE_USE_FINDERS = not PRODUCTION
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if PRODUCTION
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- History, logging -------------------------------------------------------------------------------------

# Reverting from a history page would write around the services and their audit events.
SIMPLE_HISTORY_REVERT_DISABLED = True

LOG_LEVEL = env.choice("LOG_LEVEL", "info", ("debug", "info", "warning", "error")).upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
}

# --- Production refusals (last, over the final values) ---------------------------------------------------

if PRODUCTION:
    _problems = production_problems(
        globals(),
        development_key=(
            _DEVELOPMENT_KEY_PATH.read_text(encoding="utf-8").strip()
            if _DEVELOPMENT_KEY_PATH.exists()
            else None
        ),
    )
    if _problems:
        raise SettingsError("AETHER_ENV=production refuses to start: " + " ".join(_problems))
