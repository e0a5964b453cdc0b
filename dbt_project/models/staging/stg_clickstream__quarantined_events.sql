-- Rows ingest rejected, with the reason (all contract columns stay text).
select
    event_id,
    event_time as event_time_text,
    event_type,
    session_id,
    cast(event_hour as timestamptz) as event_hour,
    source_file,
    source_row,
    reason,
    quarantined_at
from {{ source('clickstream', 'events_quarantine') }}
