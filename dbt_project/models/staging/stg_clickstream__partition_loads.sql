-- One row per ingest of an hour partition (hours loaded with zero events included).
select
    cast(event_hour as timestamptz) as event_hour,
    files as source_files,
    rows_in,
    rows_loaded,
    rows_quarantined,
    duplicates_dropped,
    ingested_at
from {{ source('clickstream', 'ingest_log') }}
