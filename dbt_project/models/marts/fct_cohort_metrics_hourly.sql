{{
    config(
        materialized='incremental',
        incremental_strategy='append',
        pre_hook="{{ delete_window_rows('event_hour') }}"
    )
}}
{#-
  Long format, grain: event_hour x cohort x metric, for the monitored cohorts only
  (dim_monitored_cohorts). Every monitored cohort gets every metric for every hour of the
  window (within the loaded hours): counts zero-filled, rates NULL when the denominator
  is 0, so a cohort that goes silent shows as 0 instead of disappearing.
-#}
{%- set measures = funnel_measures() -%}

with funnel as (

    select * from {{ ref('fct_funnel_hourly') }}
    where {{ in_window('event_hour') }}

),

hours as (

    {{ window_hour_spine() }}

),

monitored as (

    select cohort, cohort_dimensions
    from {{ ref('dim_monitored_cohorts') }}
    where cohort_dimensions != 'category'

),

cohort_hourly as (

    {{ cohort_rollup('funnel', measures) }}

),

filled as (

    select
        hours.event_hour,
        monitored.cohort,
        monitored.cohort_dimensions,
        {%- for m in measures %}
        coalesce(cohort_hourly.{{ m }}, 0) as {{ m }}{{ "," if not loop.last }}
        {%- endfor %}
    from monitored
    cross join hours
    left join cohort_hourly
        on cohort_hourly.cohort = monitored.cohort
        and cohort_hourly.event_hour = hours.event_hour

),

session_metrics as (

    select
        event_hour,
        cohort,
        cohort_dimensions,
        unnest([
            {%- for m in cohort_count_metrics() %}
            {
                'metric': '{{ m }}',
                'numerator': cast({{ m }} as double),
                'denominator': cast(null as double),
                'value': cast({{ m }} as double)
            },
            {%- endfor %}
            {%- for rate in funnel_rates() %}
            {
                'metric': '{{ rate.name }}',
                'numerator': cast({{ rate.numerator }} as double),
                'denominator': cast({{ rate.denominator }} as double),
                'value': {{ safe_divide(rate.numerator, rate.denominator) }}
            }{{ "," if not loop.last }}
            {%- endfor %}
        ]) as m
    from filled

)

{%- if category_is_monitored() %},

category_filled as (

    select
        hours.event_hour,
        monitored_categories.cohort,
        monitored_categories.cohort_dimensions,
        coalesce(category_hourly.product_view_sessions, 0) as product_view_sessions,
        coalesce(category_hourly.add_to_cart_sessions, 0) as add_to_cart_sessions
    from {{ ref('dim_monitored_cohorts') }} as monitored_categories
    cross join hours
    left join {{ ref('int_category_hourly') }} as category_hourly
        on 'category=' || category_hourly.category = monitored_categories.cohort
        and category_hourly.event_hour = hours.event_hour
    where monitored_categories.cohort_dimensions = 'category'

),

category_metrics as (

    select
        event_hour,
        cohort,
        cohort_dimensions,
        unnest([
            {
                'metric': 'product_view_sessions',
                'numerator': cast(product_view_sessions as double),
                'denominator': cast(null as double),
                'value': cast(product_view_sessions as double)
            },
            {
                'metric': 'add_to_cart_rate',
                'numerator': cast(add_to_cart_sessions as double),
                'denominator': cast(product_view_sessions as double),
                'value': {{ safe_divide('add_to_cart_sessions', 'product_view_sessions') }}
            }
        ]) as m
    from category_filled

)
{%- endif %}

select event_hour, m.metric, cohort, cohort_dimensions, m.numerator, m.denominator, m.value
from session_metrics

{%- if category_is_monitored() %}
union all
select event_hour, m.metric, cohort, cohort_dimensions, m.numerator, m.denominator, m.value
from category_metrics
{%- endif %}
