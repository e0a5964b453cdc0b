"""Reports for the incidents a run changed: rendered with `report.render_report` and their
paths stored on the incident (`report_path`), so the CLI, the UI and the alerts find them."""

from __future__ import annotations

from pathlib import Path

import duckdb

from funnelwatch.incidents.report import ReportFiles, band_chart_png, find_playbook, render_report
from funnelwatch.incidents.store import SCHEMA

__all__ = ["band_chart_png", "render_incident_reports"]


def render_incident_reports(
    con: duckdb.DuckDBPyConnection, incident_ids: list[str], reports_dir: Path
) -> dict[str, ReportFiles]:
    """Render (or re-render) the reports of these incidents; returns them by id."""
    if not incident_ids:
        return {}
    rows = con.execute(
        f"SELECT * FROM {SCHEMA}.incidents WHERE list_contains($ids, incident_id)",
        {"ids": list(incident_ids)},
    ).df()
    rendered: dict[str, ReportFiles] = {}
    for incident in rows.to_dict("records"):
        files = render_report(con, incident, Path(reports_dir), find_playbook(incident))
        con.execute(
            f"UPDATE {SCHEMA}.incidents SET report_path = $p WHERE incident_id = $id",
            {"p": str(files.markdown_path), "id": incident["incident_id"]},
        )
        rendered[incident["incident_id"]] = files
    return rendered
