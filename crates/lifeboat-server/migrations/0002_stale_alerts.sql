-- Alert when a job has had no successful run for this many seconds (NULL: never).
ALTER TABLE jobs ADD COLUMN stale_after_secs BIGINT;
