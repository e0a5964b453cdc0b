"""A missing or wrong cluster setting stops the cluster mode at start-up with one line naming
the variable, and nothing is written (docs/scale-out.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from funnelwatch.cluster_check import (
    BROKER_ENV,
    INSTANCE_DB_ENV,
    ClusterSettingError,
    check_cluster_settings,
    cluster_problems,
)
from funnelwatch.lake import (
    CATALOG_ENV,
    DATA_PATH_ENV,
    METADATA_SCHEMA_ENV,
    LakeSettingError,
    LakeSettings,
    connect_lake,
)
from tests.cluster_services import scratch_database

BIN = Path(sys.executable).parent
REDIS = "redis://127.0.0.1:6379/15"
NOTHING_LISTENS = "127.0.0.1:9"  # the discard port: connection refused at once


@pytest.fixture
def database():
    with scratch_database("fw_settings") as conninfo:
        yield conninfo


def _good_env(database: str, tmp_path: Path) -> dict[str, str]:
    params = dict(p.split("=", 1) for p in database.split())
    (tmp_path / "lake").mkdir(exist_ok=True)
    return {
        INSTANCE_DB_ENV: f"postgresql+psycopg2://postgres@127.0.0.1:5432/{params['dbname']}",
        BROKER_ENV: REDIS,
        CATALOG_ENV: database,
        DATA_PATH_ENV: str(tmp_path / "lake"),
        METADATA_SCHEMA_ENV: "funnelwatch_lake",
    }


def test_good_settings_pass(database, tmp_path):
    assert cluster_problems(_good_env(database, tmp_path)) == []


@pytest.mark.parametrize("setting, bad, says", [
    (INSTANCE_DB_ENV, f"postgresql+psycopg2://postgres@{NOTHING_LISTENS}/x", "cannot connect to Postgres"),
    (INSTANCE_DB_ENV, "postgresql://postgres@127.0.0.1:5432/test", "must start with"),
    (BROKER_ENV, f"redis://{NOTHING_LISTENS}/0", "cannot reach the Celery broker"),
    (CATALOG_ENV, "host=127.0.0.1 port=9 user=postgres dbname=x", "cannot connect to Postgres"),
    (DATA_PATH_ENV, "/nonexistent/lake", "no such folder"),
    (METADATA_SCHEMA_ENV, "", "is not set"),
])
def test_each_wrong_setting_is_one_line_naming_it(database, tmp_path, setting, bad, says):
    env = _good_env(database, tmp_path)
    env[setting] = bad
    problems = cluster_problems(env)
    assert len(problems) == 1, problems
    assert problems[0].startswith(setting) and says in problems[0], problems[0]
    with pytest.raises(ClusterSettingError, match=setting):
        check_cluster_settings(env)


def test_the_command_stops_before_any_run_and_names_the_settings(tmp_path):
    env = {"PATH": str(BIN), "HOME": str(tmp_path), "DAGSTER_HOME": str(tmp_path)}
    result = subprocess.run(
        [str(BIN / "funnelwatch"), "cluster", "run", "--start", "2026-11-02-00:00",
         "--end", "2026-11-02-01:00"], check=False, env=env, capture_output=True, text=True,
        timeout=120)
    assert result.returncode == 2
    for setting in (INSTANCE_DB_ENV, BROKER_ENV, CATALOG_ENV, DATA_PATH_ENV):
        assert setting in result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # no run, no instance storage, nothing written


def test_a_lake_that_cannot_be_reached_writes_nothing(database, tmp_path):
    data = tmp_path / "lake"
    data.mkdir()
    with pytest.raises(LakeSettingError, match=DATA_PATH_ENV):
        connect_lake(LakeSettings(database, str(tmp_path / "not-mounted")))
    with pytest.raises(LakeSettingError, match=CATALOG_ENV):
        connect_lake(LakeSettings("host=127.0.0.1 port=9 user=postgres dbname=x", str(data)))
    assert list(data.iterdir()) == []
