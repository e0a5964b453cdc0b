"""Retention: per-person rows older than N days are deleted; the marts are kept.

The cutoff is `reference - days`, where `reference` is the end of the newest loaded hour
(`relative_to="newest_hour"`, the default: the warehouse's own clock, so a replay or an
imported historical data set is not wiped the moment it is loaded) or the current time
(`relative_to="now"`). Deleted, for event hours before the cutoff, in one transaction:

- raw.events, raw.events_quarantine (pseudonymised ids, raw payloads of rejected rows)
- intermediate.int_session_hours (session ids)
- marts.fct_sessions (session ids), by the session's start hour

and, unless `landing=False`, the landing folders `events/date=/hour=` of those hours (they
hold the RAW ids). Kept: the marts without ids (fct_funnel_hourly, fct_cohort_metrics_hourly,
the dims), intermediate.int_category_hourly (aggregates), raw.ingest_log (counts per hour),
the quality results. Running it twice deletes nothing the second time (idempotent).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb

from funnelwatch.landing import landed_hours
from funnelwatch.warehouse import EVENTS_TABLE, INGEST_LOG_TABLE, QUARANTINE_TABLE

DEFAULT_RETENTION_DAYS = 30
RELATIVE_TO = ("newest_hour", "now")

# (table, time column): every table that holds per-person rows.
PERSONAL_TABLES: tuple[tuple[str, str], ...] = (
    (EVENTS_TABLE, "event_hour"),
    (QUARANTINE_TABLE, "event_hour"),
    ("intermediate.int_session_hours", "event_hour"),
    ("marts.fct_sessions", "start_hour"),
)


@dataclass
class RetentionResult:
    days: int
    relative_to: str
    cutoff: datetime | None  # rows of hours before this are deleted; None: nothing loaded
    dry_run: bool = False
    rows_deleted: dict[str, int] = field(default_factory=dict)
    hours_deleted: list[datetime] = field(default_factory=list)
    landing_hours_deleted: list[datetime] = field(default_factory=list)
    oldest_kept_hour: datetime | None = None

    @property
    def total_rows(self) -> int:
        return sum(self.rows_deleted.values())

    def summary(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        if self.cutoff is None:
            return "nothing loaded yet: nothing to delete"
        tables = ", ".join(f"{t}: {n:,}" for t, n in self.rows_deleted.items())
        kept = f"{self.oldest_kept_hour:%Y-%m-%d %H:00}" if self.oldest_kept_hour else "none"
        return (
            f"retention {self.days} days (relative to {self.relative_to}), cutoff "
            f"{self.cutoff:%Y-%m-%d %H:%M} UTC: {verb} {len(self.hours_deleted)} hour(s) "
            f"({tables}), {len(self.landing_hours_deleted)} landing hour folder(s); "
            f"oldest kept hour {kept}"
        )


def _table_exists(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    schema, name = table.split(".")
    return bool(
        con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? "
            "AND table_name = ?",
            [schema, name],
        ).fetchone()[0]
    )


def newest_loaded_hour(con: duckdb.DuckDBPyConnection) -> datetime | None:
    parts = [
        f"SELECT max(event_hour) AS h FROM {t}"
        for t in (EVENTS_TABLE, INGEST_LOG_TABLE)
        if _table_exists(con, t)
    ]
    if not parts:
        return None
    return con.execute(f"SELECT max(h) FROM ({' UNION ALL '.join(parts)})").fetchone()[0]


def retention_cutoff(
    con: duckdb.DuckDBPyConnection,
    days: int,
    relative_to: str = "newest_hour",
    now: datetime | None = None,
) -> datetime | None:
    if days < 1:
        raise ValueError(f"retention days must be >= 1, got {days}")
    if relative_to not in RELATIVE_TO:
        raise ValueError(f"relative_to must be one of {RELATIVE_TO}, got {relative_to!r}")
    if relative_to == "now":
        reference = now or datetime.now(UTC)
    else:
        newest = newest_loaded_hour(con)
        if newest is None:
            return None
        reference = newest + timedelta(hours=1)
    cutoff = reference - timedelta(days=days)
    # whole hours: an hour is kept or deleted as a unit
    return cutoff.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def apply_retention(
    con: duckdb.DuckDBPyConnection,
    days: int = DEFAULT_RETENTION_DAYS,
    landing_root: Path | str | None = None,
    landing: bool = True,
    relative_to: str = "newest_hour",
    now: datetime | None = None,
    dry_run: bool = False,
) -> RetentionResult:
    """Delete per-person rows of hours before the cutoff (one transaction), then the landing
    folders of those hours (when `landing` and `landing_root` are given)."""
    cutoff = retention_cutoff(con, days, relative_to, now)
    result = RetentionResult(days=days, relative_to=relative_to, cutoff=cutoff, dry_run=dry_run)
    if cutoff is None and relative_to == "newest_hour":
        return result
    tables = [(t, c) for t, c in PERSONAL_TABLES if _table_exists(con, t)]
    hours: set[datetime] = set()
    con.execute("BEGIN TRANSACTION")
    try:
        for table, column in tables:
            where = f"{column} < $cutoff"
            n, table_hours = con.execute(
                f"SELECT count(*), list(DISTINCT date_trunc('hour', {column})) FROM {table} "
                f"WHERE {where}",
                {"cutoff": cutoff},
            ).fetchone()
            result.rows_deleted[table] = n
            hours.update(h for h in (table_hours or []) if h is not None)
            if n and not dry_run:
                con.execute(f"DELETE FROM {table} WHERE {where}", {"cutoff": cutoff})
        con.execute("ROLLBACK" if dry_run else "COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    result.hours_deleted = sorted(hours)
    if _table_exists(con, EVENTS_TABLE):
        oldest = con.execute(
            f"SELECT min(event_hour) FROM {EVENTS_TABLE} WHERE event_hour >= $cutoff",
            {"cutoff": cutoff},
        ).fetchone()[0]
        result.oldest_kept_hour = oldest
    if landing and landing_root is not None:
        result.landing_hours_deleted = delete_landing_before(landing_root, cutoff, dry_run)
    return result


def delete_landing_before(
    landing_root: Path | str, cutoff: datetime, dry_run: bool = False
) -> list[datetime]:
    """Remove the landing folders `events/date=/hour=` of hours before `cutoff` (and date
    folders left empty). Reference CSVs are not personal data and are kept."""
    root = Path(landing_root) / "events"
    deleted = []
    for hour in list(landed_hours(landing_root)):
        if hour >= cutoff:
            continue
        folder = root / f"date={hour:%Y-%m-%d}" / f"hour={hour:%H}"
        deleted.append(hour)
        if not dry_run:
            shutil.rmtree(folder, ignore_errors=True)
            day = folder.parent
            if day.is_dir() and not any(day.iterdir()):
                day.rmdir()
    return deleted
