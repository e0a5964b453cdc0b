"""The Celery worker of the cluster mode: `celery -A orchestration.cluster.worker worker -Q
dagster --pool prefork --concurrency 1` on every worker machine (docs/scale-out.md).

The app carries Dagster's step task (`execute_plan`) and the settings the executor in
orchestration/cluster/definitions.py submits with. This module is a process entry point: it
reads the broker setting when the worker starts and refuses to start, naming the setting,
when a cluster setting is missing or a service does not answer.
"""

from __future__ import annotations

import os

from dagster_celery.make_app import make_app
from dagster_celery.tasks import create_task

from funnelwatch.cluster_check import BROKER_ENV, check_cluster_settings
from orchestration.cluster.definitions import CELERY_CONFIG_SOURCE, RESULT_BACKEND


def make_worker_app():
    check_cluster_settings()
    worker_app = make_app({"broker": os.environ[BROKER_ENV], "backend": RESULT_BACKEND})
    worker_app.conf.update(CELERY_CONFIG_SOURCE)
    return worker_app


app = make_worker_app()
execute_plan = create_task(app)
