"""Row-level contract rules applied at ingest. A row that breaks one is quarantined with the
reason of the first rule it breaks (rules are ordered from the most basic to the most specific).

Each rule is a SQL predicate over the staged, typed columns of one hour's landing rows. The
staged rows also have `_cast_errors` (names of columns whose text could not be cast to the
contract type); the partition hour bounds are the bound parameters `$hour_start`/`$hour_end`.
"""

from __future__ import annotations

from dataclasses import dataclass

from funnelwatch.contract import (
    DESCRIPTIVE_VALUE_SETS,
    EVENT_FIELDS,
    EVENT_TYPES,
    OTHER_VALUE,
    REQUIRED_COLUMNS,
)


@dataclass(frozen=True)
class Rule:
    reason: str
    description: str
    predicate: str  # SQL, true when the row BREAKS the rule


def _sql_list(values: tuple[str, ...]) -> str:
    # Values are the contract's own constants (never user input), quoted as SQL literals.
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)


_TYPES = {f.name: f.duckdb_type for f in EVENT_FIELDS}


def _build_rules() -> tuple[Rule, ...]:
    rules: list[Rule] = []
    for column in REQUIRED_COLUMNS:
        empty = f" OR trim({column}) = ''" if _TYPES[column] == "VARCHAR" else ""
        # A value that is present but fails its cast is NULL here too: that is
        # invalid_<column> (below), not missing.
        failed_cast = (
            "" if _TYPES[column] == "VARCHAR"
            else f" AND NOT list_contains(_cast_errors, '{column}')"
        )
        rules.append(
            Rule(
                f"missing_{column}",
                f"`{column}` is required and is null" + (" or empty." if empty else "."),
                f"({column} IS NULL{failed_cast}){empty}",
            )
        )
    for field in EVENT_FIELDS:
        if field.duckdb_type == "VARCHAR":
            continue
        rules.append(
            Rule(
                f"invalid_{field.name}",
                f"`{field.name}` is present but is not a valid {field.duckdb_type}.",
                f"list_contains(_cast_errors, '{field.name}')",
            )
        )
    rules += [
        Rule(
            "unknown_event_type",
            f"`event_type` is not one of the contract's types ({', '.join(EVENT_TYPES)}).",
            f"event_type NOT IN ({_sql_list(EVENT_TYPES)})",
        ),
        Rule(
            "event_time_outside_hour",
            "`event_time` is not inside the hour whose landing folder the row came from.",
            "event_time < $hour_start::TIMESTAMPTZ OR event_time >= $hour_end::TIMESTAMPTZ",
        ),
        # Unknown values of descriptive fields are kept as `other` (`unmapped_values_sql`);
        # only an event that lacks the field its type needs is unusable.
        Rule(
            "missing_checkout_step",
            "a checkout_step event needs `checkout_step`.",
            "event_type = 'checkout_step' AND nullif(trim(checkout_step), '') IS NULL",
        ),
        Rule(
            "missing_payment_status",
            "a payment_attempt needs `payment_status`.",
            "event_type = 'payment_attempt' AND nullif(trim(payment_status), '') IS NULL",
        ),
        Rule(
            "purchase_without_order",
            "a purchase needs `order_id` and `revenue`.",
            "event_type = 'purchase' AND (order_id IS NULL OR revenue IS NULL)",
        ),
        Rule(
            "negative_amount",
            "`price`, `quantity`, `revenue` and `latency_ms` may not be negative.",
            "price < 0 OR quantity < 0 OR revenue < 0 OR latency_ms < 0",
        ),
    ]
    return tuple(rules)


QUARANTINE_RULES: tuple[Rule, ...] = _build_rules()


def quarantine_reason_sql(cast_columns: set[str] | None = None) -> str:
    """A SQL expression giving the first broken rule's reason, or NULL for a valid row.

    `cast_columns`: the columns some file had to cast from text; the cast-failure rules of the
    other columns cannot fire and are left out (a cheaper expression on the Parquet path).
    """
    rules = [
        rule
        for rule in QUARANTINE_RULES
        if cast_columns is None
        or not rule.predicate.startswith("list_contains(_cast_errors")
        or rule.reason.removeprefix("invalid_") in cast_columns
    ]
    # COALESCE guards: a NULL predicate (e.g. price IS NULL) means "rule not broken".
    whens = "\n".join(
        f"  WHEN coalesce(({rule.predicate}), false) THEN '{rule.reason}'" for rule in rules
    )
    return f"CASE\n{whens}\n  ELSE NULL\nEND"


def _known(column: str) -> str:
    return f"lower(trim({column})) IN ({_sql_list(DESCRIPTIVE_VALUE_SETS[column])})"


def descriptive_values_sql() -> dict[str, str]:
    """Per descriptive field, the SQL of the value kept: the value when it is null, empty or one
    of the contract's (normalised later by staging), else `other`."""
    return {
        column: (f"CASE WHEN nullif(trim({column}), '') IS NULL OR {_known(column)} "
                 f"THEN {column} ELSE '{OTHER_VALUE}' END")
        for column in DESCRIPTIVE_VALUE_SETS
    }


def unmapped_values_sql() -> str:
    """SQL of a MAP(field -> raw value) of the descriptive values kept as `other`; NULL when the
    row has none (most rows: nothing stored)."""
    entries = ", ".join(
        f"CASE WHEN nullif(trim({c}), '') IS NOT NULL AND NOT {_known(c)} "
        f"THEN {{'key': '{c}', 'value': {c}}} END"
        for c in DESCRIPTIVE_VALUE_SETS
    )
    known = f"list_filter([{entries}], lambda e: e IS NOT NULL)"
    return f"CASE WHEN len({known}) > 0 THEN map_from_entries({known}) END"
