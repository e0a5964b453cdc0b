select
    cast(deploy_time as timestamptz) as deploy_time,
    date_trunc('hour', cast(deploy_time as timestamptz)) as deploy_hour,
    trim(service) as service,
    trim(version) as version,
    description
from {{ source('reference', 'deploys') }}
