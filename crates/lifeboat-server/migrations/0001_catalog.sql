-- The catalog. Kept to SQL that SQLite and PostgreSQL both accept: TEXT ids, BIGINT times in
-- milliseconds since the Unix epoch, BIGINT 0/1 for flags, no AUTOINCREMENT.

CREATE TABLE tenants (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

CREATE TABLE users (
    id TEXT PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL,
    tenant_id TEXT REFERENCES tenants (id),
    must_change_password BIGINT NOT NULL DEFAULT 0,
    totp_secret TEXT,
    totp_pending TEXT,
    totp_last_step BIGINT NOT NULL DEFAULT 0,
    disabled BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);

CREATE TABLE recovery_codes (
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash TEXT NOT NULL,
    used_at BIGINT,
    PRIMARY KEY (user_id, code_hash)
);

CREATE TABLE sessions (
    id_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    csrf_token TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL,
    source TEXT NOT NULL
);

CREATE TABLE api_tokens (
    id TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_used_at BIGINT,
    revoked_at BIGINT
);

CREATE TABLE repositories (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    name TEXT NOT NULL,
    location TEXT NOT NULL,
    password_sealed TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (tenant_id, name)
);

CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    repository_id TEXT NOT NULL REFERENCES repositories (id),
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    schedule TEXT NOT NULL,
    options TEXT NOT NULL,
    enabled BIGINT NOT NULL DEFAULT 1,
    max_retries BIGINT NOT NULL DEFAULT 2,
    retry_base_secs BIGINT NOT NULL DEFAULT 30,
    next_run_at BIGINT,
    created_at BIGINT NOT NULL,
    UNIQUE (tenant_id, name)
);

CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    tenant_id TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    trigger TEXT NOT NULL,
    status TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    finished_at BIGINT,
    bytes BIGINT,
    log TEXT NOT NULL DEFAULT ''
);
CREATE INDEX runs_by_job ON runs (job_id, started_at);

CREATE TABLE audit_log (
    seq BIGINT PRIMARY KEY,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    outcome TEXT NOT NULL,
    tenant_id TEXT,
    source TEXT NOT NULL,
    target TEXT,
    detail TEXT NOT NULL,
    prev_mac TEXT NOT NULL,
    mac TEXT NOT NULL
);

CREATE TABLE alerts (
    alert_key TEXT PRIMARY KEY,
    tenant_id TEXT,
    message TEXT NOT NULL,
    firing_since BIGINT NOT NULL,
    notified_at BIGINT
);
