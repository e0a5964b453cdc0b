"""`funnelwatch erase-user` and `funnelwatch retention` (added to the CLI by `register`)."""

from __future__ import annotations

from typing import Annotated

import typer

from funnelwatch.settings import Settings


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    @app.command("erase-user")
    def erase_user_command(
        user_id: Annotated[str, typer.Argument(
            help="The person's RAW user id, as the collector sends it (hashed here with the "
                 "ingest key, and the retired keys of FUNNELWATCH_PSEUDONYMIZATION_OLD_KEYS).")],
        reason: Annotated[str | None, typer.Option(
            help="Why (e.g. a ticket number); recorded in privacy.erasures. Never put the id "
                 "itself here (it would be replaced).")] = None,
        skip_key_check: Annotated[bool, typer.Option(
            "--skip-key-check",
            help="Erase even if the person is in landing files of loaded hours but not in the "
                 "warehouse (files that arrived after their hour was loaded).")] = False,
    ):
        """Erase one person everywhere: raw events, quarantine, session tables, the landing
        files (rewritten without them); rebuild the marts of their hours; record the erasure
        (hashed id only). Exit 2 when the pipeline holds the warehouse."""
        from funnelwatch.privacy.erasure import (
            STATUS_UNKNOWN,
            ErasureError,
            WarehouseBusyError,
            erase_user,
        )

        settings = Settings.from_env()
        try:
            record = erase_user(settings.warehouse, settings.landing, user_id, reason=reason,
                                publish_dir=settings.publish_dir,
                                check_keys=not skip_key_check)
        except WarehouseBusyError as exc:
            _fail(str(exc), 2)
        except FileNotFoundError as exc:
            _fail(str(exc), 2)
        except ValueError as exc:
            _fail(str(exc), 2)
        except ErasureError as exc:
            _fail(str(exc), 1)
        if record.status == STATUS_UNKNOWN:
            typer.secho(record.message, err=True, fg=typer.colors.YELLOW)
            raise typer.Exit(1)
        typer.echo(record.message)

    @app.command("retention")
    def retention_command(
        days: Annotated[int, typer.Option(help="Keep this many days of raw, per-person data.")] = 30,
        dry_run: Annotated[bool, typer.Option(
            "--dry-run", help="Count what would be deleted; change nothing.")] = False,
        landing: Annotated[bool, typer.Option(
            "--landing/--no-landing",
            help="Also delete the landing folders of expired hours (they hold raw ids).")] = True,
        relative_to: Annotated[str, typer.Option(
            help="newest_hour (the newest loaded hour) or now.")] = "newest_hour",
    ):
        """Delete raw events, quarantine and session rows older than DAYS (and their landing
        folders); the marts are kept. What the `raw_events_retention` asset runs daily."""
        import duckdb

        from funnelwatch.privacy.erasure import WarehouseBusyError, open_warehouse
        from funnelwatch.privacy.retention import apply_retention

        settings = Settings.from_env()
        try:
            con = open_warehouse(settings.warehouse)
        except (WarehouseBusyError, FileNotFoundError) as exc:
            _fail(str(exc), 2)
        try:
            result = apply_retention(con, days=days, landing_root=settings.landing,
                                     landing=landing, relative_to=relative_to, dry_run=dry_run)
        except (ValueError, duckdb.Error) as exc:
            _fail(str(exc), 2)
        finally:
            con.close()
        typer.echo(result.summary())
