"""Start-up checks of the cluster mode's connection settings (docs/scale-out.md).

Every setting is checked before anything runs: a missing variable, a Postgres that does not
answer, a broker that does not answer or a lake data path that is not there is one line naming
the variable, and nothing is written (no run is created, no partition half-loaded).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from funnelwatch.lake import (
    CATALOG_ENV,
    DATA_PATH_ENV,
    EXTENSION_PACKAGES,
    METADATA_SCHEMA_ENV,
    LakeSettingError,
    LakeSettings,
    extension_file,
)

INSTANCE_DB_ENV = "FUNNELWATCH_DAGSTER_POSTGRES_URL"
BROKER_ENV = "FUNNELWATCH_CELERY_BROKER"
# dagster-postgres speaks psycopg2 (its NOTIFY takes no server-side parameters); SQLAlchemy 2.1
# maps a bare postgresql:// to psycopg 3, so the URL names the driver.
INSTANCE_DB_SCHEME = "postgresql+psycopg2"
# variable -> what it is, for the messages
CLUSTER_SETTINGS = {
    INSTANCE_DB_ENV: "Dagster's instance database (runs, event log, schedules, pools): a "
                     f"{INSTANCE_DB_SCHEME}:// URL",
    BROKER_ENV: "the Celery broker: redis://host:6379/0 or amqp://user@host:5672//",
    CATALOG_ENV: "the lake's catalog database: a libpq connection string",
    DATA_PATH_ENV: "the lake's data path: a folder every worker mounts (or an object store "
                   "prefix)",
    METADATA_SCHEMA_ENV: "the Postgres schema of the lake's catalog tables",
}
CONNECT_TIMEOUT_SECONDS = 5


class ClusterSettingError(RuntimeError):
    """One or more cluster settings are missing or wrong: one line per setting."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_postgres(value: str, setting: str) -> str | None:
    import psycopg

    try:
        with psycopg.connect(value, connect_timeout=CONNECT_TIMEOUT_SECONDS) as con:
            con.execute("SELECT 1")
    except Exception as exc:  # noqa: BLE001 - any failure is the setting's, reported as such
        return f"{setting}: cannot connect to Postgres ({_first_line(exc)})"
    return None


def check_broker(value: str, setting: str) -> str | None:
    from kombu import Connection

    try:
        with Connection(value, connect_timeout=CONNECT_TIMEOUT_SECONDS) as con:
            con.ensure_connection(max_retries=1, timeout=CONNECT_TIMEOUT_SECONDS)
    except Exception as exc:  # noqa: BLE001
        return f"{setting}: cannot reach the Celery broker at {value} ({_first_line(exc)})"
    return None


def check_lake(lake: LakeSettings) -> list[str]:
    problems = []
    try:
        lake.check_data_path()
    except LakeSettingError as exc:
        problems.append(str(exc))
    for name in EXTENSION_PACKAGES:
        try:
            extension_file(name)
        except LakeSettingError as exc:
            problems.append(str(exc))
    problem = check_postgres(lake.catalog, CATALOG_ENV)
    if problem:
        problems.append(problem)
    return problems


def cluster_problems(env: Mapping[str, str] | None = None, broker: bool = True) -> list[str]:
    """One line per missing or unreachable setting (empty: all good)."""
    env = os.environ if env is None else env
    wanted = [k for k in CLUSTER_SETTINGS if broker or k != BROKER_ENV]
    missing = [k for k in wanted if not env.get(k)]
    problems = [f"{k} is not set: {CLUSTER_SETTINGS[k]}" for k in missing]
    if env.get(INSTANCE_DB_ENV):
        url = env[INSTANCE_DB_ENV]
        scheme, _, rest = url.partition("://")
        if scheme != INSTANCE_DB_SCHEME:
            problems.append(f"{INSTANCE_DB_ENV}: must start with {INSTANCE_DB_SCHEME}:// "
                            f"(dagster-postgres needs psycopg2), got {scheme}://")
        else:
            problem = check_postgres(f"postgresql://{rest}", INSTANCE_DB_ENV)
            if problem:
                problems.append(problem)
    if broker and env.get(BROKER_ENV):
        problem = check_broker(env[BROKER_ENV], BROKER_ENV)
        if problem:
            problems.append(problem)
    if env.get(CATALOG_ENV) and env.get(DATA_PATH_ENV):
        problems += check_lake(LakeSettings(env[CATALOG_ENV], env[DATA_PATH_ENV],
                                            env.get(METADATA_SCHEMA_ENV) or "funnelwatch_lake"))
    return problems


def check_cluster_settings(env: Mapping[str, str] | None = None, broker: bool = True) -> None:
    problems = cluster_problems(env, broker=broker)
    if problems:
        raise ClusterSettingError("\n".join(problems))
