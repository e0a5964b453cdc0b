"""Alerts that are not business problems, cleared after scoring.

Planned changes: a campaign that ends (or has not started) takes its cohorts' traffic to
zero by design. The campaigns reference table says when each one runs; outside that time the
cohorts that belong to it (utm_campaign=X, and a utm_source / utm_medium whose sessions are
almost all campaign X) do not page anyone. A new campaign's first hours are covered by the
detectors' cold start, which counts from a series' first active hour.

Data-quality aftermath: an hour with a data-quality incident is not scored at all, and the
hour after it is not allowed to page either, because sessions are counted in every hour they
are active: a session that began in the broken hour carries its missing or broken events
into the next one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import duckdb
import pandas as pd

# A source or medium belongs to a campaign when at least this share of its sessions came
# from it (e.g. utm_source=instagram is the ig_sale campaign).
EXCLUSIVE_SHARE = 0.95


@dataclass(frozen=True)
class CampaignWindow:
    campaign: str
    start: pd.Timestamp
    end: pd.Timestamp
    cohort_pairs: tuple[str, ...]  # "utm_campaign=ig_sale", "utm_source=instagram", ...


def campaign_windows(
    con: duckdb.DuckDBPyConnection, since: datetime, until: datetime
) -> list[CampaignWindow]:
    try:
        campaigns = con.execute(
            "SELECT campaign_name, start_time, end_time FROM marts.dim_campaigns "
            "WHERE start_time < $until AND end_time > $since - INTERVAL 28 DAY",
            {"since": since, "until": until},
        ).df()
        shares = con.execute(
            """SELECT dimension, dim_value, utm_campaign, sessions / sum(sessions) OVER (
                          PARTITION BY dimension, dim_value) AS share
               FROM (
                   SELECT 'utm_source' AS dimension, utm_source AS dim_value, utm_campaign,
                          count(*) AS sessions
                   FROM marts.fct_sessions
                   WHERE start_time >= $history_start AND start_time < $until
                   GROUP BY ALL
                   UNION ALL
                   SELECT 'utm_medium', utm_medium, utm_campaign, count(*)
                   FROM marts.fct_sessions
                   WHERE start_time >= $history_start AND start_time < $until
                   GROUP BY ALL)""",
            {"history_start": since - timedelta(days=28), "until": until},
        ).df()
    except duckdb.CatalogException:  # marts not built yet
        return []
    windows = []
    for row in campaigns.itertuples(index=False):
        own = shares[(shares["utm_campaign"] == row.campaign_name)
                     & (shares["share"] >= EXCLUSIVE_SHARE)]
        pairs = [f"utm_campaign={row.campaign_name}"]
        pairs += [f"{d}={v}" for d, v in zip(own["dimension"], own["dim_value"])]
        windows.append(CampaignWindow(row.campaign_name, pd.Timestamp(row.start_time),
                                      pd.Timestamp(row.end_time), tuple(pairs)))
    return windows


def suppress_outside_campaigns(scored: pd.DataFrame, windows: list[CampaignWindow]) -> int:
    """Clear the alerts of campaign cohorts at hours when their campaign is not running, in
    place; returns how many alerts were cleared. `scored` has cohort, ts and the ensemble's
    columns."""
    if scored.empty or not windows:
        return 0
    ts = pd.to_datetime(scored["ts"], utc=True)
    parts = scored["cohort"].astype(str).str.split("&")
    cleared = 0
    for window in windows:
        belongs = parts.map(lambda items, pairs=set(window.cohort_pairs): bool(pairs & set(items)))
        outside = belongs.to_numpy() & ((ts < window.start) | (ts >= window.end)).to_numpy()
        hit = outside & scored["is_anomaly"].fillna(False).astype(bool).to_numpy()
        cleared += _clear(scored, hit, (
            f"planned: campaign {window.campaign} runs {window.start:%Y-%m-%d %H:%M} .. "
            f"{window.end:%Y-%m-%d %H:%M} UTC"))
    return cleared


def _clear(scored: pd.DataFrame, hit, why: str) -> int:
    """Turn the `hit` rows' alerts off, saying why; returns how many."""
    count = int(hit.sum())
    if count:
        scored.loc[hit, "is_anomaly"] = False
        scored.loc[hit, "severity"] = 0.0
        scored.loc[hit, "detectors_fired"] = pd.Series([[] for _ in range(count)],
                                                       index=scored.index[hit])
        scored.loc[hit, "why"] = why
    return count


DQ_AFTERMATH = pd.Timedelta(hours=1)


def suppress_after_data_quality(scored: pd.DataFrame, failed: set) -> int:
    """Clear alerts in the `DQ_AFTERMATH` after a data-quality incident hour, in place."""
    if scored.empty or not failed:
        return 0
    ts = pd.to_datetime(scored["ts"], utc=True)
    bad = pd.DatetimeIndex(pd.to_datetime(sorted(failed), utc=True))
    after = pd.Series(False, index=scored.index)
    for lag in range(1, int(DQ_AFTERMATH / pd.Timedelta(hours=1)) + 1):
        after |= ts.isin(bad + pd.Timedelta(hours=lag)) & ~ts.isin(bad)
    hit = after.to_numpy() & scored["is_anomaly"].fillna(False).astype(bool).to_numpy()
    return _clear(scored, hit, "held back: the hour after a data-quality incident")


__all__ = [
    "CampaignWindow",
    "campaign_windows",
    "suppress_after_data_quality",
    "suppress_outside_campaigns",
]
