"""What ingest set aside over a window, one line per problem, for the person at the terminal
(`funnelwatch run` prints them after the run; the same facts are in the asset checks)."""

from __future__ import annotations

from datetime import datetime

import duckdb

from funnelwatch.warehouse import QUARANTINE_TABLE, REJECTED_FILES_TABLE
from funnelwatch.warehouse import has_table as _has_table


def ingest_problem_lines(
    con: duckdb.DuckDBPyConnection, start: datetime, end: datetime
) -> list[str]:
    """Unreadable files set aside, then quarantined rows per hour and reason, in [start, end)."""
    lines: list[str] = []
    window = {"start": start, "end": end}
    if _has_table(con, REJECTED_FILES_TABLE):
        for hour, file, line, reason in con.execute(
            f"""SELECT event_hour, file, line, reason FROM {REJECTED_FILES_TABLE}
                WHERE event_hour >= $start AND event_hour < $end ORDER BY event_hour, file""",
            window,
        ).fetchall():
            where = f"{file}" + (f", line {line}" if line is not None else "")
            lines.append(f"{hour:%Y-%m-%d %H:00} UTC: set aside unreadable file {where}: "
                         f"{reason} (not loaded; land a fixed file to re-process the hour)")
    if _has_table(con, QUARANTINE_TABLE):
        for hour, reason, rows in con.execute(
            f"""SELECT event_hour, reason, count(*) FROM {QUARANTINE_TABLE}
                WHERE event_hour >= $start AND event_hour < $end
                GROUP BY ALL ORDER BY event_hour, reason""",
            window,
        ).fetchall():
            lines.append(f"{hour:%Y-%m-%d %H:00} UTC: quarantined {rows} rows: {reason} "
                         "(raw.events_quarantine)")
    return lines
