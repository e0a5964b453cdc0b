{{
    config(
        materialized='incremental',
        incremental_strategy='append',
        pre_hook="{{ delete_window_rows('event_hour') }}"
    )
}}
{#-
  Grain: session_id x event_hour, for every hour in which the session has at least one
  event (a "session-hour"). The funnel flags are cumulative within the session: the stages
  reached by the end of that hour. A session's state at hour h is built from its events in
  [h - session_lookback_hours, h + 1 hour): the same horizon a windowed run can see (it
  reads events from window_start - session_lookback_hours), so an hourly run and a full
  rebuild give identical rows.
-#}
{%- set lookback = var('session_lookback_hours') | int -%}

with events as (

    select
        session_id,
        event_id,
        event_time,
        event_hour,
        event_type,
        payment_status,
        order_id,
        revenue,
        {{ funnel_stage_rank('event_type', 'checkout_step') }} as stage_rank,
        device_type, os, browser, country, utm_source, utm_medium, utm_campaign
    from {{ ref('stg_clickstream__events') }}
    where event_time >= {{ lookback_start() }}
      and event_time < {{ window_end() }}

),

orders as (

    -- an order counts once per session-hour, whatever the number of purchase events
    select session_id, event_hour, order_id, max(revenue) as revenue
    from events
    where event_type = 'purchase' and order_id is not null
    group by session_id, event_hour, order_id

),

order_totals as (

    select session_id, event_hour, count(*) as purchases, coalesce(sum(revenue), 0) as revenue
    from orders
    group by session_id, event_hour

),

hourly as (

    select
        session_id,
        event_hour,
        -- the hour's first event, with its attributes (ties broken by event_id)
        min({
            'event_time': event_time,
            'event_id': event_id,
            'device_type': device_type,
            'os': os,
            'browser': browser,
            'country': country,
            'utm_source': utm_source,
            'utm_medium': utm_medium,
            'utm_campaign': utm_campaign
        }) as first_event,
        max(event_time) as last_event_time,
        max(stage_rank) as hour_stage_rank,
        count(*) as events,
        count(*) filter (where event_type = 'payment_attempt') as payment_attempts,
        count(*) filter (
            where event_type = 'payment_attempt' and payment_status = 'failure'
        ) as payment_failures,
        count(*) filter (where event_type = 'js_error') as js_errors,
        {%- for step in tracked_event_steps() %}
        bool_or(event_type = '{{ step }}') as hour_has_{{ step }}_event{{ "," if not loop.last }}
        {%- endfor %}
    from events
    group by session_id, event_hour

),

cumulative as (

    select
        hourly.*,
        -- first row of the frame = the session's earliest hour within the horizon
        first_value(first_event) over session_so_far as session_first_event,
        max(hour_stage_rank) over session_so_far as stage_rank,
        {%- for step in tracked_event_steps() %}
        bool_or(hour_has_{{ step }}_event) over session_so_far as has_{{ step }}_event{{ "," if not loop.last }}
        {%- endfor %}
    from hourly
    window session_so_far as (
        partition by session_id
        order by event_hour
        range between interval {{ lookback }} hour preceding and current row
    )

)

select
    cumulative.session_id,
    cumulative.event_hour,
    session_first_event.event_time as session_start_time,
    session_first_event.device_type as device_type,
    session_first_event.os as os,
    session_first_event.browser as browser,
    session_first_event.country as country,
    session_first_event.utm_source as utm_source,
    session_first_event.utm_medium as utm_medium,
    session_first_event.utm_campaign as utm_campaign,
    stage_rank as deepest_stage_rank,
    {{ funnel_stage_name('stage_rank') }} as deepest_stage,
    {%- for stage in funnel_stages() %}
    stage_rank >= {{ stage.rank }} as {{ stage.flag }},
    {%- endfor %}
    {%- for step in tracked_event_steps() %}
    -- the step's own event seen: reached_<step> is also true for a session that skipped it
    has_{{ step }}_event,
    {%- endfor %}
    first_event.event_time as first_event_time,
    last_event_time,
    events,
    payment_attempts,
    payment_failures,
    coalesce(order_totals.purchases, 0) as purchases,
    coalesce(order_totals.revenue, 0) as revenue,
    js_errors
from cumulative
left join order_totals
    on order_totals.session_id = cumulative.session_id
    and order_totals.event_hour = cumulative.event_hour
where {{ in_window('cumulative.event_hour') }}
