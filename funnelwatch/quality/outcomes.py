"""What a data-quality check returns, and the one set of thresholds every suite uses (its own
module so that the suites and the tracking-loss check share them without importing each
other)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class QualitySettings:
    """One configuration for every hour and store (no per-scenario tuning)."""

    max_cohort_null_rate: float = 0.05
    # per-event-type volume against the median of the same hour in previous weeks
    volume_weeks: int = 4
    # Only missing data is a data fault: surges (Black Friday, a campaign, a bot flood) are
    # business signals for detection, and duplicated rows are caught at ingest.
    volume_min_ratio: float = 0.4
    volume_min_baseline: int = 50  # types rarer than this are not volume-checked
    # share of the hour's landed rows that ingest quarantined or dropped as duplicates
    max_rejected_share: float = 0.01
    # completeness: with enough traffic, the last event lands in the hour's last minutes
    completeness_min_events: int = 500
    completeness_last_minutes: int = 15
    # tracking loss (funnelwatch/quality/tracking.py): an event type against its recent days
    tracking_reference_days: int = 7
    tracking_min_reference: int = 50  # types with fewer events in the reference are not checked
    tracking_low_ratio: float = 0.2  # an hour is low at or below this share of its expected count
    tracking_min_expected: float = 10.0  # evidence a run of low hours needs before it is a loss
    tracking_min_downstream_sessions: int = 5


@dataclass
class CheckOutcome:
    name: str
    passed: bool
    description: str
    evidence: dict[str, Any] = field(default_factory=dict)
