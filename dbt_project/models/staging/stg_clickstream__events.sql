-- One row per clickstream event, typed, with the session attributes cleaned for grouping.
with source as (

    select * from {{ source('clickstream', 'events') }}

),

renamed as (

    select
        event_id,
        event_time,
        date_trunc('hour', event_time) as event_hour,
        lower(trim(event_type)) as event_type,
        user_id,
        session_id,
        page_type,
        lower(trim(checkout_step)) as checkout_step,
        sku,
        coalesce(nullif(trim(category), ''), '(unknown)') as category,
        cast(price as double) as price,
        cast(quantity as integer) as quantity,
        order_id,
        cast(revenue as double) as revenue,
        currency,

        -- session attributes: missing values grouped as one explicit value
        coalesce(nullif(trim(device_type), ''), '(unknown)') as device_type,
        coalesce(nullif(trim(os), ''), '(unknown)') as os,
        os_version,
        coalesce(nullif(trim(browser), ''), '(unknown)') as browser,
        browser_version,
        app_version,
        coalesce(nullif(trim(country), ''), '(unknown)') as country,
        region,
        coalesce(nullif(trim(utm_source), ''), '(none)') as utm_source,
        coalesce(nullif(trim(utm_medium), ''), '(none)') as utm_medium,
        coalesce(nullif(trim(utm_campaign), ''), '(none)') as utm_campaign,

        payment_provider,
        lower(trim(payment_status)) as payment_status,
        cast(latency_ms as double) as latency_ms,
        error_code,

        -- raw values the contract does not know, kept as `other` above (field -> raw value)
        unmapped_values,

        -- lineage
        event_hour as loaded_partition_hour,
        source_file,
        ingested_at

    from source

)

select * from renamed
