"""Row-level contract rules applied at ingest. A row that breaks one is quarantined with the
reason of the first rule it breaks (rules are ordered from the most basic to the most specific).

Each rule is a SQL predicate over the staged, typed columns of one hour's landing rows. The
staged rows also have `_cast_errors` (names of columns whose text could not be cast to the
contract type); the partition hour bounds are the bound parameters `$hour_start`/`$hour_end`.
"""

from __future__ import annotations

from dataclasses import dataclass

from funnelwatch.contract import (
    CHECKOUT_STEPS,
    DEVICE_TYPES,
    EVENT_FIELDS,
    EVENT_TYPES,
    PAGE_TYPES,
    PAYMENT_STATUSES,
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
        Rule(
            "invalid_checkout_step",
            f"a checkout_step event needs `checkout_step` in ({', '.join(CHECKOUT_STEPS)}); "
            "other values are rejected on any event.",
            f"(event_type = 'checkout_step' AND checkout_step IS NULL) OR "
            f"(checkout_step IS NOT NULL AND checkout_step NOT IN ({_sql_list(CHECKOUT_STEPS)}))",
        ),
        Rule(
            "invalid_payment_status",
            f"a payment_attempt needs `payment_status` in ({', '.join(PAYMENT_STATUSES)}).",
            f"(event_type = 'payment_attempt' AND payment_status IS NULL) OR "
            f"(payment_status IS NOT NULL AND payment_status NOT IN ({_sql_list(PAYMENT_STATUSES)}))",
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
        Rule(
            "invalid_device_type",
            f"`device_type`, when set, is one of ({', '.join(DEVICE_TYPES)}).",
            f"device_type IS NOT NULL AND device_type NOT IN ({_sql_list(DEVICE_TYPES)})",
        ),
        Rule(
            "invalid_page_type",
            f"`page_type`, when set, is one of ({', '.join(PAGE_TYPES)}).",
            f"page_type IS NOT NULL AND page_type NOT IN ({_sql_list(PAGE_TYPES)})",
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
