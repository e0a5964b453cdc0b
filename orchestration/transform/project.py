"""The dbt project as Dagster sees it."""

from __future__ import annotations

from pathlib import Path

from dagster_dbt import DbtProject

REPO_ROOT = Path(__file__).resolve().parents[2]

dbt_project = DbtProject(project_dir=REPO_ROOT / "dbt_project")
# Under `dagster dev` / `dg dev`, (re)parse the project so the manifest matches the models.
# Elsewhere the manifest is built by `make manifest` (part of `make demo`, `make test`).
dbt_project.prepare_if_dev()
