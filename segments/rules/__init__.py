"""The segment rule language: schema and validation (schema.py) and the SQL compiler
(compiler.py). docs/segments.md is the operator-facing reference."""

from segments.rules.compiler import compile_rule
from segments.rules.schema import (
    CORE_FIELDS,
    OPERATORS,
    rule_has_time_window,
    rule_segment_refs,
    rule_tag_refs,
    validate_property_filter,
    validate_rule,
)

__all__ = [
    "CORE_FIELDS",
    "OPERATORS",
    "compile_rule",
    "rule_has_time_window",
    "rule_segment_refs",
    "rule_tag_refs",
    "validate_property_filter",
    "validate_rule",
]
