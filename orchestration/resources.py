"""Resources shared by every domain: where things live and the secrets they need.

Configuration comes from the environment through `EnvVar` (read when a run starts, never at
import). `make demo` / `make dev` export working defaults (see the Makefile and .env.example).
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from pathlib import Path

import dagster as dg
import duckdb

from funnelwatch.ingest.pseudonymize import DEMO_KEY
from funnelwatch.warehouse import connection

# Every asset that opens the warehouse for writing (or runs dbt on it) is in this pool.
# The instance limits it to one slot (dagster.yaml: concurrency.pools.default_limit = 1), so
# the multiprocess executor and concurrent runs never hold two DuckDB writers at once.
WAREHOUSE_POOL = "duckdb_warehouse"


class WarehouseResource(dg.ConfigurableResource):
    """The DuckDB warehouse file and the folder where analyst snapshots are published."""

    path: str
    publish_dir: str

    def get_connection(self) -> AbstractContextManager[duckdb.DuckDBPyConnection]:
        return connection(self.path)

    def dbt_environment(self) -> dict[str, str]:
        """The variables dbt's profile reads to reach this warehouse (dbt runs in a
        subprocess that sees this process's environment)."""
        return {"FUNNELWATCH_WAREHOUSE": str(Path(self.path).resolve())}


class LandingResource(dg.ConfigurableResource):
    """The landing folder collectors write hourly event files and reference CSVs into."""

    path: str

    @property
    def root(self) -> Path:
        return Path(self.path)


class PseudonymizerResource(dg.ConfigurableResource):
    """The key of the HMAC that pseudonymises user and session ids at ingest.

    The key is read from the environment variable named here when a run needs it, so its
    value is never part of the run config shown in the UI. When it is unset, a clearly named
    demo key is used and every materialization says so.
    """

    key_env_var: str = "FUNNELWATCH_PSEUDONYMIZATION_KEY"

    def key(self) -> tuple[str, bool]:
        """(key, is_demo_key)."""
        value = os.environ.get(self.key_env_var, "")
        if value and value != DEMO_KEY:
            return value, False
        return DEMO_KEY, True


def default_resources() -> dict:
    from dagster_dbt import DbtCliResource

    from orchestration.maintain.run_history import RunHistorySettings
    from orchestration.respond.resources import AlertingSettings, IncidentSettings
    from orchestration.settings import DetectionSettings, FastLaneSettings, RetentionSettings
    from orchestration.transform.project import dbt_executable, dbt_project

    return {
        "warehouse": WarehouseResource(
            path=dg.EnvVar("FUNNELWATCH_WAREHOUSE"),
            publish_dir=dg.EnvVar("FUNNELWATCH_PUBLISH_DIR"),
        ),
        "landing": LandingResource(path=dg.EnvVar("FUNNELWATCH_LANDING")),
        "pseudonymizer": PseudonymizerResource(),
        "dbt": DbtCliResource(project_dir=dbt_project, dbt_executable=dbt_executable()),
        "detection": DetectionSettings(),
        "fast_lane": FastLaneSettings(),
        "incident_settings": IncidentSettings(),
        "alerting": AlertingSettings(),
        "retention": RetentionSettings(),
        "run_history": RunHistorySettings(),
    }
