-- 0002 progress_jobs listing: the API lists jobs newest first, for all
-- papers or for one, optionally by status (GET /api/v1/jobs?paper_id=&status=).
CREATE INDEX progress_jobs_created_at ON progress_jobs (created_at DESC);
CREATE INDEX progress_jobs_paper_created_at ON progress_jobs (paper_id, created_at DESC);
CREATE INDEX progress_jobs_status_created_at ON progress_jobs (status, created_at DESC);
