-- One row per holiday or promotion day and country ('ALL' = every country).
select
    md5(concat_ws('|', cast(holiday_date as varchar), holiday_name, country)) as holiday_id,
    holiday_date,
    holiday_name,
    country,
    kind,
    cast(holiday_date as timestamptz) as day_start,
    cast(holiday_date as timestamptz) + interval 1 day as day_end
from {{ ref('stg_reference__holidays') }}
