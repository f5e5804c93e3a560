"""The embedded broker's spool folders for tests: one place for the sending side
(test_broker.py) and the worker it starts (broker_worker_app.py)."""

from pathlib import Path


def broker_options(root: Path, **extra) -> dict:
    for sub in ("queue", "processed", "control"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    return {
        **extra,
        "data_folder_in": str(root / "queue"),
        "data_folder_out": str(root / "queue"),
        "processed_folder": str(root / "processed"),
        "control_folder": str(root / "control"),
        "store_processed": False,
        # kombu sleeps this long whenever a poll finds nothing; 1 s by default.
        "polling_interval": 0.01,
    }
