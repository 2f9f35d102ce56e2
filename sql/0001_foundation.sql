-- Foundation: the TimescaleDB-or-plain-PostgreSQL switch, the helpers every later
-- migration uses to declare time-series tables, a time_bucket() for plain PostgreSQL,
-- and the read-only analyst role.
--
-- One set of migrations serves both servers. Time-series tables are declared once, through
-- vigil_create_timeseries(); on TimescaleDB it makes a hypertable with compression and
-- retention policies, on plain PostgreSQL a table partitioned by range of its time column
-- with a DEFAULT partition (so no insert ever fails) and partitions made ahead of time by
-- vigil_ensure_partitions(). Unique keys must include the time column on both servers.
--
-- Requires PostgreSQL 14 or later (multiranges in the analyst views, date_bin).

-- TimescaleDB is used when it is installed and preloaded; an extension that is available
-- but not in shared_preload_libraries cannot be created, so that server takes the plain path.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')
       AND current_setting('shared_preload_libraries') LIKE '%timescaledb%' THEN
        BEGIN
            CREATE EXTENSION timescaledb;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE WARNING 'timescaledb is available but this role may not create it; '
                          'falling back to native partitioning';
        END;
    END IF;
END
$$;

CREATE FUNCTION vigil_has_timescaledb() RETURNS boolean
LANGUAGE sql STABLE
RETURN EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb');

-- Every time-series table, with the settings both paths need: the plain path reads it to
-- make partitions and to apply retention, so the figures live in one place.
CREATE TABLE vigil_timeseries (
    table_name     text PRIMARY KEY,
    time_column    text NOT NULL,
    chunk          interval NOT NULL,
    compress_after interval,
    retain_for     interval,
    hypertable     boolean NOT NULL
);

-- Partition bounds follow the same grid as time_bucket(): whole UTC days, weeks starting on
-- Monday 2000-01-03, so a partition never splits a daily or weekly bucket.
CREATE FUNCTION vigil_ensure_partitions(table_name text, from_ts timestamptz, to_ts timestamptz)
RETURNS SETOF text
LANGUAGE plpgsql AS $$
DECLARE
    spec    vigil_timeseries;
    schema  text;
    lo      timestamptz;
    hi      timestamptz;
    part    text;
BEGIN
    SELECT * INTO spec FROM vigil_timeseries t WHERE t.table_name = vigil_ensure_partitions.table_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'vigil_ensure_partitions: % is not a time-series table (see vigil_timeseries)',
            table_name;
    END IF;
    IF spec.hypertable THEN
        RETURN;  -- TimescaleDB makes its chunks on demand
    END IF;
    -- Workers starting together all call this; one at a time, per table.
    PERFORM pg_advisory_xact_lock(hashtext('vigil_ensure_partitions'), hashtext(table_name));
    SELECT n.nspname INTO schema
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = table_name::regclass;

    lo := date_bin(spec.chunk, from_ts, timestamptz '2000-01-03 00:00:00+00');
    WHILE lo < to_ts LOOP
        hi := lo + spec.chunk;
        part := format('%s_p%s', table_name, to_char(lo AT TIME ZONE 'UTC', 'YYYYMMDD'));
        IF to_regclass(format('%I.%I', schema, part)) IS NULL THEN
            -- Rows that arrived before this partition existed sit in the DEFAULT partition,
            -- which would make a plain CREATE ... PARTITION OF fail: move them, then attach.
            EXECUTE format('CREATE TABLE %I.%I (LIKE %I.%I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                           schema, part, schema, table_name);
            EXECUTE format('WITH moved AS (DELETE FROM %I.%I WHERE %I >= $1 AND %I < $2 RETURNING *) '
                           'INSERT INTO %I.%I SELECT * FROM moved',
                           schema, table_name || '_default', spec.time_column, spec.time_column,
                           schema, part)
                USING lo, hi;
            EXECUTE format('ALTER TABLE %I.%I ATTACH PARTITION %I.%I FOR VALUES FROM (%L) TO (%L)',
                           schema, table_name, schema, part, lo, hi);
            RETURN NEXT part;
        END IF;
        lo := hi;
    END LOOP;
END
$$;

-- Plain-path retention: drops whole partitions that ended before now - retain_for
-- (TimescaleDB does the same with its retention policy).
CREATE FUNCTION vigil_drop_expired_partitions(now_ts timestamptz DEFAULT now())
RETURNS SETOF text
LANGUAGE plpgsql AS $$
DECLARE
    spec vigil_timeseries;
    part record;
BEGIN
    FOR spec IN SELECT * FROM vigil_timeseries WHERE NOT hypertable AND retain_for IS NOT NULL LOOP
        FOR part IN
            SELECT c.oid::regclass AS rel, c.relname
            FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
            WHERE i.inhparent = spec.table_name::regclass
              AND c.relname ~ '_p[0-9]{8}$'
              AND to_date(right(c.relname, 8), 'YYYYMMDD')::timestamp AT TIME ZONE 'UTC'
                  + spec.chunk <= now_ts - spec.retain_for
        LOOP
            EXECUTE format('DROP TABLE %s', part.rel);
            RETURN NEXT part.relname;
        END LOOP;
    END LOOP;
END
$$;

-- Declares a time-series table once for both servers. `columns` is the body of CREATE TABLE;
-- its unique constraints must include time_column. `indexes` are what follows
-- CREATE INDEX ON <table>, e.g. '(service, ts DESC)' or 'USING brin (ts)': every index slows
-- every write, so each table names the ones its queries need. segment_by / order_by are
-- TimescaleDB compression settings: together they should cover the unique key's columns,
-- as TimescaleDB advises.
CREATE FUNCTION vigil_create_timeseries(
    table_name     text,
    time_column    text,
    columns        text,
    chunk          interval,
    indexes        text[] DEFAULT '{}',
    segment_by     text DEFAULT NULL,
    order_by       text DEFAULT NULL,
    compress_after interval DEFAULT NULL,
    retain_for     interval DEFAULT NULL
) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    timescale constant boolean := vigil_has_timescaledb();
    index_spec text;
BEGIN
    IF timescale THEN
        EXECUTE format('CREATE TABLE %I (%s)', table_name, columns);
        PERFORM create_hypertable(table_name::regclass, time_column::name,
                                  chunk_time_interval => chunk,
                                  create_default_indexes => false);
    ELSE
        EXECUTE format('CREATE TABLE %I (%s) PARTITION BY RANGE (%I)', table_name, columns, time_column);
        EXECUTE format('CREATE TABLE %I PARTITION OF %I DEFAULT', table_name || '_default', table_name);
    END IF;

    FOREACH index_spec IN ARRAY indexes LOOP
        EXECUTE format('CREATE INDEX ON %I %s', table_name, index_spec);
    END LOOP;

    INSERT INTO vigil_timeseries VALUES (table_name, time_column, chunk, compress_after, retain_for, timescale);

    IF timescale THEN
        IF compress_after IS NOT NULL THEN
            EXECUTE format('ALTER TABLE %I SET (timescaledb.compress, '
                           'timescaledb.compress_segmentby = %L, timescaledb.compress_orderby = %L)',
                           table_name, coalesce(segment_by, ''), coalesce(order_by, time_column || ' DESC'));
            PERFORM add_compression_policy(table_name::regclass, compress_after => compress_after,
                                           if_not_exists => true);
        END IF;
        IF retain_for IS NOT NULL THEN
            PERFORM add_retention_policy(table_name::regclass, drop_after => retain_for,
                                         if_not_exists => true);
        END IF;
    ELSE
        PERFORM vigil_ensure_partitions(table_name, now() - interval '1 day', now() + interval '7 days');
    END IF;
END
$$;

-- time_bucket() as TimescaleDB defines it, for plain PostgreSQL: buckets of a fixed width
-- counted from an origin (default Monday 2000-01-03 00:00 UTC, so sub-day widths that divide
-- a day align to midnight UTC and weekly buckets start on Monday); widths of whole months or
-- years are calendar months in UTC counted from the origin's month. A width mixing months
-- with days or time is rejected, as TimescaleDB does (date_bin raises the error). Plain SQL
-- expressions, not STRICT, so the planner inlines them into analyst queries.
DO $do$
BEGIN
    IF vigil_has_timescaledb() THEN
        RETURN;
    END IF;

    CREATE FUNCTION vigil_month_index(ts timestamptz) RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN (extract(year FROM ts AT TIME ZONE 'UTC') * 12
            + extract(month FROM ts AT TIME ZONE 'UTC') - 1)::integer;

    CREATE FUNCTION vigil_month_start(month_index integer) RETURNS timestamptz
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN make_date(month_index / 12, month_index % 12 + 1, 1)::timestamp AT TIME ZONE 'UTC';

    CREATE FUNCTION time_bucket(bucket_width interval, ts timestamptz,
                                origin timestamptz DEFAULT timestamptz '2000-01-03 00:00:00+00')
    RETURNS timestamptz
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE
        -- Field tests, not interval equality: '1 mon' = '30 days' compares true.
        WHEN extract(year FROM bucket_width) * 12 + extract(month FROM bucket_width) = 0
             OR extract(day FROM bucket_width) <> 0 OR extract(hour FROM bucket_width) <> 0
             OR extract(minute FROM bucket_width) <> 0 OR extract(second FROM bucket_width) <> 0
        THEN date_bin(bucket_width, ts, origin)
        ELSE vigil_month_start(
            vigil_month_index(origin)
            + floor((vigil_month_index(ts) - vigil_month_index(origin))
                    / (extract(year FROM bucket_width) * 12 + extract(month FROM bucket_width)))::integer
              * (extract(year FROM bucket_width) * 12 + extract(month FROM bucket_width))::integer)
    END;
END
$do$;

-- The analyst role reads everything and writes nothing. Roles are cluster-wide: another
-- database may have made it already, and a migrating role without CREATEROLE cannot.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'vigil_analyst') THEN
        BEGIN
            CREATE ROLE vigil_analyst NOLOGIN;
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN NULL;  -- a concurrent migration won
            WHEN insufficient_privilege THEN
                RAISE WARNING 'cannot create role vigil_analyst; analyst grants are skipped';
                RETURN;
        END;
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO vigil_analyst', current_schema());
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT ON TABLES TO vigil_analyst',
                   current_schema());
END
$$;

-- Only the pipeline maintains partitions.
REVOKE EXECUTE ON FUNCTION vigil_ensure_partitions(text, timestamptz, timestamptz) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION vigil_drop_expired_partitions(timestamptz) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION vigil_create_timeseries(text, text, text, interval, text[], text, text,
                                                   interval, interval) FROM PUBLIC;
