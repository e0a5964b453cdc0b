"""The alert outbox: every notification is a row in `alerting.outbox` before any channel
sees it, and delivery works the table.

- `enqueue` adds one row per channel; UNIQUE (dedup_key, channel, action) makes a repeat a
  no-op (idempotent by dedup key).
- `deliver_due` sends the rows that are due. Success -> `sent`; a failure -> `failed` with
  the next attempt on a fixed schedule (1, 2, 4, 8 ... minutes, capped); after
  `max_attempts` attempts, or an error no retry can fix, -> `dead`. Delivery is at least
  once: a crash between sending and recording the result sends again on the next run.
- A row for a later action (acknowledge, resolve) waits while an earlier action for the same
  dedup key and channel is still pending or failed, so a resolve never overtakes its trigger.
- Rows are never deleted. `requeue` moves dead rows back to pending; `status_summary` is the
  metadata a UI shows.

The payload column holds the notification and the routed playbook, never a channel secret:
channels read those from the environment at send time. `last_error` is redacted.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import duckdb

from funnelwatch.alerting.channels import Channel, ChannelError, redact
from funnelwatch.alerting.notification import Notification

log = logging.getLogger(__name__)

SCHEMA = "alerting"
TABLE = f"{SCHEMA}.outbox"
SEQUENCE = f"{SCHEMA}.outbox_id_seq"
STATUSES = ("pending", "sent", "failed", "dead")
ACTION_ORDER = {"trigger": 0, "acknowledge": 1, "resolve": 2}

BACKOFF_BASE = timedelta(minutes=1)
BACKOFF_CAP = timedelta(hours=1)
MAX_ATTEMPTS = 8
MAX_ERROR_CHARS = 500


def ensure_outbox(con: duckdb.DuckDBPyConnection) -> None:
    """Create the schema, sequence and table if missing (idempotent)."""
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    con.execute(f"CREATE SEQUENCE IF NOT EXISTS {SEQUENCE}")
    con.execute(
        f"""CREATE TABLE IF NOT EXISTS {TABLE} (
          id BIGINT PRIMARY KEY DEFAULT nextval('{SEQUENCE}'),
          dedup_key VARCHAR NOT NULL,
          channel VARCHAR NOT NULL,
          action VARCHAR NOT NULL CHECK (action IN ('trigger', 'acknowledge', 'resolve')),
          action_order INTEGER NOT NULL,
          incident_id VARCHAR NOT NULL,
          severity DOUBLE NOT NULL,
          payload JSON NOT NULL,
          status VARCHAR NOT NULL CHECK (status IN ('pending', 'sent', 'failed', 'dead')),
          attempts INTEGER NOT NULL DEFAULT 0,
          next_attempt_at TIMESTAMPTZ NOT NULL,
          last_error VARCHAR,
          created_at TIMESTAMPTZ NOT NULL,
          updated_at TIMESTAMPTZ NOT NULL,
          sent_at TIMESTAMPTZ,
          UNIQUE (dedup_key, channel, action)
        )"""
    )


def backoff_delay(attempts: int, base: timedelta = BACKOFF_BASE,
                  cap: timedelta = BACKOFF_CAP) -> timedelta:
    """Wait after the `attempts`-th failed attempt: base * 2^(attempts-1), at most `cap`
    (1, 2, 4, 8 ... minutes by default). Deterministic: no jitter."""
    if attempts < 1:
        return timedelta(0)
    return min(base * (2 ** min(attempts - 1, 30)), cap)


def _aware(now: datetime) -> datetime:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now


def enqueue(
    con: duckdb.DuckDBPyConnection,
    notification: Notification,
    channels: Iterable[str | tuple[str, str | None]],
    now: datetime | None = None,
) -> list[int]:
    """Add a pending row per channel (a name, or a (name, playbook) pair as `route` gives),
    due at `now` (default: the current time). A (dedup_key, channel, action) already in the
    outbox is left as it is. Returns the ids of the rows added."""
    now = _aware(now) if now is not None else datetime.now(UTC)
    ensure_outbox(con)
    added: list[int] = []
    n = notification
    for item in channels:
        channel, playbook = (item, n.playbook) if isinstance(item, str) else item
        payload = json.dumps({"notification": n.to_dict(), "playbook": playbook})
        rows = con.execute(
            f"""INSERT INTO {TABLE} (dedup_key, channel, action, action_order, incident_id,
                  severity, payload, status, attempts, next_attempt_at, created_at, updated_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?)
                ON CONFLICT DO NOTHING
                RETURNING id""",
            [n.dedup_key, channel, n.action, ACTION_ORDER[n.action], n.incident_id,
             float(n.severity), payload, now, now, now],
        ).fetchall()
        added += [r[0] for r in rows]
    return added


@dataclass(frozen=True)
class Attempt:
    id: int
    channel: str
    action: str
    dedup_key: str
    status: str  # the row's status after the attempt
    attempts: int
    error: str | None = None


def _attempt(con, sender: Channel, row, now: datetime, max_attempts: int,
             base: timedelta, cap: timedelta) -> Attempt:
    """Send one outbox row and record the outcome."""
    row_id, channel, action, dedup_key, payload, attempts = row
    attempts += 1
    try:
        data = json.loads(payload)
        sender.send(Notification.from_dict(data["notification"]), data.get("playbook"))
    except Exception as exc:  # noqa: BLE001 - every failure is recorded, none is lost
        retryable = exc.retryable if isinstance(exc, ChannelError) else True
        text = str(exc) if isinstance(exc, ChannelError) else f"{type(exc).__name__}: {exc}"
        error = redact(text, sender.secrets())[:MAX_ERROR_CHARS]
        status = "dead" if attempts >= max_attempts or not retryable else "failed"
        con.execute(
            f"""UPDATE {TABLE} SET status = ?, attempts = ?, last_error = ?,
                  next_attempt_at = ?, updated_at = ? WHERE id = ?""",
            [status, attempts, error, now + backoff_delay(attempts, base, cap), now, row_id],
        )
        log.warning("alert outbox row %s (%s %s) %s after attempt %s: %s",
                    row_id, channel, action, status, attempts, error)
        return Attempt(row_id, channel, action, dedup_key, status, attempts, error)
    con.execute(
        f"""UPDATE {TABLE} SET status = 'sent', attempts = ?, sent_at = ?, updated_at = ?
            WHERE id = ?""",
        [attempts, now, now, row_id],
    )
    log.info("alert outbox row %s (%s %s) sent after %s attempt(s)",
             row_id, channel, action, attempts)
    return Attempt(row_id, channel, action, dedup_key, "sent", attempts)


def deliver_due(
    con: duckdb.DuckDBPyConnection,
    senders: Mapping[str, Channel],
    now: datetime,
    max_attempts: int = MAX_ATTEMPTS,
    limit: int = 100,
    base: timedelta = BACKOFF_BASE,
    cap: timedelta = BACKOFF_CAP,
) -> list[Attempt]:
    """Send the due rows (pending or failed, next_attempt_at <= now) whose channel has a
    sender, oldest first, and record each outcome. Rows of channels without a sender are
    left for another worker. Returns one `Attempt` per row tried."""
    _aware(now)
    ensure_outbox(con)
    if not senders:
        return []
    channel_names = list(senders)
    results: list[Attempt] = []
    tried: list[int] = []
    # Select again after each batch: a sent trigger makes its acknowledge / resolve due.
    while len(results) < limit:
        due = con.execute(
            f"""SELECT o.id, o.channel, o.action, o.dedup_key, o.payload, o.attempts
                FROM {TABLE} o
                WHERE o.status IN ('pending', 'failed')
                  AND o.next_attempt_at <= ?
                  AND list_contains(?, o.channel)
                  AND NOT list_contains(?::BIGINT[], o.id)
                  AND NOT EXISTS (
                    SELECT 1 FROM {TABLE} e
                    WHERE e.dedup_key = o.dedup_key AND e.channel = o.channel
                      AND e.action_order < o.action_order
                      AND e.status IN ('pending', 'failed'))
                ORDER BY o.next_attempt_at, o.action_order, o.id
                LIMIT ?""",
            [now, channel_names, tried, int(limit) - len(results)],
        ).fetchall()
        if not due:
            break
        for row in due:
            tried.append(row[0])
            results.append(_attempt(con, senders[row[1]], row, now, max_attempts, base, cap))
    return results


def requeue(
    con: duckdb.DuckDBPyConnection, now: datetime, ids: Iterable[int] | None = None
) -> int:
    """Move dead rows (all, or those in `ids`) back to pending, due now, attempts reset.
    Returns how many rows moved."""
    _aware(now)
    ensure_outbox(con)
    id_list = None if ids is None else [int(i) for i in ids]
    rows = con.execute(
        f"""UPDATE {TABLE} SET status = 'pending', attempts = 0, next_attempt_at = ?,
              updated_at = ?
            WHERE status = 'dead' AND (?::BIGINT[] IS NULL OR list_contains(?::BIGINT[], id))
            RETURNING id""",
        [now, now, id_list, id_list],
    ).fetchall()
    return len(rows)


def status_summary(con: duckdb.DuckDBPyConnection, now: datetime,
                   recent_dead: int = 10) -> dict:
    """What the UI shows: counts by status overall and per channel, how many are due, the
    oldest undelivered row's age, and the latest dead rows with their (redacted) errors."""
    _aware(now)
    ensure_outbox(con)
    counts = {s: 0 for s in STATUSES}
    per_channel: dict[str, dict[str, int]] = {}
    for channel, status, count in con.execute(
        f"SELECT channel, status, count(*) FROM {TABLE} GROUP BY ALL ORDER BY ALL"
    ).fetchall():
        counts[status] += count
        per_channel.setdefault(channel, {s: 0 for s in STATUSES})[status] = count
    due, oldest, last_sent = con.execute(
        f"""SELECT count(*) FILTER (WHERE status IN ('pending', 'failed')
                                     AND next_attempt_at <= ?),
                   min(created_at) FILTER (WHERE status IN ('pending', 'failed')),
                   max(sent_at)
            FROM {TABLE}""",
        [now],
    ).fetchone()
    dead = con.execute(
        f"""SELECT id, dedup_key, channel, action, attempts, last_error, updated_at
            FROM {TABLE} WHERE status = 'dead' ORDER BY updated_at DESC, id DESC LIMIT ?""",
        [int(recent_dead)],
    ).fetchall()
    return {
        "total": sum(counts.values()),
        "by_status": counts,
        "by_channel": per_channel,
        "due_now": due,
        "oldest_undelivered_age_s": (now - oldest).total_seconds() if oldest else None,
        "last_sent_at": last_sent.isoformat() if last_sent else None,
        "dead": [
            {"id": i, "dedup_key": k, "channel": c, "action": a, "attempts": n,
             "last_error": e, "updated_at": u.isoformat()}
            for i, k, c, a, n, e, u in dead
        ],
    }
