-- SLO evaluations and rejected input.

SELECT vigil_create_timeseries(
    table_name  => 'slo_status',
    time_column => 'ts',
    columns     => $cols$
        ts                     timestamptz NOT NULL,
        slo                    text NOT NULL,
        service                text NOT NULL,
        objective              double precision NOT NULL CHECK (objective > 0 AND objective < 1),
        sli                    double precision,
        error_budget_remaining double precision,
        burn_rate_5m           double precision,
        burn_rate_30m          double precision,
        burn_rate_1h           double precision,
        burn_rate_2h           double precision,
        burn_rate_6h           double precision,
        burn_rate_1d           double precision,
        burn_rate_3d           double precision,
        exhaustion_at          timestamptz,
        CONSTRAINT slo_status_key UNIQUE (slo, ts)
    $cols$,
    chunk          => interval '7 days',
    indexes        => ARRAY['(ts DESC)', '(service, ts DESC)'],
    segment_by     => 'slo',
    order_by       => 'ts DESC',
    compress_after => interval '14 days',
    retain_for     => interval '400 days'
);
COMMENT ON COLUMN slo_status.sli IS 'good / total over the SLO''s rolling window, as of ts.';
COMMENT ON COLUMN slo_status.error_budget_remaining IS
    'Fraction of the rolling window''s error budget left (1 = untouched, <= 0 = exhausted).';
COMMENT ON COLUMN slo_status.exhaustion_at IS 'When the budget runs out at the current burn rate; NULL if not burning.';

-- One message can dead-letter several samples, with one reason each: detail names the
-- sample (e.g. MetricBatch.series[3].values[7]), which keeps them apart in the key. The
-- writer must set ts from the source record, not the clock, so replays hit the same key.
SELECT vigil_create_timeseries(
    table_name  => 'dead_letters',
    time_column => 'ts',
    columns     => $cols$
        ts          timestamptz NOT NULL,
        topic       text NOT NULL,
        partition   integer NOT NULL,
        "offset"    bigint NOT NULL,
        key         bytea,
        reason      text NOT NULL,
        detail      text NOT NULL DEFAULT '' CHECK (length(detail) <= 1000),
        payload     bytea NOT NULL,
        CONSTRAINT dead_letters_key UNIQUE (topic, partition, "offset", reason, detail, ts)
    $cols$,
    chunk          => interval '1 day',
    indexes        => ARRAY['(ts DESC)', '(reason, ts DESC)'],
    segment_by     => 'topic',
    order_by       => 'ts DESC, partition, "offset", reason, detail',
    compress_after => interval '3 days',
    retain_for     => interval '14 days'
);
COMMENT ON TABLE dead_letters IS 'Input that could not be used, with why (reason) and where (topic, partition, offset).';
