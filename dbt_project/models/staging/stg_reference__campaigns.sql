select
    trim(campaign_name) as campaign_name,
    cast(start_time as timestamptz) as start_time,
    cast(end_time as timestamptz) as end_time,
    lower(trim(channel)) as channel
from {{ source('reference', 'campaigns') }}
