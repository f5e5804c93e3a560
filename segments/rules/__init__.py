"""The segment rule language: schema and validation (schema.py) and the SQL compiler
(compiler.py). docs/segments.md is the operator-facing reference."""

from segments.rules.compiler import compile_rule
from segments.rules.schema import (
    CORE_FIELDS,
    OPERATORS,
    rule_has_time_window,
    rule_segment_refs,
    validate_property_filter,
    validate_rule,
)

# Names the first rule form used; the builder replaces them.
DATE_FIELDS = ("created_at", "last_seen_at")
DATE_OPERATORS = ("within_days", "before_days")

__all__ = [
    "CORE_FIELDS",
    "DATE_FIELDS",
    "DATE_OPERATORS",
    "OPERATORS",
    "compile_rule",
    "rule_has_time_window",
    "rule_segment_refs",
    "validate_property_filter",
    "validate_rule",
]
