"""Planned changes: a campaign that ends (or has not started) takes its cohorts' traffic to
zero by design. The campaigns reference table says when each one runs; outside that time the
cohorts that belong to it (utm_campaign=X, and a utm_source / utm_medium whose sessions are
almost all campaign X) do not page anyone. A new campaign's first hours are covered by the
detectors' cold start, which counts from a series' first active hour.
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
        if hit.any():
            cleared += int(hit.sum())
            scored.loc[hit, "is_anomaly"] = False
            scored.loc[hit, "severity"] = 0.0
            scored.loc[hit, "detectors_fired"] = pd.Series([[] for _ in range(int(hit.sum()))],
                                                           index=scored.index[hit])
            scored.loc[hit, "why"] = (
                f"planned: campaign {window.campaign} runs {window.start:%Y-%m-%d %H:%M} .. "
                f"{window.end:%Y-%m-%d %H:%M} UTC"
            )
    return cleared


__all__ = ["CampaignWindow", "campaign_windows", "suppress_outside_campaigns"]
