-- Reports for analysts. Months are calendar months in UTC; figures for the current month
-- cover the part of it that has elapsed.

-- An outage is a customer-impacting incident (P1 or P2, not a false positive) from when its
-- condition began until it was mitigated or resolved; open incidents run until now.
CREATE VIEW outages AS
SELECT s.service,
       i.incident_id,
       i.priority,
       tstzrange(coalesce(i.started_at, i.opened_at),
                 greatest(coalesce(i.started_at, i.opened_at),
                          coalesce(i.mitigated_at, i.resolved_at, now()))) AS span
FROM incidents i
CROSS JOIN LATERAL unnest(i.services) AS s(service)
WHERE i.priority IN ('P1', 'P2') AND NOT i.false_positive;
COMMENT ON VIEW outages IS 'Customer-impacting incident time per affected service; sla_monthly sums it.';

-- Per service and month: uptime from outages (overlapping incidents counted once), and
-- error-budget use from the service's SLOs as of the month's last evaluation (their rolling
-- window, 30 days by default, then roughly covers the month). The worst SLO speaks for the
-- service.
CREATE VIEW sla_monthly AS
WITH service_months AS (
    SELECT service, date_trunc('month', ts, 'UTC') AS month
    FROM slo_status
    UNION
    SELECT o.service, m.month AT TIME ZONE 'UTC'
    FROM outages o
    CROSS JOIN LATERAL generate_series(date_trunc('month', lower(o.span) AT TIME ZONE 'UTC'),
                                       upper(o.span) AT TIME ZONE 'UTC',
                                       interval '1 month') AS m(month)
),
periods AS (
    SELECT service, month,
           tstzrange(month, least(((month AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC',
                                  greatest(month, now()))) AS period
    FROM service_months
),
downtime AS (
    SELECT p.service, p.month,
           count(DISTINCT o.incident_id) AS outages,
           range_agg(o.span * p.period) AS down
    FROM periods p
    JOIN outages o ON o.service = p.service AND o.span && p.period
    GROUP BY p.service, p.month
),
slo_month_end AS (
    SELECT DISTINCT ON (slo, date_trunc('month', ts, 'UTC'))
           service, slo, date_trunc('month', ts, 'UTC') AS month, objective, sli,
           error_budget_remaining
    FROM slo_status
    ORDER BY slo, date_trunc('month', ts, 'UTC'), ts DESC
),
slo_summary AS (
    SELECT service, month,
           count(*) AS slos,
           min(sli) AS worst_sli,
           max(objective) AS strictest_objective,
           max(1 - error_budget_remaining) AS error_budget_used
    FROM slo_month_end
    GROUP BY service, month
)
SELECT p.service,
       p.month,
       upper(p.period) - lower(p.period) AS period,
       coalesce(d.outages, 0) AS outages,
       coalesce((SELECT sum(upper(r) - lower(r)) FROM unnest(d.down) AS r), interval '0') AS downtime,
       round((100 * (1 - extract(epoch FROM coalesce((SELECT sum(upper(r) - lower(r))
                                                       FROM unnest(d.down) AS r), interval '0'))
                         / nullif(extract(epoch FROM upper(p.period) - lower(p.period)), 0)))::numeric,
             4) AS uptime_pct,
       coalesce(s.slos, 0) AS slos,
       s.worst_sli,
       s.strictest_objective,
       s.error_budget_used,
       coalesce(s.error_budget_used >= 1, false) AS budget_exhausted
FROM periods p
LEFT JOIN downtime d USING (service, month)
LEFT JOIN slo_summary s USING (service, month);
COMMENT ON VIEW sla_monthly IS
    'Per service and UTC month: uptime % (P1/P2 incident time, overlaps counted once) and error-budget use (worst SLO at month end).';

-- Per service and month of opening. MTTA: opened -> acknowledged. MTTR: opened -> resolved.
-- MTTD: condition began -> opened. MTBF: previous incident of the service resolved -> this
-- one opened (time in service between failures). False positives are counted, not averaged.
CREATE VIEW incident_metrics AS
WITH per_service AS (
    SELECT s.service,
           i.*,
           lag(i.resolved_at) OVER (PARTITION BY s.service, i.false_positive
                                    ORDER BY i.opened_at) AS previous_resolved_at
    FROM incidents i
    CROSS JOIN LATERAL unnest(i.services) AS s(service)
)
SELECT service,
       date_trunc('month', opened_at, 'UTC') AS month,
       count(*) FILTER (WHERE NOT false_positive) AS incidents,
       count(*) FILTER (WHERE false_positive) AS false_positives,
       count(*) FILTER (WHERE NOT false_positive AND resolved_at IS NULL) AS unresolved,
       avg(extract(epoch FROM acknowledged_at - opened_at)) FILTER (WHERE NOT false_positive) AS mtta_s,
       avg(extract(epoch FROM resolved_at - opened_at)) FILTER (WHERE NOT false_positive) AS mttr_s,
       avg(extract(epoch FROM opened_at - started_at)) FILTER (WHERE NOT false_positive) AS mttd_s,
       -- greatest() skips NULLs, so a service's first incident must be filtered out here.
       avg(extract(epoch FROM greatest(opened_at - previous_resolved_at, interval '0')))
           FILTER (WHERE NOT false_positive AND previous_resolved_at IS NOT NULL) AS mtbf_s
FROM per_service
GROUP BY service, date_trunc('month', opened_at, 'UTC');
COMMENT ON VIEW incident_metrics IS
    'Per service and UTC month: MTTA, MTTR, MTTD, MTBF in seconds (NULL where nothing to average).';

CREATE VIEW noisiest_alerts AS
SELECT alertname,
       service,
       count(*) AS firing_transitions,
       count(DISTINCT fingerprint) AS fingerprints,
       count(*) FILTER (WHERE suppressed) AS suppressed,
       min(ts) AS first_fired,
       max(ts) AS last_fired
FROM alert_events
WHERE status = 'firing' AND ts >= now() - interval '30 days'
GROUP BY alertname, service
ORDER BY firing_transitions DESC, alertname, service;
COMMENT ON VIEW noisiest_alerts IS 'Alerts by number of transitions to firing over the last 30 days.';

-- Default privileges (0001) cover everything created since; this also covers what came
-- before them and is a no-op otherwise.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'vigil_analyst') THEN
        EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO vigil_analyst', current_schema());
    END IF;
END
$$;
