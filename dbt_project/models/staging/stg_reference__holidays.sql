select
    cast(holiday_date as date) as holiday_date,
    trim(name) as holiday_name,
    upper(trim(country)) as country,
    lower(trim(kind)) as kind
from {{ source('reference', 'holidays') }}
