{#- Custom generic data tests (no dbt packages: dbt deps cannot download here). -#}

{#- Values outside [min_value, max_value] fail; NULL passes (e.g. a rate with no denominator). -#}
{% test value_between(model, column_name, min_value=none, max_value=none) %}
    select {{ column_name }} as failing_value
    from {{ model }}
    where {{ column_name }} is not null
      and (
        false
        {%- if min_value is not none %} or {{ column_name }} < {{ min_value }}{% endif %}
        {%- if max_value is not none %} or {{ column_name }} > {{ max_value }}{% endif %}
      )
{% endtest %}

{#- The combination of `combination_of_columns` is unique. -#}
{% test unique_combination_of_columns(model, combination_of_columns) %}
    select {{ combination_of_columns | join(', ') }}, count(*) as n
    from {{ model }}
    group by {{ combination_of_columns | join(', ') }}
    having count(*) > 1
{% endtest %}

{#- Each column is <= the one before it (a funnel never widens). -#}
{% test non_increasing_columns(model, columns) %}
    select *
    from {{ model }}
    where false
    {%- for i in range(1, columns | length) %}
        or {{ columns[i] }} > {{ columns[i - 1] }}
    {%- endfor %}
{% endtest %}

{#- `column_name` is NULL exactly when `denominator_column` is 0 or NULL. -#}
{% test null_when_zero_denominator(model, column_name, denominator_column) %}
    select *
    from {{ model }}
    where ({{ column_name }} is null) != (coalesce({{ denominator_column }}, 0) = 0)
{% endtest %}
