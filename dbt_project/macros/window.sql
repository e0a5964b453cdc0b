{#- The partition window: vars `window_start` / `window_end`, UTC, end exclusive. -#}

{% macro utc_literal(value) -%}
    cast('{{ value }}+00:00' as timestamptz)
{%- endmacro %}

{% macro window_start() -%}
    {{ utc_literal(var('window_start')) }}
{%- endmacro %}

{% macro window_end() -%}
    {{ utc_literal(var('window_end')) }}
{%- endmacro %}

{#- Start of the events an incremental run reads: window_start - session_lookback_hours. -#}
{% macro lookback_start() -%}
    ({{ window_start() }} - interval {{ var('session_lookback_hours') | int }} hour)
{%- endmacro %}

{% macro in_window(column) -%}
    ({{ column }} >= {{ window_start() }} and {{ column }} < {{ window_end() }})
{%- endmacro %}

{#-
  Pre-hook of every incremental model: delete the window's rows, so that the run then
  inserts them again. Runs even when the window has no data (stale rows go), and only when
  the table already exists (is_incremental). The delete and the insert are one transaction.
-#}
{% macro delete_window_rows(column='event_hour') -%}
    {%- if is_incremental() -%}
        delete from {{ this }} where {{ in_window(column) }}
    {%- endif -%}
{%- endmacro %}

{#-
  The hours of the window that lie within the loaded data: from the first to the last hour
  that has events or an ingest-log entry (an hour loaded with zero events still counts).
  The clamp keeps the default window (1970..2100) finite. One row per hour: event_hour.
-#}
{% macro window_hour_spine() -%}
    select unnest(generate_series(
        greatest({{ window_start() }}, bounds.first_hour),
        least({{ window_end() }} - interval 1 hour, bounds.last_hour),
        interval 1 hour
    )) as event_hour
    from ({{ loaded_hours_bounds() }}) as bounds
    where bounds.first_hour is not null
{%- endmacro %}

{% macro loaded_hours_bounds() -%}
    select min(first_hour) as first_hour, max(last_hour) as last_hour
    from (
        select date_trunc('hour', min(event_time)) as first_hour,
               date_trunc('hour', max(event_time)) as last_hour
        from {{ ref('stg_clickstream__events') }}
        union all
        select min(event_hour), max(event_hour)
        from {{ ref('stg_clickstream__partition_loads') }}
    ) as loaded
{%- endmacro %}

{% macro safe_divide(numerator, denominator) -%}
    case when coalesce({{ denominator }}, 0) = 0 then null
         else cast({{ numerator }} as double) / {{ denominator }} end
{%- endmacro %}

{#-
  Pre-hook of fct_sessions: delete the sessions that start in the window and every session
  the run recomputes (those with a session-hour in [window_start - lookback, window_end)).
-#}
{% macro fct_sessions_delete() -%}
    {%- if is_incremental() -%}
        delete from {{ this }}
        where {{ in_window('start_hour') }}
           or session_id in (
                select session_id from {{ ref('int_session_hours') }}
                where event_hour >= {{ lookback_start() }} and event_hour < {{ window_end() }}
           )
    {%- endif -%}
{%- endmacro %}

