-- Aggregates kept from the stream, the runs of scheduled reports and jobs, and their output.

-- Every event applied to the aggregates, so a redelivered or replayed one is skipped.
CREATE TABLE IF NOT EXISTS report_seen (
    event_id TEXT PRIMARY KEY,
    seen_at_us BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS report_seen_at ON report_seen (seen_at_us);

-- One counter per metric, UTC hour (Unix seconds) and key (event type, currency or '').
CREATE TABLE IF NOT EXISTS report_counters (
    metric TEXT NOT NULL,
    hour BIGINT NOT NULL,
    key TEXT NOT NULL,
    count BIGINT NOT NULL,
    total BIGINT NOT NULL,
    PRIMARY KEY (metric, hour, key)
);

-- The users active in each UTC hour.
CREATE TABLE IF NOT EXISTS report_active (
    hour BIGINT NOT NULL,
    user_id TEXT NOT NULL,
    PRIMARY KEY (hour, user_id)
);

-- One row per (report, period), or (job:<name>, fire time): whoever inserts it runs it;
-- a run whose lease expired is taken over.
CREATE TABLE IF NOT EXISTS report_runs (
    report TEXT NOT NULL,
    period TEXT NOT NULL,
    status TEXT NOT NULL,
    claimed_by TEXT NOT NULL,
    lease_until_us BIGINT NOT NULL,
    attempts INTEGER NOT NULL,
    report_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    period_start_us BIGINT NOT NULL,
    period_end_us BIGINT NOT NULL,
    created_at_us BIGINT NOT NULL,
    finished_at_us BIGINT,
    PRIMARY KEY (report, period)
);

CREATE TABLE IF NOT EXISTS report_outputs (
    report_id TEXT PRIMARY KEY,
    report TEXT NOT NULL,
    period TEXT NOT NULL,
    period_start_us BIGINT NOT NULL,
    period_end_us BIGINT NOT NULL,
    csv TEXT NOT NULL,
    html TEXT NOT NULL,
    created_at_us BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS report_outputs_created ON report_outputs (created_at_us);
