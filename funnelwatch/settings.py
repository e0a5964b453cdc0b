"""Where things live, for the command line. Dagster reads the same variables through EnvVar.

Defaults are relative to the current folder; `make` exports absolute ones.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULTS = {
    "FUNNELWATCH_LANDING": "data/landing",
    "FUNNELWATCH_WAREHOUSE": "warehouse/funnelwatch.duckdb",
    "FUNNELWATCH_PUBLISH_DIR": "warehouse/published",
    "FUNNELWATCH_FEEDBACK_DIR": "data/feedback",  # incident feedback spool (incidents.feedback)
}


@dataclass(frozen=True)
class Settings:
    landing: Path
    warehouse: Path
    publish_dir: Path
    feedback_dir: Path = Path(DEFAULTS["FUNNELWATCH_FEEDBACK_DIR"])

    @classmethod
    def from_env(cls, export: bool = True) -> Settings:
        """Read the paths from the environment (defaults where unset). With `export`, write the
        resolved absolute paths back so Dagster's EnvVar and dbt's profile see the same ones."""
        values = {k: str(Path(os.environ.get(k) or v).resolve()) for k, v in DEFAULTS.items()}
        if export:
            os.environ.update(values)
        return cls(
            landing=Path(values["FUNNELWATCH_LANDING"]),
            warehouse=Path(values["FUNNELWATCH_WAREHOUSE"]),
            publish_dir=Path(values["FUNNELWATCH_PUBLISH_DIR"]),
            feedback_dir=Path(values["FUNNELWATCH_FEEDBACK_DIR"]),
        )
