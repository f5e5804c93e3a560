"""Lifecycle stages."""

from contacts.models import (
    Stage,
)

DEFAULT_STAGE_NAMES = {
    "new": "新客/潜客",
    "interested": "意向",
    "first_purchase": "首购",
    "repeat": "复购",
    "loyal": "忠诚",
    "dormant": "沉睡",
    "churned": "流失",
}


def stages_ensure_defaults() -> None:
    """Create the default lifecycle stages that are missing (brands may rename them later)."""
    for position, (key, name) in enumerate(DEFAULT_STAGE_NAMES.items()):
        Stage.objects.get_or_create(key=key, defaults={"name": name, "position": position})
