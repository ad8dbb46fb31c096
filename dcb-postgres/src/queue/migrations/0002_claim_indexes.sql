
DROP INDEX IF EXISTS {schema}.jobs_due;
CREATE INDEX IF NOT EXISTS jobs_claim ON {schema}.jobs (queue, kind, priority DESC, run_at, id)
    WHERE state = 'ready';
CREATE INDEX IF NOT EXISTS jobs_ready_at ON {schema}.jobs (queue, kind, run_at)
    WHERE state = 'ready';
ALTER TABLE {schema}.jobs SET (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_insert_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.05
);
