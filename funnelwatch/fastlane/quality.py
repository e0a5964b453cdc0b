"""The fast lane's data-quality guard: flags that a data fault explains are held back.

The hourly lane validates each loaded hour (funnelwatch/quality) and neither scores an hour
with a data-quality incident nor lets the hour after it page. The fast lane scores the
running hour before that gate has seen it, so it checks the one fault it can see in a few
minutes, and follows the gate for hours the gate has judged:

* a session field (device_type, os, browser, country) null in more than `max_null_rate` of
  the store's events over the longest window: the cohorts of that field lose their events
  with no business cause, so their flags are held back (the store-wide series are not);
* a slot in an hour with an open data-quality incident, or in the hour after one: every flag
  is held back, as the hourly lane does.

A held-back slot keeps its score and says why in `reason`; it neither opens an incident nor
counts towards an incident's recovery. Pure pandas, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from funnelwatch.detection.planned import DQ_AFTERMATH
from funnelwatch.fastlane.config import NULL_RATE_PREFIX, FastLaneConfig

HELD_BACK = "held back: "
# the hourly lane's aftermath: sessions of a broken hour carry into the next
DQ_AFTERMATH_HOURS = int(DQ_AFTERMATH / pd.Timedelta(hours=1))


def null_rates(frame: pd.DataFrame, config: FastLaneConfig) -> pd.DataFrame:
    """Per slot and session field: the null share of the store's events over the longest
    window ending with the slot (columns ts, field, events, null_rate)."""
    rows = frame[frame["metric"].str.startswith(NULL_RATE_PREFIX)]
    if rows.empty:
        return pd.DataFrame(columns=["ts", "field", "events", "null_rate"])
    rows = rows.assign(field=rows["metric"].str.removeprefix(NULL_RATE_PREFIX),
                       ts=pd.to_datetime(rows["ts"], utc=True).astype("datetime64[us, UTC]"))
    window = pd.Timedelta(minutes=config.slot_minutes * max(config.windows))
    out = []
    for field, part in rows.groupby("field", sort=True):
        sums = part.set_index("ts").sort_index()[["numerator", "denominator"]].rolling(window).sum()
        out.append(pd.DataFrame({"ts": sums.index, "field": field,
                                 "events": sums["denominator"].to_numpy(),
                                 "null_rate": (sums["numerator"] / sums["denominator"]
                                               .where(sums["denominator"] > 0)).to_numpy()}))
    return pd.concat(out, ignore_index=True)


def hold_back(scored: pd.DataFrame, frame: pd.DataFrame, config: FastLaneConfig,
              failed_hours: Iterable = ()) -> int:
    """Clear the flags of `scored` (score_frame's output) that a data fault explains, in place;
    returns how many. `frame` is the slot metrics the scores came from (null-rate rows
    included), `failed_hours` the hours with an open data-quality incident."""
    flagged = scored["is_anomaly"].fillna(False).astype(bool)
    if scored.empty or not flagged.any():
        return 0
    reasons = pd.Series("", index=scored.index, dtype=object)

    failed = pd.DatetimeIndex(pd.to_datetime(list(failed_hours), utc=True))
    if len(failed):
        hours = scored["event_hour"]
        for lag in range(DQ_AFTERMATH_HOURS + 1):
            hit = flagged & hours.isin(failed + pd.Timedelta(hours=lag)) & (reasons == "")
            reasons[hit] = (f"{HELD_BACK}data-quality incident at "
                            + (hours[hit] - pd.Timedelta(hours=lag)).dt.strftime("%H:00")
                            + (" (the hour after it)" if lag else ""))

    rates = null_rates(frame, config)
    broken = rates[(rates["null_rate"] > config.max_null_rate)
                   & (rates["events"] >= config.min_guard_events)]
    if not broken.empty:
        field_of = scored["cohort"].str.split("=", n=1).str[0]
        keyed = scored[["slot_start"]].assign(field=field_of).reset_index()
        hits = keyed.merge(broken.rename(columns={"ts": "slot_start"}),
                           on=["slot_start", "field"]).set_index("index")
        hits = hits[flagged[hits.index] & (reasons[hits.index] == "")]
        minutes = config.slot_minutes * max(config.windows)
        reasons[hits.index] = [
            f"{HELD_BACK}{field} null in {rate:.0%} of {int(events):,} events over {minutes} min "
            "(data quality)" for field, rate, events in
            zip(hits["field"], hits["null_rate"], hits["events"], strict=True)]

    hit = reasons != ""
    scored.loc[hit, "is_anomaly"] = False
    scored.loc[hit, "reason"] = reasons[hit]
    return int(hit.sum())
