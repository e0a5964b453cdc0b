"""Checking every config file a pipeline run reads, before the run starts.

Above the config loaders (funnelwatch/config_files.py is below them: they build their models
on it), so the check imports them at module level.
"""

from __future__ import annotations

from funnelwatch.alerting.routing import load_routing
from funnelwatch.dbt_vars import load_cohort_config


def check_pipeline_configs() -> None:
    """Load the config files a pipeline run reads (config/cohorts.yml, config/alert_routing.yml),
    so a bad one stops `funnelwatch run` with its one line before any run starts."""
    load_cohort_config()
    load_routing()
