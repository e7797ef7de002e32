"""Settings for the example shop: SQLite by default; set $DATABASE_URL to a
postgresql:// URL to run it on PostgreSQL, where webhooks join Django's transactions."""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = "example-only-not-secret"
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True
ROOT_URLCONF = "shop.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "shop",
    "webhook_dispatch.contrib.django",  # the webhook_dispatch_worker command
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": BASE_DIR / "db.sqlite3",
    }
}

WEBHOOK_DISPATCH = {
    # On SQLite the webhooks get their own file; publish() inside atomic() waits for
    # the commit (transaction.on_commit).
    "STORE": f"sqlite:///{BASE_DIR / 'webhooks.db'}",
    "OPTIONS": {
        # The example receiver is on 127.0.0.1, which is refused by default.
        "allow_private_networks": True,
    },
}

if os.environ.get("DATABASE_URL"):
    from psycopg.conninfo import conninfo_to_dict

    _params = conninfo_to_dict(os.environ["DATABASE_URL"])
    DATABASES["default"] = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _params.get("dbname", ""),
        "USER": _params.get("user", ""),
        "PASSWORD": _params.get("password", ""),
        "HOST": _params.get("host", ""),
        "PORT": _params.get("port", ""),
    }
    # No STORE: the webhooks live in the same PostgreSQL database (schema
    # "webhook_dispatch", or SCHEMA), and publish() writes inside Django's transaction.
    del WEBHOOK_DISPATCH["STORE"]
    if os.environ.get("WEBHOOK_DISPATCH_SCHEMA"):
        WEBHOOK_DISPATCH["SCHEMA"] = os.environ["WEBHOOK_DISPATCH_SCHEMA"]
