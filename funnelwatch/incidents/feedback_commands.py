"""`funnelwatch feedback`, `funnelwatch serve` (the incident page) and its alias
`funnelwatch feedback-server` (added to the CLI by `register`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import duckdb
import typer

from funnelwatch.incidents import feedback as fb
from funnelwatch.settings import Settings


def try_ingest(warehouse: Path, spool_dir: Path) -> fb.IngestResult | None:
    """Apply the spool now if the warehouse exists and can be opened for writing; None when it
    cannot (the pipeline holds it, or there is no warehouse yet): the next pipeline run will."""
    if not Path(warehouse).is_file():
        return None
    try:
        con = duckdb.connect(str(warehouse))
    except duckdb.IOException:  # "Could not set lock on file": another process writes it
        return None
    try:
        return fb.ingest_spool(con, spool_dir)
    finally:
        con.close()


def register(app: typer.Typer) -> None:
    @app.command("feedback")
    def feedback_command(
        incident_id: Annotated[str, typer.Argument(help="The incident's id (incidents.incidents).")],
        label: Annotated[str, typer.Argument(help="true | false_alarm | expected")],
        note: Annotated[str | None, typer.Option(help="Free text kept with the label.")] = None,
        author: Annotated[str | None, typer.Option(help="Who says so.")] = None,
        until: Annotated[str | None, typer.Option(
            help="'expected' only: suppress the pattern until this ISO time (UTC if no zone).")] = None,
    ):
        """Mark an incident as a true incident, a false alarm, or expected (planned maintenance,
        a known campaign). Queued in the feedback spool, applied at once when the warehouse is
        free, else by the next pipeline run."""
        settings = Settings.from_env()
        try:
            feedback_id = fb.submit(settings.feedback_dir, incident_id, label, note=note,
                                    author=author, until=until)
        except ValueError as exc:
            typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
            raise typer.Exit(2) from None
        result = try_ingest(settings.warehouse, settings.feedback_dir)
        if result is None:
            typer.echo(f"{feedback_id}: queued in {settings.feedback_dir}; the warehouse is busy "
                       "or absent, the next pipeline run applies it")
            return
        if feedback_id in result.feedback_ids:
            typer.echo(f"{feedback_id}: applied ({label} on {incident_id})")
        else:
            rejected = settings.feedback_dir / fb.REJECTED / f"{feedback_id}.json.reason.txt"
            if rejected.is_file():
                typer.secho(f"{feedback_id}: rejected: {rejected.read_text().strip()} "
                            f"(kept in {rejected.parent})", err=True, fg=typer.colors.RED)
                raise typer.Exit(1)
            typer.echo(f"{feedback_id}: queued in {settings.feedback_dir} "
                       f"({'; '.join(result.errors) or 'not applied yet'})")
        others = result.applied - (feedback_id in result.feedback_ids)
        if others or result.rejected:
            typer.echo(f"spool: {others} other queued submission(s) applied, "
                       f"{result.rejected} rejected")

    def serve_page(host: str, port: int) -> None:
        from funnelwatch.incidents.links import base_url
        from funnelwatch.incidents.page import ServeConfigError, serve

        settings = Settings.from_env()
        try:
            base_url()  # a bad FUNNELWATCH_INCIDENT_BASE_URL says so now, not in an alert
            serve(host, port, settings.feedback_dir, settings.publish_dir, echo=typer.echo)
        except (ServeConfigError, ValueError) as exc:
            typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
            raise typer.Exit(2) from None

    @app.command("serve")
    def serve_command(
        host: Annotated[str, typer.Option(help="Interface to listen on (beyond loopback needs "
                                               "FUNNELWATCH_FEEDBACK_TOKEN).")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="Port.")] = 8765,
    ):
        """The incident page: GET / (incidents), GET /incidents/<id> (one incident, with
        acknowledge / resolve / feedback forms), POST /incidents/<id>/feedback (the JSON
        endpoint) and GET /health. Reads the analyst snapshot; writes only the feedback spool.
        Set FUNNELWATCH_FEEDBACK_TOKEN to require a token (required beyond loopback)."""
        serve_page(host, port)

    @app.command("feedback-server")
    def feedback_server_command(
        host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="Port.")] = 8765,
    ):
        """Alias of `funnelwatch serve` (the feedback endpoint is part of the incident page)."""
        serve_page(host, port)
