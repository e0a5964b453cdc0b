"""Resources of the cluster mode, configured from the environment when a run starts."""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, closing
from pathlib import Path

import dagster as dg
import duckdb

from funnelwatch.lake import (
    CATALOG_ENV,
    DATA_PATH_ENV,
    EXTENSIONS_ENV,
    METADATA_SCHEMA_ENV,
    LakeSettings,
    connect_lake,
    extension_directory,
)
from orchestration.resources import WarehouseResource


class LakeWarehouseResource(WarehouseResource):
    """The DuckLake warehouse. `path` stays the local folder anchor of files that are not
    tables (incident reports, the ops outbox); the tables live in the lake."""

    catalog: str
    data_path: str
    metadata_schema: str = "funnelwatch_lake"

    @property
    def lake(self) -> LakeSettings:
        return LakeSettings(self.catalog, self.data_path, self.metadata_schema)

    def get_connection(self) -> AbstractContextManager[duckdb.DuckDBPyConnection]:
        return closing(connect_lake(self.lake))

    def dbt_environment(self) -> dict[str, str]:
        lake = self.lake
        extensions = Path(os.environ.get(EXTENSIONS_ENV) or Path(self.path).parent / "extensions")
        return {
            CATALOG_ENV: lake.catalog,
            DATA_PATH_ENV: lake.data_folder,
            METADATA_SCHEMA_ENV: lake.metadata_schema,
            EXTENSIONS_ENV: str(extension_directory(extensions)),
        }


def lake_warehouse() -> LakeWarehouseResource:
    return LakeWarehouseResource(
        path=dg.EnvVar("FUNNELWATCH_WAREHOUSE"),
        publish_dir=dg.EnvVar("FUNNELWATCH_PUBLISH_DIR"),
        catalog=dg.EnvVar(CATALOG_ENV),
        data_path=dg.EnvVar(DATA_PATH_ENV),
        metadata_schema=dg.EnvVar(METADATA_SCHEMA_ENV),
    )
