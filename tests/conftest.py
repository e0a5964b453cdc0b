"""Shared fixtures: real DuckDB files in temp dirs, the repo's paths, the shared data."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture
def paths(tmp_path, monkeypatch):
    """Landing, warehouse and publish paths in a temp dir, exported as the pipeline reads them."""
    landing = tmp_path / "landing"
    warehouse = tmp_path / "warehouse" / "funnelwatch.duckdb"
    publish = tmp_path / "warehouse" / "published"
    monkeypatch.setenv("FUNNELWATCH_LANDING", str(landing))
    monkeypatch.setenv("FUNNELWATCH_WAREHOUSE", str(warehouse))
    monkeypatch.setenv("FUNNELWATCH_PUBLISH_DIR", str(publish))
    return {"landing": landing, "warehouse": warehouse, "publish": publish}


def require_shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent (it sits beside the repo in CI)")
    return SHARED_DATA


def dbt_executable() -> str:
    import sys

    return str(Path(sys.executable).parent / "dbt")


@pytest.fixture(scope="session")
def dbt_manifest() -> Path:
    """The dbt manifest the Dagster code location is built from (what `make manifest` makes)."""
    import subprocess

    project = REPO_ROOT / "dbt_project"
    subprocess.run(
        [dbt_executable(), "parse", "--quiet", "--project-dir", str(project),
         "--profiles-dir", str(project)],
        check=True, cwd=project,
    )
    return project / "target" / "manifest.json"
