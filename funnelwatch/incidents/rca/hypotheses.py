"""Hypotheses: which changes can explain the localised change, ranked by how much they explain.

Every candidate (deploys, campaign starts, JS errors, payment providers, bot traffic, stock-outs,
tracking losses, planned traffic) is first checked for **compatibility** with the change:

* time: it starts before the onset and close to it (``CAUSE_WINDOW``; a change inside the
  onset's first hour, ``CAUSE_GRACE``, can have started it). An older candidate is kept only
  when nothing else is compatible and the change-point curve allows a loss starting at its
  time (``STALE_MAX_LLR_LOST``);
* cohort: it touches the localised cohort (a deploy whose service or description names a
  platform, ``PLATFORM_TOKENS``, explains a cohort only when most of its sessions are on that
  platform; a campaign explains its own cohort only);
* mechanism: it can move the step where the loss is (``SERVICE_STEPS`` for deploys,
  ``PROVIDER_STEPS`` for payment providers, add_to_cart for stock-outs, ``BOT_STEPS`` /
  ``BOT_METRICS`` for bots, the vanished event's step for tracking).

The compatible ones are ranked by ``contribution``: the share of the localised change they
explain. Incompatible ones are returned apart (``rejected``, with the reason) so a person can
see what was ruled out. When nothing is compatible the list is one entry of kind ``none``
("no known cause"): better than a wrong cause.

Signatures are causes the product names by itself from the data: bot traffic, tracking loss
(a data-quality problem, never a business one), payment provider failure, stock-out. Planned
traffic (a campaign start, a running campaign's weekly send, a holiday in the reference data)
is context: it explains a surge, and a campaign's end explains the loss of its own traffic
(``planned_context``; ``explained_by_planned``).
"""

from __future__ import annotations

import math
import re
from datetime import timedelta

import duckdb
import pandas as pd

from funnelwatch.incidents.rca.constants import (
    ADDITIVE_METRICS,
    BOT_METRICS,
    BOT_STEPS,
    CAMPAIGN_END_MEMORY,
    CAMPAIGN_LAUNCH_WINDOW,
    CAUSE_GRACE,
    CAUSE_WINDOW,
    EMAIL_CHANNEL,
    EVENT_STAGE,
    HOLIDAY_METRICS,
    LEAF_DIMENSIONS,
    LOOKBACK_BEFORE,
    MIN_COHORT_OVERLAP,
    ONSET_DECAY_HOURS,
    PLATFORM_TOKENS,
    PROVIDER_STEPS,
    SERVICE_STEPS,
    STALE_MAX_LLR_LOST,
    STOCK_OUT_MAX_ATC_RATIO,
    SURGE_RATIO,
    TRACKED_EVENTS,
    WEEKLY_MATCH,
)
from funnelwatch.incidents.rca.context import _filter_sql, deploys_between
from funnelwatch.incidents.rca.util import _count_z, _f, _iso, _relative
from rootcause import format_cohort, parse_cohort

NO_KNOWN_CAUSE = "no known cause"
MAX_HYPOTHESES = 8


def deploy_platform(service: str, description: str | None) -> dict[str, set[str]]:
    """The sessions a deploy can touch, from the words of its service name and description
    (``PLATFORM_TOKENS``): e.g. ``ios-app`` -> ``{"os": {"iOS"}}``; {} for every platform."""
    words = re.split(r"[^a-z0-9]+", f"{service} {description or ''}".lower())
    out: dict[str, set[str]] = {}
    for word in words:
        if word in PLATFORM_TOKENS:
            dim, value = PLATFORM_TOKENS[word]
            out.setdefault(dim, set()).add(value)
    return out


def _platform_text(platform: dict[str, set[str]]) -> str:
    return " / ".join(f"{d}={'|'.join(sorted(v))}" for d, v in sorted(platform.items()))


def _utc(at) -> pd.Timestamp:
    ts = pd.Timestamp(at)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _hm(at) -> str:
    return f"{_utc(at):%Y-%m-%d %H:%M} UTC"


class _Hypotheses:
    # -- time ----------------------------------------------------------------------------------
    def _fit(self, at) -> float:
        """How well the data fit a change starting at ``at``: ``exp(-(S_best - S(at)) / 2)``
        from the change-point curve of the onset estimate (the log-likelihood lost by putting
        the change there instead of at the best onset); 1 without a curve."""
        curve = self.change_curve
        if not curve or self.change_best is None or at is None:
            return 1.0
        s = curve.get(_utc(at).floor("h"), 0.0)  # before the lookback: no support
        return math.exp(-max(self.change_best - s, 0.0) / 2.0)

    def _time_score(self, at) -> float:
        """Closeness in time (tie-break between equally explaining causes): the fit times a mild
        decay with the distance to the estimated onset (``ONSET_DECAY_HOURS``)."""
        if at is None:
            return 0.5
        hours = (self.onset - _utc(at).to_pydatetime()).total_seconds() / 3600.0
        return self._fit(at) * math.exp(-abs(hours) / ONSET_DECAY_HOURS)

    def _time_check(self, at) -> tuple[str | None, bool]:
        """(why the time rules it out or None, whether it is only too old)."""
        at = _utc(at).to_pydatetime()
        window = getattr(self, "cause_window", CAUSE_WINDOW)
        if at >= self.onset + CAUSE_GRACE:
            hours = (at - self.onset).total_seconds() / 3600.0
            return f"it came {hours:.1f} h after the change began ({self.onset:%H:%M} UTC)", False
        if at < self.onset - window:
            hours = (self.onset - at).total_seconds() / 3600.0
            return (
                (f"it came {hours:.1f} h before the change began ({self.onset:%H:%M} UTC), "
                f"outside the {window.total_seconds() / 3600:.0f} h window"),
                True,
            )
        return None, False

    # -- the localised cohort ------------------------------------------------------------------
    def _cohort_rows(self, filters: dict) -> pd.DataFrame:
        df = self.inside
        for k, v in filters.items():
            if k in LEAF_DIMENSIONS:
                df = df[df[k] == v]
        return df

    def _overlap(self, filters: dict, platform: dict[str, set[str]]) -> float:
        """Share of the localised cohort's sessions in the window on ``platform``."""
        if not platform:
            return 1.0
        df = self._cohort_rows(filters)
        total = df["cur_sessions"].sum()
        if total <= 0:
            return 0.0
        hit = pd.Series(True, index=df.index)
        for dim, values in platform.items():
            hit &= df[dim].isin(values)
        return float(df.loc[hit, "cur_sessions"].sum() / total)

    def _traffic_change(self) -> bool:
        """Planned traffic explains more traffic (sessions, events, views: an additive metric
        that rose), never a conversion change: a real problem during a campaign is found."""
        return self.metric in ADDITIVE_METRICS and getattr(self, "direction", -1.0) > 0

    def _surge(self, filters: dict) -> tuple[bool, float, float]:
        """Whether the localised cohort's traffic is clearly up: (surge, sessions, baseline)."""
        df = self._cohort_rows(filters)
        cur, base = float(df["cur_sessions"].sum()), float(df["base_sessions"].sum())
        up = cur >= SURGE_RATIO * base and _count_z(cur, base) >= 3
        return up, cur, base

    # -- entry ---------------------------------------------------------------------------------
    def hypotheses(self, where, step, step_info) -> list[dict]:
        """Compatible hypotheses ranked by what they explain (see the module docstring); also
        sets ``self.rejected``, ``self.planned_context``."""
        main = where[0] if where else None
        filters = dict(main["filters"]) if main else dict(self.flagged)
        expl = 1.0
        if main and main.get("explanatory_power") is not None:
            expl = float(min(max(main["explanatory_power"], 0.0), 1.0))
        strength = min(1.0, abs(main["z"] or 0.0) / 5.0) if main else 0.3
        self.planned_context = []
        window = getattr(self, "cause_window", CAUSE_WINDOW)
        lo = min(self.onset, self.start) - max(self.lookback, window, LOOKBACK_BEFORE)
        cohort = format_cohort(filters) if filters else "all"
        surge = self._surge(filters)
        cands = []
        cands += self._deploy_hyps(lo, step, filters, cohort, expl, strength, main)
        cands += self._campaign_hyps(lo, filters, cohort, expl, strength, surge)
        cands += self._js_errors(filters, strength)
        cands += self._provider_hyps(step)
        cands += self._bot_hyps(filters, step, cohort)
        cands += self._stock_hyps(step)
        cands += self._tracking_hyps(step)
        cands += self._planned_hyps(filters, cohort, expl, surge)
        cands += self._campaign_end_hyps(filters, cohort, expl)
        return self._rank(cands, cohort, step)

    def _rank(self, cands: list[dict], cohort: str, step) -> list[dict]:
        ok = [c for c in cands if not c["_reasons"] and not c["_stale"]]
        if not ok:  # an old cause only when nothing else fits and the data allow its time
            floor = math.exp(-STALE_MAX_LLR_LOST / 2.0)
            for c in cands:
                if c["_stale"] and not c["_reasons"] and self.change_curve and (
                    self._fit(c["at"]) >= floor
                ):
                    c["evidence"] += (
                        "; older than the window, kept because nothing else fits and the "
                        "change-point curve allows a loss starting at its time"
                    )
                    c["_stale"] = False
                    ok.append(c)
        ok.sort(key=lambda c: (-(c["contribution"] or 0.0), -c["_score"]))
        ruled_out = [c for c in cands if c not in ok]
        ruled_out.sort(key=lambda c: -c["_score"])
        self.rejected = [
            {
                "kind": c["kind"],
                "ref": c["ref"],
                "title": c["title"],
                "at": c["at"],
                "reason": "; ".join(c["_reasons"] + ([c["_time"]] if c["_time"] else [])),
            }
            for c in ruled_out[:MAX_HYPOTHESES]
        ]
        out = []
        for i, c in enumerate(ok[:MAX_HYPOTHESES], start=1):
            score = c.pop("_score")
            for k in ("_reasons", "_stale", "_time"):
                c.pop(k)
            out.append({"rank": i, **c, "score": _f(score, 4)})
        if out:
            return out
        checked = ", ".join(f"{c['title']} ({r['reason']})" for c, r in zip(
            ruled_out[:3], self.rejected[:3], strict=True))
        return [
            {
                "rank": 1,
                "kind": "none",
                "ref": None,
                "service": None,
                "title": NO_KNOWN_CAUSE,
                "contribution": 0.0,
                "evidence": (
                    f"no deploy, campaign, error, provider, bot, stock or tracking signature is "
                    f"compatible with {cohort}"
                    + (f" at the {step} step" if step else "")
                    + f" since {self.onset:%Y-%m-%d %H:%M} UTC"
                    + (f"; ruled out: {checked}" if checked else "; nothing changed nearby")
                ),
                "at": None,
                "score": 0.0,
            }
        ]

    @staticmethod
    def _hyp(kind, ref, title, evidence, at, contribution, score, *, service=None, reasons=(),
             time=None, stale=False, **extra) -> dict:
        return {
            "kind": kind,
            "ref": None if ref is None else str(ref),
            "service": service,
            "title": title,
            "contribution": _f(min(max(contribution, 0.0), 1.0), 3),
            "evidence": evidence,
            "at": _iso(at) if at is not None else None,
            **extra,
            "_score": float(score),
            "_reasons": list(reasons),
            "_time": time,
            "_stale": bool(stale and not reasons),
        }

    def _with_time(self, at, reasons: list[str]) -> tuple[str | None, bool]:
        why, stale = self._time_check(at)
        if why and not stale:
            reasons.append(why)
            return None, False
        return why, stale

    # -- deploys and campaigns -----------------------------------------------------------------
    def _deploy_hyps(self, lo, step, filters, cohort, expl, strength, main) -> list[dict]:
        deploys = deploys_between(self.con, lo, self.end)
        out = []
        step_here = step or ("sessions" if self.metric in ("sessions", "events") else None)
        for service, version, at, desc in deploys:
            reasons: list[str] = []
            steps = SERVICE_STEPS.get(str(service).lower())
            if steps is not None and step_here is not None and step_here not in steps:
                reasons.append(
                    f"the change is at the {step_here} step, which {service} does not serve "
                    f"({', '.join(sorted(steps))})"
                )
            platform = deploy_platform(str(service), desc)
            overlap = self._overlap(filters, platform)
            if overlap < MIN_COHORT_OVERLAP:
                reasons.append(
                    f"it touches {_platform_text(platform)} sessions, {overlap:.0%} of {cohort}"
                )
            time_why, stale = self._with_time(at, reasons)
            known = 1.0 if steps is not None else 0.5  # what an unknown service serves is unsure
            fit = self._fit(at)
            mechanism = (
                f"the change is at the {step_here} step, which {service} serves"
                if steps is not None and step_here
                else f"what {service} serves is not configured (SERVICE_STEPS)"
                if steps is None
                else "no funnel step localised"
            )
            evidence = (
                f"{service} {version} deployed at {_hm(at)}, {_relative(self.onset, at)}; "
                + mechanism
                + (f"; it touches {_platform_text(platform)} ({overlap:.0%} of {cohort})"
                   if platform else "")
                + (f"; {main['cohort']} moved {main['deviation']:+.1%} (z {main['z']:.1f})"
                   if main and main.get("deviation") is not None else "")
                + (f" ({desc})" if desc else "")
            )
            out.append(self._hyp(
                "deploy", version, f"deploy {service} {version}", evidence, at,
                expl * overlap * fit * known, self._time_score(at) * strength * known,
                service=str(service), reasons=reasons, time=time_why, stale=stale,
            ))
        return out

    def _campaign_hyps(self, lo, filters, cohort, expl, strength, surge) -> list[dict]:
        """A campaign that started near the onset explains its own cohort: a surge of its
        traffic is planned (``planned_traffic``), a loss in it is the campaign's (``campaign``)."""
        campaigns = self.con.execute(
            "select campaign_name, start_time, end_time, channel from marts.dim_campaigns "
            "where start_time >= ? and start_time < ?",
            [lo, self.end],
        ).fetchall()
        out = []
        for name, at, end, channel in campaigns:
            reasons: list[str] = []
            if filters.get("utm_campaign") != name:
                reasons.append(f"it brings utm_campaign={name} traffic; the change is in {cohort}")
            if not reasons and self._launched_the_cohort(name, at):
                # the localised cohort is the campaign's traffic and did not exist before its
                # launch: its loss is the campaign's, however late detection saw enough of it
                time_why, stale = None, False
            else:
                time_why, stale = self._with_time(at, reasons)
            planned = surge[0] and not reasons and self._traffic_change()
            evidence = f"{channel} campaign {name} started at {_hm(at)}" + (
                f"; the localised cohort is its traffic ({surge[1]:.0f} session-hours vs "
                f"{surge[2]:.0f} expected)" if not reasons else ""
            )
            if not reasons:
                self.planned_context.append({
                    "kind": "campaign", "ref": str(name), "title": f"campaign {name}",
                    "start": _iso(at), "end": _iso(end), "explains": planned,
                })
            out.append(self._hyp(
                "planned_traffic" if planned else "campaign", name,
                f"planned traffic: campaign {name} started" if planned
                else f"campaign {name} started",
                evidence, at, expl * self._fit(at), self._time_score(at) * strength * 0.9,
                reasons=reasons, time=time_why, stale=stale,
            ))
        return out

    def _launched_the_cohort(self, name: str, at) -> bool:
        """Whether campaign ``name`` launched at ``at`` (before the onset, at most
        ``CAMPAIGN_LAUNCH_WINDOW`` before it) and had no traffic before: its cohort is new."""
        at = _utc(at).to_pydatetime()
        if not (self.onset - CAMPAIGN_LAUNCH_WINDOW <= at <= self.onset + CAUSE_GRACE):
            return False
        (before,) = self.con.execute(
            "select coalesce(sum(sessions), 0) from marts.fct_funnel_hourly "
            "where utm_campaign = ? and event_hour >= ? and event_hour < ?",
            [name, at - CAMPAIGN_LAUNCH_WINDOW, pd.Timestamp(at).floor("h")],
        ).fetchone()
        return float(before) == 0.0

    def _planned_hyps(self, filters, cohort, expl, surge) -> list[dict]:
        """Planned traffic that was running already: a campaign of the cohort whose traffic
        was as high at the same hours a week before (a weekly send the daily baseline misses),
        a holiday or promotion of the reference data on the window's days."""
        out = []
        is_surge, cur, base = surge
        is_surge = is_surge and self._traffic_change()
        name = filters.get("utm_campaign")
        if name:
            running = self.con.execute(
                "select start_time, end_time, channel from marts.dim_campaigns "
                "where campaign_name = ? and start_time <= ? and end_time > ? "
                "order by start_time desc limit 1",
                [name, self.start, self.start],
            ).fetchone()
            if running and not any(c["ref"] == name for c in self.planned_context):
                week = self._week_ago_sessions(filters)
                weekly = (
                    is_surge and week is not None and week > 0
                    and abs(cur / week - 1.0) <= WEEKLY_MATCH
                )
                # An e-mail campaign's traffic comes in sends the store makes: with no week
                # before in the warehouse to compare (a store monitored for days), a surge
                # of its own cohort is its send, not a problem (bot traffic, checked apart,
                # outranks it on its own signature).
                first_send = is_surge and week is None and str(running[2]).lower() == EMAIL_CHANNEL
                self.planned_context.append({
                    "kind": "campaign", "ref": str(name), "title": f"campaign {name}",
                    "start": _iso(running[0]), "end": _iso(running[1]),
                    "explains": weekly or first_send,
                })
                if first_send:
                    out.append(self._hyp(
                        "planned_traffic", name, f"planned traffic: {running[2]} campaign {name}",
                        f"{name} ({running[2]}) runs from {_hm(running[0])} to "
                        f"{_hm(running[1])}; {cohort} had {cur:.0f} session-hours vs {base:.0f} "
                        "expected from the previous days, and the warehouse holds no week "
                        "before to compare: a send",
                        running[0], expl * 0.8, 0.8,
                    ))
                if weekly:
                    out.append(self._hyp(
                        "planned_traffic", name, f"planned traffic: {running[2]} campaign {name}",
                        f"{name} runs from {_hm(running[0])} to {_hm(running[1])}; {cohort} had "
                        f"{cur:.0f} session-hours vs {base:.0f} expected from the previous days, "
                        f"and {week:.0f} at the same hours a week before: a weekly send",
                        running[0], expl * (1.0 - abs(cur / week - 1.0)), 0.9,
                    ))
        # a holiday moves traffic both ways (shopping peaks, quiet evenings): it explains a
        # traffic change of its country's cohorts, up or down, never a conversion change
        holiday_move = self.metric in HOLIDAY_METRICS and abs(_count_z(cur, base)) >= 3
        for hname, country, kind, day in self._holidays():
            share = 1.0 if country == "ALL" else self._overlap(filters, {"country": {country}})
            if share < MIN_COHORT_OVERLAP:
                continue
            self.planned_context.append({
                "kind": "holiday", "ref": str(hname), "title": f"{kind} {hname} ({country})",
                "start": _iso(day), "end": _iso(_utc(day) + timedelta(days=1)),
                "explains": holiday_move,
            })
            if holiday_move:
                out.append(self._hyp(
                    "planned_traffic", hname, f"planned traffic: {kind} {hname}",
                    f"{kind} {hname} ({country}) on {_utc(day):%Y-%m-%d}, {share:.0%} of {cohort}; "
                    f"{cur:.0f} session-hours vs {base:.0f} expected",
                    day, expl * share * 0.8, 0.8,
                ))
        return out

    def _campaign_end_hyps(self, filters, cohort, expl) -> list[dict]:
        """A campaign that ended is planned traffic too: it explains less traffic in its own
        cohort (an additive metric that fell, localised to the campaign) for as long as the
        baselines remember its sends (``CAMPAIGN_END_MEMORY``: the hour-of-week baseline
        looks a week back), never a conversion change."""
        name = filters.get("utm_campaign")
        if not name or self.metric not in ADDITIVE_METRICS or getattr(self, "direction", -1.0) > 0:
            return []
        ended = self.con.execute(
            "select end_time, channel from marts.dim_campaigns where campaign_name = ? "
            "and end_time <= ? and end_time >= ? order by end_time desc limit 1",
            [name, self.end, self.start - CAMPAIGN_END_MEMORY],
        ).fetchone()
        if not ended:
            return []
        at, channel = ended
        df = self._cohort_rows(filters)
        cur, base = float(df["cur_sessions"].sum()), float(df["base_sessions"].sum())
        self.planned_context.append({
            "kind": "campaign", "ref": str(name), "title": f"campaign {name}",
            "start": None, "end": _iso(at), "explains": True,
        })
        return [self._hyp(
            "planned_traffic", name, f"planned traffic: {channel} campaign {name} ended",
            f"{name} ended at {_hm(at)}; {cohort} had {cur:.0f} session-hours vs {base:.0f} "
            "expected from the days it was running",
            at, expl, 0.9,
        )]

    def _week_ago_sessions(self, filters: dict) -> float | None:
        where_f, params = _filter_sql(
            self.session_flagged | {k: v for k, v in filters.items() if k in LEAF_DIMENSIONS}
        )
        week = timedelta(days=7)
        row = self.con.execute(
            f"select sum(sessions), count(distinct event_hour) from marts.fct_funnel_hourly "
            f"where event_hour >= ? and event_hour < ? and {where_f}",
            [self.start - week, self.end - week, *params],
        ).fetchone()
        return float(row[0]) if row and row[0] is not None and row[1] else None

    def _holidays(self) -> list[tuple]:
        """Holidays and promotions whose day touches the window in some time zone of the
        world: a day in the reference data is a local day, [day - 12 h, day + 1 d + 12 h)
        in UTC (Thanksgiving evening in California is 03:00 UTC the next day)."""
        try:
            return self.con.execute(
                "select holiday_name, country, kind, day_start from marts.dim_holidays "
                "where day_start - interval 12 hour < ? and day_end + interval 12 hour > ?",
                [self.end, self.start],
            ).fetchall()
        except duckdb.CatalogException:  # a warehouse without the holidays reference
            return []

    # -- signatures ----------------------------------------------------------------------------
    def _js_errors(self, filters, strength) -> list[dict]:
        where_f, params = _filter_sql(
            self.session_flagged | {k: v for k, v in filters.items() if k in LEAF_DIMENSIONS}
        )
        sql = f"""
            select error_code,
              count(*) filter (where event_time >= ? and event_type = 'js_error') as cur,
              count(*) filter (where event_time < ? and event_type = 'js_error') as hist,
              min(event_hour) filter (where event_time >= ? and event_type = 'js_error') as first_seen
            from raw.events
            where event_time >= ? and event_time < ? and event_type = 'js_error' and {where_f}
            group by error_code
        """
        s = self.start
        key = ("js_errors", s, self.end, self.hist_start, where_f, tuple(params))
        errs, pv = self._memo(key, lambda: (
            self.con.execute(sql, [s, s, s, self.hist_start, self.end, *params]).df(),
            self.con.execute(
                "select count(*) filter (where event_time >= ?), count(*) filter (where "
                "event_time < ?) from raw.events where event_type = 'page_view' and "
                f"event_time >= ? and event_time < ? and {where_f}",
                [s, s, self.hist_start, self.end, *params],
            ).fetchone()))
        if errs.empty or not pv or not pv[1]:
            return []
        scale = pv[0] / pv[1]
        out = []
        for _, e in errs.iterrows():
            hist_n, cur_n = float(e["hist"]), float(e["cur"])
            exp = hist_n * scale
            z = _count_z(cur_n, exp)
            new = hist_n == 0 and cur_n >= 10
            if not ((z >= 4 and cur_n >= 1.5 * exp + 5) or new):
                continue
            reasons: list[str] = []
            # a new error code starts at its first occurrence; a surge of an old one has no start
            time_why, stale = self._with_time(e.first_seen, reasons) if new else (None, False)
            ts = self._time_score(e.first_seen) if new else 0.8
            out.append(self._hyp(
                "js_error", e.error_code, f"JS error {e.error_code}",
                f"{int(cur_n)} {e.error_code} errors in the cohort vs {exp:.0f} expected for the "
                f"traffic (z {z:.1f})" + (", a new error code" if new else ""),
                e.first_seen, min(1.0, (cur_n - exp) / max(cur_n, 1.0)) * 0.5,
                min(1.0, z / 10.0) * ts * 0.8 * max(strength, 0.5),
                reasons=reasons, time=time_why, stale=stale,
            ))
        return out

    def _provider_hyps(self, step) -> list[dict]:
        """Payment provider failure: one provider's failure rate (or latency) far above its own
        history; it explains failed payments / purchases, not fewer product views."""
        prov = self.providers
        if prov.empty:
            return []
        excess_total = prov.excess.clip(lower=0).sum()
        fits = self.metric == "payment_failure_rate" or step in PROVIDER_STEPS or (
            "payment_provider" in self.flagged)
        out = []
        for _, p in prov.iterrows():
            lat = p.latency_ratio if p.latency_ratio == p.latency_ratio else 1.0
            if p.z < 4 and lat < 1.5:
                continue
            share = max(p.excess, 0.0) / excess_total if excess_total > 0 else 0.0
            strength = max(min(1.0, p.z / 8.0), min(1.0, (lat - 1.0)))
            reasons = [] if fits else [
                (f"payment failures explain failed payments and purchases, not a loss at the "
                f"{step or self.metric} step")
            ]
            out.append(self._hyp(
                "payment_provider", p.provider, f"payment provider {p.provider} failing",
                f"{p.provider}: {int(p.cur_fail)} of {int(p.cur_n)} payment attempts failed "
                f"({p.rate:.1%} vs {p.exp_rate:.1%} before, z {p.z:.1f}); latency x{lat:.1f}; "
                f"{share:.0%} of the excess failures",
                p.first_failure, share, strength * (0.5 + 0.5 * share), reasons=reasons,
            ))
        return out

    def _bot_traffic_stats(self, filters: dict) -> dict | None:
        """Sessions, users and events of a session cohort in the window (at most its first day)
        and the day before; None without raw events."""
        day = timedelta(days=1)
        where_f, params = _filter_sql(filters)
        sql = f"""
            select count(distinct session_id) filter (where event_time >= ?) as cur_s,
              count(distinct user_id) filter (where event_time >= ?) as cur_u,
              count(*) filter (where event_time >= ?) as cur_e,
              count(distinct session_id) filter (where event_time < ?) as hist_s,
              count(distinct user_id) filter (where event_time < ?) as hist_u,
              count(*) filter (where event_time < ?) as hist_e
            from raw.events
            where event_time >= ? and event_time < ? and {where_f}
        """
        s = self.start
        span_end = min(self.end, self.start + day)

        def query():
            try:
                return self.con.execute(sql, [s] * 6 + [s - day, span_end, *params]).fetchone()
            except duckdb.CatalogException:  # a warehouse without raw events
                return None

        row = self._memo(("bot_stats", s, span_end, where_f, tuple(params)), query)
        if row is None:
            return None
        keys = ("cur_s", "cur_u", "cur_e", "hist_s", "hist_u", "hist_e")
        return dict(zip(keys, (float(x or 0) for x in row), strict=True)) if row else None

    def bots_cohort(self) -> dict:
        """Where the window's extra sessions are: every dimension (campaign, country, OS,
        browser, device) one value of which holds >= 80 % of the excess sessions ({} when
        nothing surged), then again inside the cohort found so far until no dimension is
        added. The second passes matter when other traffic grows beside the bots (Black
        Friday in the US under a US Windows scraper): a coarse dimension (desktop) passes
        store-wide, the one the bots share (Windows) only among the cohort's sessions."""
        inside = self.inside
        extra = (inside.cur_sessions - inside.base_sessions).clip(lower=0)
        if extra.sum() <= 0:
            return {}
        dims = ("utm_campaign", "country", "os", "browser", "device_type")
        out: dict[str, str] = {}
        rows = pd.Series(True, index=inside.index)
        while True:
            found = {}
            for dim in dims:
                if dim in out:
                    continue
                got = extra[rows].groupby(inside.loc[rows, dim]).sum()
                if got.sum() > 0 and got.max() >= 0.8 * got.sum():
                    found[dim] = str(got.idxmax())
            if not found:
                return out
            out.update(found)
            for dim, value in found.items():
                rows &= inside[dim].astype(str) == value

    def _bot_hyps(self, filters, step, cohort) -> list[dict]:
        """Bot traffic: the window's extra sessions concentrate in one cohort (``bots_cohort``)
        whose sessions surge (x1.5, z >= 5) with at least two of: few users (sessions per
        user x1.5), very short sessions (events per session x0.6 or less), no purchases
        (purchases per session halved or worse). Named by the campaign when the bots are on
        one (the actionable cohort), else by the country / device / OS / browser they share:
        one scraper behind three campaigns' landing pages is one cause."""
        found = self.bots_cohort()
        if not found:
            return []
        rows = self._cohort_rows(found)
        cur, base = float(rows.cur_sessions.sum()), float(rows.base_sessions.sum())
        if not (cur >= 1.5 * base and _count_z(cur, base) >= 5):
            return []
        signs = []
        st = self._bot_traffic_stats(found)
        if st is not None:
            spu, hist_spu = st["cur_s"] / max(st["cur_u"], 1), st["hist_s"] / max(st["hist_u"], 1)
            if spu >= 1.5 * hist_spu:
                signs.append(f"{spu:.1f} sessions per user vs {hist_spu:.2f} the day before")
            eps, hist_eps = st["cur_e"] / max(st["cur_s"], 1), st["hist_e"] / max(st["hist_s"], 1)
            if st["hist_s"] and eps <= 0.6 * hist_eps:
                signs.append(f"{eps:.1f} events per session vs {hist_eps:.1f}")
        conv = rows.cur_purchases.sum() / max(cur, 1.0)
        hist_conv = rows.hist_purchases.sum() / max(float(rows.hist_sessions.sum()), 1.0)
        if hist_conv > 0 and conv <= 0.5 * hist_conv:
            signs.append(f"{conv:.2%} of sessions purchase vs {hist_conv:.2%} before")
        if len(signs) < 2:
            return []
        name = ({"utm_campaign": found["utm_campaign"]} if "utm_campaign" in found
                else {k: v for k, v in found.items() if k != "utm_campaign"})
        bot_cohort = format_cohort(name)
        fits = step in BOT_STEPS or self.metric in BOT_METRICS or (
            step is None and self.metric in ADDITIVE_METRICS)
        local = self._cohort_rows(filters)
        local_excess = (local.cur_sessions - local.base_sessions).sum()
        in_local = self._cohort_rows({**filters, **found})
        bot_excess = (in_local.cur_sessions - in_local.base_sessions).clip(lower=0).sum()
        share = bot_excess / local_excess if local_excess > 0 else 0.0
        reasons = []
        if any(filters.get(k) not in (None, v) for k, v in found.items()):
            reasons.append(f"the bots are on {bot_cohort}; the change is in {cohort}")
        elif share < MIN_COHORT_OVERLAP:
            reasons.append(f"they add {share:.0%} of the extra sessions of {cohort}")
        if not fits:
            reasons.append(f"bots view and leave: they do not explain a loss at the {step} step")
        spread = ""
        if "utm_campaign" not in found:
            camps = rows.assign(x=(rows.cur_sessions - rows.base_sessions).clip(lower=0)
                                ).groupby("utm_campaign")["x"].sum()
            camps = camps[camps >= 0.05 * camps.sum()].sort_values(ascending=False)
            spread = f"; over {len(camps)} campaigns ({', '.join(map(str, camps.index))})"
        z = _count_z(cur, base)
        return [self._hyp(
            "bot_traffic", bot_cohort, f"bot traffic on {bot_cohort}",
            f"{format_cohort(found)}: {cur:.0f} session-hours vs {base:.0f} expected "
            f"(x{cur / max(base, 1):.1f}); " + "; ".join(signs) + spread,
            self.onset, share, min(1.0, z / 10.0) * len(signs) / 3.0,
            reasons=reasons, cohort=bot_cohort,
        )]

    def _stock_hyps(self, step) -> list[dict]:
        """Stock-out: a category's add-to-cart rate collapses while its product views continue;
        it explains fewer add-to-carts, nothing else."""
        cats = self.categories
        if cats.empty:
            return []
        lost_total = cats.lost.clip(lower=0).sum()
        fits = step == "add_to_cart" or self.metric == "add_to_cart_rate" or (
            "category" in self.flagged)
        out = []
        for _, c in cats.iterrows():
            if not (c.z <= -5 and c.rate <= 0.3 * c.exp_rate and c.pv_ratio >= 0.3
                    and c.atc_ratio <= STOCK_OUT_MAX_ATC_RATIO):
                continue
            share = max(c.lost, 0.0) / lost_total if lost_total > 0 else 0.0
            reasons = [] if fits else [
                f"a stock-out stops add-to-carts, not the {step or self.metric} step"]
            out.append(self._hyp(
                "stock_out", c.category, f"stock-out in {c.category}",
                f"{c.category}: {int(c.cur_atc)} add-to-carts from {int(c.cur_pv)} product-view "
                f"sessions ({c.rate:.1%} vs {c.exp_rate:.1%} before, z {c.z:.1f}) while views "
                f"continue ({c.pv_ratio:.0%} of their usual share)",
                self.start, share, min(1.0, -c.z / 10.0), reasons=reasons,
            ))
        return out

    def _tracking_hyps(self, step) -> list[dict]:
        """Tracking loss: one event type vanishes (< 20 % of its usual share of page views)
        while the steps next to it hold (>= 50 %). A data-quality problem, not a business one."""
        s = self.start
        df = (
            self.con.execute(
                "select event_type, count(*) filter (where event_time >= ?) as cur, "
                "count(*) filter (where event_time < ?) as hist from raw.events "
                "where event_time >= ? and event_time < ? group by event_type",
                [s, s, self.hist_start, self.end],
            )
            .df()
            .set_index("event_type")
        )
        if "page_view" not in df.index or not df.loc["page_view", "hist"]:
            return []
        scale = df.loc["page_view", "cur"] / df.loc["page_view", "hist"]
        ratio = {"page_view": 1.0}
        for et in TRACKED_EVENTS:
            if et in df.index and df.loc[et, "hist"] > 0:
                ratio[et] = df.loc[et, "cur"] / (df.loc[et, "hist"] * scale)
        order = ("page_view", *TRACKED_EVENTS)
        out = []
        for i, et in enumerate(TRACKED_EVENTS, start=1):
            if et not in ratio or ratio[et] >= 0.2:
                continue
            before = next((e for e in reversed(order[:i]) if e in ratio), None)
            later = [e for e in order[i + 1:] if ratio.get(e, 0) >= 0.5]
            if not later or before is None or ratio[before] < 0.5:
                continue
            stage = EVENT_STAGE[et]
            reasons = [] if step in (None, stage) else [
                f"{et} events vanished, but the loss is at the {step} step"]
            out.append(self._hyp(
                "tracking", et, f"tracking loss: {et} events (data quality)",
                f"{et} events at {ratio[et]:.0%} of their usual share of page views while "
                f"{before} ({ratio[before]:.0%}) and {', '.join(later)} ({ratio[later[0]]:.0%}) "
                "hold: the events are not recorded, customers still go through the step",
                self.start, 1.0 - ratio[et], 1.0, reasons=reasons, data_quality=True,
            ))
        return out

    def prefer_campaign(self, where, hypotheses) -> list[dict]:
        """Bot traffic is named by its own cohort (its campaign when on one, the actionable
        cohort), ahead of its fingerprint, and that cohort is the where: not narrowed to the
        series that flagged it (the bots are US Linux Chrome on fb_retarget; what the on-call
        person blocks or asks the campaign owner about is fb_retarget)."""
        if not hypotheses or not where or hypotheses[0]["kind"] != "bot_traffic":
            return where
        bots = parse_cohort(hypotheses[0]["cohort"])
        if where[0]["filters"] == bots:
            return where
        filters = dict(bots)
        df = self._cohort_rows(bots)
        cur, base = df.cur_sessions.sum(), df.base_sessions.sum()
        row = {
            "rank": 1,
            "cohort": format_cohort(filters),
            "filters": filters,
            "step": where[0]["step"],
            "score": where[0]["score"],
            "z": _f(_count_z(cur, base), 3),
            "actual": _f(cur),
            "expected": _f(base),
            "deviation": _f(cur / base - 1) if base else None,
            "root_cause": True,
            "explanatory_power": None,
        }
        rest = [w for w in where if w["cohort"] != row["cohort"]][:2]
        for i, w in enumerate(rest, start=2):
            w["rank"] = i
        return [row, *rest]
