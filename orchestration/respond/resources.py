"""Settings of the respond domain: incident grouping, reports, feedback and alert routing."""

from pathlib import Path

import dagster as dg

REPO_ROOT = Path(__file__).resolve().parents[2]


class IncidentSettings(dg.ConfigurableResource):
    """How anomalies become incidents and where their reports and feedback live.

    Empty paths mean: beside the warehouse (`reports/`) and `$FUNNELWATCH_FEEDBACK_DIR`
    (default `data/feedback`), resolved when a run starts.
    """

    merge_gap_hours: int = 2
    recovery_hours: int = 3
    reopen_hours: int = 6
    reports_dir: str = ""
    feedback_dir: str = ""

    def policy(self):
        from funnelwatch.incidents.lifecycle import IncidentPolicy

        return IncidentPolicy(self.merge_gap_hours, self.recovery_hours, self.reopen_hours)

    def reports_path(self, warehouse_path: str) -> Path:
        return Path(self.reports_dir) if self.reports_dir else Path(warehouse_path).parent / "reports"

    def feedback_path(self) -> Path:
        if self.feedback_dir:
            return Path(self.feedback_dir)
        from funnelwatch.settings import Settings

        return Settings.from_env(export=False).feedback_dir


class AlertingSettings(dg.ConfigurableResource):
    """Routing rules (no secrets: channels name the environment variables holding them) and
    how far back a change may be and still page (older ones are backfills)."""

    routing_path: str = ""
    horizon_hours: int = 24
    ops_outbox_path: str = ""

    def routing(self):
        """The parsed routing file; a bad file fails the step (or sensor tick) with its one
        error line (file, key, what was expected) as the failure's description."""
        from funnelwatch.alerting import load_routing
        from funnelwatch.config_files import ConfigError

        try:
            return load_routing(self.routing_path or REPO_ROOT / "config" / "alert_routing.yml")
        except ConfigError as exc:
            raise dg.Failure(description=str(exc), allow_retries=False) from None

    def ops_outbox(self, warehouse_path: str) -> Path:
        """Run failures are queued in their own small DuckDB file: the sensor that reports
        them must not wait for (or break) a run holding the warehouse."""
        if self.ops_outbox_path:
            return Path(self.ops_outbox_path)
        return Path(warehouse_path).parent / "ops_outbox.duckdb"
