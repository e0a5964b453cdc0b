"""Erasure of one person: `erase_user` removes their events everywhere they are stored, rebuilds
the marts of the hours they were in, and records the erasure in `privacy.erasures`.

Given the RAW user id, it is hashed with the ingest HMAC under every configured key (the
current one and the retired ones, see `funnelwatch.privacy.pseudonymization_keys`). Then:

1. the warehouse is opened for writing (the pipeline holding the lock -> WarehouseBusyError);
2. their sessions are found (raw.events and raw.events_quarantine rows with their user id);
3. the landing files are scanned (every landed hour, by raw user id; in the hours they were
   loaded in, also by session id, for rows without a user id) and each file that contains
   them is rewritten without their rows (temporary file + os.replace: atomic per file), so a
   re-run of an hour from landing cannot bring them back;
4. in one transaction: their rows are deleted from raw.events, raw.events_quarantine,
   intermediate.int_session_hours and marts.fct_sessions, and the erasure is recorded
   (status `rebuild_pending`);
5. the warehouse is closed and `dbt build` (a subprocess, the pipeline's own `--vars`) rebuilds
   every window of hours they had events in, so the aggregates (fct_funnel_hourly,
   fct_cohort_metrics_hourly, int_category_hourly) no longer count them; then
   dim_monitored_cohorts is rebuilt as of the newest loaded hour (what the pipeline left);
6. the record is marked `erased`, and the analyst snapshot's dates are republished.

If step 5 fails, the ids are already gone and the record says `rebuild_pending`: running the
erasure again resumes the rebuild. A second erasure of an erased person is a no-op.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb

from funnelwatch.dbt_vars import REPO_ROOT, dbt_vars_json
from funnelwatch.ingest.loader import _reader
from funnelwatch.ingest.pseudonymize import hmac_sha256_hex, hmac_sql, padded_keys
from funnelwatch.landing import event_files, landed_hours
from funnelwatch.privacy import ERASURES_TABLE, PRIVACY_SCHEMA, pseudonymization_keys
from funnelwatch.privacy.retention import newest_loaded_hour
from funnelwatch.warehouse import (
    EVENTS_TABLE,
    QUARANTINE_TABLE,
    WarehouseBusyError,  # noqa: F401 - raised by open_warehouse; callers catch it from here
    connect_when_free,
    has_table,
)

DBT_PROJECT_DIR = REPO_ROOT / "dbt_project"
SESSION_TABLES = ("intermediate.int_session_hours", "marts.fct_sessions")
CHECK_RESULTS_TABLE = "quality.check_results"
# Hours closer than this are rebuilt in one dbt invocation (each costs ~5-10 s of start-up).
MERGE_GAP_HOURS = 3

STATUS_ERASED = "erased"
STATUS_PENDING = "rebuild_pending"
STATUS_ALREADY = "already_erased"
STATUS_UNKNOWN = "unknown_user"


class ErasureError(RuntimeError):
    """The erasure could not finish (what was done and how to resume is in the message)."""


@dataclass
class ErasureRecord:
    erasure_id: str | None
    user_hashes: list[str]
    status: str
    message: str
    reason: str | None = None
    requested_at: datetime | None = None
    completed_at: datetime | None = None
    sessions: int = 0
    rows_removed: dict[str, int] = field(default_factory=dict)
    landing_files_rewritten: list[str] = field(default_factory=list)
    landing_rows_removed: int = 0
    hours_rebuilt: list[datetime] = field(default_factory=list)
    dates_republished: list[date] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.status in (STATUS_ERASED, STATUS_PENDING)


def hash_user_id(raw_user_id: str, keys: list[str]) -> list[str]:
    """The id as ingest stores it, under each key (current key first)."""
    return [hmac_sha256_hex(raw_user_id, key) for key in keys]


def open_warehouse(path: Path | str) -> duckdb.DuckDBPyConnection:
    """The warehouse for writing, waiting a little for the pipeline's lock
    (WarehouseBusyError after LOCK_WAIT_SECONDS)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no warehouse at {path}")
    return connect_when_free(path)


def ensure_privacy_schema(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {PRIVACY_SCHEMA}")
    con.execute(
        f"""CREATE TABLE IF NOT EXISTS {ERASURES_TABLE} (
          erasure_id VARCHAR PRIMARY KEY,
          user_hash VARCHAR,            -- the id hashed with the current key (never the raw id)
          user_hashes VARCHAR[],        -- the id hashed with every key tried
          status VARCHAR,               -- rebuild_pending | erased
          reason VARCHAR,
          requested_at TIMESTAMPTZ,
          completed_at TIMESTAMPTZ,
          sessions BIGINT,
          rows_removed JSON,            -- table -> rows deleted
          landing_files_rewritten BIGINT,
          landing_rows_removed BIGINT,
          hours_rebuilt TIMESTAMPTZ[])"""
    )


def _exists(con, table: str) -> bool:
    return has_table(con, table)


def _find_sessions(con, hashes: list[str]) -> list[str]:
    parts = [
        f"SELECT session_id FROM {t} WHERE list_contains($h, user_id) AND session_id IS NOT NULL"
        for t in (EVENTS_TABLE, QUARANTINE_TABLE) if _exists(con, t)
    ]
    if not parts:
        return []
    rows = con.execute(
        f"SELECT DISTINCT session_id FROM ({' UNION ALL '.join(parts)}) ORDER BY 1", {"h": hashes}
    ).fetchall()
    return [r[0] for r in rows]


def _person_tables(con) -> list[tuple[str, str, str]]:
    """(table, WHERE clause over $h user hashes / $s session hashes, hour column)."""
    out = []
    for table in (EVENTS_TABLE, QUARANTINE_TABLE):
        if _exists(con, table):
            out.append((table, "(list_contains($h, user_id) OR list_contains($s, session_id))",
                        "event_hour"))
    for table, hour in zip(SESSION_TABLES, ("event_hour", "start_hour"), strict=True):
        if _exists(con, table):
            out.append((table, "list_contains($s, session_id)", hour))
    return out


def _params(where: str, hashes: list[str], sessions: list[str]) -> dict:
    """Only the parameters the clause uses (DuckDB rejects extra ones)."""
    params = {"h": hashes, "s": sessions}
    return {k: v for k, v in params.items() if f"${k}" in where}


def _count_rows(con, hashes, sessions) -> tuple[dict[str, int], set[datetime], set[datetime]]:
    """Rows per table, the hours to rebuild (their events and session-hours) and the hours
    their rows were loaded in (events and quarantine: the landing hours to check)."""
    counts, rebuild, loaded = {}, set(), set()
    for table, where, hour in _person_tables(con):
        n, hours = con.execute(
            f"SELECT count(*), list(DISTINCT {hour}) FROM {table} WHERE {where}",
            _params(where, hashes, sessions),
        ).fetchone()
        counts[table] = n
        hours = {h for h in (hours or []) if h is not None}
        if table in (EVENTS_TABLE, "intermediate.int_session_hours"):
            rebuild |= hours
        if table in (EVENTS_TABLE, QUARANTINE_TABLE):
            loaded |= hours
    return counts, rebuild, loaded


# ---------------------------------------------------------------------------------- landing


def _file_sessions(scan, path: Path, raw_user_id: str, session_hashes: list[str],
                   keys: list[str], by_session: bool) -> set[str] | None:
    """Raw session ids of the person in one landing file (None: the file does not have them).
    By user id always; with `by_session` also rows whose hashed session id is theirs."""
    reader, params = _reader(path)
    columns = {r[0] for r in scan.execute(f"DESCRIBE SELECT * FROM {reader}", params).fetchall()}
    if "user_id" not in columns:
        return None
    sid = "CAST(session_id AS VARCHAR)" if "session_id" in columns else "CAST(NULL AS VARCHAR)"
    n, sessions = scan.execute(
        f"SELECT count(*), list(DISTINCT {sid}) FROM {reader} WHERE CAST(user_id AS VARCHAR) = $user",
        {**params, "user": raw_user_id},
    ).fetchone()
    matched = n > 0
    found = set(sessions or [])
    if by_session and session_hashes and "session_id" in columns:
        for key in keys:
            ipad, opad = padded_keys(key)
            rows = scan.execute(
                f"""SELECT raw_id FROM (SELECT DISTINCT {sid} AS raw_id FROM {reader})
                    WHERE raw_id IS NOT NULL AND list_contains($hashes, {hmac_sql('raw_id')})""",
                {**params, "hashes": session_hashes, "ipad": ipad, "opad": opad},
            ).fetchall()
            found |= {r[0] for r in rows}
            matched = matched or bool(rows)
    found.discard(None)
    return found if matched else None


def _rewrite_file(scan, path: Path, raw_user_id: str, sessions: set[str]) -> int:
    """Rewrite `path` without the person's rows (atomically); returns the rows removed. A file
    left without rows is removed."""
    tmp = path.with_name(f".{path.name}.erasure-{uuid.uuid4().hex[:8]}.tmp")
    suffix = path.suffix.lower()
    sessions_list = sorted(sessions)

    def is_theirs(user, session) -> bool:
        return (user is not None and str(user) == raw_user_id) or (
            session is not None and str(session) in sessions)

    try:
        if suffix == ".parquet":
            source = "read_parquet($path, hive_partitioning = false)"
            cols = {r[0] for r in scan.execute(f"DESCRIBE SELECT * FROM {source}",
                                              {"path": str(path)}).fetchall()}
            sid = "CAST(session_id AS VARCHAR)" if "session_id" in cols else "NULL"
            theirs = (f"(coalesce(CAST(user_id AS VARCHAR) = $user, false) "
                      f"OR coalesce(list_contains($sessions, {sid}), false))")
            params = {"path": str(path), "user": raw_user_id, "sessions": sessions_list}
            total, removed = scan.execute(
                f"SELECT count(*), count(*) FILTER (WHERE {theirs}) FROM {source}", params
            ).fetchone()
            if removed == 0:
                return 0
            if removed == total:
                path.unlink()
                return removed
            scan.execute(
                f"COPY (SELECT * FROM {source} WHERE NOT {theirs}) TO '{_sql_str(tmp)}' "
                "(FORMAT parquet, COMPRESSION zstd)",
                params,
            )
        elif suffix in (".jsonl", ".json"):
            kept, removed = [], 0
            with open(path, encoding="utf-8") as handle:
                for line in handle:
                    if line.strip():
                        row = json.loads(line)
                        if isinstance(row, dict) and is_theirs(row.get("user_id"),
                                                               row.get("session_id")):
                            removed += 1
                            continue
                    kept.append(line)
            if removed == 0:
                return 0
            if not any(line.strip() for line in kept):
                path.unlink()
                return removed
            with open(tmp, "w", encoding="utf-8") as out:
                out.writelines(kept)
        elif suffix == ".csv":
            with open(path, newline="", encoding="utf-8") as handle:
                rows = list(csv.reader(handle))
            header, body = rows[0], rows[1:]
            ui = header.index("user_id") if "user_id" in header else None
            si = header.index("session_id") if "session_id" in header else None
            kept = [r for r in body if not is_theirs(
                r[ui] if ui is not None and ui < len(r) else None,
                r[si] if si is not None and si < len(r) else None)]
            removed = len(body) - len(kept)
            if removed == 0:
                return 0
            if not kept:
                path.unlink()
                return removed
            with open(tmp, "w", newline="", encoding="utf-8") as out:
                csv.writer(out).writerows([header, *kept])
        else:
            return 0
        os.replace(tmp, path)
        return removed
    finally:
        tmp.unlink(missing_ok=True)


def _sql_str(path: Path) -> str:
    return str(path).replace("'", "''")


def scan_landing(landing_root, raw_user_id, session_hashes, keys, loaded_hours,
                 all_hours: bool = True) -> dict[Path, set[str]]:
    """Landing files holding the person: file -> their raw session ids in it."""
    hours = set(loaded_hours)
    if all_hours:
        hours |= set(landed_hours(landing_root))
    found: dict[Path, set[str]] = {}
    scan = duckdb.connect()
    try:
        scan.execute("SET TimeZone = 'UTC'")
        for hour in sorted(hours):
            for path in event_files(landing_root, hour):
                sessions = _file_sessions(scan, path, raw_user_id, session_hashes, keys,
                                          by_session=hour in loaded_hours)
                if sessions is not None:
                    found[path] = sessions
    finally:
        scan.close()
    return found


def rewrite_landing(found: dict[Path, set[str]], raw_user_id: str) -> tuple[list[str], int]:
    all_sessions = set().union(*found.values()) if found else set()
    rewritten, removed = [], 0
    scan = duckdb.connect()
    try:
        scan.execute("SET TimeZone = 'UTC'")
        for path in sorted(found):
            n = _rewrite_file(scan, path, raw_user_id, all_sessions)
            if n:
                rewritten.append(str(path))
                removed += n
    finally:
        scan.close()
    return rewritten, removed


# ---------------------------------------------------------------------------------- rebuild


def rebuild_windows(hours, max_gap_hours: int = MERGE_GAP_HOURS) -> list[tuple[datetime, datetime]]:
    """Hours -> [start, end) windows; hours less than `max_gap_hours` apart share a window."""
    windows: list[list[datetime]] = []
    for hour in sorted(set(hours)):
        if windows and hour - windows[-1][1] <= timedelta(hours=max_gap_hours - 1):
            windows[-1][1] = hour + timedelta(hours=1)
        else:
            windows.append([hour, hour + timedelta(hours=1)])
    return [(s, e) for s, e in windows]


def dbt_executable() -> str:
    candidate = Path(sys.executable).parent / "dbt"
    return str(candidate) if candidate.exists() else "dbt"


def run_dbt_build(warehouse: Path | str, start: datetime, end: datetime,
                  select: str | None = None) -> None:
    """`dbt build` of the window [start, end) on `warehouse`, as the pipeline runs it (same
    project, profile and --vars). Target and log paths are temporary: the project's own
    target/manifest.json (read by the Dagster code location) is not touched."""
    with tempfile.TemporaryDirectory(prefix="funnelwatch-erasure-dbt-") as work:
        args = [dbt_executable(), "build", "--project-dir", str(DBT_PROJECT_DIR),
                "--profiles-dir", str(DBT_PROJECT_DIR), "--target-path", f"{work}/target",
                "--log-path", f"{work}/logs", "--vars", dbt_vars_json(start, end)]
        if select:
            args += ["--select", select]
        env = {**os.environ, "FUNNELWATCH_WAREHOUSE": str(Path(warehouse).resolve()),
               "DBT_SEND_ANONYMOUS_USAGE_STATS": "false", "DO_NOT_TRACK": "1"}
        proc = subprocess.run(args, cwd=DBT_PROJECT_DIR, env=env, capture_output=True,
                              text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise ErasureError(
            f"dbt build of {start:%Y-%m-%d %H:00}..{end:%Y-%m-%d %H:00} failed "
            f"(exit {proc.returncode}):\n{tail}"
        )


# ---------------------------------------------------------------------------------- erasure


def _scrub_check_evidence(con, hashes: list[str], sessions: list[str]) -> int:
    """Data-quality evidence lists sample failing values (e.g. duplicate event_ids, which some
    producers build from the user or session id): replace the person's event ids there."""
    if not _exists(con, CHECK_RESULTS_TABLE):
        return 0
    ids: list[str] = []
    for table, where, _ in _person_tables(con):
        if table in (EVENTS_TABLE, QUARANTINE_TABLE):
            ids += [r[0] for r in con.execute(
                f"SELECT DISTINCT event_id FROM {table} WHERE {where} AND event_id IS NOT NULL",
                _params(where, hashes, sessions)).fetchall()]
    if not ids:
        return 0
    rows = con.execute(
        f"SELECT rowid, CAST(evidence AS VARCHAR) FROM {CHECK_RESULTS_TABLE} "
        "WHERE list_bool_or([contains(CAST(evidence AS VARCHAR), x) for x in $ids])",
        {"ids": sorted(set(ids))},
    ).fetchall()
    for rowid, evidence in rows:
        for event_id in ids:
            evidence = evidence.replace(event_id, "[erased]")
        con.execute(f"UPDATE {CHECK_RESULTS_TABLE} SET evidence = $e WHERE rowid = $r",
                    {"e": evidence, "r": rowid})
    return len(rows)


def _landing_hour(path: Path, landing_root) -> datetime | None:
    try:
        rel = path.parent.relative_to(Path(landing_root) / "events")
        day, hour = rel.parts
        stamp = f"{day.removeprefix('date=')}T{hour.removeprefix('hour=')}:00"
        return datetime.fromisoformat(stamp).replace(tzinfo=UTC)
    except ValueError:
        return None


def _check_keys(con, found: dict[Path, set[str]], loaded: set[datetime], landing_root) -> None:
    """The person is in landing files of hours the warehouse holds, but none of their rows
    were found there: those hours were pseudonymised with a key we were not given. Stop
    before changing anything (erasing only the landing would hide the problem)."""
    hours = {h for h in (_landing_hour(p, landing_root) for p in found) if h is not None}
    missing = sorted(h for h in hours - set(loaded) if con.execute(
        f"SELECT count(*) > 0 FROM {EVENTS_TABLE} WHERE event_hour = $h", {"h": h}
    ).fetchone()[0])
    if missing:
        listed = ", ".join(f"{h:%Y-%m-%d %H:00}" for h in missing[:5])
        raise ErasureError(
            f"the person is in the landing files of {len(missing)} loaded hour(s) ({listed}"
            f"{', ...' if len(missing) > 5 else ''}) but not in the warehouse under the "
            "configured key(s): those hours were pseudonymised with another key (add it to "
            "FUNNELWATCH_PSEUDONYMIZATION_OLD_KEYS and run again), or their files arrived after "
            "the hour was loaded (then run again with --skip-key-check). Nothing was changed."
        )


def _scrub(reason: str | None, raw_user_id: str) -> str | None:
    if reason is None:
        return None
    return reason.replace(raw_user_id, "[erased id]") if raw_user_id else reason


def _previous(con, hashes) -> list[tuple]:
    return con.execute(
        f"""SELECT erasure_id, status, requested_at, completed_at, hours_rebuilt, reason,
                   sessions, rows_removed, landing_files_rewritten, landing_rows_removed
            FROM {ERASURES_TABLE} WHERE len(list_intersect(user_hashes, $h)) > 0
            ORDER BY requested_at""",
        {"h": hashes},
    ).fetchall()


def erase_user(
    warehouse: Path | str,
    landing_root: Path | str | None,
    raw_user_id: str,
    keys: list[str] | str | None = None,
    reason: str | None = None,
    publish_dir: Path | str | None = None,
    rebuild: bool = True,
    scan_all_landing: bool = True,
    now: datetime | None = None,
    check_keys: bool = True,
) -> ErasureRecord:
    """Erase the person with this raw user id (see the module docstring).

    `warehouse` is a path, not a connection: the marts are rebuilt by dbt in a subprocess,
    which needs the file's write lock, so the function opens and closes the warehouse itself.
    `keys`: the pseudonymisation keys to try (default: current + retired keys from the
    environment). `check_keys`: stop when the person is in landing files of loaded hours but
    not in the warehouse (a missing retired key). Raises WarehouseBusyError when the pipeline holds the warehouse (nothing is
    changed) and ErasureError when the marts' rebuild fails (ids already deleted; re-run to
    resume)."""
    raw_user_id = str(raw_user_id).strip()
    if not raw_user_id:
        raise ValueError("the user id is empty")
    if keys is None:
        keys = pseudonymization_keys()
    elif isinstance(keys, str):
        keys = [keys]
    hashes = hash_user_id(raw_user_id, keys)
    now = now or datetime.now(UTC)
    reason = _scrub(reason, raw_user_id)

    con = open_warehouse(warehouse)
    try:
        previous = _previous(con, hashes) if _exists(con, ERASURES_TABLE) else []
        sessions = _find_sessions(con, hashes)
        counts, rebuild_hours, loaded = _count_rows(con, hashes, sessions)
        found = (
            scan_landing(landing_root, raw_user_id, sessions, keys, loaded, scan_all_landing)
            if landing_root is not None and Path(landing_root).is_dir() else {}
        )
        in_warehouse = sum(counts.values()) > 0
        if check_keys:
            _check_keys(con, found, loaded, landing_root)
        if not in_warehouse and not found:
            pending = [p for p in previous if p[1] == STATUS_PENDING]
            if pending and rebuild:
                record = ErasureRecord(
                    erasure_id=pending[-1][0], user_hashes=hashes, status=STATUS_PENDING,
                    message="resuming the marts rebuild of an unfinished erasure",
                    reason=pending[-1][5], requested_at=pending[-1][2],
                    sessions=pending[-1][6] or 0,
                    rows_removed=json.loads(pending[-1][7] or "{}"),
                    landing_rows_removed=pending[-1][9] or 0,
                )
                hours = list(pending[-1][4] or [])
                newest = newest_loaded_hour(con)
                con.close()
                con = None
                return _finish(warehouse, publish_dir, record, hours, newest)
            if previous:
                last = previous[-1]
                return ErasureRecord(
                    erasure_id=last[0], user_hashes=hashes, status=STATUS_ALREADY, reason=reason,
                    message=(f"already erased ({last[0]}, requested "
                             f"{last[2]:%Y-%m-%d %H:%M} UTC, status {last[1]}): nothing of this "
                             "person remains; nothing was changed"),
                )
            return ErasureRecord(
                erasure_id=None, user_hashes=hashes, status=STATUS_UNKNOWN, reason=reason,
                message=(f"no data for this user id under {len(keys)} key(s) in the warehouse "
                         "or the landing folder; nothing was changed (check the id, and that "
                         "FUNNELWATCH_PSEUDONYMIZATION_OLD_KEYS lists retired keys)"),
            )

        # Landing first (while we hold the warehouse lock, so no ingest reads a half-erased
        # hour): if anything fails later, a re-run still finds the rows in the warehouse.
        rewritten, landing_removed = rewrite_landing(found, raw_user_id)

        record = ErasureRecord(
            erasure_id=f"er-{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}", user_hashes=hashes,
            status=STATUS_PENDING if rebuild and rebuild_hours else STATUS_ERASED,
            message="", reason=reason, requested_at=now, sessions=len(sessions),
            landing_files_rewritten=rewritten, landing_rows_removed=landing_removed,
        )
        ensure_privacy_schema(con)
        con.execute("BEGIN TRANSACTION")
        try:
            scrubbed = _scrub_check_evidence(con, hashes, sessions)
            if scrubbed:
                record.rows_removed[f"{CHECK_RESULTS_TABLE} (evidence scrubbed)"] = scrubbed
            for table, where, _ in _person_tables(con):
                params = _params(where, hashes, sessions)
                n = con.execute(f"SELECT count(*) FROM {table} WHERE {where}", params).fetchone()[0]
                con.execute(f"DELETE FROM {table} WHERE {where}", params)
                record.rows_removed[table] = n
            hours = sorted(rebuild_hours)
            con.execute(
                f"INSERT INTO {ERASURES_TABLE} VALUES ($id, $hash, $hashes, $status, $reason, "
                "$at, NULL, $sessions, $rows, $files, $lrows, $hours)",
                {"id": record.erasure_id, "hash": hashes[0], "hashes": hashes,
                 "status": record.status, "reason": reason, "at": now,
                 "sessions": len(sessions), "rows": json.dumps(record.rows_removed),
                 "files": len(rewritten), "lrows": landing_removed, "hours": hours},
            )
            if record.status == STATUS_ERASED:
                con.execute(f"UPDATE {ERASURES_TABLE} SET completed_at = now() "
                            "WHERE erasure_id = $id", {"id": record.erasure_id})
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        newest = newest_loaded_hour(con)
    finally:
        if con is not None:
            con.close()

    if record.status == STATUS_ERASED:
        record.completed_at = datetime.now(UTC)
        record.message = _message(record, rebuilt=False)
        return record
    return _finish(warehouse, publish_dir, record, hours, newest)


def _finish(warehouse, publish_dir, record: ErasureRecord, hours: list[datetime],
            newest: datetime | None) -> ErasureRecord:
    """Rebuild the marts of `hours`, mark the record erased, republish the snapshot."""
    windows = rebuild_windows(hours)
    try:
        for start, end in windows:
            run_dbt_build(warehouse, start, end)
        if newest is not None and windows and windows[-1][1] != newest + timedelta(hours=1):
            # the last build computed the monitored cohorts as of its window: put back the
            # set as of the newest loaded hour, as the pipeline left it
            run_dbt_build(warehouse, newest, newest + timedelta(hours=1),
                          select="dim_monitored_cohorts")
    except ErasureError as exc:
        raise ErasureError(
            f"erasure {record.erasure_id}: the person's rows are deleted and the landing files "
            f"rewritten, but rebuilding the marts failed; run the erasure again to resume.\n{exc}"
        ) from exc
    con = open_warehouse(warehouse)
    try:
        con.execute(
            f"UPDATE {ERASURES_TABLE} SET status = $s, completed_at = now() WHERE erasure_id = $id",
            {"s": STATUS_ERASED, "id": record.erasure_id},
        )
    finally:
        con.close()
    record.status = STATUS_ERASED
    record.completed_at = datetime.now(UTC)
    record.hours_rebuilt = sorted(hours)
    if publish_dir is not None and (Path(publish_dir) / "analytics.duckdb").exists():
        from funnelwatch.publish import publish_marts

        days = sorted({h.date() for h in hours})
        publish_marts(warehouse, publish_dir, dates=days)
        record.dates_republished = days
    record.message = _message(record, rebuilt=True)
    return record


def _message(record: ErasureRecord, rebuilt: bool) -> str:
    rows = ", ".join(f"{t}: {n}" for t, n in record.rows_removed.items() if n) or "no rows"
    text = (f"erased ({record.erasure_id}): {record.sessions} session(s); warehouse rows "
            f"removed: {rows}; landing: {record.landing_rows_removed} row(s) removed from "
            f"{len(record.landing_files_rewritten)} file(s)")
    if rebuilt:
        text += f"; marts rebuilt for {len(record.hours_rebuilt)} hour(s)"
    if record.dates_republished:
        text += f"; analyst snapshot republished for {len(record.dates_republished)} day(s)"
    return text
