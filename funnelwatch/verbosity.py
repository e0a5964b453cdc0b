"""How much a `funnelwatch` command prints: by default our own lines (one per pipeline stage),
warnings and errors; with `funnelwatch --verbose` everything, as the libraries print it
(Great Expectations' progress bars, Dagster's per-event log lines and its beta / preview
warnings about features we chose on purpose, dbt's line per model and test).

Process state: the CLI's global option sets it before a command runs, and each library reads it
when it is first set up (the GE context, the warning filters, Dagster's console logger) or when
it runs (dbt), never at import time. Outside the CLI (tests, `dg dev` and its runs) GE's bars
and the chosen-feature warnings are hidden and dbt's lines stay in the run's captured stdout,
where the UI shows them.
"""

from __future__ import annotations

_verbose = False
_headless = False


def set_cli_output(verbose: bool) -> None:
    """Called by the `funnelwatch` command: a person reads this terminal."""
    global _verbose, _headless
    _verbose, _headless = bool(verbose), True


def verbose() -> bool:
    """`funnelwatch --verbose`: show everything."""
    return _verbose


def quiet_terminal() -> bool:
    """A `funnelwatch` command without --verbose: subprocess chatter (dbt) is held back."""
    return _headless and not _verbose
