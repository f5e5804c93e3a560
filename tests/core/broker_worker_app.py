"""A bare Celery app on the embedded broker, for the worker test in test_broker.py.

No Django: the test is about what the broker redelivers after a worker is killed, and a worker
that starts in a second keeps the test short. Everything lives under $BROKER_TEST_ROOT.
"""

import os
import time
from pathlib import Path

from celery import Celery
from kombu.transport import TRANSPORT_ALIASES

from tests.core.broker_spool import broker_options

# As config/celery.py does for the product.
TRANSPORT_ALIASES["filesystem"] = "core.broker:Transport"

ROOT = Path(os.environ["BROKER_TEST_ROOT"])
EVENTS = ROOT / "events"

app = Celery("brokertest", broker="filesystem://")
# The same spool as the sending side of the test.
app.conf.broker_transport_options = broker_options(ROOT)
app.conf.worker_prefetch_multiplier = 1


def event(line: str) -> None:
    with EVENTS.open("a") as f:
        f.write(f"{line}\n")


@app.task(name="brokertest.late", acks_late=True)
def late(label: str) -> None:
    """Acknowledged when done, like the product's import, bulk and tick tasks."""
    event(f"start {label} {os.getpid()}")
    hold = ROOT / f"hold-{label}"
    while hold.exists():
        time.sleep(0.05)
    event(f"done {label}")


@app.task(name="brokertest.early")
def early(label: str) -> None:
    """Acknowledged when it starts, Celery's default."""
    event(f"ran {label} {os.getpid()}")
