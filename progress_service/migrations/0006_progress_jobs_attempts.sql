-- 0006 progress_jobs attempts: a job's attempt (1 for a first run; a retry is attempt + 1)
-- and the job it retries (snapshot fields). A job mirrored before retries existed was a
-- first run: attempt 1, retrying nothing.
ALTER TABLE progress_jobs ADD COLUMN attempt integer NOT NULL DEFAULT 1 CHECK (attempt >= 1);
ALTER TABLE progress_jobs ADD COLUMN retry_of text;
CREATE INDEX progress_jobs_retry_of ON progress_jobs (retry_of) WHERE retry_of IS NOT NULL;
