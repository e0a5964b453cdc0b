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


def blank_sql(column: str) -> str:
    """SQL true when a VARCHAR value is empty or only whitespace (`trim(x) = ''`), NULL for NULL.

    Why not just `trim(x) = ''`: trim copies every value, and on an hour of events the rules'
    trims were most of the ingest's validation time. A value starting with a printable ASCII
    character other than a space ('!' to '~', compared bytewise) is not blank, so only the
    others (empty, a leading space, tab or non-ASCII character) are trimmed."""
    return f"(NOT ({column} >= '!' AND {column} < chr(127)) AND trim({column}) = '')"


def _build_rules() -> tuple[Rule, ...]:
    rules: list[Rule] = []
    for column in REQUIRED_COLUMNS:
        empty = f" OR {blank_sql(column)}" if _TYPES[column] == "VARCHAR" else ""
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
            f"event_type = 'checkout_step' AND (checkout_step IS NULL OR {blank_sql('checkout_step')})",
        ),
        Rule(
            "missing_payment_status",
            "a payment_attempt needs `payment_status`.",
            ("event_type = 'payment_attempt' "
             f"AND (payment_status IS NULL OR {blank_sql('payment_status')})"),
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
    # A NULL predicate (e.g. price IS NULL) means "rule not broken": CASE WHEN takes NULL as
    # false, so no coalesce() around it (which cost 30% more time on an hour of events).
    whens = "\n".join(f"  WHEN ({rule.predicate}) THEN '{rule.reason}'" for rule in rules)
    return f"CASE\n{whens}\n  ELSE NULL\nEND"


def _known(column: str) -> str:
    return f"lower(trim({column})) IN ({_sql_list(DESCRIPTIVE_VALUE_SETS[column])})"


def unknown_column(column: str) -> str:
    """Name of the helper column holding `column`'s raw value when the contract does not know
    it (see `unknown_values_sql`)."""
    return f"_unknown_{column}"


def unknown_values_sql() -> dict[str, str]:
    """Per descriptive field, {helper column: SQL of the raw value when it is one the contract
    does not know, else NULL}. Null, empty and known values (any case, padded: staging
    normalises them) are NULL here.

    The exact contract values are tested first: most rows carry one, and the lower/trim test
    (string copies on every row) then runs only on the others."""
    return {
        unknown_column(column): (
            f"CASE WHEN {column} IS NULL OR {column} IN ({_sql_list(values)}) THEN NULL "
            f"WHEN {blank_sql(column)} OR {_known(column)} THEN NULL ELSE {column} END")
        for column, values in DESCRIPTIVE_VALUE_SETS.items()
    }


def descriptive_values_sql() -> dict[str, str]:
    """Per descriptive field, the SQL of the value kept: `other` for a value the contract does
    not know, else the value as it came. Reads the helper columns of `unknown_values_sql`."""
    return {
        column: f"CASE WHEN {unknown_column(column)} IS NULL THEN {column} ELSE '{OTHER_VALUE}' END"
        for column in DESCRIPTIVE_VALUE_SETS
    }


def unmapped_values_sql() -> str:
    """SQL of a MAP(field -> raw value) of the descriptive values kept as `other`; NULL when the
    row has none (most rows: nothing stored). Reads the helper columns of `unknown_values_sql`."""
    helpers = [unknown_column(c) for c in DESCRIPTIVE_VALUE_SETS]
    entries = ", ".join(f"{{'key': '{c}', 'value': {unknown_column(c)}}}"
                        for c in DESCRIPTIVE_VALUE_SETS)
    return (f"CASE WHEN coalesce({', '.join(helpers)}) IS NOT NULL THEN map_from_entries("
            f"list_filter([{entries}], lambda e: e.value IS NOT NULL)) END")
