"""Django settings, read from the environment.

Defaults are the embedded development setup (`make demo`): SQLite under `var/`, Redis and
Orthanc on loopback. Production sets `DJANGO_DEBUG=false` plus a real secret key, hosts,
`DATABASE_URL` (PostgreSQL) and HTTPS; `python manage.py check --deploy` then passes.
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("PLATFORM_VAR_DIR", BASE_DIR / "var"))


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in {"1", "true", "yes", "on"}:
        return True
    if value.lower() in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, got {value!r}")


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = env_bool("DJANGO_DEBUG", True)
_DEV_SECRET = "dev-only-insecure-key-do-not-use-in-production-0123456789abcdef"
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", _DEV_SECRET if DEBUG else "")
if not SECRET_KEY:
    raise ImproperlyConfigured("DJANGO_SECRET_KEY must be set when DJANGO_DEBUG is false")
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,testserver")
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "projects",
    "imaging",
    "annotations",
    "ai_engine.registry",
    "worker",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "imaging.proxy_fastlane.FrameFastLane",  # token frame requests skip the rest
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "config" / "templates"],
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

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}"),
        conn_max_age=int(os.environ.get("DATABASE_CONN_MAX_AGE", "60")),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The embedded setup runs web server and worker on one SQLite file: take the write lock
    # at BEGIN (no upgrade deadlocks), wait for it, and let readers run beside a writer.
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = Path(os.environ.get("DJANGO_STATIC_ROOT", BASE_DIR / "staticfiles"))
STATICFILES_DIRS = [p for p in [BASE_DIR / "frontend" / "dist"] if p.exists()]
MEDIA_ROOT = Path(os.environ.get("PLATFORM_MEDIA_ROOT", VAR_DIR / "media"))
MEDIA_URL = "/media/"

LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Token first: an unauthenticated request then gets 401 with WWW-Authenticate.
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    # Deny by default: each view opens access project by project (projects.permissions).
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAdminUser"],
    "DEFAULT_SCHEMA_CLASS": "config.schema.PlatformAutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "projects.query.StrictOrderingFilter",
    ],
    "EXCEPTION_HANDLER": "projects.exceptions.api_exception_handler",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Imaging platform API",
    "DESCRIPTION": "Projects, studies in Orthanc, annotations, AI findings, feedback, models and jobs.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "PREPROCESSING_HOOKS": ["config.schema.exclude_dicomweb"],
    "ENUM_NAME_OVERRIDES": {
        "FindingKindEnum": "annotations.models.FindingKind",
        "JobKindEnum": "ai_engine.registry.models.Job.Kind",
    },
    # Swagger UI served from our own static files: no CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- Orthanc (the DICOM store; only this application talks to it) ---------------------
ORTHANC_URL = os.environ.get("ORTHANC_URL", "http://127.0.0.1:8042").rstrip("/")
ORTHANC_USERNAME = os.environ.get("ORTHANC_USERNAME", "platform")
ORTHANC_PASSWORD = os.environ.get("ORTHANC_PASSWORD", "platform-dev-password")
ORTHANC_DICOMWEB_ROOT = os.environ.get("ORTHANC_DICOMWEB_ROOT", "/dicom-web")
ORTHANC_TIMEOUT_S = float(os.environ.get("ORTHANC_TIMEOUT_S", "30"))

# --- Redis / Celery --------------------------------------------------------------------
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", REDIS_URL)
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND", REDIS_URL)
CELERY_TASK_HARD_TIME_LIMIT_S = int(os.environ.get("CELERY_TASK_HARD_TIME_LIMIT_S", "3600"))
# The broker must not redeliver a late-acked task while it is still legitimately running.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    # Also how long an unacked task of a worker killed outright (SIGKILL of the main
    # process) waits before Redis redelivers it; fault tests set it low with a low hard limit.
    "visibility_timeout": int(
        os.environ.get("CELERY_BROKER_VISIBILITY_TIMEOUT_S", CELERY_TASK_HARD_TIME_LIMIT_S * 1.5)
    ),
}
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
# How long `/api/health?deep=1` waits for a worker to answer `health_ping`.
HEALTH_WORKER_TIMEOUT_S = float(os.environ.get("HEALTH_WORKER_TIMEOUT_S", "5"))

# --- Platform data ---------------------------------------------------------------------
MODEL_STORE_DIR = Path(os.environ.get("PLATFORM_MODEL_STORE", VAR_DIR / "models"))
# Weights the site's operators provide for transfer learning: training arguments that name a
# file (--pretrained, --init-weights, --candidates-from) must point inside it.
PRETRAINED_DIR = Path(os.environ.get("PLATFORM_PRETRAINED_DIR", VAR_DIR / "pretrained"))
# Optional MLflow server training runs are logged to (needs the `mlflow` extra); empty: off.
MLFLOW_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI", "")
# A job whose worker died this many times (SIGKILL, OOM, lost machine) fails instead of
# being taken over again (ai_engine/registry/services.py::job_start).
JOB_MAX_LOST_ATTEMPTS = int(os.environ.get("JOB_MAX_LOST_ATTEMPTS", "3"))
UPLOAD_MAX_FILE_BYTES = int(os.environ.get("UPLOAD_MAX_FILE_BYTES", str(512 * 1024 * 1024)))
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
FILE_UPLOAD_TEMP_DIR = os.environ.get("FILE_UPLOAD_TEMP_DIR") or None

# --- Ingest limits and sync (imaging; see docs/imaging.md) ------------------------------
INGEST_MAX_ARCHIVE_MEMBERS = int(os.environ.get("INGEST_MAX_ARCHIVE_MEMBERS", "10000"))
INGEST_MAX_ARCHIVE_BYTES = int(
    os.environ.get("INGEST_MAX_ARCHIVE_BYTES", str(8 * 1024 * 1024 * 1024))
)  # total uncompressed size of one archive
INGEST_MAX_COMPRESSION_RATIO = float(os.environ.get("INGEST_MAX_COMPRESSION_RATIO", "100"))
INGEST_MAX_SEQUENCE_DEPTH = int(os.environ.get("INGEST_MAX_SEQUENCE_DEPTH", "16"))
INGEST_DEFER_SIZE = int(os.environ.get("INGEST_DEFER_SIZE", str(1024 * 1024)))
INGEST_STOW_BATCH_INSTANCES = int(os.environ.get("INGEST_STOW_BATCH_INSTANCES", "16"))
INGEST_STOW_BATCH_BYTES = int(os.environ.get("INGEST_STOW_BATCH_BYTES", str(64 * 1024 * 1024)))
# Project (slug) for studies that reach Orthanc directly (C-STORE, REST); empty: not indexed.
SYNC_DEFAULT_PROJECT = os.environ.get("SYNC_DEFAULT_PROJECT", "")
SYNC_INTERVAL_S = float(os.environ.get("SYNC_INTERVAL_S", "30"))
CELERY_BEAT_SCHEDULE = {
    "imaging-sync-orthanc-changes": {
        "task": "imaging.tasks.sync_orthanc_changes_task",
        "schedule": SYNC_INTERVAL_S,
        "options": {"queue": "cpu", "expires": SYNC_INTERVAL_S},
    },
    # Model monitoring (acceptance/agreement alerts) and retraining after N new labels.
    "registry-check-models": {
        "task": "worker.tasks.check_models",
        "schedule": float(os.environ.get("MODEL_CHECK_INTERVAL_S", "300")),
        "options": {"queue": "cpu", "expires": 300},
    },
}

# --- Security (production) -------------------------------------------------------------
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False  # the viewer reads it to send X-CSRFToken
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
if not DEBUG:
    SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = int(os.environ.get("DJANGO_SECURE_HSTS_SECONDS", "31536000"))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
}
