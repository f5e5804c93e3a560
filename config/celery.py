import os

from celery import Celery
from kombu.transport import TRANSPORT_ALIASES

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

# kombu's filesystem transport lets the worker read a message file before the web process or beat
# has finished writing it, which crashes the worker (kombu#1551); ours writes and claims files
# atomically. Set here, before any connection resolves the scheme: every process (web, worker,
# beat, manage.py) imports this module through the config package.
TRANSPORT_ALIASES["filesystem"] = "core.broker:Transport"

app = Celery("scrm")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
