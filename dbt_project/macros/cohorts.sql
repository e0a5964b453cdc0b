{#- The session attributes of the leaf cohort grain, in column order. -#}
{% macro leaf_dimensions() -%}
    {{ return(['device_type', 'os', 'browser', 'country', 'utm_source', 'utm_medium', 'utm_campaign']) }}
{%- endmacro %}

{#-
  The configured dimension sets over session attributes (var cohort_dimension_sets, minus
  the category set, which is handled separately). Unknown names fail the run.
-#}
{% macro leaf_dimension_sets() -%}
    {%- set sets = [] -%}
    {%- for dims in var('cohort_dimension_sets') -%}
        {%- if dims | list != ['category'] -%}
            {%- for d in dims -%}
                {%- if d not in leaf_dimensions() -%}
                    {{ exceptions.raise_compiler_error("unknown cohort dimension '" ~ d ~ "' in var cohort_dimension_sets; allowed: " ~ leaf_dimensions() | join(', ') ~ ", and category alone") }}
                {%- endif -%}
            {%- endfor -%}
            {%- do sets.append(dims | list) -%}
        {%- endif -%}
    {%- endfor -%}
    {{ return(sets) }}
{%- endmacro %}

{% macro category_is_monitored() -%}
    {%- set found = [] -%}
    {%- for dims in var('cohort_dimension_sets') -%}
        {%- if dims | list == ['category'] -%}{%- do found.append(1) -%}{%- endif -%}
    {%- endfor -%}
    {{ return(found | length > 0) }}
{%- endmacro %}

{#- Cohort key expression: 'dim=value' pairs joined by '&' in the set's order. -#}
{% macro cohort_key(dims) -%}
    {%- for d in dims -%}
        '{{ d }}=' || {{ d }}{% if not loop.last %} || '&' || {% endif %}
    {%- endfor -%}
{%- endmacro %}

{#-
  Sums `measures` of `relation_sql` (a relation or CTE at leaf grain with event_hour) to
  the overall cohort `all` and to every configured leaf dimension set.
  Output: event_hour, cohort, cohort_dimensions, <measures>.
-#}
{% macro cohort_rollup(relation_sql, measures) -%}
    select event_hour, 'all' as cohort, '' as cohort_dimensions
        {%- for m in measures %}, sum({{ m }}) as {{ m }}{% endfor %}
    from {{ relation_sql }}
    group by event_hour
    {%- for dims in leaf_dimension_sets() %}
    union all
    select event_hour, {{ cohort_key(dims) }} as cohort, '{{ dims | join(",") }}' as cohort_dimensions
        {%- for m in measures %}, sum({{ m }}) as {{ m }}{% endfor %}
    from {{ relation_sql }}
    group by event_hour, {{ dims | join(', ') }}
    {%- endfor %}
{%- endmacro %}
