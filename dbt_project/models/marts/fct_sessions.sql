{{
    config(
        materialized='incremental',
        incremental_strategy='append',
        pre_hook="{{ fct_sessions_delete() }}"
    )
}}
{#-
  Grain: session, attributed to its start hour. Built from int_session_hours: a run
  recomputes every session that has a session-hour in [window_start - lookback, window_end)
  from all its session-hours, so a session that continues after its start hour is revised by
  later runs (unlike int_session_hours and fct_funnel_hourly, whose hours are final).
-#}
with touched as (

    select distinct session_id
    from {{ ref('int_session_hours') }}
    where event_hour >= {{ lookback_start() }}
      and event_hour < {{ window_end() }}

),

session_hours as (

    select session_hours.*
    from {{ ref('int_session_hours') }} as session_hours
    semi join touched on touched.session_id = session_hours.session_id

)

select
    session_id,
    min(first_event_time) as start_time,
    date_trunc('hour', min(first_event_time)) as start_hour,
    max(last_event_time) as last_event_time,
    -- cohort attributes: those of the session's first event
    arg_min(device_type, event_hour) as device_type,
    arg_min(os, event_hour) as os,
    arg_min(browser, event_hour) as browser,
    arg_min(country, event_hour) as country,
    arg_min(utm_source, event_hour) as utm_source,
    arg_min(utm_medium, event_hour) as utm_medium,
    arg_min(utm_campaign, event_hour) as utm_campaign,
    count(*) as session_hours,
    cast(sum(events) as bigint) as events,
    max(deepest_stage_rank) as deepest_stage_rank,
    {{ funnel_stage_name('max(deepest_stage_rank)') }} as deepest_stage,
    bool_or(reached_purchase) as purchased,
    cast(sum(purchases) as bigint) as purchases,
    sum(revenue) as revenue,
    cast(sum(payment_failures) as bigint) as payment_failures,
    cast(sum(js_errors) as bigint) as js_errors
from session_hours
group by session_id
