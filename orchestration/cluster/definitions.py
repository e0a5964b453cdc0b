"""The cluster mode's code location: the embedded default's assets, checks, jobs, schedules and
sensors, with the lake warehouse, dbt's `lake` target and the Celery executor
(docs/scale-out.md). Load it with `dagster dev -m orchestration.cluster.definitions` or the
workspace of deploy/cluster; the embedded default (`orchestration.definitions`) is unchanged.

Configuration is read when a run starts (EnvVar, `{"env": ...}` executor config), never at
import, so the module loads on a machine without the cluster's services.
"""

from __future__ import annotations

import dagster as dg
from dagster_celery import celery_executor
from dagster_dbt import DbtCliResource

from funnelwatch.cluster_check import BROKER_ENV
from orchestration.cluster import detect_sharded
from orchestration.cluster.detect_sharded import ShardingSettings
from orchestration.cluster.resources import lake_warehouse
from orchestration.definitions import defs as embedded_defs
from orchestration.resources import default_resources
from orchestration.transform.project import dbt_executable, dbt_project

# Celery settings the workers must share (orchestration/cluster/worker.py builds the same app).
# Acknowledge a step's task only when it is done and give it back to the broker when its worker
# dies: a SIGKILLed worker's step runs again on another worker (the assets replace their
# partition in one transaction, so a second attempt neither duplicates nor loses rows).
CELERY_CONFIG_SOURCE = {
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "worker_prefetch_multiplier": 1,
}
RESULT_BACKEND = "rpc://"

cluster_executor = celery_executor.configured(
    {
        "broker": {"env": BROKER_ENV},
        "backend": RESULT_BACKEND,
        "config_source": CELERY_CONFIG_SOURCE,
    },
    name="celery_cluster",
)


def cluster_resources() -> dict:
    resources = default_resources()
    resources["sharding"] = ShardingSettings()
    resources["warehouse"] = lake_warehouse()
    resources["dbt"] = DbtCliResource(
        project_dir=dbt_project, dbt_executable=dbt_executable(), target="lake")
    return resources


# Detection is the one asset replaced: the same key, split across workers by cohort shard.
_single_process_detection = {a for a in embedded_defs.assets
                             if "cohort_anomalies" in {k.path[-1] for k in a.keys}}
defs = dg.Definitions(
    assets=[a for a in embedded_defs.assets if a not in _single_process_detection]
    + detect_sharded.assets,
    asset_checks=embedded_defs.asset_checks,
    jobs=embedded_defs.jobs,
    schedules=embedded_defs.schedules,
    sensors=embedded_defs.sensors,
    loggers=embedded_defs.loggers,
    resources=cluster_resources(),
    executor=cluster_executor,
)


def hourly_pipeline() -> dg.JobDefinition:
    """The hourly pipeline job, for `dg.reconstructable` (Celery workers rebuild the job from
    this module and function)."""
    return defs.resolve_job_def("hourly_pipeline")


def respond_to_anomalies() -> dg.JobDefinition:
    return defs.resolve_job_def("respond_to_anomalies")


def detect_anomalies() -> dg.JobDefinition:
    return defs.resolve_job_def("detect_anomalies")
