-- Detection results, alerts and incidents. Current state lives in plain tables keyed by
-- identity (alerts, incidents: upsert); history lives in time-series tables whose unique
-- keys make a replayed event a no-op (INSERT ... ON CONFLICT DO NOTHING). Event volumes are
-- small, so these partition by week: daily partitions would only multiply tiny tables.

SELECT vigil_create_timeseries(
    table_name  => 'anomalies',
    time_column => 'detected_at',
    columns     => $cols$
        detected_at          timestamptz NOT NULL,
        anomaly_id           text NOT NULL,
        service              text NOT NULL,
        metric_name          text NOT NULL,
        series_id            text,
        labels               jsonb NOT NULL DEFAULT '{}',
        window_start         timestamptz,
        width_s              integer,
        type                 text NOT NULL CHECK (type IN ('LATENCY_SPIKE', 'THROUGHPUT_DROP',
                                                           'ERROR_RATE_INCREASE', 'SATURATION',
                                                           'OTHER')),
        severity             text NOT NULL,
        current_value        double precision,
        expected_value       double precision,
        deviation_percentage double precision,
        confidence_score     double precision,
        anomaly_score        double precision,
        detector             text,
        context              jsonb NOT NULL DEFAULT '{}',
        CONSTRAINT anomalies_key UNIQUE (anomaly_id, detected_at)
    $cols$,
    chunk          => interval '7 days',
    indexes        => ARRAY['(detected_at DESC)', '(service, detected_at DESC)'],
    segment_by     => 'service',
    order_by       => 'detected_at DESC, anomaly_id',
    compress_after => interval '14 days',
    retain_for     => interval '400 days'
);
COMMENT ON COLUMN anomalies.anomaly_id IS
    'Deterministic (derived from series and window), so a replayed detection maps to the same row.';
COMMENT ON COLUMN anomalies.context IS 'recent_deployments, correlated_anomalies, model details.';

CREATE TABLE alerts (
    fingerprint text PRIMARY KEY,
    alertname   text NOT NULL,
    service     text,
    severity    text,
    status      text NOT NULL CHECK (status IN ('pending', 'firing', 'resolved')),
    source      text NOT NULL,
    labels      jsonb NOT NULL DEFAULT '{}',
    annotations jsonb NOT NULL DEFAULT '{}',
    starts_at   timestamptz NOT NULL,
    ends_at     timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    incident_id   text,
    suppressed    boolean NOT NULL DEFAULT false,
    suppressed_by text
);
CREATE INDEX ON alerts (service, status);
CREATE INDEX ON alerts (incident_id) WHERE incident_id IS NOT NULL;
COMMENT ON TABLE alerts IS 'Current state of every alert, one row per fingerprint (hash of its labels).';
COMMENT ON COLUMN alerts.suppressed IS 'Silenced or inhibited: recorded, but not notified.';
COMMENT ON COLUMN alerts.suppressed_by IS 'The silence or inhibition rule responsible.';

SELECT vigil_create_timeseries(
    table_name  => 'alert_events',
    time_column => 'ts',
    columns     => $cols$
        ts          timestamptz NOT NULL,
        event_id    text,
        fingerprint text NOT NULL,
        alertname   text NOT NULL,
        service     text,
        severity    text,
        status      text NOT NULL CHECK (status IN ('pending', 'firing', 'resolved')),
        source      text NOT NULL,
        labels      jsonb NOT NULL DEFAULT '{}',
        annotations jsonb NOT NULL DEFAULT '{}',
        starts_at   timestamptz,
        ends_at     timestamptz,
        incident_id   text,
        suppressed    boolean NOT NULL DEFAULT false,
        suppressed_by text,
        CONSTRAINT alert_events_key UNIQUE (fingerprint, status, ts)
    $cols$,
    chunk          => interval '7 days',
    indexes        => ARRAY['(ts DESC)', '(service, alertname, ts DESC)'],
    segment_by     => 'service',
    order_by       => 'ts DESC, fingerprint, status',
    compress_after => interval '14 days',
    retain_for     => interval '400 days'
);
COMMENT ON TABLE alert_events IS 'Every alert state transition; ts is the event time of the transition.';
COMMENT ON COLUMN alert_events.event_id IS 'The AlertEvent''s event_id on the alerts topic, to join the two.';

CREATE TABLE incidents (
    incident_id        text PRIMARY KEY CHECK (incident_id ~ '^INC-[0-9]{4}-[0-9]{6}$'),
    title              text NOT NULL,
    severity           text NOT NULL,
    priority           text NOT NULL CHECK (priority IN ('P1', 'P2', 'P3', 'P4')),
    status             text NOT NULL CHECK (status IN ('INVESTIGATING', 'IDENTIFIED', 'MITIGATED',
                                                       'RESOLVED')),
    assigned_to        text,
    services           text[] NOT NULL DEFAULT '{}',
    root_cause_service text,
    escalation_level   text NOT NULL DEFAULT 'L1'
                       CHECK (escalation_level IN ('L1', 'L2', 'L3', 'MANAGEMENT')),
    alert_fingerprints text[] NOT NULL DEFAULT '{}',
    started_at         timestamptz,
    opened_at          timestamptz NOT NULL,
    acknowledged_at    timestamptz,
    acknowledged_by    text,
    mitigated_at       timestamptz,
    resolved_at        timestamptz,
    resolution         text,
    false_positive     boolean NOT NULL DEFAULT false,
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ON incidents (opened_at DESC);
CREATE INDEX ON incidents USING gin (services);
CREATE INDEX ON incidents (status) WHERE status <> 'RESOLVED';
COMMENT ON TABLE incidents IS 'Current state of every incident.';
COMMENT ON COLUMN incidents.escalation_level IS 'L1 -> L2 -> L3 -> MANAGEMENT (sorts in that order).';
COMMENT ON COLUMN incidents.started_at IS
    'When the first underlying condition began (earliest alert start); opened_at - started_at is time to detect.';
COMMENT ON COLUMN incidents.resolution IS 'How it ended: resolved, auto-remediated, false positive, ...';

SELECT vigil_create_timeseries(
    table_name  => 'incident_events',
    time_column => 'ts',
    columns     => $cols$
        ts          timestamptz NOT NULL,
        incident_id text NOT NULL,
        event_id    text,
        event       text NOT NULL,
        message     text NOT NULL DEFAULT '',
        detail      jsonb NOT NULL DEFAULT '{}',
        CONSTRAINT incident_events_key UNIQUE (incident_id, event, message, ts)
    $cols$,
    chunk          => interval '7 days',
    indexes        => ARRAY['(incident_id, ts)'],
    segment_by     => 'incident_id',
    order_by       => 'ts DESC, event, message',
    compress_after => interval '14 days',
    retain_for     => interval '400 days'
);
COMMENT ON TABLE incident_events IS 'Incident timeline, one row per entry: created, alert added, escalated, acknowledged, remediation, resolved.';
COMMENT ON COLUMN incident_events.event_id IS 'The IncidentEvent that carried this entry.';
COMMENT ON COLUMN incident_events.message IS
    'Human-readable entry; also keeps two entries of one kind at one instant distinct.';
