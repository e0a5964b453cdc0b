"""The cluster mode on Kubernetes: the same code location as orchestration/cluster/definitions.py
with each step in its own Kubernetes Job (dagster-k8s `k8s_job_executor`) instead of a Celery
task. Runs are launched by the chart's K8sRunLauncher (deploy/cluster/helm-values.yaml); the
user-code deployment serves this module (`dagster api grpc -m
orchestration.cluster.k8s_definitions`). Not run in this repository's tests: there is no
Kubernetes here (docs/scale-out.md says what is checked instead)."""

from __future__ import annotations

import dagster as dg
from dagster_k8s import k8s_job_executor

from funnelwatch.cluster_check import BROKER_ENV, CLUSTER_SETTINGS
from orchestration.cluster.definitions import defs as celery_defs

# The step pods get the cluster settings from the secret the run pod has (the chart's
# `envSecrets`), and at most this many steps of one run at once.
STEP_SECRET = "funnelwatch-cluster"
k8s_executor = k8s_job_executor.configured(
    {"env_secrets": [STEP_SECRET], "max_concurrent": 8,
     "env_vars": [k for k in CLUSTER_SETTINGS if k != BROKER_ENV]},
    name="k8s_cluster",
)

defs = dg.Definitions(
    assets=celery_defs.assets,
    asset_checks=celery_defs.asset_checks,
    jobs=celery_defs.jobs,
    schedules=celery_defs.schedules,
    sensors=celery_defs.sensors,
    loggers=celery_defs.loggers,
    resources=celery_defs.resources,
    executor=k8s_executor,
)
