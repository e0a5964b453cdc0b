{#-
  The monitored cohorts, rebuilt every run: every cohort of a configured dimension set whose
  average sessions per hour over the trailing monitor_window_days ending at window_end is
  >= cohort_min_sessions_per_hour, plus the overall store (`all`) always. The trailing
  window ends at window_end or after the last loaded hour, whichever is earlier, and starts
  no earlier than the first loaded hour (so the first days of a warehouse are averaged over
  the hours that exist). Category cohorts are measured in product-view sessions.
-#}
with bounds as (

    select
        least({{ window_end() }}, last_hour + interval 1 hour) as trailing_end,
        greatest(
            least({{ window_end() }}, last_hour + interval 1 hour)
                - interval {{ var('monitor_window_days') | int }} day,
            first_hour
        ) as trailing_start
    from ({{ loaded_hours_bounds() }}) as loaded

),

trailing_hours as (

    select
        trailing_start,
        trailing_end,
        greatest(epoch(trailing_end) - epoch(trailing_start), 3600) / 3600.0 as n_hours
    from bounds

),

funnel as (

    select funnel.*
    from {{ ref('fct_funnel_hourly') }} as funnel, trailing_hours
    where funnel.event_hour >= trailing_hours.trailing_start
      and funnel.event_hour < trailing_hours.trailing_end

),

cohort_sessions as (

    select cohort, cohort_dimensions, sum(sessions) as sessions
    from ({{ cohort_rollup('funnel', ['sessions']) }}) as rolled
    group by cohort, cohort_dimensions

    {%- if category_is_monitored() %}
    union all
    select 'category=' || category, 'category', sum(product_view_sessions)
    from {{ ref('int_category_hourly') }} as category_hourly, trailing_hours
    where category_hourly.event_hour >= trailing_hours.trailing_start
      and category_hourly.event_hour < trailing_hours.trailing_end
    group by category
    {%- endif %}

),

averaged as (

    select
        cohort,
        cohort_dimensions,
        cast(sessions as double) / trailing_hours.n_hours as avg_sessions_per_hour
    from cohort_sessions, trailing_hours

),

overall as (

    select 'all' as cohort, '' as cohort_dimensions, coalesce(max(avg_sessions_per_hour), 0.0) as avg_sessions_per_hour
    from averaged
    where cohort = 'all'

)

select cohort, cohort_dimensions, avg_sessions_per_hour
from overall

union all

select cohort, cohort_dimensions, avg_sessions_per_hour
from averaged
where cohort != 'all'
  and avg_sessions_per_hour >= {{ var('cohort_min_sessions_per_hour') }}
