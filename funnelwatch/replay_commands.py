"""`funnelwatch replay`: simulate a store, land its history at once and replay the last hours
on an accelerated clock, as a collector delivering a file every few minutes would.

Registered on the CLI app by `funnelwatch.cli` through `register(app)` (docs/simulator.md,
"Replay mode").
"""

from __future__ import annotations

import json
import math
import time
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer

from funnelwatch.command_support import fail, settings_for, simulate_store
from funnelwatch.landing import EVENT_FILE_SUFFIXES


def _has_event_files(landing: Path) -> bool:
    root = landing / "events"
    return root.is_dir() and any(
        p.is_file() and p.suffix.lower() in EVENT_FILE_SUFFIXES for p in root.rglob("*")
    )


def register(app: typer.Typer) -> None:
    @app.command("replay")
    def replay_command(
        days: Annotated[int, typer.Option(
            help="Days to simulate, live hours included (the default scenario needs 14).")] = 14,
        live_hours: Annotated[int, typer.Option(
            help="The last hours of the window, replayed on the accelerated clock; the hours "
                 "before them are written at once as history.")] = 24,
        speed: Annotated[float, typer.Option(
            help="Simulated seconds per wall second (60: an hour a minute; 1: real time; "
                 "0: no waiting).")] = 60.0,
        slot_minutes: Annotated[int, typer.Option(
            help="Minutes of events per delivered file (must divide 60).")] = 5,
        end: Annotated[str | None, typer.Option(
            help="End of the window (exclusive, UTC), default today 00:00.")] = None,
        sessions_per_hour: Annotated[int, typer.Option(help="Mean sessions per hour.")] = 1500,
        seed: Annotated[int, typer.Option()] = 42,
        scenario: Annotated[str, typer.Option(
            help="Incident scenario: default, none, or a YAML path.")] = "default",
        ground_truth: Annotated[Path | None, typer.Option(
            help="Where to write the incident labels.")] = None,
        landing: Annotated[Path | None, typer.Option(
            "--landing",
            help="Landing folder (default: $FUNNELWATCH_LANDING or data/landing).")] = None,
    ):
        """Simulate DAYS days, write all but the last LIVE-HOURS as history, then replay the
        live hours into the landing folder on an accelerated clock (one file per slot)."""
        from simulator.replay import replay, write_history

        if days <= 0:
            fail("--days must be at least 1")
        if not 0 < live_hours <= days * 24:
            fail(f"--live-hours must be between 1 and {days * 24} (--days x 24)")
        if speed < 0 or math.isnan(speed):
            fail("--speed must be >= 0")
        if slot_minutes <= 0 or 60 % slot_minutes:
            fail("--slot-minutes must divide 60 (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30, 60)")
        settings = settings_for(landing)
        if _has_event_files(settings.landing):
            fail(f"{settings.landing / 'events'} already holds event files; replay into an "
                  "empty landing folder (--landing, or delete it) so no hour is loaded twice")
        start_time, end_time, result = simulate_store(days, end, sessions_per_hour, seed,
                                                      scenario)
        live_start = end_time - timedelta(hours=live_hours)
        truth = ground_truth or settings.landing.parent / "ground_truth.json"
        truth.parent.mkdir(parents=True, exist_ok=True)
        truth.write_text(json.dumps(result.incidents, indent=2) + "\n")
        history = write_history(
            result.events, settings.landing, live_start, result.reference, late=result.late
        )
        typer.echo(
            f"simulated {len(result.events):,} events, {start_time:%Y-%m-%d %H:%M} .. "
            f"{end_time:%Y-%m-%d %H:%M} UTC, {len(result.incidents)} incidents\n"
            f"history: {history.rows:,} events in {len(history.files)} files, "
            f"before {live_start:%Y-%m-%d %H:%M} UTC\n"
            f"landing: {settings.landing}\nground truth: {truth}"
        )
        realtime = 0 < speed < math.inf
        wall = f"~{live_hours * 3600 / speed:,.0f} s" if realtime else "no waiting"
        typer.echo(
            f"replaying {live_hours} h ({live_start:%Y-%m-%d %H:%M} .. "
            f"{end_time:%Y-%m-%d %H:%M} UTC) at x{speed:g}, one file per {slot_minutes} min: "
            f"{wall}"
        )

        started = time.monotonic()
        hour = {"files": 0, "rows": 0, "late": 0}

        def on_slot(slot_start, slot_end, paths):
            for path in paths:
                hour["files"] += 1
                if path.name.startswith("late-"):
                    hour["late"] += 1
            if paths:
                import pyarrow.parquet as pq

                hour["rows"] += sum(pq.read_metadata(p).num_rows for p in paths)
            if slot_end.minute == 0 or slot_end == end_time:
                late = f", {hour['late']} late" if hour["late"] else ""
                label = slot_start.floor("h") if slot_end > slot_start else slot_end
                typer.echo(
                    f"{label:%Y-%m-%d %H:%M} UTC  {hour['files']:3d} files{late}  "
                    f"{hour['rows']:8,} events  wall {time.monotonic() - started:8.1f} s"
                )
                hour.update(files=0, rows=0, late=0)

        try:
            stats = replay(
                result.events, settings.landing, start=live_start, end=end_time, speed=speed,
                slot_minutes=slot_minutes, late=result.late, on_slot=on_slot,
            )
        except KeyboardInterrupt:
            typer.echo("interrupted: the landing folder holds the slots written so far", err=True)
            raise typer.Exit(130) from None
        typer.echo(
            f"replayed {stats.rows:,} events in {stats.files} files ({stats.late_files} late), "
            f"{stats.slots} slots, {stats.simulated_seconds / 3600:g} simulated h in "
            f"{stats.wall_seconds:.1f} s"
        )
