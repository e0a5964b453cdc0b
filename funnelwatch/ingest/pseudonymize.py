"""Keyed pseudonymisation of user and session ids: HMAC-SHA256, computed inside DuckDB.

HMAC(K, m) = H((K ^ opad) || H((K ^ ipad) || m)) (RFC 2104). The two padded keys are derived
in Python and passed as BLOB parameters, so the hash runs vectorised in SQL and the key never
appears in SQL text or logs. `hmac_sha256_hex` is the pure-Python reference the tests compare
against.
"""

from __future__ import annotations

import hashlib
import hmac

DEMO_KEY = "funnelwatch-DEMO-KEY-not-secret-set-FUNNELWATCH_PSEUDONYMIZATION_KEY"
_BLOCK = 64  # SHA-256 block size in bytes


def padded_keys(key: str) -> tuple[bytes, bytes]:
    """(K ^ ipad, K ^ opad) for HMAC-SHA256."""
    if not key:
        raise ValueError("the pseudonymisation key is empty")
    raw = key.encode()
    if len(raw) > _BLOCK:
        raw = hashlib.sha256(raw).digest()
    raw = raw.ljust(_BLOCK, b"\0")
    return bytes(b ^ 0x36 for b in raw), bytes(b ^ 0x5C for b in raw)


def hmac_sql(value_sql: str) -> str:
    """SQL for the hex HMAC of `value_sql` (a VARCHAR expression); needs two BLOB parameters
    bound as $ipad and $opad. NULL in, NULL out."""
    inner = f"unhex(sha256($ipad || encode({value_sql})))"
    return f"CASE WHEN {value_sql} IS NULL THEN NULL ELSE sha256($opad || {inner}) END"


def hmac_sha256_hex(value: str, key: str) -> str:
    return hmac.new(key.encode(), value.encode(), hashlib.sha256).hexdigest()
