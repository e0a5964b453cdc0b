"""Incident reports: one folder per incident with `report.md`, `report.html` and PNG charts.

`render_report(con, incident, out_dir, playbook)` writes `<out_dir>/<incident_id>/`:

- `report.md`   title line, a one-paragraph summary, the charts (relative links), the top
                contributors, hypotheses with evidence, impact, timeline and playbook;
- `band.png`    the incident's series against its expected band (detection.anomalies over
                [started_at - 48 h, last_anomaly_at + 12 h]), anomalous hours marked;
- `funnel.png`  the funnel by step, affected cohort vs the rest, observed vs expected (rca.funnel);
- `revenue.png` cumulative revenue at risk per hour (rca.impact.per_hour);
- `report.html` the same, self-contained (PNGs inline as base64, inline CSS): an e-mail body.

Charts are drawn with matplotlib's Agg canvas only (no pyplot, no display). Every piece of the
`rca` JSON is optional: a missing key or a null rca leaves its section out with a short note.
When the incident has no cohort, no cohort name appears anywhere (summary, tables, charts).
No Dagster here: `report_metadata` returns plain values for the caller to wrap.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from funnelwatch.warehouse import has_table

CHART_NAMES = ("band", "funnel", "revenue")
BAND_BEFORE = timedelta(hours=48)
BAND_AFTER = timedelta(hours=12)
MAX_TABLE_ROWS = 12
MAX_HOURLY_ROWS = 48


@dataclass
class ReportFiles:
    markdown_path: Path
    html_path: Path
    png_paths: dict[str, Path]
    markdown: str
    html: str
    summary: str = ""
    png_bytes: dict[str, bytes] = field(default_factory=dict, repr=False)

    @property
    def ui_markdown(self) -> str:
        """The Markdown for the Dagster UI (band chart inline): `report_metadata(...)["report"]`."""
        return report_metadata(self)["report"]


# --- small helpers ------------------------------------------------------------------------------


def _currency() -> str:
    return os.environ.get("FUNNELWATCH_CURRENCY_SYMBOL", "$")


def _num(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) or math.isinf(f) else f


def _ts(value: Any) -> datetime | None:
    """A tz-aware UTC datetime from a datetime, pandas Timestamp or ISO string (else None)."""
    if value is None or value is pd.NaT:
        return None
    try:
        if isinstance(value, str):
            if not value.strip():
                return None
            value = datetime.fromisoformat(value.strip())
        elif isinstance(value, pd.Timestamp):
            value = value.to_pydatetime()
        if not isinstance(value, datetime):
            return None
    except (ValueError, TypeError):
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _when(value: Any, with_date: bool = True) -> str:
    t = _ts(value)
    if t is None:
        return "-"
    return f"{t:%Y-%m-%d %H:%M} UTC" if with_date else f"{t:%H:%M}"


def _duration(delta: timedelta | None) -> str:
    if delta is None or delta.total_seconds() < 0:
        return "-"
    minutes = int(delta.total_seconds() // 60)
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h" if not mins else f"{hours} h {mins} min"
    return f"{mins} min"


def incident_duration(incident: Mapping[str, Any]) -> str:
    """Started -> resolved (resolved incidents) or -> the end of the last anomalous hour."""
    start = _ts(incident.get("started_at"))
    if start is None:
        return "-"
    end = _ts(incident.get("resolved_at")) if incident.get("state") == "resolved" else None
    if end is None:
        last = _ts(incident.get("last_anomaly_at"))
        end = last + timedelta(hours=1) if last else None
    return _duration(end - start) if end else "-"


def _fmt(value: Any, digits: int = 3) -> str:
    """Numbers for people: thousands separators, 3 significant digits below 1, 2 decimals
    below 100."""
    f = _num(value)
    if f is None:
        return "-"
    if f == int(f) and abs(f) < 1e15:
        return f"{int(f):,}"
    if abs(f) >= 100:
        return f"{f:,.0f}"
    if abs(f) >= 1:
        return f"{f:.2f}".rstrip("0").rstrip(".")
    return f"{f:.{digits}g}"


def _pct(value: Any, signed: bool = True) -> str:
    f = _num(value)
    if f is None:
        return "-"
    return f"{f * 100:+.0f}%" if signed else f"{f * 100:.0f}%"


def _money(value: Any) -> str:
    f = _num(value)
    return "-" if f is None else f"{_currency()}{f:,.0f}"


def _orders(value: Any) -> str:
    f = _num(value)
    if f is None:
        return "-"
    return f"{f:.1f}".removesuffix(".0") if abs(f) < 10 else f"{f:,.0f}"


def parse_rca(value: Any) -> dict[str, Any]:
    """The incident's rca as a dict ({} for null, malformed JSON or a non-object)."""
    if value is None:
        return {}
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return {}
    return dict(value) if isinstance(value, Mapping) else {}


def _list_of_dicts(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
        return []
    return [dict(v) for v in value if isinstance(v, Mapping)]


def _cohort(incident: Mapping[str, Any]) -> str | None:
    cohort = incident.get("cohort")
    return str(cohort) if cohort not in (None, "") else None


# --- the document model: both renderers read it --------------------------------------------------


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    code_columns: frozenset[int] = frozenset()  # cells shown as `code` (cohorts, ids)


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    image: str | None = None  # a chart name in CHART_NAMES
    table: Table | None = None
    note: str | None = None  # shown after the table, in italics
    link: str | None = None  # a playbook URL


def _md_text(text: str) -> str:
    # Markdown renderers pass raw HTML through: neutralise tags, keep everything else readable.
    return str(text).replace("<", "&lt;").replace(">", "&gt;")


def _md_cell(text: str, code: bool = False) -> str:
    text = " ".join(str(text).split())  # no newlines in a table cell
    if code and text not in ("", "-"):
        return "`" + text.replace("`", "'").replace("|", "\\|") + "`"
    return _md_text(text).replace("|", "\\|")


def _markdown(head: list[str], sections: list[Section], images: Mapping[str, str]) -> str:
    lines = list(head)
    for s in sections:
        if lines and lines[-1] != "":
            lines.append("")
        lines += [f"## {s.title}", ""]
        for p in s.paragraphs:
            lines += [p, ""]
        if s.image and s.image in images:
            lines += [f"![{s.title}]({images[s.image]})", ""]
        if s.table is not None and s.table.rows:
            t = s.table
            lines.append("| " + " | ".join(_md_cell(h) for h in t.headers) + " |")
            lines.append("|" + "|".join("---" for _ in t.headers) + "|")
            for row in t.rows:
                cells = [_md_cell(c, i in t.code_columns) for i, c in enumerate(row)]
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
        if s.note:
            lines += [f"_{_md_text(s.note)}_", ""]
        if s.link:
            lines += [f"[{_md_text(s.link)}]({s.link.replace(' ', '%20').replace(')', '%29')})", ""]
    while lines and lines[-1] == "":
        lines.pop()
    return "\n".join(lines) + "\n"


def report_html(doc: ReportDocument, images: Mapping[str, str] | None = None,
                page_url: str | None = None) -> str:
    """The report as HTML from the shared templates (funnelwatch/templates/report.html).
    `images` maps a chart name to an <img> src; by default the PNGs inline as data: URIs
    (self-contained, e.g. an e-mail body)."""
    from funnelwatch.templating import render

    if images is None:
        images = {name: "data:image/png;base64," + base64.b64encode(data).decode("ascii")
                  for name, data in doc.png.items()}
    return render("report.html", title=doc.title, doc=doc, images=images, page_url=page_url)


# --- data ------------------------------------------------------------------------------------------


def series_history(con: duckdb.DuckDBPyConnection, incident: Mapping[str, Any]) -> pd.DataFrame:
    """The incident's (metric, cohort) series from detection.anomalies over
    [started_at - 48 h, last_anomaly_at + 12 h]; empty without a cohort or the table."""
    metric, cohort = incident.get("metric"), _cohort(incident)
    start = _ts(incident.get("started_at"))
    last = _ts(incident.get("last_anomaly_at")) or start
    if not metric or cohort is None or start is None:
        return pd.DataFrame()
    # Checked, not caught: the alerts call this inside their transaction, which a failed
    # query would abort (a fast-lane-only warehouse has no detection table yet).
    if not has_table(con, "detection.anomalies"):
        return pd.DataFrame()
    frame = con.execute(
        """SELECT event_hour, value, expected, lower, upper, severity, is_anomaly
           FROM detection.anomalies
           WHERE metric = $m AND cohort = $c AND event_hour >= $s AND event_hour <= $e
           ORDER BY event_hour""",
        {"m": metric, "c": cohort, "s": start - BAND_BEFORE, "e": last + BAND_AFTER},
    ).df()
    if not frame.empty:
        frame["event_hour"] = pd.to_datetime(frame["event_hour"], utc=True)
    return frame


def timeline_rows(con: duckdb.DuckDBPyConnection, incident_id: str) -> list[tuple[Any, str, str]]:
    try:
        return con.execute(
            """SELECT event_time, kind, detail FROM incidents.timeline
               WHERE incident_id = $i ORDER BY event_time, recorded_at""",
            {"i": incident_id},
        ).fetchall()
    except duckdb.CatalogException:
        return []


def _observed_change(history: pd.DataFrame, incident: Mapping[str, Any],
                     rca: Mapping[str, Any]) -> tuple[float | None, float | None, float | None]:
    """(relative change, mean observed, mean expected) over the anomalous hours of the
    incident's series; falls back to the rank-1 contributor of the rca."""
    if not history.empty:
        start = _ts(incident.get("started_at"))
        last = _ts(incident.get("last_anomaly_at")) or start
        window = history[(history["event_hour"] >= pd.Timestamp(start))
                         & (history["event_hour"] <= pd.Timestamp(last))]
        flagged = window[window["is_anomaly"].fillna(False).astype(bool)]
        use = flagged if not flagged.empty else window
        actual, expected = _num(use["value"].mean()), _num(use["expected"].mean())
        if actual is not None and expected:
            return actual / expected - 1, actual, expected
    where = _list_of_dicts(rca.get("where"))
    if where:
        actual, expected = _num(where[0].get("actual")), _num(where[0].get("expected"))
        if actual is not None and expected:
            return actual / expected - 1, actual, expected
    return None, None, None


def summary_sentence(incident: Mapping[str, Any], rca: Mapping[str, Any],
                     history: pd.DataFrame) -> str:
    metric = incident.get("metric") or rca.get("metric") or "the metric"
    cohort = _cohort(incident)
    what = f"{metric} of {cohort}" if cohort else str(metric)
    change, _, _ = _observed_change(history, incident, rca)
    direction = (incident.get("direction") or "").lower()
    if change is not None and change >= 1:  # +100% and more reads better as a factor
        factor = change + 1
        verb = f"rose {factor:.1f}x" if factor < 10 else f"rose {factor:,.0f}x"
    elif change is not None:
        verb = f"fell {abs(change) * 100:.0f}%" if change < 0 else f"rose {change * 100:.0f}%"
    else:
        verb = {"down": "fell", "up": "rose"}.get(direction, "moved away from its expected band")
    resolved = incident.get("state") == "resolved"
    start = _when(incident.get("started_at"))
    if resolved:
        end = _ts(incident.get("resolved_at")) or _ts(incident.get("last_anomaly_at"))
        when = f"from {start} until {_when(end)}" if end else f"from {start}"
    else:
        when = f"since {start}"
    parts = [f"{what} {verb} {when}"]
    where_cohort = incident.get("where_cohort") or (
        (_list_of_dicts(rca.get("where")) or [{}])[0].get("cohort"))
    step = incident.get("funnel_step") or rca.get("funnel_step")
    if cohort and where_cohort and where_cohort != cohort:
        parts[0] += f", concentrated in {where_cohort}"
    if step:
        parts[0] += f", losing customers at {step}"
    hypotheses = _list_of_dicts(rca.get("hypotheses"))
    top = min(hypotheses, key=lambda h: _num(h.get("rank")) or 1e9) if hypotheses else None
    if top and top.get("kind") == "none":  # root cause ran and found nothing compatible
        parts.append("no known cause")
    elif top:
        title = top.get("title") or incident.get("top_cause") or top.get("kind") or "?"
        extra = [x for x in (_when(top.get("at"), with_date=False) if top.get("at") else None,
                             f"explains ~{_pct(top.get('contribution'), signed=False)}"
                             if _num(top.get("contribution")) is not None else None) if x]
        parts.append(f"probably {title}" + (f" ({', '.join(extra)})" if extra else ""))
    elif incident.get("top_cause"):
        parts.append(f"probably {incident['top_cause']}")
    else:
        parts.append("no likely cause found yet")
    impact = rca.get("impact") if isinstance(rca.get("impact"), Mapping) else {}
    lost = _num(incident.get("lost_orders"))
    lost = lost if lost is not None else _num(impact.get("lost_orders"))
    revenue = _num(incident.get("revenue_at_risk"))
    revenue = revenue if revenue is not None else _num(impact.get("revenue_at_risk"))
    if lost is not None or revenue is not None:
        amounts = " / ".join(x for x in (
            f"~{_orders(lost)} orders" if lost is not None else None,
            _money(revenue) if revenue is not None else None) if x)
        parts.append(f"{amounts} lost {'in total' if resolved else 'so far'}")
    return "; ".join(parts) + "."


# --- charts ------------------------------------------------------------------------------------------


def _figure(width: float = 8.0, height: float = 3.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=90)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def _time_axis(ax) -> None:
    import matplotlib.dates as mdates

    locator = mdates.AutoDateLocator(tz=UTC)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=UTC))
    ax.tick_params(labelsize=7)


def _naive_utc(values) -> pd.Series:
    return pd.to_datetime(pd.Series(values), utc=True).dt.tz_convert(UTC).dt.tz_localize(None)


def band_chart(history: pd.DataFrame, incident: Mapping[str, Any],
               rca: Mapping[str, Any]) -> bytes | None:
    if history.empty:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    hours = _naive_utc(history["event_hour"])
    lower = pd.to_numeric(history["lower"], errors="coerce")
    upper = pd.to_numeric(history["upper"], errors="coerce")
    ax.fill_between(hours, lower, upper, alpha=0.22, color="tab:blue", linewidth=0,
                    label="expected band")
    ax.plot(hours, history["expected"], linestyle="--", linewidth=1, color="tab:blue",
            label="expected")
    ax.plot(hours, history["value"], linewidth=1.4, color="black", label="observed")
    flagged = history["is_anomaly"].fillna(False).astype(bool).to_numpy()
    if flagged.any():
        ax.scatter(hours[flagged], history["value"][flagged], color="red", s=14, zorder=3,
                   label="anomalous hour")
    start = _ts(incident.get("started_at"))
    last = _ts(incident.get("last_anomaly_at")) or start
    if start is not None:
        end = _ts(incident.get("resolved_at")) or (last + timedelta(hours=1))
        ax.axvspan(start.replace(tzinfo=None), end.replace(tzinfo=None), color="red", alpha=0.07,
                   label="incident")
    lo, hi = hours.min(), hours.max()
    hypotheses = sorted(_list_of_dicts(rca.get("hypotheses")),
                        key=lambda h: _num(h.get("rank")) or 1e9)[:3]
    for h, color in zip(hypotheses, ("tab:orange", "tab:purple", "tab:brown"), strict=False):
        at = _ts(h.get("at"))
        if at is not None and lo <= pd.Timestamp(at.replace(tzinfo=None)) <= hi:
            label = f"{str(h.get('title') or h.get('kind') or 'change')[:48]} ({at:%H:%M})"
            ax.axvline(at.replace(tzinfo=None), color=color, linewidth=1.2,
                       linestyle=":", label=label)
    cohort = _cohort(incident)
    metric = incident.get("metric") or ""
    ax.set_title(f"{metric} | {cohort}" if cohort else str(metric), fontsize=9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3,
              frameon=False)
    _time_axis(ax)
    ax.grid(alpha=0.25)
    return _png(fig)


def band_chart_png(con: duckdb.DuckDBPyConnection, incident: Mapping[str, Any]) -> bytes | None:
    """Just the band chart of an incident (e.g. for an alert's inline image); None without a
    cohort or without points."""
    incident = dict(incident)
    return band_chart(series_history(con, incident), incident, parse_rca(incident.get("rca")))


def funnel_chart(rca: Mapping[str, Any]) -> bytes | None:
    rows = [r for r in _list_of_dicts(rca.get("funnel")) if r.get("step")]
    if not rows:
        return None
    import numpy as np

    steps = [str(r["step"]) for r in rows]
    series = [
        ("affected cohort, observed", "cohort_rate", "tab:red", None),
        ("affected cohort, expected", "cohort_expected_rate", "tab:red", "//"),
        ("rest of the store, observed", "rest_rate", "tab:gray", None),
        ("rest of the store, expected", "rest_expected_rate", "tab:gray", "//"),
    ]
    present = [s for s in series if any(_num(r.get(s[1])) is not None for r in rows)]
    if not present:
        return None
    fig = _figure(8.0, 3.2)
    ax = fig.add_subplot()
    x = np.arange(len(steps))
    width = 0.8 / len(present)
    for i, (label, key, color, hatch) in enumerate(present):
        values = [_num(r.get(key)) for r in rows]
        values = [math.nan if v is None else v for v in values]  # no bar, not a zero bar
        ax.bar(x + (i - (len(present) - 1) / 2) * width, values, width,
               label=label, color=color if hatch is None else "white",
               edgecolor=color, hatch=hatch, alpha=0.85 if hatch is None else 1.0)
    ax.set_xticks(x)
    ax.set_xticklabels(steps, fontsize=7, rotation=15)
    focus = rca.get("funnel_step")
    for tick, step in zip(ax.get_xticklabels(), steps, strict=True):
        if step == focus:
            tick.set_fontweight("bold")
            tick.set_color("tab:red")
    ax.set_ylabel("step conversion rate", fontsize=8)
    ax.tick_params(axis="y", labelsize=7)
    ax.set_title("Funnel by step: affected cohort vs the rest (observed vs expected)", fontsize=9)
    ax.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.2),
              frameon=False)
    ax.grid(axis="y", alpha=0.25)
    return _png(fig)


def revenue_chart(rca: Mapping[str, Any]) -> bytes | None:
    impact = rca.get("impact") if isinstance(rca.get("impact"), Mapping) else {}
    rows = [r for r in _list_of_dicts(impact.get("per_hour")) if _ts(r.get("event_hour"))]
    if not rows:
        return None
    rows.sort(key=lambda r: _ts(r["event_hour"]))
    hours = [_ts(r["event_hour"]).replace(tzinfo=None) for r in rows]
    hourly = [_num(r.get("revenue_at_risk")) or 0.0 for r in rows]
    cumulative = [_num(r.get("cumulative_revenue_at_risk")) for r in rows]
    if any(c is None for c in cumulative):
        running, cumulative = 0.0, []
        for v in hourly:
            running += v
            cumulative.append(running)
    fig = _figure()
    ax = fig.add_subplot()
    hour = timedelta(hours=1)
    ax.bar(hours, hourly, width=hour * 0.9, align="edge", color="tab:orange", alpha=0.5,
           label="lost in the hour")
    ends = [hours[0]] + [h + hour for h in hours]
    totals = [0.0] + list(cumulative)
    ax.plot(ends, totals, color="tab:red", linewidth=1.6, marker="o", markersize=3,
            label="cumulative")
    ax.fill_between(ends, totals, color="tab:red", alpha=0.08)
    ax.annotate(_money(totals[-1]), (ends[-1], totals[-1]), fontsize=8,
                xytext=(5, 0), textcoords="offset points", va="center", color="tab:red")
    ax.margins(x=0.06)
    ax.set_ylabel(f"revenue at risk ({_currency()})", fontsize=8)
    ax.tick_params(axis="y", labelsize=7)
    ax.set_title("Revenue at risk, cumulative", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    _time_axis(ax)
    ax.grid(alpha=0.25)
    return _png(fig)


# --- sections -----------------------------------------------------------------------------------------


def _contributors(rca: Mapping[str, Any], show_cohorts: bool) -> Section:
    rows = sorted(_list_of_dicts(rca.get("where")), key=lambda r: _num(r.get("rank")) or 1e9)
    section = Section("Where: top contributors")
    if rca.get("error"):
        section.paragraphs.append(f"Root-cause analysis failed: {rca['error']}")
    if not rows:
        section.paragraphs.append("No localisation available (root-cause analysis has not run "
                                  "or found no contributing cohort).")
        return section
    headers = ["#", "cohort", "step", "actual", "expected", "deviation", "z", "score",
               "root cause"]
    table_rows = []
    for r in rows[:MAX_TABLE_ROWS]:
        table_rows.append([
            _fmt(r.get("rank")),
            str(r.get("cohort") or "-") if show_cohorts else "(not shown)",
            str(r.get("step") or "-"),
            _fmt(r.get("actual")), _fmt(r.get("expected")), _fmt(r.get("deviation")),
            _fmt(r.get("z"), 2), _fmt(r.get("score"), 2),
            "yes" if r.get("root_cause") else "",
        ])
    section.table = Table(headers, table_rows, frozenset({1}) if show_cohorts else frozenset())
    if len(rows) > MAX_TABLE_ROWS:
        section.note = f"{len(rows) - MAX_TABLE_ROWS} more not shown"
    if not show_cohorts:
        section.note = "cohort names hidden: the incident records no cohort"
    return section


def _funnel_section(rca: Mapping[str, Any], png: Mapping[str, bytes]) -> Section:
    section = Section("Funnel: affected cohort vs the rest", image="funnel")
    rows = [r for r in _list_of_dicts(rca.get("funnel")) if r.get("step")]
    step = rca.get("funnel_step")
    if step:
        section.paragraphs.append(f"The loss starts at step {step}.")
    if not rows:
        section.paragraphs.append("No funnel breakdown available.")
        return section
    section.table = Table(
        ["step", "cohort rate", "cohort expected", "rest rate", "rest expected", "change"],
        [[str(r.get("step")), _fmt(r.get("cohort_rate")), _fmt(r.get("cohort_expected_rate")),
          _fmt(r.get("rest_rate")), _fmt(r.get("rest_expected_rate")),
          _pct(r.get("change"))] for r in rows],
    )
    return section


def _hypotheses(rca: Mapping[str, Any], incident: Mapping[str, Any]) -> Section:
    rows = sorted(_list_of_dicts(rca.get("hypotheses")), key=lambda r: _num(r.get("rank")) or 1e9)
    section = Section("Why: hypotheses")
    if not rows:
        section.paragraphs.append(
            f"Top cause recorded: {incident['top_cause']}." if incident.get("top_cause")
            else "No hypothesis: no deploy, campaign or other change lines up with the start.")
        return section
    section.table = Table(
        ["#", "hypothesis", "kind", "at", "contribution", "evidence"],
        [[_fmt(r.get("rank")), str(r.get("title") or r.get("ref") or "-"),
          str(r.get("kind") or "-"), _when(r.get("at")),
          _pct(r.get("contribution"), signed=False), str(r.get("evidence") or "-")]
         for r in rows[:MAX_TABLE_ROWS]],
    )
    return section


def _impact(incident: Mapping[str, Any], rca: Mapping[str, Any]) -> Section:
    impact = rca.get("impact") if isinstance(rca.get("impact"), Mapping) else {}
    lost = _num(incident.get("lost_orders"))
    lost = lost if lost is not None else _num(impact.get("lost_orders"))
    revenue = _num(incident.get("revenue_at_risk"))
    revenue = revenue if revenue is not None else _num(impact.get("revenue_at_risk"))
    section = Section("Impact", image="revenue")
    if lost is None and revenue is None and not impact:
        section.paragraphs.append("No impact estimate available.")
        return section
    section.paragraphs.append(
        f"Lost orders: {_orders(lost)} · revenue at risk: {_money(revenue)} · "
        f"average order value: {_money(impact.get('average_order_value'))}"
        " (expected minus actual purchases, times the average order value)."
    )
    per_hour = sorted((r for r in _list_of_dicts(impact.get("per_hour")) if _ts(r.get("event_hour"))),
                      key=lambda r: _ts(r["event_hour"]))
    if per_hour:
        shown = per_hour[-MAX_HOURLY_ROWS:]
        section.table = Table(
            ["hour", "expected orders", "actual orders", "lost orders", "revenue at risk",
             "cumulative"],
            [[_when(r.get("event_hour")), _fmt(r.get("expected_orders")),
              _fmt(r.get("actual_orders")), _fmt(r.get("lost_orders")),
              _money(r.get("revenue_at_risk")), _money(r.get("cumulative_revenue_at_risk"))]
             for r in shown],
        )
        if len(per_hour) > len(shown):
            section.note = f"first {len(per_hour) - len(shown)} hours not shown"
    return section


def symptom_rows(con: duckdb.DuckDBPyConnection, incident_id: str) -> list[tuple]:
    """The incident's symptoms: every anomalous series grouped under it (metric, cohort,
    anomalous hours, first and last, worst severity), worst first."""
    if not has_table(con, "incidents.members"):
        return []
    return con.execute(
        """SELECT metric, cohort, count(*) AS hours, min(event_hour), max(event_hour),
                  max(severity) AS worst
           FROM incidents.members WHERE incident_id = $i
           GROUP BY metric, cohort ORDER BY worst DESC, metric, cohort""",
        {"i": incident_id},
    ).fetchall()


def symptoms_section(rows: Sequence[tuple], show_cohorts: bool = True) -> Section:
    section = Section("Symptoms: the series this problem moved")
    if not rows:
        section.paragraphs.append("No anomalous series recorded.")
        return section
    section.paragraphs.append(
        f"{len(rows)} series, grouped into this one incident because their changes localise "
        "to the same place (they are not incidents of their own).")
    section.table = Table(
        ["metric", "cohort", "anomalous hours", "first", "last", "worst severity"],
        [[str(m), str(c) if show_cohorts else "(hidden)", str(n), _when(a), _when(b),
          f"{w:.0f}" if w is not None else "-"] for m, c, n, a, b, w in rows],
        code_columns=frozenset({0, 1}))
    return section


def timeline_section(rows: Sequence[tuple[Any, str, str]], title: str = "Timeline") -> Section:
    section = Section(title)
    if not rows:
        section.paragraphs.append("No timeline entries.")
        return section
    section.table = Table(["time", "event", "detail"],
                          [[_when(t), str(k or "-"), str(d or "")] for t, k, d in rows])
    return section


def _playbook(playbook: str | None) -> Section:
    section = Section("Playbook")
    text = (playbook or "").strip()
    if not text:
        section.paragraphs.append("No playbook configured for this metric (config/alert_routing.yml).")
    elif text.startswith(("http://", "https://")) and "\n" not in text:
        section.link = text
    else:
        section.paragraphs.append(text)
    return section


def find_playbook(incident: Mapping[str, Any], routing: Any = None) -> str | None:
    """The playbook of the first routing rule (config/alert_routing.yml) whose metric / cohort
    globs and min_severity match the incident (rule playbook, else its team's), preferring
    rules with a metric or cohort pattern over catch-alls. The incident has no team, so team
    conditions are ignored. None when nothing matches or the file is unreadable."""
    import fnmatch

    try:
        if routing is None:
            from funnelwatch.alerting.routing import load_routing

            routing = load_routing()
    except (OSError, ValueError, TypeError, KeyError):
        return None
    metric = str(incident.get("metric") or "")
    cohort = str(incident.get("cohort") or "")
    severity = _num(incident.get("severity")) or 0.0
    matching = [
        rule for rule in routing.rules
        if severity >= rule.min_severity and fnmatch.fnmatchcase(metric, rule.metric)
        and fnmatch.fnmatchcase(cohort, rule.cohort)
    ]
    # Rules naming a metric or cohort pattern first (file order within each group): without a
    # team, a team's catch-all rule says little about this incident.
    matching.sort(key=lambda rule: rule.metric == "*" and rule.cohort == "*")
    for rule in matching:
        team = routing.teams.get(rule.team) if rule.team else None
        playbook = rule.playbook or (team.playbook if team else None)
        if playbook:
            return playbook
    return None


# --- the report ---------------------------------------------------------------------------------------


def _cohort_names(incident: Mapping[str, Any], rca: Mapping[str, Any]) -> list[str]:
    names = {str(rca.get("cohort") or ""), str(incident.get("where_cohort") or "")}
    names |= {str(r.get("cohort") or "") for r in _list_of_dicts(rca.get("where"))}
    cohorts = incident.get("cohorts")
    if isinstance(cohorts, Sequence) and not isinstance(cohorts, str):
        names |= {str(c) for c in cohorts if c}
    return sorted((n for n in names if n and n != "all"), key=len, reverse=True)


def _scrub(text: str, names: Sequence[str]) -> str:
    for name in names:
        text = text.replace(name, "(cohort)")
    return text


def _severity_text(value: Any) -> str:
    f = _num(value)
    if f is None:
        return "severity -"
    from funnelwatch.alerting.notification import severity_level

    return f"severity {f:.0f} ({severity_level(f)})"


@dataclass
class ReportDocument:
    """One incident's report, before it is written as Markdown or HTML (the incident page
    renders it too)."""

    incident_id: str
    title: str
    meta: str
    summary: str
    sections: list[Section]
    png: dict[str, bytes] = field(default_factory=dict, repr=False)


def build_report(con: duckdb.DuckDBPyConnection, incident: Mapping[str, Any],
                 playbook: str | None = None) -> ReportDocument:
    """The report's parts and its charts (PNG bytes); writes nothing. `con` is only read: the
    warehouse or the analyst snapshot (it has `detection.anomalies` and `incidents.timeline`)."""
    incident = dict(incident)
    incident_id = str(incident.get("incident_id") or "unknown")
    rca = parse_rca(incident.get("rca"))
    cohort = _cohort(incident)
    hidden_names = _cohort_names(incident, rca) if cohort is None else []
    if cohort is None:  # never name a cohort: not the localisation either
        incident["where_cohort"] = None
    history = series_history(con, incident)

    png: dict[str, bytes] = {}
    for name, make in (("band", lambda: band_chart(history, incident, rca)),
                       ("funnel", lambda: funnel_chart(rca)),
                       ("revenue", lambda: revenue_chart(rca))):
        data = make()
        if data:
            png[name] = data

    metric = incident.get("metric") or rca.get("metric") or "metric"
    direction = (incident.get("direction") or "").lower()
    moved = {"down": "dropped", "up": "spiked"}.get(direction, "anomalous")
    if cohort is None:
        title = f"{metric} {moved}"
    else:
        title = str(incident.get("title") or f"{metric} {moved} in {cohort}")
    state = str(incident.get("state") or "open")
    ongoing = "" if state == "resolved" else ", ongoing"
    meta = (f"{incident_id} · {_severity_text(incident.get('severity'))} · {state} · "
            f"started {_when(incident.get('started_at'))} · "
            f"duration {incident_duration(incident)}{ongoing}")
    extras = []
    if incident.get("anomaly_count") is not None:
        extras.append(f"{incident['anomaly_count']} anomalous points")
    if state == "resolved" and incident.get("resolved_at") is not None:
        extras.append(f"resolved {_when(incident['resolved_at'])}")
    if incident.get("acknowledged_at") is not None:
        extras.append(f"acknowledged {_when(incident['acknowledged_at'])}")
    if incident.get("feedback"):
        extras.append(f"feedback: {incident['feedback']}")
    if extras:
        meta += " · " + " · ".join(extras)
    summary = summary_sentence(incident, rca, history)

    band = Section("The metric against its expected band", image="band")
    if "band" not in png:
        band.paragraphs.append(
            "No band chart: the incident records no cohort." if cohort is None
            else "No band chart: detection.anomalies has no points for this series and window.")
    else:
        _, actual, expected = _observed_change(history, incident, rca)
        if actual is not None:
            band.paragraphs.append(
                f"Anomalous hours averaged {_fmt(actual)} against {_fmt(expected)} expected "
                "(red points; the shaded span is the incident).")
    sections = [
        band,
        _contributors(rca, show_cohorts=cohort is not None),
        _funnel_section(rca, png),
        _hypotheses(rca, incident),
        _impact(incident, rca),
        symptoms_section(symptom_rows(con, incident_id), show_cohorts=cohort is not None),
        timeline_section(timeline_rows(con, incident_id)),
        _playbook(playbook),
    ]

    if cohort is None:
        names = hidden_names
        summary = _scrub(summary, names)
        for s in sections:
            s.paragraphs = [_scrub(p, names) for p in s.paragraphs]
            if s.table is not None:
                s.table.rows = [[_scrub(c, names) for c in row] for row in s.table.rows]
    return ReportDocument(incident_id, title, meta, summary, sections, png)


def render_report(
    con: duckdb.DuckDBPyConnection,
    incident: Mapping[str, Any],
    out_dir: Path,
    playbook: str | None = None,
) -> ReportFiles:
    """Write `<out_dir>/<incident_id>/report.md`, `report.html` and the PNG charts; `con` is
    only read (a read-only connection is enough)."""
    from funnelwatch.incidents.links import incident_url

    doc = build_report(con, incident, playbook)
    safe_id = "".join(c if c.isalnum() or c in "-_." else "_" for c in doc.incident_id).strip(".")
    folder = Path(out_dir) / (safe_id or "unknown")
    folder.mkdir(parents=True, exist_ok=True)
    png = doc.png
    png_paths: dict[str, Path] = {}
    for name in CHART_NAMES:
        path = folder / f"{name}.png"
        if name in png:
            path.write_bytes(png[name])
            png_paths[name] = path
        elif path.exists():
            path.unlink()  # a chart from an earlier render that no longer applies
    title, meta, summary, sections = doc.title, doc.meta, doc.summary, doc.sections
    head = [f"# {_md_text(title)}", "", f"**{_md_text(meta)}**", "", f"> {_md_text(summary)}"]
    markdown = _markdown(head, sections, {n: p.name for n, p in png_paths.items()})
    try:
        page_url = incident_url(doc.incident_id)
    except ValueError:  # a malformed base URL: the alert step says so; a report is still useful
        page_url = None
    html_text = report_html(doc, page_url=page_url)
    markdown_path = folder / "report.md"
    html_path = folder / "report.html"
    markdown_path.write_text(markdown, encoding="utf-8")
    html_path.write_text(html_text, encoding="utf-8")
    return ReportFiles(markdown_path, html_path, png_paths, markdown, html_text, summary, png)


def report_metadata(files: ReportFiles) -> dict[str, Any]:
    """Plain values for Dagster metadata: `report` is the Markdown with the band chart inline
    as a data URI (wrap it in MetadataValue.md); the other charts become their file paths
    (the UI cannot follow a relative link). `report_path`, `html_path` and `charts` are paths
    as strings (MetadataValue.path), `summary` is the one-paragraph summary."""
    text = files.markdown
    for name, path in files.png_paths.items():
        link = f"]({path.name})"
        if name == "band":
            data = files.png_bytes.get(name) or path.read_bytes()
            text = text.replace(link, f"](data:image/png;base64,{base64.b64encode(data).decode()})")
        else:
            start = text.find(link)
            if start >= 0:  # replace the whole image reference with a note
                open_at = text.rfind("![", 0, start)
                text = text[:open_at] + f"_chart: {path}_" + text[start + len(link):]
    return {
        "report": text,
        "summary": files.summary,
        "report_path": str(files.markdown_path),
        "html_path": str(files.html_path),
        "charts": {name: str(path) for name, path in files.png_paths.items()},
    }
