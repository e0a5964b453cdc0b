-- One row per deploy of a store service; deploy_hour joins to the hourly facts.
select
    md5(concat_ws('|', cast(deploy_time as varchar), service, version)) as deploy_id,
    deploy_time,
    deploy_hour,
    service,
    version,
    description
from {{ ref('stg_reference__deploys') }}
