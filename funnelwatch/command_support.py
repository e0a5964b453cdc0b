"""What the `funnelwatch` commands share: the landing option, settings, the one-line error exit,
day parsing and simulating a store.

The command modules (`funnelwatch.cli`, `funnelwatch.replay_commands`, ...) import from here;
nothing here imports a command module, so `funnelwatch.cli` sits on top and registers them.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from funnelwatch.settings import Settings

LandingOption = Annotated[
    Path | None,
    typer.Option("--landing", help="Landing folder (default: $FUNNELWATCH_LANDING or data/landing)."),
]


def settings_for(landing: Path | None = None) -> Settings:
    """The settings from the environment, with `--landing` (when given) taking precedence."""
    if landing is not None:
        os.environ["FUNNELWATCH_LANDING"] = str(landing)
    return Settings.from_env()


def fail(message: str) -> NoReturn:
    """Print one `error:` line and exit 2 (bad input never shows a traceback)."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(2)


def open_warehouse(warehouse: Path, read_only: bool = False, wait_seconds: float | None = None):
    """A connection to the warehouse for a command, waiting for the pipeline's write lock up to
    `wait_seconds` (funnelwatch.warehouse's default when None); one error line and exit 2 when
    there is no warehouse yet or the lock is held longer."""
    from funnelwatch.warehouse import WarehouseBusyError, connect_when_free

    if not warehouse.is_file():
        fail(f"no warehouse at {warehouse}: run the pipeline first (`make demo` or "
             "`funnelwatch run`)")
    try:
        return connect_when_free(warehouse, read_only=read_only, wait_seconds=wait_seconds)
    except WarehouseBusyError as exc:
        fail(str(exc))


def parse_day(value: str | None) -> datetime:
    """An ISO date or time as UTC (naive means UTC); None is today 00:00 UTC."""
    if value is None:
        now = datetime.now(UTC)
        return now.replace(hour=0, minute=0, second=0, microsecond=0)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        fail(f"{value!r} is not an ISO date or time (e.g. 2026-11-02 or 2026-11-02T13:00)")
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


def simulate_store(days: int, end: str | None, sessions_per_hour: int, seed: int,
                   scenario: str):
    """(start, end, SimulationResult) of `days` days ending at `end` (default today 00:00
    UTC) with a scenario's incidents; bad input exits with its reason. Shared by `simulate`
    and `replay`."""
    from simulator import SimulationConfig, load_incidents
    from simulator import simulate as run_simulation

    end_time = parse_day(end)
    start_time = end_time - timedelta(days=days)
    try:
        incidents = [] if scenario == "none" else load_incidents(scenario)
    except (OSError, ValueError) as exc:
        fail(f"cannot load scenario {scenario!r}: {exc}")
    config = SimulationConfig(
        start=start_time, end=end_time, sessions_per_hour=sessions_per_hour, seed=seed,
        incidents=incidents,
    )
    try:
        return start_time, end_time, run_simulation(config)
    except ValueError as exc:
        fail(str(exc))
