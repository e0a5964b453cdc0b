"""The cluster mode's deployment files: the instance dagster.yaml loads on Postgres, and the
Helm values for the official Dagster chart name the code location and settings the cluster
mode uses (there is no Kubernetes here to install them: docs/scale-out.md)."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest
import yaml

from funnelwatch.cluster_check import BROKER_ENV, CLUSTER_SETTINGS, INSTANCE_DB_ENV
from tests.cluster_services import scratch_database

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "cluster"


def test_the_cluster_instance_runs_on_postgres_from_the_environment(tmp_path, monkeypatch):
    pytest.importorskip("dagster_postgres")
    shutil.copy(DEPLOY / "dagster.yaml", tmp_path / "dagster.yaml")
    with scratch_database("fw_instance") as database:
        params = dict(p.split("=", 1) for p in database.split())
        monkeypatch.setenv(INSTANCE_DB_ENV, f"postgresql+psycopg2://postgres@127.0.0.1:5432/"
                                            f"{params['dbname']}")
        with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
            assert type(instance.run_storage).__name__ == "PostgresRunStorage"
            assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
            run = instance.create_run_for_job(
                dg.GraphDefinition("noop", node_defs=[]).to_job(), run_id=None)
            assert instance.get_run_by_id(run.run_id) is not None
            instance.report_engine_event("cluster instance check", run)  # an event (NOTIFY)
            records = instance.get_records_for_run(run.run_id).records
            assert any(r.event_log_entry.is_dagster_event
                       and r.event_log_entry.dagster_event.message == "cluster instance check"
                       for r in records)
            assert instance.get_concurrency_config().pool_config.default_pool_limit == 1


def test_helm_values_name_the_k8s_code_location_and_the_settings():
    values = yaml.safe_load((DEPLOY / "helm-values.yaml").read_text())
    assert values["postgresql"]["enabled"] is False
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    module = deployment["dagsterApiGrpcArgs"][deployment["dagsterApiGrpcArgs"].index("-m") + 1]
    assert module == "orchestration.cluster.k8s_definitions"
    from orchestration.cluster.k8s_definitions import defs

    assert defs.resolve_job_def("hourly_pipeline").executor_def.name == "k8s_cluster"
    secrets = {s["name"] for s in deployment["envSecrets"]}
    assert secrets == {"funnelwatch-cluster"}
    env = {e["name"] for e in deployment["env"]}
    text = (DEPLOY / "helm-values.yaml").read_text()
    for setting in CLUSTER_SETTINGS:
        if setting == BROKER_ENV:
            continue  # steps are Kubernetes Jobs there, not Celery tasks
        assert setting in env or f"--from-literal={setting}=" in text, setting
    mounts = {m["mountPath"] for m in deployment["volumeMounts"]}
    data_path = next(e["value"] for e in deployment["env"]
                     if e["name"] == "FUNNELWATCH_LAKE_DATA_PATH")
    assert any(data_path.startswith(m) for m in mounts)
    assert values["concurrency"]["pools"]["defaultLimit"] == 1
