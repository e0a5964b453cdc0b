-- One row per marketing campaign run; campaign_name matches utm_campaign of sessions.
select
    md5(concat_ws('|', campaign_name, cast(start_time as varchar))) as campaign_id,
    campaign_name,
    start_time,
    end_time,
    date_trunc('hour', start_time) as start_hour,
    channel,
    epoch(end_time - start_time) / 3600.0 as duration_hours
from {{ ref('stg_reference__campaigns') }}
