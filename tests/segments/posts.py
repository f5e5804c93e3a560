"""The form a browser posts from the segment builder, for view tests."""

# The segment's own fields and an empty root AND group.
BASE = {
    "name": "上海高价值",
    "description": "",
    "kind": "dynamic",
    "refresh_policy": "on_change",
    "refresh_interval_minutes": "60",
    "refresh_hour": "3",
    "r.kind": "group",
    "r.op": "and",
}

# One condition at r-0: city equals 上海.
CITY_ROW = {
    "r-0.kind": "attribute",
    "r-0.was": "attribute",
    "r-0.field": "city",
    "r-0.field_was": "city",
    "r-0.operator": "eq",
    "r-0.value": "上海",
}


def builder_post(*rows: dict[str, str], **fields: str) -> dict[str, str]:
    """BASE plus the given rows, then `fields` (a `__` in a keyword stands for the `.` of the
    form's names: r-0__field is r-0.field)."""
    data = dict(BASE)
    for row in rows:
        data.update(row)
    data.update({key.replace("__", "."): value for key, value in fields.items()})
    return data
