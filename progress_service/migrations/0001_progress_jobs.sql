-- 0001 progress_jobs: one row per finished job (README, "How it fits together").
-- A column for every snapshot field except the derived ones (is_stale,
-- eta_seconds); the lists, the result and the history as jsonb; the
-- Redis server's times as timestamptz. The mirror's upsert keeps the row
-- with the higher seq.
CREATE TABLE progress_jobs (
    job_id              text PRIMARY KEY,
    paper_id            text NOT NULL,
    pipeline            text NOT NULL,
    status              text NOT NULL CHECK (status IN ('completed', 'failed', 'canceled')),
    progress_percent    double precision NOT NULL CHECK (progress_percent BETWEEN 0 AND 100),
    current_step        text,
    steps               jsonb NOT NULL,
    completed_steps     jsonb NOT NULL,
    total_steps         integer NOT NULL,
    message             text,
    error               text,
    result              jsonb,
    seq                 bigint NOT NULL,
    created_at          timestamptz,
    started_at          timestamptz,
    progress_updated_at timestamptz,
    finished_at         timestamptz,
    heartbeat_at        timestamptz,
    history             jsonb NOT NULL DEFAULT '[]',
    mirrored_at         timestamptz NOT NULL DEFAULT now()
);
