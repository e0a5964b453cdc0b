"""`funnelwatch import source`, `funnelwatch check-source` and `funnelwatch quarantine
list|replay` (added to the CLI by `register`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from funnelwatch.command_support import LandingOption, fail, open_warehouse
from funnelwatch.settings import Settings


def register(app: typer.Typer) -> None:
    import_app = next((group.typer_instance for group in app.registered_groups
                       if group.name == "import"), None)
    if import_app is None:  # the CLI has no `import` group (yet): add it
        import_app = typer.Typer(no_args_is_help=True,
                                 help="Convert a public data set or a feed into landing files.")
        app.add_typer(import_app, name="import")

    @import_app.command("source")
    def import_source_command(
        src: Annotated[Path, typer.Argument(help="The feed file (JSON lines, CSV, TSV, Parquet).")],
        mapping: Annotated[Path, typer.Option(help="Its mapping, e.g. config/sources/segment.yml.")],
        landing: LandingOption = None,
    ):
        """Import a feed with a source mapping (config/sources/<name>.yml) into landing files."""
        from funnelwatch.sources.apply import import_source

        folder = landing.resolve() if landing is not None else Settings.from_env().landing
        try:
            report = import_source(src, mapping, folder)
        except (OSError, ValueError) as exc:
            fail(str(exc))
        typer.echo(str(report))
        typer.echo(f"landing: {folder}")

    @app.command("check-source")
    def check_source_command(
        src: Annotated[Path, typer.Argument(help="The feed file to profile.")],
        mapping: Annotated[Path | None, typer.Option(
            help="Profile with this mapping; without it a mapping is proposed.")] = None,
        rows: Annotated[int, typer.Option(help="Sample size: the first ROWS rows.")] = 10_000,
        write_mapping: Annotated[Path | None, typer.Option(
            help="Write the proposed mapping to this file (without --mapping).")] = None,
    ):
        """Profile a sample of a feed before connecting it: fields found and missing, values
        seen, what ingest would keep, map, keep as `other`, quarantine, and why."""
        from funnelwatch.sources.profile import check_source

        if write_mapping is not None and mapping is not None:
            fail("--write-mapping writes a proposed mapping; leave out --mapping")
        try:
            profile = check_source(src, mapping, rows)
        except (OSError, ValueError) as exc:
            fail(str(exc))
        typer.echo(profile.table())
        if profile.proposal_yaml is not None:
            if write_mapping is not None:
                if write_mapping.exists():
                    fail(f"{write_mapping} exists; not overwriting it")
                try:
                    write_mapping.parent.mkdir(parents=True, exist_ok=True)
                    write_mapping.write_text(profile.proposal_yaml, encoding="utf-8")
                except OSError as exc:
                    fail(f"cannot write the proposed mapping to {write_mapping}: {exc}")
                typer.echo(f"\nproposed mapping written to {write_mapping}")
            else:
                typer.echo("\nProposed mapping (save with --write-mapping FILE):\n")
                typer.echo(profile.proposal_yaml, nl=False)

    quarantine_app = typer.Typer(no_args_is_help=True,
                                 help="Quarantined rows: list them, replay them after a fix.")
    app.add_typer(quarantine_app, name="quarantine")

    @quarantine_app.command("list")
    def quarantine_list_command():
        """Quarantined rows per hour and reason (raw.events_quarantine)."""
        from funnelwatch.sources.replay import quarantine_summary

        with open_warehouse(Settings.from_env().warehouse, read_only=True) as con:
            rows = quarantine_summary(con)
        if not rows:
            typer.echo("no quarantined rows")
            return
        typer.echo("| hour (UTC) | reason | rows |\n|---|---|---|")
        for hour, reason, n in rows:
            typer.echo(f"| {hour:%Y-%m-%d %H:00} | {reason} | {n:,} |")
        typer.echo(f"\n{sum(n for *_, n in rows):,} rows in {len({h for h, *_ in rows})} hour(s)")

    @quarantine_app.command("replay")
    def quarantine_replay_command(
        hour: Annotated[str | None, typer.Option(help="The hour (UTC), e.g. 2026-11-01T13.")] = None,
        all_hours: Annotated[bool, typer.Option("--all", help="Every hour with quarantined rows.")] = False,
        mapping: Annotated[Path | None, typer.Option(
            help="The fixed mapping whose event and value maps are applied to the rows.")] = None,
    ):
        """Re-ingest quarantined rows after their mapping is fixed: the original landing rows are
        re-read, remapped and the hour re-loaded; rows that still break stay quarantined."""
        from funnelwatch.privacy import current_key
        from funnelwatch.sources.mapping import load_mapping
        from funnelwatch.sources.replay import quarantined_hours, replay_hour

        if (hour is None) == (not all_hours):
            fail("give either --hour H or --all")
        from funnelwatch.landing import as_utc_hour

        asked = None
        if hour is not None:
            try:
                asked = as_utc_hour(hour)
            except ValueError:
                fail(f"not an hour: {hour!r} (expected e.g. 2026-11-01T13:00)")
        settings = Settings.from_env()
        try:
            fixed = load_mapping(mapping) if mapping is not None else None
        except ValueError as exc:
            fail(str(exc))
        con = open_warehouse(settings.warehouse)
        key, _ = current_key()
        with con:
            hours = quarantined_hours(con) if all_hours else [asked]
            if not hours:
                typer.echo("no quarantined rows")
                return
            for one in hours:
                try:
                    result = replay_hour(con, settings.landing, one, key, fixed)
                except (OSError, ValueError) as exc:
                    fail(f"{one:%Y-%m-%d %H:00}: {exc}")
                typer.echo(result.line())
        typer.echo("the hours' marts are rebuilt by the next pipeline run over them "
                   "(funnelwatch run --start ... --end ...)")
