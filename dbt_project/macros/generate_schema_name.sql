{#-
  Schemas are exactly the folder schemas (`staging`, `intermediate`, `marts`), not dbt's
  default `<target schema>_<custom schema>`; models without a custom schema go to the
  target schema.
-#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}
        {{ target.schema }}
    {%- else -%}
        {{ custom_schema_name | trim }}
    {%- endif -%}
{%- endmacro %}
