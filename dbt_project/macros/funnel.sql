{#-
  The funnel, in order. A session-hour "reached" a stage when the deepest stage the session
  has reached so far is at least that stage (so stage counts never increase down the
  funnel and every step rate is between 0 and 1). rank 0 = a session with no funnel event.
-#}
{% macro funnel_stages() -%}
    {{ return([
        {'rank': 1, 'name': 'product_view', 'flag': 'reached_product_view', 'sessions': 'product_view_sessions'},
        {'rank': 2, 'name': 'add_to_cart', 'flag': 'reached_add_to_cart', 'sessions': 'add_to_cart_sessions'},
        {'rank': 3, 'name': 'checkout_start', 'flag': 'reached_checkout_start', 'sessions': 'checkout_start_sessions'},
        {'rank': 4, 'name': 'shipping_step', 'flag': 'reached_shipping_step', 'sessions': 'shipping_step_sessions'},
        {'rank': 5, 'name': 'payment_step', 'flag': 'reached_payment_step', 'sessions': 'payment_step_sessions'},
        {'rank': 6, 'name': 'review_step', 'flag': 'reached_review_step', 'sessions': 'review_step_sessions'},
        {'rank': 7, 'name': 'payment_attempt', 'flag': 'reached_payment_attempt', 'sessions': 'payment_attempt_sessions'},
        {'rank': 8, 'name': 'purchase', 'flag': 'reached_purchase', 'sessions': 'purchase_sessions'},
    ]) }}
{%- endmacro %}

{#-
  Stages whose own event is also counted ("seen"), beside "reached": a session that checked
  out without an add_to_cart event reached add_to_cart but never sent it. The gap between the
  two counts is how tracking loss shows in the marts (funnelwatch/quality/tracking.py checks
  the same steps).
-#}
{% macro tracked_event_steps() -%}
    {{ return(['product_view', 'add_to_cart', 'checkout_start']) }}
{%- endmacro %}

{#- Stage rank of one event. -#}
{% macro funnel_stage_rank(event_type, checkout_step) -%}
    case {{ event_type }}
        when 'product_view' then 1
        when 'add_to_cart' then 2
        when 'checkout_start' then 3
        when 'checkout_step' then case {{ checkout_step }}
            when 'shipping' then 4 when 'payment' then 5 when 'review' then 6 else 3 end
        when 'payment_attempt' then 7
        when 'purchase' then 8
        else 0
    end
{%- endmacro %}

{% macro funnel_stage_name(rank) -%}
    case {{ rank }}
    {%- for stage in funnel_stages() %}
        when {{ stage.rank }} then '{{ stage.name }}'
    {%- endfor %}
        else 'session'
    end
{%- endmacro %}

{#-
  The step rates of fct_funnel_hourly and fct_cohort_metrics_hourly:
  name = numerator / denominator, NULL when the denominator is 0.
-#}
{% macro funnel_rates() -%}
    {{ return([
        {'name': 'product_view_rate', 'numerator': 'product_view_sessions', 'denominator': 'sessions'},
        {'name': 'add_to_cart_rate', 'numerator': 'add_to_cart_sessions', 'denominator': 'product_view_sessions'},
        {'name': 'checkout_start_rate', 'numerator': 'checkout_start_sessions', 'denominator': 'add_to_cart_sessions'},
        {'name': 'shipping_step_rate', 'numerator': 'shipping_step_sessions', 'denominator': 'checkout_start_sessions'},
        {'name': 'payment_step_rate', 'numerator': 'payment_step_sessions', 'denominator': 'shipping_step_sessions'},
        {'name': 'review_step_rate', 'numerator': 'review_step_sessions', 'denominator': 'payment_step_sessions'},
        {'name': 'payment_attempt_rate', 'numerator': 'payment_attempt_sessions', 'denominator': 'review_step_sessions'},
        {'name': 'checkout_conversion_rate', 'numerator': 'purchase_sessions', 'denominator': 'checkout_start_sessions'},
        {'name': 'session_conversion_rate', 'numerator': 'purchase_sessions', 'denominator': 'sessions'},
        {'name': 'payment_failure_rate', 'numerator': 'payment_failures', 'denominator': 'payment_attempts'},
        {'name': 'js_error_session_rate', 'numerator': 'js_error_sessions', 'denominator': 'sessions'},
    ]) }}
{%- endmacro %}

{#- Additive measures of fct_funnel_hourly (summed to any cohort). -#}
{% macro funnel_measures() -%}
    {%- set measures = ['sessions'] -%}
    {%- for stage in funnel_stages() -%}
        {%- do measures.append(stage.sessions) -%}
    {%- endfor -%}
    {%- do measures.extend(['payment_attempts', 'payment_failures', 'purchases', 'revenue', 'js_error_sessions', 'events']) -%}
    {{ return(measures) }}
{%- endmacro %}

{#- Count metrics of fct_cohort_metrics_hourly (value = numerator, no denominator). -#}
{% macro cohort_count_metrics() -%}
    {{ return(['sessions', 'events', 'purchases', 'revenue']) }}
{%- endmacro %}
