"""The event contract as Markdown, with ingest's quarantine rules: the source of
`docs/event_contract.md` (`funnelwatch contract`).

It lives above both the contract and ingest's validation because it documents the two
together; the contract itself imports nothing of ingest.
"""

from __future__ import annotations

from funnelwatch.contract import EVENT_FIELDS, REFERENCE_TABLES
from funnelwatch.ingest.validation import QUARANTINE_RULES


def contract_markdown() -> str:
    """The contract as Markdown: the source of docs/event_contract.md."""
    lines = [
        "# The funnelwatch event contract",
        "",
        ("Generated from `funnelwatch/contract.py` by `funnelwatch contract`; "
        "do not edit by hand."),
        "",
        "All times are UTC with microsecond precision. Landing files live at",
        "`<landing>/events/date=YYYY-MM-DD/hour=HH/*.parquet|*.jsonl|*.csv`, one folder per",
        "event hour; ingest validates each row and quarantines the ones that break the rules",
        "below, with the reason.",
        "",
        "## Events",
        "",
        "| column | type | required | description |",
        "|---|---|---|---|",
    ]
    for f in EVENT_FIELDS:
        lines.append(f"| `{f.name}` | {f.duckdb_type} | {'yes' if f.required else ''} | {f.description} |")
    lines += ["", "## Validation rules (quarantine reasons)", ""]
    for rule in QUARANTINE_RULES:
        lines.append(f"- `{rule.reason}`: {rule.description}")
    lines += [
        ("- `duplicate_event_id` rows are not quarantined: the first copy is kept, the others "
        "are dropped and counted in the materialization metadata."),
        "",
        "## Reference data",
        "",
        "CSV files with a header row under `<landing>/reference/<table>.csv`.",
    ]
    for table in REFERENCE_TABLES:
        lines += ["", f"### `{table.name}`", "", table.description, ""]
        lines += ["| column | type | description |", "|---|---|---|"]
        lines += [f"| `{n}` | {t} | {d} |" for n, t, d in table.columns]
    return "\n".join(lines) + "\n"
