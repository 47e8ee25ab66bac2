-- 0004 progress_jobs by finish time: the insights (GET /api/v1/insights) read the jobs
-- that finished in a window, for every pipeline or for one, newest first.
CREATE INDEX progress_jobs_finished_at ON progress_jobs (finished_at DESC);
CREATE INDEX progress_jobs_pipeline_finished_at ON progress_jobs (pipeline, finished_at DESC);
