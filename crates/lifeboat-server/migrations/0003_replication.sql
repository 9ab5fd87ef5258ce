-- Alert when a continuous (sqlite-replicate) job is more than this many seconds behind
-- (NULL: never).
ALTER TABLE jobs ADD COLUMN lag_alert_secs BIGINT;
