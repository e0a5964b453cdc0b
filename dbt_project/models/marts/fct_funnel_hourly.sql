{{
    config(
        materialized='incremental',
        incremental_strategy='append',
        pre_hook="{{ delete_window_rows('event_hour') }}"
    )
}}
{#-
  Grain: event_hour x leaf cohort (every session attribute). Counts session-hours (see
  int_session_hours), so each hour is final once loaded. Sum the count columns to get any
  coarser cohort; recompute rates from the summed counts, never average them.
-#}
{%- set dims = leaf_dimensions() -%}

with session_hours as (

    select * from {{ ref('int_session_hours') }}
    where {{ in_window('event_hour') }}

),

counts as (

    select
        event_hour,
        {{ dims | join(', ') }},
        count(*) as sessions,
        {%- for stage in funnel_stages() %}
        count(*) filter (where {{ stage.flag }}) as {{ stage.sessions }},
        {%- endfor %}
        {%- for step in tracked_event_steps() %}
        count(*) filter (where has_{{ step }}_event) as {{ step }}_event_sessions,
        {%- endfor %}
        cast(sum(payment_attempts) as bigint) as payment_attempts,
        cast(sum(payment_failures) as bigint) as payment_failures,
        cast(sum(purchases) as bigint) as purchases,
        sum(revenue) as revenue,
        count(*) filter (where js_errors > 0) as js_error_sessions,
        cast(sum(events) as bigint) as events
    from session_hours
    group by event_hour, {{ dims | join(', ') }}

)

select
    *,
    {%- for rate in funnel_rates() %}
    {{ safe_divide(rate.numerator, rate.denominator) }} as {{ rate.name }}{{ "," if not loop.last }}
    {%- endfor %}
from counts
