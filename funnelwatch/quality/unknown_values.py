"""Values the event contract does not know, per field and hour: a warning, never a rejection.

Ingest keeps such a value as `other` in its column, the raw value in
`raw.events.unmapped_values`, and the hour's top unknown values per field in
`raw.ingest_log.unknown_values` (`funnelwatch/ingest/loader.py`). This module reads them back
for the asset check in the UI and for `funnelwatch summary`: a person sees which names a feed
uses that the contract (or, later, the source's mapping) does not, without any row lost.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime

import duckdb

from funnelwatch.warehouse import INGEST_LOG_TABLE


@dataclass
class UnknownValues:
    """Unknown values over some hours: {field: {raw value: rows}} and the hours that had any."""

    by_field: dict[str, dict[str, int]] = field(default_factory=dict)
    hours: list[datetime] = field(default_factory=list)

    def rows(self, column: str) -> int:
        return sum(self.by_field.get(column, {}).values())

    def table_markdown(self, top: int = 5) -> str:
        lines = ["| field | rows kept as `other` | top raw values |", "|---|---:|---|"]
        for column, values in sorted(self.by_field.items()):
            shown = sorted(values.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
            listed = ", ".join(f"`{value}` ({n})" for value, n in shown)
            lines.append(f"| {column} | {self.rows(column)} | {listed} |")
        return "\n".join(lines)


def unknown_values(
    con: duckdb.DuckDBPyConnection, start: datetime, end: datetime
) -> UnknownValues:
    """Unknown values of the hours in [start, end), from each hour's latest ingest."""
    exists = con.execute(
        "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'raw' "
        "AND table_name = 'ingest_log' AND column_name = 'unknown_values'"
    ).fetchone()[0]
    if not exists:
        return UnknownValues()
    logged = con.execute(
        f"""SELECT event_hour, unknown_values FROM {INGEST_LOG_TABLE}
            WHERE event_hour >= $start AND event_hour < $end
            QUALIFY row_number() OVER (PARTITION BY event_hour ORDER BY ingested_at DESC) = 1
            ORDER BY event_hour""",
        {"start": start, "end": end},
    ).fetchall()
    found = UnknownValues()
    for hour, payload in logged:
        if not payload:
            continue
        found.hours.append(hour)
        for column, values in json.loads(payload).items():
            totals = found.by_field.setdefault(column, {})
            for value, n in values.items():
                totals[value] = totals.get(value, 0) + n
    return found
