"""What people say about incidents, stored and used.

A person marks an incident `true` (a real problem), `false_alarm` or `expected` (planned
maintenance, a known campaign), from the CLI (`funnelwatch feedback`) or over HTTP (the
incident page, `funnelwatch/incidents/page.py`). DuckDB allows one writing process per file and
the pipeline holds the warehouse for minutes, so a submission never touches the warehouse:

1. `submit` writes one JSON file per submission into the spool folder
   (`FUNNELWATCH_FEEDBACK_DIR`, default `data/feedback`): written under a temporary name, then
   `os.replace`d, so a reader never sees half a file.
2. `ingest_spool(con, spool_dir)` (the pipeline's incident step each run, and the CLI at once
   when the warehouse is free) validates every pending file. A file that cannot be applied (bad
   JSON, unknown label, unknown incident) moves to `rejected/` with a `<name>.reason.txt`
   beside it: never lost. A valid one is inserted into `incidents.feedback` (idempotent by
   `feedback_id`), gets a timeline row, sets the incident's `feedback` column and, for
   `false_alarm` / `expected`, resolves the incident if it is not resolved yet; then the file
   moves to `processed/`.

The same spool carries the incident page's actions (`submit_action`: `acknowledge`,
`resolve`), applied by `ingest_spool` in submission order with the feedback: the page never
opens the warehouse either.

How feedback is used (`active_feedback` -> `FeedbackRules`, `apply_feedback`), right after
planned-change suppression in `detection.run.score_window`:

* `false_alarm` on (metric, cohort) raises that series' alert threshold from the hour after
  the incident: min severity = BASE + STEP x (false alarms in the last TTL), at most CAP.
  BASE = 50 is the ensemble's own threshold. STEP = 10, CAP = 60, chosen on the evaluation
  runs (docs/feedback.md): false alerts there score 50.4-58.8, so one false alarm (60) clears
  a repeat of any of them; the clear true incidents (stock-out, payment-provider errors, bot
  spike, 50% drops) score 65 and up, so the cap keeps feedback from ever hiding a point of
  severity >= 60 (a cap of 80 would hide a stock-out on a series with three false alarms).
  The price: a subtle true incident (half the caught ones score only 51-57) on a series with a
  false alarm in the last TTL is not shown by that series (a parent or sibling cohort may
  still show it). In the replay at a what-if threshold of 40 (many false alerts), step 10
  cut repeat false alerts 32 -> 2 and step 5 only 32 -> 24, neither hiding a true incident.
  A false alarm counts for TTL = 28 days (the detectors' history window), then drops off.
* `expected` suppresses alerts on that metric in that cohort and every cohort inside it
  (`os=iOS&browser=Safari` is inside `os=iOS`; everything is inside `all`) during the
  incident's span [started_at, last anomaly + 1 h), extended to `until` when given.
* `true` changes nothing in scoring: the incident and its members are kept as a labelled
  example (`labelled_examples`) for evaluation and training.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from funnelwatch.incidents.store import (
    FEEDBACK_LABELS,
    SCHEMA,
    add_timeline,
    ensure_incident_schema,
)

BASE_SEVERITY = 50.0  # the ensemble's alert threshold (severity = 100 raw / (1 + raw), raw > 1)
STEP = 10.0  # added to a series' threshold per false alarm
CAP = 60.0  # never higher: feedback cannot hide a point of severity >= CAP
TTL = pd.Timedelta(days=28)  # a false alarm counts this long after its incident ended
HOUR = pd.Timedelta(hours=1)
MAX_NOTE = 2000  # characters kept of a note
PROCESSED, REJECTED = "processed", "rejected"
ACTIONS = ("acknowledge", "resolve")  # what the incident page can do besides feedback
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@|=&+-]{0,199}$")


# --------------------------------------------------------------------------------------------
# Submitting: one JSON file per submission into the spool folder


def _utc(value) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _checked_texts(incident_id, note, author) -> dict:
    """A submission's or an action's incident id, note and author, checked and clipped;
    ValueError with a clear message otherwise."""
    if not isinstance(incident_id, str) or not _ID_RE.match(incident_id):
        raise ValueError(f"bad incident id {incident_id!r}")
    for name, value in (("note", note), ("author", author)):
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{name} must be a string")
    return {"note": note[:MAX_NOTE] if note else None,
            "author": author[:200] if author else None}


def validate_submission(incident_id, label, note=None, author=None, until=None) -> dict:
    """The normalised fields of a submission; ValueError with a clear message otherwise."""
    texts = _checked_texts(incident_id, note, author)
    if label not in FEEDBACK_LABELS:
        raise ValueError(f"label must be one of {', '.join(FEEDBACK_LABELS)}; got {label!r}")
    until_iso = None
    if until is not None:
        if label != "expected":
            raise ValueError("until applies only to label 'expected'")
        try:
            until_iso = _utc(until).isoformat()
        except (ValueError, TypeError) as exc:
            raise ValueError(f"until must be an ISO date/time, got {until!r}") from exc
    return {"incident_id": incident_id, "label": label, **texts, "until": until_iso}


def submit(spool_dir: str | Path, incident_id: str, label: str, *, note: str | None = None,
           author: str | None = None, until=None) -> str:
    """Queue one piece of feedback (atomic file write); returns its feedback_id."""
    fields = validate_submission(incident_id, label, note, author, until)
    now = datetime.now(UTC)
    feedback_id = f"fb-{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}"
    _spool_write(spool_dir, feedback_id,
                 {"feedback_id": feedback_id, **fields, "submitted_at": now.isoformat()})
    return feedback_id


def validate_action(incident_id, action, author=None, note=None) -> dict:
    """The normalised fields of a page action; ValueError with a clear message otherwise."""
    texts = _checked_texts(incident_id, note, author)
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {', '.join(ACTIONS)}; got {action!r}")
    return {"kind": "action", "incident_id": incident_id, "action": action, **texts}


def submit_action(spool_dir: str | Path, incident_id: str, action: str, *,
                  author: str | None = None, note: str | None = None) -> str:
    """Queue an `acknowledge` or `resolve` of an incident (atomic file write, like `submit`);
    returns its id (`act-...`). `ingest_spool` applies it."""
    fields = validate_action(incident_id, action, author, note)
    now = datetime.now(UTC)
    action_id = f"act-{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}"
    _spool_write(spool_dir, action_id,
                 {"action_id": action_id, **fields, "submitted_at": now.isoformat()})
    return action_id


def submission_status(spool_dir: str | Path, submission_id: str) -> tuple[str, str | None]:
    """Where a submission is: ('queued' | 'applied' | 'rejected' | 'unknown', reason)."""
    if not _ID_RE.match(submission_id or "") or "/" in submission_id:
        return "unknown", None
    spool = Path(spool_dir)
    name = f"{submission_id}.json"
    if (spool / name).is_file():
        return "queued", None
    if (spool / PROCESSED / name).is_file():
        return "applied", None
    reason = spool / REJECTED / f"{name}.reason.txt"
    if (spool / REJECTED / name).is_file():
        return "rejected", reason.read_text(encoding="utf-8").strip() if reason.is_file() else None
    return "unknown", None


def pending_for(spool_dir: str | Path, incident_id: str) -> list[dict]:
    """The queued (not yet applied) submissions about one incident, oldest first."""
    found = []
    for path in pending(spool_dir):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and doc.get("incident_id") == incident_id:
            found.append({"id": path.stem, "what": doc.get("action") or doc.get("label"),
                          "author": doc.get("author"), "submitted_at": doc.get("submitted_at")})
    return found


def _spool_write(spool_dir: str | Path, submission_id: str, doc: dict) -> None:
    spool = Path(spool_dir)
    spool.mkdir(parents=True, exist_ok=True)
    tmp = spool / f".{submission_id}.json.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(doc, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, spool / f"{submission_id}.json")


def pending(spool_dir: str | Path) -> list[Path]:
    """Spooled files not ingested yet, oldest first. Names are `<fb|act>-<submit second>-...`:
    sorted by that second, then by the file's write time (feedback and page actions of the
    same second keep their order: a resolve then a label is not applied the other way)."""
    spool = Path(spool_dir)
    if not spool.is_dir():
        return []
    files = [p for p in spool.glob("*.json") if p.is_file() and not p.name.startswith(".")]

    def order(path: Path) -> tuple:
        try:
            written = path.stat().st_mtime_ns
        except OSError:  # ingested meanwhile
            written = 0
        return (path.name.partition("-")[2][:15], written, path.name)

    return sorted(files, key=order)


# --------------------------------------------------------------------------------------------
# Ingesting: spool -> incidents.feedback (+ timeline, incident state)


@dataclass
class IngestResult:
    applied: int = 0
    rejected: int = 0
    duplicates: int = 0  # already in incidents.feedback (a re-ingest): moved to processed/
    errors: list[str] = field(default_factory=list)  # left in the spool, retried next time
    feedback_ids: list[str] = field(default_factory=list)  # applied in this call
    actions_applied: int = 0  # page actions (acknowledge, resolve), not counted in `applied`
    action_ids: list[str] = field(default_factory=list)


def _move(path: Path, folder: str) -> Path:
    target_dir = path.parent / folder
    target_dir.mkdir(exist_ok=True)
    target = target_dir / path.name
    os.replace(path, target)
    return target


def _reject(path: Path, reason: str) -> None:
    target = _move(path, REJECTED)
    reason_file = target.with_name(target.name + ".reason.txt")
    tmp = reason_file.with_name("." + reason_file.name + ".tmp")
    tmp.write_text(reason + "\n", encoding="utf-8")
    os.replace(tmp, reason_file)


def ingest_spool(con: duckdb.DuckDBPyConnection, spool_dir: str | Path) -> IngestResult:
    """Apply every pending spooled submission (see the module docstring). One transaction per
    file; a database error leaves the file in the spool (reported in `errors`)."""
    result = IngestResult()
    files = pending(spool_dir)
    if not files:
        return result
    ensure_incident_schema(con)
    for path in files:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(doc, dict):
                raise TypeError("not a JSON object")
            if doc.get("kind") == "action":
                _ingest_action(con, path, doc, result)
                continue
            fields = validate_submission(doc.get("incident_id"), doc.get("label"),
                                         doc.get("note"), doc.get("author"), doc.get("until"))
            feedback_id = doc.get("feedback_id") or path.stem
            if not isinstance(feedback_id, str) or not _ID_RE.match(feedback_id):
                raise ValueError(f"bad feedback id {feedback_id!r}")
            submitted_at = _utc(doc.get("submitted_at") or datetime.now(UTC))
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            _reject(path, f"invalid submission: {exc}")
            result.rejected += 1
            continue
        if con.execute(f"SELECT 1 FROM {SCHEMA}.feedback WHERE feedback_id = $f",
                       {"f": feedback_id}).fetchone():
            _move(path, PROCESSED)
            result.duplicates += 1
            continue
        incident = con.execute(
            f"SELECT metric, cohort, started_at, last_anomaly_at, state "
            f"FROM {SCHEMA}.incidents WHERE incident_id = $i", {"i": fields["incident_id"]},
        ).fetchone()
        if incident is None:
            _reject(path, f"unknown incident {fields['incident_id']!r} (no row in "
                          f"{SCHEMA}.incidents)")
            result.rejected += 1
            continue
        try:
            _apply(con, feedback_id, fields, submitted_at, incident)
        except duckdb.Error as exc:
            result.errors.append(f"{path.name}: {exc}")
            continue
        _move(path, PROCESSED)
        result.applied += 1
        result.feedback_ids.append(feedback_id)
    return result


def _ingest_action(con, path: Path, doc: dict, result: IngestResult) -> None:
    """Apply one spooled page action. Re-applying is harmless: acknowledging a non-open
    incident or resolving a resolved one changes nothing (the file still moves on)."""
    from funnelwatch.incidents.lifecycle import acknowledge

    try:
        fields = validate_action(doc.get("incident_id"), doc.get("action"), doc.get("author"),
                                 doc.get("note"))
        submitted_at = _utc(doc.get("submitted_at") or datetime.now(UTC))
    except (ValueError, TypeError) as exc:
        _reject(path, f"invalid action: {exc}")
        result.rejected += 1
        return
    inc_id, who = fields["incident_id"], fields["author"] or "someone"
    row = con.execute(f"SELECT state FROM {SCHEMA}.incidents WHERE incident_id = $i",
                      {"i": inc_id}).fetchone()
    if row is None:
        _reject(path, f"unknown incident {inc_id!r} (no row in {SCHEMA}.incidents)")
        result.rejected += 1
        return
    detail = f"by {who}" + (f": {fields['note']}" if fields["note"] else "")
    con.execute("BEGIN TRANSACTION")
    try:
        if fields["action"] == "acknowledge":
            acknowledge(con, inc_id, who, submitted_at.to_pydatetime())
        elif row[0] != "resolved":
            # Like a resolve by feedback: a resolve is worth a message, bump alert_version.
            con.execute(
                f"""UPDATE {SCHEMA}.incidents SET state = 'resolved', resolved_at = $t,
                        updated_at = now(), alert_version = coalesce(alert_version, 0) + 1
                    WHERE incident_id = $i""",
                {"t": submitted_at, "i": inc_id},
            )
            add_timeline(con, inc_id, submitted_at, "resolved", f"resolved {detail}")
        con.execute("COMMIT")
    except duckdb.Error as exc:
        con.execute("ROLLBACK")
        result.errors.append(f"{path.name}: {exc}")
        return
    _move(path, PROCESSED)
    result.actions_applied += 1
    result.action_ids.append(path.stem)


def _apply(con, feedback_id: str, fields: dict, submitted_at: pd.Timestamp, incident) -> None:
    metric, cohort, started_at, last_anomaly_at, state = incident
    now = pd.Timestamp.now(tz="UTC")
    start = _utc(started_at) if started_at is not None else submitted_at.floor("h")
    end = (_utc(last_anomaly_at) + HOUR) if last_anomaly_at is not None else start + HOUR
    if fields["until"] is not None:
        end = max(end, _utc(fields["until"]))
    label, who = fields["label"], fields["author"] or "someone"
    detail = f"{label} by {who}" + (f": {fields['note']}" if fields["note"] else "")
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(
            f"""INSERT INTO {SCHEMA}.feedback (feedback_id, incident_id, label, metric, cohort,
                    window_start, window_end, author, note, submitted_at, applied_at)
                VALUES ($f, $i, $l, $m, $c, $ws, $we, $a, $n, $s, $now)""",
            {"f": feedback_id, "i": fields["incident_id"], "l": label, "m": metric,
             "c": cohort, "ws": start, "we": end, "a": fields["author"], "n": fields["note"],
             "s": submitted_at, "now": now},
        )
        add_timeline(con, fields["incident_id"], now, "feedback", detail)
        con.execute(
            f"UPDATE {SCHEMA}.incidents SET feedback = $l, updated_at = $now "
            "WHERE incident_id = $i",
            {"l": label, "now": now, "i": fields["incident_id"]},
        )
        if label in ("false_alarm", "expected") and state != "resolved":
            # A resolve is worth a message (the store's alert_version rule): bump it.
            con.execute(
                f"""UPDATE {SCHEMA}.incidents SET state = 'resolved', resolved_at = $now,
                        alert_version = coalesce(alert_version, 0) + 1
                    WHERE incident_id = $i""",
                {"now": now, "i": fields["incident_id"]},
            )
            add_timeline(con, fields["incident_id"], now, "resolved",
                         f"resolved by feedback: {label}")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


# --------------------------------------------------------------------------------------------
# Using feedback in detection


@dataclass(frozen=True)
class FeedbackRules:
    """What feedback does to scoring. `false_alarms`: one row per false alarm (metric, cohort,
    effective_from = the hour after its incident's last anomaly). `expected`: (metric, cohort,
    window_start, window_end). `true_examples`: (incident_id, metric, cohort, window_start,
    window_end), informational."""

    false_alarms: pd.DataFrame
    expected: pd.DataFrame
    true_examples: pd.DataFrame
    base: float = BASE_SEVERITY
    step: float = STEP
    cap: float = CAP
    ttl: pd.Timedelta = TTL

    @property
    def empty(self) -> bool:
        return self.false_alarms.empty and self.expected.empty

    def threshold(self, n_false_alarms) -> np.ndarray:
        """The raised minimum severity for a series with that many active false alarms."""
        n = np.asarray(n_false_alarms, dtype=float)
        return np.where(n > 0, np.minimum(self.cap, self.base + self.step * n), self.base)

    def thresholds(self, at=None) -> pd.DataFrame:
        """Per (metric, cohort): active false alarms at `at` (default now) and the threshold."""
        at = _utc(at if at is not None else datetime.now(UTC))
        fa = self.false_alarms
        live = fa[(fa["effective_from"] <= at) & (at < fa["effective_from"] + self.ttl)]
        out = live.groupby(["metric", "cohort"]).size().rename("false_alarms").reset_index()
        out["min_severity"] = self.threshold(out["false_alarms"])
        return out


_FA_COLUMNS = ["metric", "cohort", "effective_from"]
_EXP_COLUMNS = ["metric", "cohort", "window_start", "window_end"]
_TRUE_COLUMNS = ["incident_id", "metric", "cohort", "window_start", "window_end"]


def rules_from_feedback(feedback: pd.DataFrame, **params) -> FeedbackRules:
    """Build the rules from feedback rows (label, metric, cohort, window_start, window_end;
    incident_id optional): the one place that turns labels into behaviour, used by the
    pipeline (`active_feedback`) and by the offline evaluation (`feedback_effect`)."""
    fb = feedback.copy() if feedback is not None else pd.DataFrame()
    for column in ("incident_id", "label", "metric", "cohort", "window_start", "window_end"):
        if column not in fb.columns:
            fb[column] = None
    fb = fb[fb["metric"].notna() & fb["cohort"].notna()]
    for column in ("window_start", "window_end"):
        fb[column] = pd.to_datetime(fb[column], utc=True)
    fa = fb[fb["label"] == "false_alarm"]
    false_alarms = pd.DataFrame({"metric": fa["metric"].astype(str),
                                 "cohort": fa["cohort"].astype(str),
                                 "effective_from": fa["window_end"]})[_FA_COLUMNS]
    ex = fb[fb["label"] == "expected"]
    expected = ex[_EXP_COLUMNS].reset_index(drop=True)
    true_examples = fb[fb["label"] == "true"][_TRUE_COLUMNS].reset_index(drop=True)
    return FeedbackRules(false_alarms.reset_index(drop=True), expected, true_examples, **params)


def no_feedback() -> FeedbackRules:
    return rules_from_feedback(pd.DataFrame())


def active_feedback(con: duckdb.DuckDBPyConnection, start, end, **params) -> FeedbackRules:
    """The rules that can touch hours in [start, end): false alarms that took effect before
    `end` and have not expired by `start`, expected windows overlapping it, true labels. The
    latest feedback per incident wins (someone may correct a label). No incidents schema yet ->
    no rules."""
    ttl = params.get("ttl", TTL)
    try:
        feedback = con.execute(
            f"""SELECT incident_id, label, metric, cohort, window_start, window_end
                FROM {SCHEMA}.feedback
                QUALIFY row_number() OVER (PARTITION BY incident_id
                                           ORDER BY submitted_at DESC, feedback_id DESC) = 1""",
        ).df()
    except duckdb.CatalogException:  # the incidents schema does not exist yet
        return no_feedback()
    if feedback.empty:
        return no_feedback()
    s, e = _utc(start), _utc(end)
    feedback["window_start"] = pd.to_datetime(feedback["window_start"], utc=True)
    feedback["window_end"] = pd.to_datetime(feedback["window_end"], utc=True)
    keep = (
        ((feedback["label"] == "false_alarm")
         & (feedback["window_end"] < e) & (feedback["window_end"] + ttl > s))
        | ((feedback["label"] == "expected")
           & (feedback["window_start"] < e) & (feedback["window_end"] > s))
        | (feedback["label"] == "true")
    )
    return rules_from_feedback(feedback[keep], **params)


def cohort_inside(cohort: str, outer: str) -> bool:
    """True when `cohort` is `outer` or a cohort inside it (it has all of outer's filters)."""
    def parse(key: str) -> dict:
        if not key or key == "all":
            return {}
        return dict(part.split("=", 1) for part in key.split("&") if "=" in part)

    mine = parse(cohort)
    return all(mine.get(k) == v for k, v in parse(outer).items())


def _append_why(scored: pd.DataFrame, hit: np.ndarray, reasons) -> None:
    """Append `reasons` (a string, or an array aligned with the rows) to `why` of `hit` rows."""
    if "why" not in scored.columns:
        scored["why"] = None
    add = np.full(int(hit.sum()), reasons, dtype=object) if isinstance(reasons, str) \
        else np.asarray(reasons, dtype=object)[hit]
    old = scored["why"].to_numpy(dtype=object)[hit]
    merged = [a if (o is None or (isinstance(o, float) and np.isnan(o)) or str(o) == "")
              else f"{o}; {a}" for o, a in zip(old, add)]
    scored["why"] = scored["why"].astype(object)
    scored.loc[hit, "why"] = pd.Series(merged, index=scored.index[hit], dtype=object)


def apply_feedback(scored: pd.DataFrame, rules: FeedbackRules) -> tuple[pd.DataFrame, int]:
    """Clear the alerts that feedback says are not worth a page; returns (a copy of scored,
    how many alerts were cleared; `scored` itself when there is nothing to do). `scored` has metric, cohort, ts or event_hour, severity,
    is_anomaly (why optional). Severity is kept (context); `is_anomaly` turns False and `why`
    gets the reason appended."""
    if scored.empty or rules.empty:
        return scored, 0
    out = scored.copy()
    time_col = "ts" if "ts" in out.columns else "event_hour"
    ts = pd.to_datetime(out[time_col], utc=True).reset_index(drop=True)
    flagged = out["is_anomaly"].fillna(False).astype(bool).to_numpy()
    metric = out["metric"].astype(str).to_numpy()
    cohort = out["cohort"].astype(str).to_numpy()
    severity = pd.to_numeric(out["severity"], errors="coerce").fillna(0.0).to_numpy()
    cleared_total = np.zeros(len(out), dtype=bool)

    # 1. Raised thresholds: count each flagged point's active false alarms on its own series.
    fa = rules.false_alarms
    if not fa.empty and flagged.any():
        idx = np.flatnonzero(flagged)
        points = pd.DataFrame({"row": idx, "metric": metric[idx], "cohort": cohort[idx],
                               "ts": ts.iloc[idx].reset_index(drop=True)})
        joined = points.merge(fa, on=["metric", "cohort"], how="inner")
        live = joined[(joined["effective_from"] <= joined["ts"])
                      & (joined["ts"] < joined["effective_from"] + rules.ttl)]
        if not live.empty:
            n = live.groupby("row").size()
            rows = n.index.to_numpy()
            need = rules.threshold(n.to_numpy())
            below = severity[rows] < need
            hit = np.zeros(len(out), dtype=bool)
            hit[rows[below]] = True
            if hit.any():
                reasons = np.empty(len(out), dtype=object)
                reasons[rows[below]] = [
                    f"feedback: {int(k)} false alarm(s) on this series raise its threshold "
                    f"to severity {t:.0f}" for k, t in zip(n.to_numpy()[below], need[below])]
                out.loc[hit, "is_anomaly"] = False
                _append_why(out, hit, reasons)
                cleared_total |= hit
                flagged = flagged & ~hit

    # 2. Expected windows: that metric, that cohort or one inside it, inside the window.
    if not rules.expected.empty and flagged.any():
        unique_cohorts = pd.unique(cohort[flagged])
        for rule in rules.expected.itertuples(index=False):
            inside = {c for c in unique_cohorts if cohort_inside(c, rule.cohort)}
            if not inside:
                continue
            hit = (flagged & (metric == rule.metric) & np.isin(cohort, list(inside))
                   & (ts >= rule.window_start).to_numpy() & (ts < rule.window_end).to_numpy())
            if hit.any():
                _append_why(out, hit, (
                    f"feedback: expected {rule.metric} in {rule.cohort} "
                    f"{rule.window_start:%Y-%m-%d %H:%M} .. {rule.window_end:%Y-%m-%d %H:%M} UTC"))
                out.loc[hit, "is_anomaly"] = False
                cleared_total |= hit
                flagged = flagged & ~hit
    return out, int(cleared_total.sum())


def labelled_examples(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """The incidents whose latest feedback is `true`, one row per member point (incident_id,
    event_hour, metric, cohort, severity, direction, plus the incident's title, primary metric
    and cohort, feedback window): kept for evaluation and training."""
    try:
        return con.execute(
            f"""WITH latest AS (
                    SELECT * FROM {SCHEMA}.feedback
                    QUALIFY row_number() OVER (PARTITION BY incident_id
                                               ORDER BY submitted_at DESC, feedback_id DESC) = 1)
                SELECT f.incident_id, m.event_hour, m.metric, m.cohort, m.severity, m.direction,
                       i.title, i.metric AS incident_metric, i.cohort AS incident_cohort,
                       f.window_start, f.window_end, f.feedback_id, f.author, f.note
                FROM latest f
                JOIN {SCHEMA}.incidents i USING (incident_id)
                LEFT JOIN {SCHEMA}.members m USING (incident_id)
                WHERE f.label = 'true'
                ORDER BY f.incident_id, m.event_hour, m.metric, m.cohort""",
        ).df()
    except duckdb.CatalogException:
        return pd.DataFrame(columns=["incident_id", "event_hour", "metric", "cohort", "severity",
                                     "direction", "title", "incident_metric", "incident_cohort",
                                     "window_start", "window_end", "feedback_id", "author",
                                     "note"])


def spool_status(spool_dir: str | Path) -> dict[str, int]:
    spool = Path(spool_dir)
    count = lambda p: len(list(p.glob("*.json"))) if p.is_dir() else 0
    return {"pending": len(pending(spool)), "processed": count(spool / PROCESSED),
            "rejected": count(spool / REJECTED)}


__all__ = [
    "ACTIONS",
    "BASE_SEVERITY",
    "CAP",
    "STEP",
    "TTL",
    "FeedbackRules",
    "IngestResult",
    "active_feedback",
    "apply_feedback",
    "cohort_inside",
    "ingest_spool",
    "labelled_examples",
    "no_feedback",
    "pending",
    "pending_for",
    "rules_from_feedback",
    "spool_status",
    "submission_status",
    "submit",
    "submit_action",
    "validate_action",
    "validate_submission",
]
