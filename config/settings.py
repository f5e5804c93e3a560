"""Settings for the SCRM, driven by environment variables (see .env.example)."""

import os
import secrets
from pathlib import Path

import environ
from django.utils.translation import gettext_lazy as _
from kombu import Queue

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
# A local .env is convenient for development; production injects real environment variables.
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

# Everything the embedded default writes (SQLite file, broker spool, cache, secret) lives here.
DATA_DIR = Path(env.str("DATA_DIR", default=str(BASE_DIR / "data")))
DATA_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = env.bool("DEBUG", default=True)


def _local_secret_key() -> str:
    # Only for local use: a random key persisted so sessions survive restarts of `make demo`.
    path = DATA_DIR / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


if DEBUG:
    SECRET_KEY = env.str("SECRET_KEY", default="") or _local_secret_key()
else:
    # Production must bring its own key: failing loudly beats signing sessions with a known one.
    SECRET_KEY = env.str("SECRET_KEY")
# Keys rotated away, still accepted for sessions while they are listed, comma-separated.
SECRET_KEY_FALLBACKS = env.list("SECRET_KEY_FALLBACKS", default=[])
# Keys of the hashed tombstones of erased people's identities (contacts.services.erasure),
# comma-separated: the first hashes new ones, all are matched. Its own setting, so that
# SECRET_KEY can be rotated (and its old value forgotten) without the tombstones going blind.
# Unset: SECRET_KEY and its fallbacks.
SCRM_ERASURE_KEYS = env.list("SCRM_ERASURE_KEYS", default=[])

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_filters",
    "django_htmx",
    "template_partials",
    "django_celery_beat",
    "core",
    "contacts",
    "membership",
    "segments",
    "channels",
    "journeys",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    # The operator UI's language (cookie, Accept-Language, else LANGUAGE_CODE); API views choose
    # their own (core.api.api_language) and name it in Content-Language.
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "config.middleware.MethodNotAllowedPage",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

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
                "django.template.context_processors.i18n",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{DATA_DIR / 'scrm.sqlite3'}"),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            # WAL lets web, worker and beat read while one of them writes; the busy timeout makes
            # a writer wait for the lock instead of failing with "database is locked".
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "timeout": 30,
            # IMMEDIATE takes the write lock at BEGIN, so two writers queue instead of deadlocking.
            "transaction_mode": "IMMEDIATE",
        }
    )
    # Processes started by end-to-end tests (worker, beat) must see the test database, so it is
    # a file, not :memory:; per test run, so that two runs side by side do not collide.
    DATABASES["default"]["TEST"] = {"NAME": str(DATA_DIR / f"test-{os.getpid()}.sqlite3")}
else:
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("DB_CONN_MAX_AGE", default=60)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    if env.bool("DB_POOL", default=False):
        # A psycopg pool replaces persistent connections; Django forbids both at once.
        DATABASES["default"]["CONN_MAX_AGE"] = 0
        DATABASES["default"].setdefault("OPTIONS", {})["pool"] = True

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache ----------------------------------------------------------------------------------
# A file cache is shared by all local processes (API throttling needs that); Redis in production.
CACHES = {"default": env.cache("CACHE_URL", default=f"filecache://{DATA_DIR / 'cache'}")}

# --- Auth -----------------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "login"

# --- I18n -----------------------------------------------------------------------------------
LANGUAGE_CODE = env.str("LANGUAGE_CODE", default="zh-hans")
LANGUAGES = [("zh-hans", _("Simplified Chinese")), ("en", _("English"))]
LOCALE_PATHS = [BASE_DIR / "locale"]
# Thousands separators in Chinese as in English (12,345): see config/formats/zh_Hans.
FORMAT_MODULE_PATH = ["config.formats"]
TIME_ZONE = env.str("TIME_ZONE", default="Asia/Shanghai")
USE_I18N = True
USE_TZ = True

# --- Static files ---------------------------------------------------------------------------
STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(env.str("STATIC_ROOT", default=str(BASE_DIR / "staticfiles")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}
MEDIA_ROOT = DATA_DIR / "media"

# --- Security (production) ------------------------------------------------------------------
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=not DEBUG)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=not DEBUG)
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=not DEBUG)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=not DEBUG)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=not DEBUG)
# /healthz is probed over plain HTTP by load balancers and orchestrators.
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
if env.bool("USE_X_FORWARDED_PROTO", default=False):
    # Only behind a proxy that sets this header itself; otherwise clients could spoof HTTPS.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# --- Celery ---------------------------------------------------------------------------------
BROKER_DIR = DATA_DIR / "broker"
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="filesystem://")
if CELERY_BROKER_URL.startswith("filesystem://"):
    for sub in ("queue", "processed"):
        (BROKER_DIR / sub).mkdir(parents=True, exist_ok=True)
    # kombu's filesystem transport: producers and consumers share one spool folder.
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "processed_folder": str(BROKER_DIR / "processed"),
        "control_folder": str(BROKER_DIR / "control"),  # else kombu writes ./control in the cwd
        "store_processed": False,
    }
CELERY_TIMEZONE = TIME_ZONE
CELERY_ENABLE_UTC = True
# Results are never read: the database rows are the source of truth for every task's outcome.
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_DEFAULT_QUEUE = "default"
# realtime: welcome messages and one-time codes that must not wait behind a campaign;
# bulk: campaign sends and sweeps; default: everything else.
CELERY_TASK_QUEUES = (Queue("realtime"), Queue("bulk"), Queue("default"))
CELERY_TASK_ROUTES = {
    "channels.send_realtime": {"queue": "realtime"},
    "channels.dispatch_due": {"queue": "bulk"},
    "channels.recover_expired": {"queue": "bulk"},
}
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Tests and one-off scripts may run tasks inline; the product always goes through the broker.
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
CELERY_TASK_EAGER_PROPAGATES = True

# How often beat ticks advance journeys and dispatch due deliveries.
SCRM_TICK_SECONDS = env.float("SCRM_TICK_SECONDS", default=10.0)

# --- REST API -------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["core.api.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["core.api.HasApiKey"],
    "DEFAULT_THROTTLE_CLASSES": ["core.api.ApiKeyRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {"api_key": env.str("API_THROTTLE_RATE", default="600/minute")},
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "core.api.exception_handler",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    # JSON that would fail later as a 500 (over-deep nesting, lone surrogates) is a 400.
    "DEFAULT_PARSER_CLASSES": ["core.api.ApiJSONParser"],
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "SCRM API",
    "DESCRIPTION": (
        "Server-to-server API for mini-program and brand backends. Authenticate with "
        "`Authorization: Api-Key <key>`. Every error has the shape "
        '`{"error": {"code": str, "message": str, "details": object}}`.'
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "COMPONENT_SPLIT_REQUEST": True,
    "APPEND_COMPONENTS": {
        "securitySchemes": {
            "ApiKey": {
                "type": "apiKey",
                "in": "header",
                "name": "Authorization",
                "description": "`Api-Key <key>`",
            }
        }
    },
}

# --- Domain settings ------------------------------------------------------------------------
# Points earned per yuan of a `purchase` event's value.
MEMBERSHIP_POINTS_PER_YUAN = env.float("MEMBERSHIP_POINTS_PER_YUAN", default=1.0)
# Secret used to sign webhook deliveries when a channel has none of its own.
WEBHOOK_DEFAULT_SECRET = env.str("WEBHOOK_DEFAULT_SECRET", default="")
# How long a claimed delivery may stay in "sending" before the sweeper treats it as abandoned.
DELIVERY_LEASE_SECONDS = env.int("DELIVERY_LEASE_SECONDS", default=300)
# Identity kinds that prove two contacts are one person, so identify merges them automatically;
# weaker ones (openids, anonymous ids) only report a conflict for an operator to review.
SCRM_STRONG_IDENTITY_KINDS = env.list(
    "SCRM_STRONG_IDENTITY_KINDS", default=["wechat_unionid", "phone", "external_id", "email"]
)
# Days the files of a finished import or export (upload, export, rejected rows) are kept; the
# `core: expire job files` periodic task deletes them, and leftovers no job names, after that.
SCRM_FILE_RETENTION_DAYS = env.int("SCRM_FILE_RETENTION_DAYS", default=7)
# Segments refreshed side by side (PostgreSQL; each in its own connection) when several are due
# at once; in the incremental pass, the connections writing segments' entries and exits while
# the next segment is evaluated. The work is in the database server: about its number of cores.
SEGMENT_REFRESH_CONCURRENCY = env.int("SEGMENT_REFRESH_CONCURRENCY", default=2)
# The KOC rule (segments.influence): days of events the influence score counts, the lowest score
# of a KOC, and the top share (percent) of contacts with influence that may be KOCs.
SCRM_INFLUENCE_WINDOW_DAYS = env.int("SCRM_INFLUENCE_WINDOW_DAYS", default=365)
SCRM_KOC_MIN_SCORE = env.float("SCRM_KOC_MIN_SCORE", default=20.0)
SCRM_KOC_TOP_PERCENT = env.float("SCRM_KOC_TOP_PERCENT", default=5.0)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# Periodic tasks, declared here and written to django-celery-beat by `manage.py
# setup_periodic_tasks` (run by `make demo` and at deploy). Beat only wakes idempotent ticks:
# due times live on the rows themselves.
SCRM_PERIODIC_TASKS = {
    "journeys: advance due enrollments": {
        "task": "journeys.advance_due",
        "every_seconds": SCRM_TICK_SECONDS,
        "queue": "default",
    },
    "channels: dispatch due deliveries": {
        "task": "channels.dispatch_due",
        "every_seconds": SCRM_TICK_SECONDS,
        "queue": "bulk",
    },
    "channels: recover expired leases": {
        "task": "channels.recover_expired",
        "every_seconds": 60,
        "queue": "bulk",
    },
    "core: expire job files": {
        "task": "core.expire_job_files",
        "every_seconds": 3600,
        "queue": "default",
    },
    # Tags given "until" a date come off on time (and the change reaches segments).
    "contacts: expire tags": {
        "task": "contacts.expire_tags",
        "every_seconds": 300,
        "queue": "default",
    },
    # Incremental re-evaluation of changed contacts, then the scheduled full refreshes that are
    # due (each segment's own policy decides when).
    "segments: tick": {
        "task": "segments.tick",
        "every_seconds": env.int("SEGMENT_TICK_SECONDS", default=60),
        "queue": "default",
    },
    # Daily: RFM looks at a year of purchases, so a day's lag moves few buyers between layers.
    "segments: RFM recompute": {
        "task": "segments.rfm_recompute",
        "daily_at": env.str("RFM_RECOMPUTE_AT", default="02:30"),
        "queue": "default",
    },
    # Daily: decay is slow (half-lives in weeks), and new events update scores as they arrive.
    # After RFM and KOC (fit conditions may read them) and before 03:00, the default hour of the
    # daily segment refreshes; the contacts whose score changed are queued for segments anyway.
    "segments: lead score decay and fit": {
        "task": "segments.lead_scores_daily",
        "daily_at": env.str("LEAD_SCORE_DAILY_AT", default="02:50"),
        "queue": "default",
    },
    # Daily: KOC ranking reads a year of referral and share events. Before 03:00, the default
    # hour of the daily segment refreshes, so that KOC rules there see today's flags.
    "segments: influence compute": {
        "task": "segments.influence_compute",
        "daily_at": env.str("INFLUENCE_COMPUTE_AT", default="02:45"),
        "queue": "default",
    },
}
