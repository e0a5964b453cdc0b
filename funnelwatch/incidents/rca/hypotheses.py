"""Hypotheses: deploys, campaigns, JS errors, payment providers, bots, stock-outs, tracking."""

from __future__ import annotations

import math
from datetime import timedelta

import pandas as pd

from funnelwatch.incidents.rca.constants import (
    EVENT_STAGE,
    LEAF_DIMENSIONS,
    LOOKBACK_BEFORE,
    ONSET_DECAY_HOURS,
    SERVICE_STEPS,
    TRACKED_EVENTS,
)
from funnelwatch.incidents.rca.context import _filter_sql
from funnelwatch.incidents.rca.util import _count_z, _f, _iso, _relative
from rootcause import format_cohort


class _Hypotheses:
    # -- hypotheses ----------------------------------------------------------------------------
    def _time_score(self, at) -> float:
        """How well a change at ``at`` explains the onset: 1 for a change just before it.

        With a change-point curve: ``exp(-(S_best - S(hour of at)) / 2)`` (the log-likelihood
        lost by putting the change at ``at`` instead of the best onset), times a mild decay
        with the distance to the estimated onset (``ONSET_DECAY_HOURS``); a change after the
        first anomalous hour weighs at most half and decays by the hour. Without a curve (no
        conversion series): the distance to the onset alone."""
        if at is None:
            return 0.5
        at = pd.Timestamp(at).tz_convert("UTC").to_pydatetime()
        curve = self.change_curve
        if curve and self.change_best is not None:
            tau = pd.Timestamp(at).round("h")
            s = curve.get(tau)
            if s is None:  # before the lookback or after the last hour
                s = 0.0
            lost = max(self.change_best - s, 0.0)
            hours = (self.onset - at).total_seconds() / 3600.0
            score = math.exp(-lost / 2.0) * math.exp(-abs(hours) / ONSET_DECAY_HOURS)
            after = (at - self.start).total_seconds() / 3600.0
            if after > 0:
                score *= 0.5 * math.exp(-after)
            return score
        hours = (self.onset - at).total_seconds() / 3600.0
        if hours >= -1.0:  # before the onset (or inside its first hour)
            return math.exp(-max(hours, 0.0) / 2.0)
        return 0.5 * math.exp(hours / 1.0)  # after the onset: it cannot have started it

    def hypotheses(self, where, step, step_info) -> list[dict]:
        main = where[0] if where else None
        main_filters = main["filters"] if main else {}
        strength = min(1.0, abs(main["z"] or 0.0) / 5.0) if main else 0.3
        expl = 1.0
        if main and main.get("explanatory_power") is not None:
            expl = float(min(max(main["explanatory_power"], 0.0), 1.0))
        hyps = []
        lo = min(self.start - self.lookback, self.onset - LOOKBACK_BEFORE)
        lo, hi = min(lo, self.start - LOOKBACK_BEFORE), self.end

        deploys = self.con.execute(
            "select service, version, deploy_time, description from marts.dim_deploys "
            "where deploy_time >= ? and deploy_time < ? order by deploy_time",
            [lo, hi],
        ).fetchall()
        for service, version, at, desc in deploys:
            steps = SERVICE_STEPS.get(str(service).lower())
            if step is None or steps is None:
                match = 0.5
            else:
                match = 1.0 if step in steps else 0.2
            ts = self._time_score(at)
            score = ts * match * strength
            hyps.append(
                {
                    "kind": "deploy",
                    "ref": str(version),
                    "service": str(service),
                    "title": f"deploy {service} {version}",
                    "contribution": _f(expl * strength if match >= 1.0 and ts >= 0.3 else 0.0, 3),
                    "evidence": (
                        f"{service} {version} deployed at {pd.Timestamp(at).tz_convert('UTC'):%Y-%m-%d %H:%M} UTC, "
                        + _relative(self.onset, at)
                        + "; "
                        + (
                            f"the loss is at the {step} step, which {service} serves"
                            if match >= 1.0
                            else f"the loss is at the {step} step, which {service} does not obviously touch"
                            if step
                            else "no funnel step localised"
                        )
                        + (
                            f"; {main['cohort']} moved {main['deviation']:+.1%} (z {main['z']:.1f})"
                            if main and main.get("deviation") is not None
                            else ""
                        )
                        + (f" ({desc})" if desc else "")
                    ),
                    "at": _iso(at),
                    "_score": score,
                }
            )

        campaigns = self.con.execute(
            "select campaign_name, start_time, channel from marts.dim_campaigns "
            "where start_time >= ? and start_time < ?",
            [lo, hi],
        ).fetchall()
        for name, at, channel in campaigns:
            match = 1.0 if main_filters.get("utm_campaign") == name else 0.3
            ts = self._time_score(at)
            hyps.append(
                {
                    "kind": "campaign",
                    "ref": str(name),
                    "service": None,
                    "title": f"campaign {name} started",
                    "contribution": _f(expl * strength if match >= 1.0 else 0.0, 3),
                    "evidence": f"{channel} campaign {name} started at {pd.Timestamp(at).tz_convert('UTC'):%Y-%m-%d %H:%M} UTC"
                    + ("; the localised cohort is its traffic" if match >= 1.0 else ""),
                    "at": _iso(at),
                    "_score": ts * match * strength * 0.9,
                }
            )

        hyps += self._js_errors(main_filters, strength)
        hyps += self._provider_hyps(step)
        hyps += self._bot_hyps(main_filters)
        hyps += self._stock_hyps(step)
        hyps += self._tracking_hyps(step)

        hyps.sort(key=lambda h: -h["_score"])
        out = []
        for i, h in enumerate(hyps[:8], start=1):
            score = h.pop("_score")
            out.append({"rank": i, **h, "score": _f(score, 4)})
        return out

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
        errs = self.con.execute(sql, [s, s, s, self.hist_start, self.end, *params]).df()
        pv = self.con.execute(
            f"select count(*) filter (where event_time >= ?), count(*) filter (where event_time < ?) "
            f"from raw.events where event_type = 'page_view' and event_time >= ? and event_time < ? and {where_f}",
            [s, s, self.hist_start, self.end, *params],
        ).fetchone()
        if errs.empty or not pv or not pv[1]:
            return []
        scale = pv[0] / pv[1]
        out = []
        for _, e in errs.iterrows():
            hist_n, cur_n = float(e["hist"]), float(e["cur"])
            exp = hist_n * scale
            z = _count_z(cur_n, exp)
            new = hist_n == 0 and cur_n >= 10
            if (z >= 4 and cur_n >= 1.5 * exp + 5) or new:
                ts = self._time_score(e.first_seen) if new else 0.8
                out.append(
                    {
                        "kind": "js_error",
                        "ref": str(e.error_code),
                        "service": None,
                        "title": f"JS error {e.error_code}",
                        "contribution": _f(min(1.0, (cur_n - exp) / max(cur_n, 1.0)) * 0.5, 3),
                        "evidence": f"{int(cur_n)} {e.error_code} errors vs {exp:.0f} expected for the traffic (z {z:.1f})",
                        "at": _iso(e.first_seen),
                        "_score": min(1.0, z / 10.0) * ts * 0.8 * max(strength, 0.5),
                    }
                )
        return out

    def _provider_hyps(self, step) -> list[dict]:
        prov = self.providers
        if prov.empty:
            return []
        excess_total = prov.excess.clip(lower=0).sum()
        match = (
            1.0
            if (self.metric == "payment_failure_rate" or step in ("purchase", "payment_attempt"))
            else 0.3
        )
        out = []
        for _, p in prov.iterrows():
            lat = p.latency_ratio if p.latency_ratio == p.latency_ratio else 1.0
            if p.z < 4 and lat < 1.5:
                continue
            share = max(p.excess, 0.0) / excess_total if excess_total > 0 else 0.0
            strength = max(min(1.0, p.z / 8.0), min(1.0, (lat - 1.0)))
            out.append(
                {
                    "kind": "payment_provider",
                    "ref": str(p.provider),
                    "service": None,
                    "title": f"payment provider {p.provider} failing",
                    "contribution": _f(share, 3),
                    "evidence": (
                        f"{p.provider}: {int(p.cur_fail)} of {int(p.cur_n)} payment attempts failed "
                        f"({p.rate:.1%} vs {p.exp_rate:.1%} before, z {p.z:.1f}); latency x{lat:.1f}"
                    ),
                    "at": _iso(p.first_failure),
                    "_score": strength * match * (0.5 + 0.5 * share),
                }
            )
        return out

    def _bot_hyps(self, filters) -> list[dict]:
        """A sessions surge from few users in one campaign."""
        day = timedelta(days=1)
        # sessions per campaign: expected from the same hours of previous days (cube baseline)
        by = self.cube.groupby("utm_campaign")[["cur_sessions", "base_sessions"]].sum()
        surged = [
            str(c)
            for c, r in by.iterrows()
            if c != "(none)"
            and r.cur_sessions >= 1.5 * r.base_sessions
            and _count_z(r.cur_sessions, r.base_sessions) >= 5
        ]
        if not surged:
            return []
        sql = """
            select coalesce(utm_campaign, '(none)') as campaign,
              count(distinct session_id) filter (where event_time >= ?) as cur_s,
              count(distinct user_id) filter (where event_time >= ?) as cur_u,
              count(distinct session_id) filter (where event_time < ?) as hist_s,
              count(distinct user_id) filter (where event_time < ?) as hist_u
            from raw.events
            where event_time >= ? and event_time < ? and list_contains(?, utm_campaign)
            group by all
        """
        span_end = min(self.end, self.start + day)
        s = self.start
        df = self.con.execute(sql, [s, s, s, s, s - day, span_end, surged]).df()
        total_excess = (by.cur_sessions - by.base_sessions).clip(lower=0).sum()
        out = []
        for _, r in df.iterrows():
            if r.campaign == "(none)" or r.campaign not in by.index:
                continue
            cur, base = by.loc[r.campaign, "cur_sessions"], by.loc[r.campaign, "base_sessions"]
            spu = r.cur_s / max(r.cur_u, 1)
            hist_spu = r.hist_s / max(r.hist_u, 1)
            z = _count_z(cur, base)
            if cur < 1.5 * base or z < 5 or spu < 1.5 * hist_spu:
                continue
            share = (cur - base) / total_excess if total_excess > 0 else 0.0
            match = 1.0 if filters.get("utm_campaign") in (None, r.campaign) else 0.5
            out.append(
                {
                    "kind": "bot_traffic",
                    "ref": str(r.campaign),
                    "service": None,
                    "title": f"bot traffic on {r.campaign}",
                    "contribution": _f(min(max(share, 0.0), 1.0), 3),
                    "evidence": (
                        f"{r.campaign}: {cur:.0f} session-hours vs {base:.0f} expected (x{cur / max(base, 1):.1f}); "
                        f"{spu:.1f} sessions per user vs {hist_spu:.2f} the day before"
                    ),
                    "at": self.start.isoformat(),
                    "_score": min(1.0, z / 10.0) * match * min(1.0, spu / hist_spu / 3.0),
                }
            )
        return out

    def _stock_hyps(self, step) -> list[dict]:
        cats = self.categories
        if cats.empty:
            return []
        lost_total = cats.lost.clip(lower=0).sum()
        match = (
            1.0
            if (
                step == "add_to_cart"
                or self.metric == "add_to_cart_rate"
                or "category" in self.flagged
            )
            else 0.3
        )
        out = []
        for _, c in cats.iterrows():
            if not (c.z <= -5 and c.rate <= 0.3 * c.exp_rate and c.pv_ratio >= 0.3):
                continue
            share = max(c.lost, 0.0) / lost_total if lost_total > 0 else 0.0
            out.append(
                {
                    "kind": "stock_out",
                    "ref": str(c.category),
                    "service": None,
                    "title": f"stock-out in {c.category}",
                    "contribution": _f(share, 3),
                    "evidence": (
                        f"{c.category}: {int(c.cur_atc)} add-to-carts from {int(c.cur_pv)} product-view sessions "
                        f"({c.rate:.1%} vs {c.exp_rate:.1%} before, z {c.z:.1f}) while views continue"
                    ),
                    "at": self.start.isoformat(),
                    "_score": min(1.0, -c.z / 10.0) * match,
                }
            )
        return out

    def _tracking_hyps(self, step) -> list[dict]:
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
        ratio = {}
        for et in TRACKED_EVENTS:
            if et in df.index and df.loc[et, "hist"] > 0:
                ratio[et] = df.loc[et, "cur"] / (df.loc[et, "hist"] * scale)
        out = []
        for i, et in enumerate(TRACKED_EVENTS):
            if et not in ratio or ratio[et] >= 0.2:
                continue
            later = [e for e in TRACKED_EVENTS[i + 1 :] if ratio.get(e, 0) >= 0.5]
            if not later:
                continue
            match = 1.0 if step in (None, EVENT_STAGE[et]) else 0.5
            out.append(
                {
                    "kind": "tracking",
                    "ref": et,
                    "service": None,
                    "title": f"{et} tracking stopped",
                    "contribution": 1.0 if match >= 1.0 else 0.5,
                    "evidence": (
                        f"{et} events at {ratio[et]:.0%} of their usual share of page views while "
                        f"{', '.join(later)} continue ({ratio[later[0]]:.0%})"
                    ),
                    "at": self.start.isoformat(),
                    "_score": match,
                }
            )
        return out

    def prefer_campaign(self, where, hypotheses) -> list[dict]:
        """Bot traffic is named by its campaign, the actionable cohort, ahead of its fingerprint."""
        if not hypotheses or not where or hypotheses[0]["kind"] != "bot_traffic":
            return where
        camp = hypotheses[0]["ref"]
        if where[0]["filters"].get("utm_campaign") != camp or where[0]["filters"] == {
            "utm_campaign": camp
        }:
            return where
        filters = {**self.flagged, "utm_campaign": camp}
        df = self.inside[self.inside["utm_campaign"] == camp]
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
