"""A warehouse built by the real hourly pipeline over the first hours of a simulated day: the
module-scoped fixture of the tests that need marts, dbt and the analyst snapshot as the
pipeline leaves them (privacy, the analyst boundary)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from tests.test_pipeline import DAY, _defs, _resources, _simulate


def pipeline_paths(base: Path) -> dict:
    """Landing, warehouse and publish paths below `base`, laid out as the pipeline expects."""
    return {"landing": base / "landing", "warehouse": base / "warehouse" / "funnelwatch.duckdb",
            "publish": base / "warehouse" / "published"}


def build_with_hourly_pipeline(base: Path, hours: int, env: dict | None = None
                               ) -> tuple[dict, pd.DataFrame]:
    """(paths, simulated events): one simulated DAY landed below `base` (the whole day) and the
    hourly pipeline run over its first `hours` hours as one run, with the paths and `env`
    exported as the pipeline reads them."""
    paths = pipeline_paths(base)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FUNNELWATCH_LANDING", str(paths["landing"]))
        mp.setenv("FUNNELWATCH_WAREHOUSE", str(paths["warehouse"]))
        mp.setenv("FUNNELWATCH_PUBLISH_DIR", str(paths["publish"]))
        for name, value in (env or {}).items():
            mp.setenv(name, value)
        events = _simulate(paths["landing"], days=1)
        job = _defs().resolve_job_def("hourly_pipeline")
        result = job.execute_in_process(
            instance=dg.DagsterInstance.ephemeral(), resources=_resources(paths),
            tags={"dagster/asset_partition_range_start": f"{DAY}-00:00",
                  "dagster/asset_partition_range_end": f"{DAY}-{hours - 1:02d}:00"},
        )
        assert result.success
    return paths, events
