-- What services exist, who owns them, how they call each other, and what changed.

CREATE TABLE service_catalog (
    service     text PRIMARY KEY,
    team        text,
    tier        text CHECK (tier IN ('CRITICAL', 'BUSINESS', 'SUPPORT', 'BATCH')),
    environment text,
    runbook_url text,
    depends_on  text[] NOT NULL DEFAULT '{}',
    channels    text[] NOT NULL DEFAULT '{}',
    updated_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE service_catalog IS 'Latest ServiceInfo per service from the compacted catalog topic; a tombstone deletes the row.';

-- Edges come from two sources that disagree in useful ways: the catalog says what should
-- call what, spans say what did. Keeping both lets correlation use either.
CREATE TABLE service_dependencies (
    caller     text NOT NULL,
    callee     text NOT NULL,
    source     text NOT NULL CHECK (source IN ('catalog', 'spans')),
    first_seen timestamptz NOT NULL DEFAULT now(),
    last_seen  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (caller, callee, source)
);
CREATE INDEX ON service_dependencies (callee);

CREATE TABLE change_events (
    ts          timestamptz NOT NULL,
    service     text NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('DEPLOYMENT', 'CONFIG_CHANGE', 'SCALING',
                                              'MAINTENANCE_START', 'MAINTENANCE_END')),
    description text NOT NULL,
    attributes  jsonb NOT NULL DEFAULT '{}'
);
-- Hashed: a description has no length limit, an index entry has.
CREATE UNIQUE INDEX change_events_key ON change_events (service, kind, ts, md5(description));
CREATE INDEX ON change_events (ts DESC);
COMMENT ON TABLE change_events IS 'Deployments, config changes, scaling and maintenance windows, as produced to the events topic.';
