"""Cohort names: ``{"os": "iOS", "browser": "Safari"}`` <-> ``browser=Safari&os=iOS``."""

from __future__ import annotations

ALL = "all"


def format_cohort(filters: dict) -> str:
    """``{"os": "iOS", "browser": "Safari"}`` -> ``browser=Safari&os=iOS`` (``all`` if empty)."""
    if not filters:
        return ALL
    return "&".join(f"{k}={filters[k]}" for k in sorted(filters))


def parse_cohort(cohort: str) -> dict:
    """Inverse of ``format_cohort`` (values are returned as strings)."""
    if cohort == ALL:
        return {}
    return dict(part.split("=", 1) for part in cohort.split("&"))
