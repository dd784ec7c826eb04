"""Base settings, read from the environment (documented in .env.example).

Unset, everything runs embedded: a SQLite file, an in-memory channel layer, a local-memory cache and
Celery tasks executed in process. `wallet.settings.production` tightens this for deployment.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent.parent


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


DEBUG = env_bool("DEBUG", default=False)
PRODUCTION = False  # wallet.settings.production sets it; sandbox-only features refuse to run then

_DEV_SECRET = "dev-insecure-" + "x" * 50  # only ever used with DEBUG on
SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off.")
    SECRET_KEY = _DEV_SECRET

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost,[::1],testserver" if DEBUG else "")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")
CORS_ALLOWED_ORIGINS = env_list("CORS_ALLOWED_ORIGINS")
CORS_URLS_REGEX = r"^/api/.*$"
CORS_ALLOW_HEADERS = (
    "accept", "authorization", "content-type", "idempotency-key", "x-app-key", "x-request-id",
    "if-none-match",
)
CORS_EXPOSE_HEADERS = ("x-request-id", "idempotent-replayed", "retry-after", "etag")

INSTALLED_APPS = [
    "daphne",  # its runserver speaks ASGI (websockets) in development
    "wallet.core.apps.CoreConfig",
    "tenants.apps.TenantsConfig",
    "wallet.events.apps.EventsConfig",
    "wallet.idempotency.apps.IdempotencyConfig",
    "wallet.ledger.apps.LedgerConfig",
    "wallet.balances.apps.BalancesConfig",
    "branding.apps.BrandingConfig",
    "chains.apps.ChainsConfig",
    "wallet.demo.apps.DemoConfig",
    "tenants.apps.WalletAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "corsheaders",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
]

MIDDLEWARE = [
    "wallet.core.middleware.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "wallet.core.middleware.CorsMiddleware",  # django-cors-headers', quicker without an Origin
    "wallet.core.middleware.BodySizeMiddleware",
    "tenants.middleware.AppTenantMiddleware",
    "django.middleware.common.CommonMiddleware",
    "wallet.core.middleware.BrowserMiddleware",  # runs BROWSER_MIDDLEWARE, except under /api/
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
# The admin's (and any HTML page's) middleware; the token-authenticated JSON API under /api/ skips them.
BROWSER_MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "tenants.middleware.AdminTenantMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
# The admin's middleware checks and the deploy check for CSRF look in MIDDLEWARE only; wallet/core/checks.py
# checks BROWSER_MIDDLEWARE instead (core.E001-E005).
SILENCED_SYSTEM_CHECKS = ["admin.E408", "admin.E409", "admin.E410", "security.W003"]

ROOT_URLCONF = "wallet.urls"
WSGI_APPLICATION = "wallet.wsgi.application"
ASGI_APPLICATION = "wallet.asgi.application"

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
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------------------
VAR_DIR = Path(os.environ.get("VAR_DIR", BASE_DIR / "var"))
CONN_MAX_AGE = env_int("CONN_MAX_AGE", 60)  # persistent connections: ~10x faster on PostgreSQL
DATABASE_URL = os.environ.get("DATABASE_URL", "")
DATABASES = {
    "default": dj_database_url.parse(
        DATABASE_URL or f"sqlite:///{VAR_DIR / 'db.sqlite3'}",
        conn_max_age=CONN_MAX_AGE,
        # A health check costs a round trip per request; without it, a request that finds its persistent
        # connection dead after a database restart fails once and the connection is replaced.
        conn_health_checks=env_bool("CONN_HEALTH_CHECKS", default=False),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES["default"]["OPTIONS"] = {
        # WAL and a busy timeout let the embedded server's threads write without "database is locked".
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
    DATABASES["default"]["CONN_MAX_AGE"] = 0
else:
    # One generic plan per prepared statement. Only the hot paths' statements are prepared
    # (`wallet.core.bulk.HotCursor`; Django's own cursors never prepare). With array parameters PostgreSQL
    # otherwise keeps planning some of them again at every execution: the group commit's parties query
    # spent 0.24 ms planning for 0.06 ms executing, in every batch. Set at connection start: no round trip.
    _db_options = DATABASES["default"].setdefault("OPTIONS", {})
    _db_options["options"] = f"{_db_options.get('options', '')} -c plan_cache_mode=force_generic_plan".strip()
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis, cache, channel layer, Celery -----------------------------------------------------------------
REDIS_URL = os.environ.get("REDIS_URL", "")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "wbff",
            "OPTIONS": {"socket_timeout": 1, "socket_connect_timeout": 1},
        }
    }
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL], "prefix": "wbff"},
        }
    }
    CELERY_BROKER_URL = REDIS_URL
    CELERY_TASK_ALWAYS_EAGER = False
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "wbff"}}
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels.layers.InMemoryChannelLayer",
            # One hub channel per process carries every event: a deep queue, and group membership that
            # does not lapse while sockets stay connected.
            "CONFIG": {"capacity": 100_000, "group_expiry": 10 * 365 * 86400},
        }
    }
    CELERY_BROKER_URL = "memory://"
    CELERY_TASK_ALWAYS_EAGER = True  # tasks run in process on the embedded default
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_TIME_LIMIT = 300
# How long a process trusts a tenant's asset policy (limits, enabled) on the transfer path.
LEDGER_POLICY_CACHE_SECONDS = float(os.environ.get("LEDGER_POLICY_CACHE_SECONDS", "2"))
# How long a transfer request waits for a group-commit batch to take it before answering 503.
LEDGER_GROUP_COMMIT_WAIT_SECONDS = float(os.environ.get("LEDGER_GROUP_COMMIT_WAIT_SECONDS", "30"))
# How long a tenant's transfer committer thread (one per tenant and process) waits for work before it ends
# and closes its database connection.
LEDGER_GROUP_COMMIT_IDLE_SECONDS = float(os.environ.get("LEDGER_GROUP_COMMIT_IDLE_SECONDS", "10"))
# At most this many committer threads (and their database connections) per process; a tenant's transfer that
# finds none free runs alone in its request thread.
LEDGER_GROUP_COMMIT_MAX_COMMITTERS = int(os.environ.get("LEDGER_GROUP_COMMIT_MAX_COMMITTERS", "8"))
# Run each web server process's transfer committers in a process of their own, so that they do not share
# a GIL with the request threads (wallet/ledger/committer_process.py). Off: on 2 cores it did not raise the
# HTTP maximum (docs/BENCHMARKS.md, tenth session).
LEDGER_GROUP_COMMIT_PROCESS = env_bool("LEDGER_GROUP_COMMIT_PROCESS", default=False)
# Batches of at least this many transfers queue on their tenant's writer lock (PostgreSQL advisory lock)
# before they lock accounts: large batches almost always share accounts, and one at a time is faster
# than a convoy of half-locked batches (0 disables it). See wallet/ledger/engine.py, tenant_writer_lock.
LEDGER_WRITER_LOCK_MIN_BATCH = int(os.environ.get("LEDGER_WRITER_LOCK_MIN_BATCH", "32"))

CELERY_BEAT_SCHEDULE: dict[str, dict] = {
    "expire-holds": {"task": "ledger.expire_holds_all", "schedule": 30.0},
    "idempotency-purge-expired": {"task": "idempotency.purge_expired", "schedule": 3600.0},
    "events-purge-published": {"task": "events.purge_published", "schedule": 3600.0},
    "branding-redeliver-hooks": {"task": "branding.redeliver_pending_hooks", "schedule": 900.0},
}

# --- Auth -----------------------------------------------------------------------------------------------
AUTH_USER_MODEL = "tenants.User"
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "tenants.auth.backends.TenantEmailBackend",
]
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
     "OPTIONS": {"min_length": env_int("PASSWORD_MIN_LENGTH", 10)}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# JWTs: EdDSA (Ed25519) only. The signing key is JWT_SIGNING_KEY (a base64url 32-byte seed) or, when
# unset, derived from SECRET_KEY. JWT_PREVIOUS_SIGNING_KEYS (comma separated) still verify during rotation.
JWT_SIGNING_KEY = os.environ.get("JWT_SIGNING_KEY", "")
JWT_PREVIOUS_SIGNING_KEYS = env_list("JWT_PREVIOUS_SIGNING_KEYS")
JWT_ISSUER = os.environ.get("JWT_ISSUER", "wallet-bff")
JWT_AUDIENCE = os.environ.get("JWT_AUDIENCE", "wallet-app")
JWT_ACCESS_TTL = timedelta(seconds=env_int("JWT_ACCESS_TTL_SECONDS", 300))
JWT_REFRESH_TTL = timedelta(seconds=env_int("JWT_REFRESH_TTL_SECONDS", 30 * 24 * 3600))
JWT_LEEWAY_SECONDS = 10

# Login throttling: attempts per window, per (tenant, email) and per client IP.
LOGIN_THROTTLE_PER_ACCOUNT = env_int("LOGIN_THROTTLE_PER_ACCOUNT", 5)
LOGIN_THROTTLE_PER_IP = env_int("LOGIN_THROTTLE_PER_IP", 30)
LOGIN_THROTTLE_WINDOW_SECONDS = env_int("LOGIN_THROTTLE_WINDOW_SECONDS", 300)
# Number of trusted proxies in front of the app (to read the client IP from X-Forwarded-For).
NUM_PROXIES = env_int("NUM_PROXIES", 0)

# How long a tenant or app key lookup is cached in each process (suspensions and revocations apply
# within this many seconds).
TENANT_CACHE_SECONDS = env_int("TENANT_CACHE_SECONDS", 5)

# How long a process trusts a (session, user) pair it found live; revocations made in another process
# apply within this many seconds (0: check the database on every request).
AUTH_CACHE_SECONDS = env_int("AUTH_CACHE_SECONDS", 2)

# --- Outbox relay ----------------------------------------------------------------------------------------
# In process (a daemon thread publishes after each commit) on the embedded default; production runs
# `manage.py relay_outbox`, woken by NOTIFY at commit, polling as a fallback.
OUTBOX_RELAY_IN_PROCESS = env_bool("OUTBOX_RELAY_IN_PROCESS", default=not REDIS_URL)
OUTBOX_POLL_SECONDS = float(os.environ.get("OUTBOX_POLL_SECONDS", "1.0"))
OUTBOX_NOTIFY = env_bool("OUTBOX_NOTIFY", default=True)
OUTBOX_RELAY_BATCH_SIZE = env_int("OUTBOX_RELAY_BATCH_SIZE", 500)
OUTBOX_RETENTION_HOURS = env_int("OUTBOX_RETENTION_HOURS", 72)
OUTBOX_RETAIN_PER_STREAM = env_int("OUTBOX_RETAIN_PER_STREAM", 1000)

# --- Stream (docs/STREAM.md) --------------------------------------------------------------------------------
STREAM_AUTH_TIMEOUT_SECONDS = float(os.environ.get("STREAM_AUTH_TIMEOUT_SECONDS", "5"))
STREAM_HEARTBEAT_SECONDS = env_int("STREAM_HEARTBEAT_SECONDS", 20)
STREAM_IDLE_TIMEOUT_SECONDS = env_int("STREAM_IDLE_TIMEOUT_SECONDS", 60)
STREAM_MAX_MESSAGE_BYTES = env_int("STREAM_MAX_MESSAGE_BYTES", 16_384)
STREAM_RATE_PER_SECOND = env_int("STREAM_RATE_PER_SECOND", 10)
STREAM_RATE_BURST = env_int("STREAM_RATE_BURST", 30)
STREAM_BUFFER_MAX_MESSAGES = env_int("STREAM_BUFFER_MAX_MESSAGES", 1000)
STREAM_BUFFER_MAX_BYTES = env_int("STREAM_BUFFER_MAX_BYTES", 1_048_576)
STREAM_REPLAY_MAX_EVENTS = env_int("STREAM_REPLAY_MAX_EVENTS", 1000)

# --- Idempotency-Key ------------------------------------------------------------------------------------
IDEMPOTENCY_TTL_HOURS = env_int("IDEMPOTENCY_TTL_HOURS", 24)  # below 24 is refused
IDEMPOTENCY_FAST_LOCK = env_bool("IDEMPOTENCY_FAST_LOCK", default=True)  # Redis / in-process in-flight hint
IDEMPOTENCY_LOCK_TTL_SECONDS = env_int("IDEMPOTENCY_LOCK_TTL_SECONDS", 60)
IDEMPOTENCY_REDIS_TIMEOUT_SECONDS = float(os.environ.get("IDEMPOTENCY_REDIS_TIMEOUT_SECONDS", "0.25"))
IDEMPOTENCY_REDIS_BACKOFF_SECONDS = float(os.environ.get("IDEMPOTENCY_REDIS_BACKOFF_SECONDS", "5"))
IDEMPOTENCY_PURGE_BATCH_SIZE = env_int("IDEMPOTENCY_PURGE_BATCH_SIZE", 5000)

# --- API ------------------------------------------------------------------------------------------------
API_MAX_BODY_BYTES = env_int("API_MAX_BODY_BYTES", 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = max(API_MAX_BODY_BYTES, 2_621_440)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["tenants.auth.authentication.AccessTokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["wallet.core.renderers.FastJSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_PAGINATION_CLASS": "wallet.core.pagination.Cursor",
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "wallet.core.negotiation.JsonOnlyNegotiation",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "wallet.core.errors.exception_handler",
    "UNAUTHENTICATED_USER": None,
    "COERCE_DECIMAL_TO_STRING": True,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Wallet BFF API",
    "DESCRIPTION": "Backend-for-frontend of white-label wallet apps. Every app request carries `X-App-Key`.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    "APPEND_COMPONENTS": {
        "securitySchemes": {
            "appKey": {"type": "apiKey", "in": "header", "name": "X-App-Key"},
        }
    },
    "SECURITY": [{"appKey": []}],
}

# --- Sessions, static, i18n -------------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "/static/"
STATIC_ROOT = VAR_DIR / "static"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = DEBUG
WHITENOISE_AUTOREFRESH = DEBUG
MEDIA_ROOT = VAR_DIR / "media"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_AGE = 8 * 3600
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"

# --- Logging --------------------------------------------------------------------------------------------
LOG_LEVEL = os.environ.get("LOG_LEVEL", "INFO")
LOG_REQUESTS = env_bool("LOG_REQUESTS", default=True)
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "wallet.core.logging.ContextFilter"}},
    "formatters": {"json": {"()": "wallet.core.logging.JsonFormatter"}},
    "handlers": {
        "stderr": {"class": "logging.StreamHandler", "formatter": "json", "filters": ["context"]},
    },
    "root": {"handlers": ["stderr"], "level": LOG_LEVEL},
    "loggers": {
        "django.server": {"level": "WARNING"},
        "django.request": {"level": "ERROR"},  # our own request line replaces Django's 4xx warnings
    },
}
