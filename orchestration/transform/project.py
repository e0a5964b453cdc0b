"""The dbt project as Dagster sees it."""

import sys
from pathlib import Path

from dagster_dbt import DagsterDbtProjectPreparer, DbtCliResource, DbtProject

REPO_ROOT = Path(__file__).resolve().parents[2]


def dbt_executable() -> str:
    """The dbt installed beside the running Python (the project's environment), so dbt need
    not be on PATH (`dg dev` and `dagster dev` run without an activated environment)."""
    candidate = Path(sys.executable).parent / "dbt"
    return str(candidate) if candidate.exists() else "dbt"


class ProjectDbtPreparer(DagsterDbtProjectPreparer):
    """Parses the project with the environment's dbt (we use no dbt packages: no `dbt deps`,
    which would need the network)."""

    def prepare(self, project: DbtProject) -> None:
        DbtCliResource(project_dir=project, dbt_executable=dbt_executable()).cli(
            ["parse", "--quiet"], target_path=project.target_path
        ).wait()


dbt_project = DbtProject(project_dir=REPO_ROOT / "dbt_project")
# Under `dagster dev` / `dg dev`, (re)parse the project so the manifest matches the models
# (what DbtProject.prepare_if_dev does, with the environment's dbt). Elsewhere the manifest
# is built by `make manifest` (part of `make demo`, `make test`).
_preparer = ProjectDbtPreparer()
if _preparer.using_dagster_dev():
    _preparer.prepare(dbt_project)
