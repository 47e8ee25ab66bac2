-- 0005 progress_jobs_step_stats: the ETA's step statistics read a pipeline's latest
-- completed jobs (progress_service.step_stats) after every mirrored batch.
CREATE INDEX progress_jobs_pipeline_completed ON progress_jobs (pipeline, finished_at DESC)
    WHERE status = 'completed';
