"""Events -> slot metrics per cohort, for the landing files of the running hour and for hours
already in raw.events (the baseline). One SQL aggregation, zero-filled: a cohort with no
purchases in a slot is a 0, which is the signal of a broken checkout."""

from __future__ import annotations

from datetime import datetime

import duckdb
import pandas as pd

from funnelwatch.fastlane.config import NULL_RATE_PREFIX, PROVIDER_DIMENSION, SESSION_DIMENSIONS

ALLOWED_DIMENSIONS = (*SESSION_DIMENSIONS, PROVIDER_DIMENSION)
# checkout_conversion_rate: sessions that purchased in the window out of sessions that
# started checkout in it. A purchase often lands in the slot after its checkout start, so a
# single slot can show more purchases than starts; the numerator is capped at the
# denominator, and the baseline (same slots on earlier days) has the same lag.
COUNTS_SQL = """
    count(DISTINCT session_id) FILTER (WHERE event_type = 'checkout_start') AS checkout_sessions,
    count(DISTINCT session_id) FILTER (WHERE event_type = 'purchase') AS purchase_sessions,
    count(*) FILTER (WHERE event_type = 'payment_attempt') AS payment_attempts,
    count(*) FILTER (WHERE event_type = 'payment_attempt'
                     AND payment_status = 'failure') AS payment_failures,
    count(DISTINCT coalesce(order_id, event_id)) FILTER (WHERE event_type = 'purchase')
        AS purchases,
    count(*) AS events,
""" + ",\n".join(f"    count(*) FILTER (WHERE e.{d} IS NULL) AS null_{d}" for d in SESSION_DIMENSIONS)


def cohort_frame(cohorts: list[tuple[str, str]]) -> pd.DataFrame:
    """[(dimension, value)] -> the cohort table ('all' first). Dimensions are checked against
    the allow-list because they become column names in SQL."""
    rows = [("all", "", "all")]
    for dimension, value in cohorts:
        if dimension not in ALLOWED_DIMENSIONS:
            raise ValueError(f"unknown fast-lane dimension {dimension!r}; allowed: "
                             f"{', '.join(ALLOWED_DIMENSIONS)}")
        rows.append((dimension, str(value), f"{dimension}={value}"))
    return pd.DataFrame(rows, columns=["dimension", "value", "cohort"]).astype(str)


def slot_metrics(
    con: duckdb.DuckDBPyConnection,
    rows_sql: str,
    params: dict,
    start: datetime,
    end: datetime,
    cohorts: pd.DataFrame,
    slot_minutes: int = 5,
    valid_only: bool = False,
) -> pd.DataFrame:
    """Long frame (slot_start, metric, cohort, numerator, denominator, value) for every slot
    of [start, end) and cohort. `rows_sql` is a table name or a parenthesised SELECT of
    contract events; with `valid_only` its `_reason` column must be NULL for a row to count
    (landing rows, see funnelwatch.ingest.loader.landing_rows)."""
    value_of = "CASE c.dimension " + " ".join(
        f"WHEN '{d}' THEN e.{d}" for d in ALLOWED_DIMENSIONS) + " END"
    valid = "AND e._reason IS NULL" if valid_only else ""
    con.register("_fastlane_cohorts", cohorts)
    try:
        counts = con.execute(
            f"""SELECT to_timestamp(floor(epoch(e.event_time) / $slot) * $slot) AS slot_start,
                       c.cohort, c.dimension, {COUNTS_SQL}
                FROM {rows_sql} AS e
                JOIN _fastlane_cohorts AS c ON c.dimension = 'all' OR {value_of} = c.value
                WHERE e.event_time >= $fl_start AND e.event_time < $fl_end {valid}
                GROUP BY ALL""",
            {**params, "slot": slot_minutes * 60, "fl_start": start, "fl_end": end},
        ).df()
    finally:
        con.unregister("_fastlane_cohorts")
    slots = pd.date_range(pd.Timestamp(start).tz_convert("UTC"), pd.Timestamp(end).tz_convert("UTC"),
                          freq=f"{slot_minutes}min", inclusive="left")
    grid = pd.MultiIndex.from_product([slots, cohorts["cohort"]], names=["slot_start", "cohort"])
    count_columns = ["checkout_sessions", "purchase_sessions", "payment_attempts",
                     "payment_failures", "purchases", "events",
                     *(f"null_{d}" for d in SESSION_DIMENSIONS)]
    if len(counts):
        counts["slot_start"] = pd.to_datetime(counts["slot_start"], utc=True).astype(
            "datetime64[us, UTC]")
        counts = counts.set_index(["slot_start", "cohort"])[count_columns]
    else:
        counts = pd.DataFrame(columns=count_columns, dtype=float,
                              index=pd.MultiIndex.from_arrays([[], []]))
    filled = counts.reindex(grid).fillna(0.0).astype(float).reset_index()
    filled["slot_start"] = filled["slot_start"].astype("datetime64[us, UTC]")
    is_provider = filled["cohort"].str.startswith(f"{PROVIDER_DIMENSION}=")
    parts = [
        filled[~is_provider].assign(
            metric="checkout_conversion_rate",
            numerator=lambda f: f[["purchase_sessions", "checkout_sessions"]].min(axis=1),
            denominator=lambda f: f["checkout_sessions"]),
        filled.assign(metric="payment_failure_rate", numerator=lambda f: f["payment_failures"],
                      denominator=lambda f: f["payment_attempts"]),
        filled[~is_provider].assign(metric="purchases", numerator=lambda f: f["purchases"],
                                    denominator=float("nan")),
        # the data-quality guard's inputs (funnelwatch/fastlane/quality.py), store-wide only:
        # a session field gone null empties that dimension's cohorts without any business cause
        *(filled[filled["cohort"] == "all"].assign(
            metric=f"{NULL_RATE_PREFIX}{d}", numerator=lambda f, d=d: f[f"null_{d}"],
            denominator=lambda f: f["events"]) for d in SESSION_DIMENSIONS),
    ]
    out = pd.concat(parts, ignore_index=True)[
        ["slot_start", "metric", "cohort", "numerator", "denominator"]]
    out["value"] = out["numerator"] / out["denominator"].where(out["denominator"] > 0)
    counts_metric = out["denominator"].isna() & (out["metric"] == "purchases")
    out.loc[counts_metric, "value"] = out.loc[counts_metric, "numerator"]
    return out.sort_values(["slot_start", "metric", "cohort"]).reset_index(drop=True)
