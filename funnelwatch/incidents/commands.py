"""`funnelwatch incidents` (the list) and `funnelwatch incident ID` (one report).

Both open the warehouse read-only: safe beside the Dagster UI, but DuckDB refuses while the
pipeline holds the write lock; then they say so and exit 2. Reports that are missing are
rendered into $FUNNELWATCH_REPORTS_DIR (default: `reports/` beside the warehouse file); that
needs a writable folder, not a writable warehouse (report_path is not updated).
"""

from __future__ import annotations

import difflib
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from funnelwatch.command_support import fail, open_warehouse
from funnelwatch.settings import Settings

STATE_CHOICES = ("open", "acknowledged", "resolved", "all")
STATE_ORDER = {"open": 0, "acknowledged": 1, "resolved": 2}


def reports_dir(settings: Settings) -> Path:
    """$FUNNELWATCH_REPORTS_DIR, else `<warehouse dir>/reports`."""
    value = os.environ.get("FUNNELWATCH_REPORTS_DIR")
    return Path(value).resolve() if value else settings.warehouse.parent / "reports"


def _rows(con, sql: str, params: dict | None = None) -> list[dict[str, Any]]:
    import duckdb

    try:
        cur = con.execute(sql, params or {})
    except duckdb.CatalogException:  # the incident layer has not run on this warehouse yet
        return []
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def _short(text: Any, width: int) -> str:
    text = "-" if text in (None, "") else " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _rank_key(row: dict[str, Any]) -> tuple:
    from funnelwatch.incidents.report import _num

    revenue, severity = _num(row.get("revenue_at_risk")), _num(row.get("severity"))
    started = row.get("started_at")
    return (  # state, then revenue at risk and severity descending (unknown last), newest first
        STATE_ORDER.get(row.get("state"), 3),
        -(revenue if revenue is not None else -1.0),
        -(severity if severity is not None else -1.0),
        -(started.timestamp() if isinstance(started, datetime) else 0.0),
    )


def list_incidents(con, state: str | None, days: int, limit: int,
                   now: datetime | None = None) -> tuple[list[dict[str, Any]], int]:
    """(ranked rows, how many resolved incidents older than `days` the default view hid)."""
    rows = _rows(con, "SELECT * EXCLUDE (rca) FROM incidents.incidents")
    # changes explained by planned traffic are context, not problems: only `--state all`
    # shows them (their state column says `context`)
    if state != "all":
        rows = [r for r in rows if r.get("category") != "context"]
    for r in rows:
        if r.get("category") == "context":
            r["state"] = "context"
    hidden = 0
    if state in (None, ""):
        since = (now or datetime.now(UTC)) - timedelta(days=days)
        kept = []
        for r in rows:
            resolved_at = r.get("resolved_at")
            if r.get("state") == "resolved" and (
                    resolved_at is None or resolved_at.astimezone(UTC) < since):
                hidden += 1
            else:
                kept.append(r)
        rows = kept
    elif state != "all":
        rows = [r for r in rows if r.get("state") == state]
    rows.sort(key=_rank_key)
    return rows[:limit], hidden


def incidents_table(rows: list[dict[str, Any]]) -> str:
    from tabulate import tabulate

    from funnelwatch.incidents.report import _money, _orders, _when, incident_duration

    table = [[
        r.get("incident_id"), r.get("state"),
        "-" if r.get("severity") is None else f"{r['severity']:.0f}",
        _when(r.get("started_at")).removesuffix(" UTC"), incident_duration(r),
        _short(r.get("metric"), 28),
        _short(r.get("where_cohort") or r.get("cohort"), 40) if r.get("cohort") else "-",
        _short(r.get("funnel_step"), 18),
        _short(r.get("top_cause"), 36),
        _orders(r.get("lost_orders")), _money(r.get("revenue_at_risk")),
    ] for r in rows]
    headers = ["id", "state", "sev", "started (UTC)", "duration", "metric", "where", "step",
               "top cause", "lost orders", "revenue at risk"]
    return tabulate(table, headers=headers, tablefmt="simple", disable_numparse=True)


def _closest(con, wanted: str) -> list[str]:
    ids = [r["incident_id"] for r in _rows(con, "SELECT incident_id FROM incidents.incidents")]
    close = difflib.get_close_matches(wanted, ids, n=5, cutoff=0.5)
    contains = [i for i in ids if wanted.lower() in i.lower() and i not in close]
    return (close + contains)[:5]


def _find(con, wanted: str) -> dict[str, Any] | None:
    rows = _rows(con, "SELECT * FROM incidents.incidents WHERE incident_id = $i", {"i": wanted})
    if not rows and wanted:  # a unique prefix is enough
        rows = _rows(con, "SELECT * FROM incidents.incidents WHERE starts_with(incident_id, $i)",
                     {"i": wanted})
        rows = rows if len(rows) == 1 else []
    return rows[0] if rows else None


def register(app: typer.Typer) -> None:
    """Add `incidents` and `incident` to the funnelwatch command."""

    @app.command("incidents")
    def incidents_cmd(
        state: Annotated[str | None, typer.Option(
            help="open | acknowledged | resolved | all (default: every unresolved incident "
                 "plus those resolved in the last --days).")] = None,
        days: Annotated[int, typer.Option(help="Resolved incidents of the last N days (default view).")] = 7,
        limit: Annotated[int, typer.Option(help="At most this many rows.")] = 20,
    ):
        """List incidents: open first, then acknowledged, then resolved; within a state by
        revenue at risk, then severity."""
        if state is not None and state not in STATE_CHOICES:
            fail(f"--state must be one of {', '.join(STATE_CHOICES)}, not {state!r}")
        settings = Settings.from_env()
        with open_warehouse(settings.warehouse, read_only=True) as con:
            rows, hidden = list_incidents(con, state, days, limit)
            total = _rows(con, "SELECT count(*) AS n FROM incidents.incidents")
        if not total:
            typer.echo("no incidents yet: the incident layer has not run on this warehouse "
                       f"({settings.warehouse}).")
            return
        if not rows:
            what = "no incidents" if state in (None, "", "all") else f"no {state} incidents"
            typer.echo(f"{what} — the store looks healthy"
                       + (f" ({hidden} resolved more than {days} days ago: --state resolved)"
                          if hidden else "") + ".")
            return
        typer.echo(incidents_table(rows))
        n_total = total[0]["n"] if total else len(rows)
        notes = [f"{len(rows)} of {n_total} incidents"]
        if hidden:
            notes.append(f"{hidden} resolved more than {days} days ago hidden (--state all)")
        notes.append("details: funnelwatch incident ID")
        typer.echo("\n" + "; ".join(notes))

    @app.command("incident")
    def incident_cmd(
        incident_id: Annotated[str, typer.Argument(help="The incident id (a unique prefix is enough).")],
        html: Annotated[bool, typer.Option("--html", help="Print the path of report.html instead.")] = False,
        render: Annotated[bool, typer.Option("--render", help="Render the report again even if one exists.")] = False,
    ):
        """Print an incident's report (Markdown) and its timeline; renders the report into
        $FUNNELWATCH_REPORTS_DIR (default: reports/ beside the warehouse) when it is missing."""
        from funnelwatch.incidents.report import (
            _markdown,
            find_playbook,
            render_report,
            timeline_rows,
            timeline_section,
        )

        settings = Settings.from_env()
        with open_warehouse(settings.warehouse, read_only=True) as con:
            row = _find(con, incident_id)
            if row is None:
                closest = _closest(con, incident_id)
                hint = f"; closest: {', '.join(closest)}" if closest else ""
                fail(f"no incident {incident_id!r}{hint} (list them: funnelwatch incidents)")
            stored = Path(row["report_path"]) if row.get("report_path") else None
            md_path = stored if stored and stored.is_file() else None
            if md_path is not None and html and not md_path.with_name("report.html").is_file():
                md_path = None
            fresh = render or md_path is None
            if fresh:
                out = reports_dir(settings)
                try:
                    files = render_report(con, row, out, playbook=find_playbook(row))
                except OSError as exc:
                    fail(f"cannot write the report into {out}: {exc} (set FUNNELWATCH_REPORTS_DIR)")
                md_path, text = files.markdown_path, files.markdown
            else:
                text = md_path.read_text(encoding="utf-8")
            timeline = [] if fresh else timeline_rows(con, row["incident_id"])
        if html:
            typer.echo(str(md_path.with_name("report.html")))
            return
        typer.echo(text, nl=False)
        if not fresh:  # the stored report may be older than the timeline
            typer.echo(_markdown([], [timeline_section(timeline, "Timeline (now)")], {}), nl=False)
        typer.echo(f"\nreport: {md_path}\nhtml:   {md_path.with_name('report.html')}")

    @app.command("ack")
    def ack_cmd(
        incident_id: Annotated[str, typer.Argument(help="The incident id (a unique prefix is enough).")],
        who: Annotated[str, typer.Option(help="Who acknowledges it.")] = "on-call",
    ):
        """Acknowledge an open incident: the pager gets an `acknowledge` on the next alert run
        and the incident stops counting as unhandled."""
        from funnelwatch.command_support import open_warehouse
        from funnelwatch.incidents.lifecycle import acknowledge

        with open_warehouse(Settings.from_env().warehouse) as con:
            row = _find(con, incident_id)
            if row is None:
                fail(f"no incident {incident_id!r} (list them: funnelwatch incidents)")
            if not acknowledge(con, row["incident_id"], who, datetime.now(UTC)):
                fail(f"{row['incident_id']} is {row['state']}, not open")
        typer.echo(f"{row['incident_id']} acknowledged by {who}")
