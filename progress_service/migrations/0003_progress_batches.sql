-- 0003 progress_batches: a job's batch and tags (snapshot fields), and one row per
-- finished batch with its member ids (README, "Batches and tags"), served once Redis expired it.
ALTER TABLE progress_jobs ADD COLUMN batch_id text;
ALTER TABLE progress_jobs ADD COLUMN tags jsonb NOT NULL DEFAULT '[]';
CREATE INDEX progress_jobs_batch_id ON progress_jobs (batch_id) WHERE batch_id IS NOT NULL;
CREATE INDEX progress_jobs_tags ON progress_jobs USING gin (tags);

CREATE TABLE progress_batches (
    batch_id         text PRIMARY KEY,
    name             text,
    pipeline         text NOT NULL,
    tags             jsonb NOT NULL DEFAULT '[]',
    job_ids          jsonb NOT NULL,
    total            integer NOT NULL,
    pending          integer NOT NULL,
    running          integer NOT NULL,
    completed        integer NOT NULL,
    failed           integer NOT NULL,
    canceled         integer NOT NULL,
    progress_percent double precision NOT NULL CHECK (progress_percent BETWEEN 0 AND 100),
    status           text NOT NULL CHECK (status IN ('completed', 'failed', 'canceled')),
    created_at       timestamptz,
    finished_at      timestamptz,
    mirrored_at      timestamptz NOT NULL DEFAULT now()
);
