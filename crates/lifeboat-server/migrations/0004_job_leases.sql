-- Which server runs the job now (a random id per server process), and until when that claim
-- holds unless renewed (ms since the Unix epoch): servers sharing a catalog never run one job
-- at the same time, and a crashed server's claim lapses.
ALTER TABLE jobs ADD COLUMN lease_owner TEXT;
ALTER TABLE jobs ADD COLUMN lease_until BIGINT;
