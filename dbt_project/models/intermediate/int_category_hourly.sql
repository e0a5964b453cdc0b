{{
    config(
        materialized='incremental',
        incremental_strategy='append',
        pre_hook="{{ delete_window_rows('event_hour') }}"
    )
}}
{#-
  Grain: event_hour x product category. Sessions that viewed / added to cart a product of
  the category within the hour. As in the session funnel, a session that added a
  category's product to the cart counts as having viewed that category (so the add-to-cart
  rate is between 0 and 1).
-#}
with events as (

    select event_hour, category, session_id, event_type
    from {{ ref('stg_clickstream__events') }}
    where event_type in ('product_view', 'add_to_cart')
      and {{ in_window('event_time') }}

)

select
    event_hour,
    category,
    count(distinct session_id) as product_view_sessions,
    count(distinct session_id) filter (where event_type = 'add_to_cart') as add_to_cart_sessions,
    {{ safe_divide(
        "count(distinct session_id) filter (where event_type = 'add_to_cart')",
        "count(distinct session_id)"
    ) }} as add_to_cart_rate
from events
group by event_hour, category
