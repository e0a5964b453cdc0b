"""The cluster mode's warehouse: a DuckLake with its catalog on Postgres and its Parquet data
files on a path every worker reaches (docs/scale-out.md).

One DuckDB file takes one writing process. A DuckLake takes many: each process opens its own
in-memory DuckDB, attaches the lake and commits snapshots to the Postgres catalog, which
orders them and refuses a conflicting one (DuckLake's conflict rules are per table: appends
never conflict, two transactions deleting from one table do). The pipeline's SQL runs
unchanged: the lake is attached as `lake` and made the default database, so `raw.events`,
`marts.fct_cohort_metrics_hourly` or `detection.anomalies` resolve inside it.

Extensions come from their PyPI packages (`duckdb-extension-ducklake`,
`duckdb-extension-postgres-scanner`), never from the network: every connection here turns
auto-install off and loads them by path, and `extension_directory` lays them out the way
DuckDB's autoloader expects for processes that only take settings (dbt's profile).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import duckdb

from funnelwatch.warehouse import sql_string

# extension name -> the PyPI package that ships it (its file is named after the extension:
# DuckDB loads the postgres extension only from `postgres_scanner.duckdb_extension`).
EXTENSION_PACKAGES = {
    "postgres_scanner": "duckdb_extension_postgres_scanner",
    "ducklake": "duckdb_extension_ducklake",
}
LAKE_ALIAS = "lake"
DEFAULT_METADATA_SCHEMA = "funnelwatch_lake"

# The settings of the cluster warehouse (the embedded default reads none of them).
CATALOG_ENV = "FUNNELWATCH_LAKE_CATALOG"
DATA_PATH_ENV = "FUNNELWATCH_LAKE_DATA_PATH"
METADATA_SCHEMA_ENV = "FUNNELWATCH_LAKE_METADATA_SCHEMA"
EXTENSIONS_ENV = "FUNNELWATCH_LAKE_EXTENSIONS"


class LakeSettingError(RuntimeError):
    """A cluster warehouse setting is missing or wrong; the message names it."""


@dataclass(frozen=True)
class LakeSettings:
    """Where the lake lives. `catalog` is a libpq connection string of the catalog database
    (`dbname=funnelwatch host=pg.internal user=funnelwatch`; the password from PGPASSWORD or
    ~/.pgpass, never in the string), `data_path` the folder (or object store prefix) of the
    Parquet files, `metadata_schema` the Postgres schema holding the catalog tables."""

    catalog: str
    data_path: str
    metadata_schema: str = DEFAULT_METADATA_SCHEMA

    @classmethod
    def from_env(cls) -> LakeSettings:
        missing = [name for name in (CATALOG_ENV, DATA_PATH_ENV) if not os.environ.get(name)]
        if missing:
            raise LakeSettingError(
                f"{' and '.join(missing)} not set: the cluster warehouse needs the catalog's "
                "Postgres connection string and the shared data path (docs/scale-out.md)")
        return cls(
            catalog=os.environ[CATALOG_ENV],
            data_path=os.environ[DATA_PATH_ENV],
            metadata_schema=os.environ.get(METADATA_SCHEMA_ENV) or DEFAULT_METADATA_SCHEMA,
        )

    @property
    def attach_path(self) -> str:
        return f"ducklake:postgres:{self.catalog}"

    @property
    def data_folder(self) -> str:
        """The data path with one trailing separator (DuckLake appends file names)."""
        return self.data_path.rstrip("/") + "/"

    def check_data_path(self) -> None:
        """A local data path must be an existing folder this process may write to (a shared
        mount that is not mounted must not silently become a local folder)."""
        if "://" in self.data_path:
            return  # an object store: reached by the first write
        folder = Path(self.data_path)
        if not folder.is_dir():
            raise LakeSettingError(
                f"{DATA_PATH_ENV}={self.data_path}: no such folder (create it on the shared "
                "volume first; the pipeline does not create it, so an unmounted volume fails "
                "here instead of filling a local disk)")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise LakeSettingError(f"{DATA_PATH_ENV}={self.data_path}: not writable by this "
                                   "process")


def extension_file(name: str) -> Path:
    """The extension file shipped by its PyPI package for the running DuckDB."""
    package = EXTENSION_PACKAGES[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise LakeSettingError(
            f"the DuckDB extension {name} is not installed (PyPI package "
            f"{package.replace('_', '-')}, in the `cluster` dependency group)")
    path = Path(spec.origin).parent / "extensions" / f"v{duckdb.__version__}" / (
        f"{name}.duckdb_extension")
    if not path.is_file():
        raise LakeSettingError(
            f"{path} not found: the {package} package does not match DuckDB "
            f"{duckdb.__version__}")
    return path


def extension_directory(base: Path | str) -> Path:
    """`base` laid out as DuckDB's extension directory (`v<version>/<platform>/<name>.
    duckdb_extension`, links to the package files), for processes that autoload extensions
    from settings (dbt's profile) with auto-install off."""
    base = Path(base)
    with duckdb.connect() as con:
        platform = con.execute("PRAGMA platform").fetchone()[0]
    folder = base / f"v{duckdb.__version__}" / platform
    folder.mkdir(parents=True, exist_ok=True)
    for name in EXTENSION_PACKAGES:
        link = folder / f"{name}.duckdb_extension"
        target = extension_file(name)
        if link.is_symlink() or link.exists():
            if link.resolve() == target.resolve():
                continue
            link.unlink()
        link.symlink_to(target)
    return base


def load_extensions(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("SET autoinstall_known_extensions = false")
    for name in EXTENSION_PACKAGES:
        con.execute(f"LOAD {sql_string(str(extension_file(name)))}")


def connect_lake(settings: LakeSettings) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the lake attached as the default database (UTC). A catalog
    that does not answer or a data path that is not there raises LakeSettingError naming the
    variable, before anything is written."""
    settings.check_data_path()
    con = duckdb.connect()
    try:
        load_extensions(con)
        try:
            con.execute(
                f"ATTACH {sql_string(settings.attach_path)} AS {LAKE_ALIAS} "
                f"(DATA_PATH {sql_string(settings.data_folder)}, "
                f"METADATA_SCHEMA {sql_string(settings.metadata_schema)})")
        except duckdb.Error as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            raise LakeSettingError(
                f"{CATALOG_ENV}: cannot attach the lake's catalog ({first})") from exc
        con.execute(f"USE {LAKE_ALIAS}")
        con.execute("SET TimeZone = 'UTC'")
    except BaseException:
        con.close()
        raise
    return con
