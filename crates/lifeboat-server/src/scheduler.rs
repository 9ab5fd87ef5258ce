//! The scheduler: starts jobs when their cron schedule says, one run at a time per job, with
//! retries and backoff, and records every attempt as a run in the catalog.
//!
//! * The next start of each job (`jobs.next_run_at`) is stored in the catalog, so a restarted
//!   server resumes where it stopped: a start missed while it was down happens once, right
//!   away (trigger `catch-up`), then the schedule goes on. Runs left `running` by a crash are
//!   marked `interrupted` at start.
//! * A start is claimed by moving the job's `next_run_at` forward with a compare-and-set, so
//!   one server takes each scheduled start even when several share a catalog. A run then
//!   needs the job's lease (`jobs.lease_owner`, `lease_until`), taken with a compare-and-set
//!   and renewed while the run lasts: runs of one job never overlap, in this process or across
//!   servers. A lease left by a crashed server lapses after [`LEASE_MILLIS`]. Retries happen
//!   inside the same slot, under the same lease. Continuous jobs' replicators hold the lease
//!   of their job the same way (see `replication`).
//! * Schedules are cron expressions in the server's time zone: five fields, or six with
//!   seconds first (`croner`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use croner::Cron;
use croner::parser::{CronParser, Seconds};
use parking_lot::Mutex;

use crate::audit::Event;
use crate::catalog::{self, Backend, Pool, new_id, now_millis};
use crate::error::{Error, Result};
use crate::jobs::{self, JobInfo};
use crate::replication;
use crate::server::AppState;

/// Longest log excerpt kept per run.
pub const LOG_EXCERPT: usize = 4000;

/// Parses a cron schedule.
pub fn parse_schedule(text: &str) -> Result<Cron> {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .build()
        .parse(text)
        .map_err(|e| Error::Schedule {
            schedule: text.to_owned(),
            message: format!("{e}; write five fields (minute hour day month weekday), e.g. `*/5 * * * *`, or six with seconds first"),
        })
}

/// The first start strictly after `after_ms`, in ms since the epoch.
pub fn next_after(cron: &Cron, after_ms: i64) -> Option<i64> {
    let after = jiff::Timestamp::from_millisecond(after_ms)
        .ok()?
        .to_zoned(jiff::tz::TimeZone::system());
    cron.find_next_occurrence(&after, false)
        .ok()
        .map(|next| next.timestamp().as_millisecond())
}

/// Jobs running in this process.
#[derive(Debug, Default)]
pub struct Running {
    jobs: Mutex<HashSet<String>>,
}

impl Running {
    pub(crate) fn claim(&self, job_id: &str) -> bool {
        self.jobs.lock().insert(job_id.to_owned())
    }

    pub(crate) fn release(&self, job_id: &str) {
        self.jobs.lock().remove(job_id);
    }

    /// True if the job is running now.
    pub fn is_running(&self, job_id: &str) -> bool {
        self.jobs.lock().contains(job_id)
    }
}

/// How long a job's lease holds without renewal, in ms. Servers renew theirs every
/// [`RENEW_EVERY`] seconds, so only a server that stopped (or lost the catalog for this long)
/// loses one.
pub const LEASE_MILLIS: i64 = 60_000;

/// How often (scheduler ticks, about seconds) a server renews the leases it holds.
const RENEW_EVERY: u64 = 10;

/// Takes the lease of `job_id` for `owner` unless another holds one that has not lapsed.
/// Atomic on both backends: SQLite has one writer, and on PostgreSQL a concurrent update of
/// the same row waits for the first and re-checks the condition against its result.
pub async fn acquire_lease(pool: &Pool, job_id: &str, owner: &str) -> Result<bool> {
    let now = now_millis();
    Ok(sqlx::query(
        "UPDATE jobs SET lease_owner = $1, lease_until = $2 \
         WHERE id = $3 AND (lease_owner IS NULL OR lease_owner = $1 OR lease_until < $4)",
    )
    .bind(owner)
    .bind(now + LEASE_MILLIS)
    .bind(job_id)
    .bind(now)
    .execute(pool)
    .await?
    .rows_affected()
        == 1)
}

/// Gives up the lease of `job_id` if `owner` holds it.
pub async fn release_lease(pool: &Pool, job_id: &str, owner: &str) -> Result<()> {
    sqlx::query(
        "UPDATE jobs SET lease_owner = NULL, lease_until = NULL WHERE id = $1 AND lease_owner = $2",
    )
    .bind(job_id)
    .bind(owner)
    .execute(pool)
    .await?;
    Ok(())
}

/// Extends every lease `owner` holds.
async fn renew_leases(pool: &Pool, owner: &str) -> Result<u64> {
    Ok(
        sqlx::query("UPDATE jobs SET lease_until = $1 WHERE lease_owner = $2")
            .bind(now_millis() + LEASE_MILLIS)
            .bind(owner)
            .execute(pool)
            .await?
            .rows_affected(),
    )
}

/// True if a run of the job is in progress (or waits to retry) here or, by the catalog, on
/// another server: a `running` run, or a live lease of a job that is not continuous (a
/// replicator holds its lease while it waits to restart, too).
pub async fn is_running(app: &AppState, job: &JobInfo) -> Result<bool> {
    if app.running.is_running(&job.id) {
        return Ok(true);
    }
    let (running,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM runs WHERE job_id = $1 AND status = 'running'")
            .bind(&job.id)
            .fetch_one(&app.pool)
            .await?;
    if running > 0 || job.kind.is_continuous() {
        return Ok(running > 0);
    }
    let (leased,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM jobs WHERE id = $1 AND lease_owner IS NOT NULL AND lease_until >= $2",
    )
    .bind(&job.id)
    .bind(now_millis())
    .fetch_one(&app.pool)
    .await?;
    Ok(leased > 0)
}

/// At start: marks runs left `running` by a stopped process as interrupted. An SQLite catalog
/// has one server, so whatever it was running stopped with it, leases included; a PostgreSQL
/// catalog may be shared, so only runs whose job's lease lapsed are taken for stopped (the
/// scheduler repeats this [`sweep`] for servers that stop later).
pub async fn recover(pool: &Pool) -> Result<u64> {
    if catalog::backend(pool) == Backend::Sqlite {
        sqlx::query(
            "UPDATE jobs SET lease_owner = NULL, lease_until = NULL WHERE lease_owner IS NOT NULL",
        )
        .execute(pool)
        .await?;
    }
    sweep(pool).await
}

/// Marks `running` runs whose job has no live lease as interrupted: their server stopped.
pub async fn sweep(pool: &Pool) -> Result<u64> {
    Ok(sqlx::query(
        "UPDATE runs SET status = 'interrupted', finished_at = $1, log = log || 'the server stopped during this run' \
         WHERE status = 'running' AND NOT EXISTS \
           (SELECT 1 FROM jobs j WHERE j.id = runs.job_id AND j.lease_owner IS NOT NULL AND j.lease_until >= $1)",
    )
    .bind(now_millis())
    .execute(pool)
    .await?
    .rows_affected())
}

/// The scheduler loop: checks every second for jobs that are due and keeps the continuous
/// jobs' replicators in line with the catalog, until `stop` fires; then stops the replicators.
pub async fn run(app: Arc<AppState>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut ticks: u64 = 0;
    loop {
        if let Err(e) = replication::reconcile(&app).await {
            tracing::warn!("replication: {e}");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => break,
        }
        if let Err(e) = tick(&app).await {
            tracing::warn!("scheduler: {e}");
        }
        ticks += 1;
        if ticks.is_multiple_of(RENEW_EVERY)
            && let Err(e) = renew_leases(&app.pool, &app.instance).await
        {
            tracing::warn!("renewing job leases: {e}");
        }
        if ticks.is_multiple_of(STALE_CHECK_EVERY) {
            match sweep(&app.pool).await {
                Ok(0) => {}
                Ok(n) => tracing::warn!("{n} run(s) of a stopped server were marked interrupted"),
                Err(e) => tracing::warn!("interrupted-run sweep: {e}"),
            }
            if let Err(e) = check_staleness(&app).await {
                tracing::warn!("stale-backup check: {e}");
            }
            if let Err(e) = check_lag(&app).await {
                tracing::warn!("replication-lag check: {e}");
            }
        }
    }
    replication::stop_all(&app).await;
}

/// Fires `lag:<job>` for each running continuous job with `lag_alert_secs` whose replicator
/// reports more lag than that, and resolves it once the lag is back under the limit. A
/// replicator that is down reports nothing: the `job-failed` alert covers it.
async fn check_lag(app: &AppState) -> Result<()> {
    for job in jobs::all_enabled_jobs(&app.pool).await? {
        let Some(limit) = job.lag_alert_secs else {
            continue;
        };
        let Some(report) = app.metrics.replication(&job.id) else {
            continue;
        };
        if !report.up {
            continue;
        }
        let key = replication::lag_key(&job.id);
        if report.lag_seconds > limit as f64 {
            let mut message = format!(
                "Job {} ({}) is {} s behind (limit {limit} s): {} bytes of {} not yet stored in the repository.",
                job.name,
                job.kind.as_str(),
                report.lag_seconds.round(),
                report.lag_bytes,
                report.database
            );
            if let Some(error) = &report.last_error {
                message.push_str(&format!(" Last error: {}", first_line(error)));
            }
            app.alerter
                .fire(&app.pool, &key, Some(&job.tenant_id), &message)
                .await?;
        } else {
            let message = format!(
                "Job {} ({}) caught up: {} s behind (limit {limit} s).",
                job.name,
                job.kind.as_str(),
                report.lag_seconds.round()
            );
            app.alerter.resolve(&app.pool, &key, &message).await?;
        }
    }
    Ok(())
}

/// Seconds between two evaluations of the stale-job rule.
const STALE_CHECK_EVERY: u64 = 5;

/// Fires `stale:<job>` for each job with `stale_after_secs` whose last success (or creation,
/// if it never succeeded) is older than that, and resolves it once a run succeeds.
async fn check_staleness(app: &AppState) -> Result<()> {
    let now = now_millis();
    for job in jobs::all_enabled_jobs(&app.pool).await? {
        let Some(limit) = job.stale_after_secs else {
            continue;
        };
        let (last,): (Option<i64>,) = sqlx::query_as(
            "SELECT MAX(finished_at) FROM runs WHERE job_id = $1 AND status = 'succeeded'",
        )
        .bind(&job.id)
        .fetch_one(&app.pool)
        .await?;
        let since = last.unwrap_or(job.created_at);
        let key = format!("stale:{}", job.id);
        if now - since > limit * 1000 {
            let message = match last {
                Some(_) => format!(
                    "Job {} ({}) has had no successful run for {} s (limit {limit} s).",
                    job.name,
                    job.kind.as_str(),
                    (now - since) / 1000
                ),
                None => format!(
                    "Job {} ({}) has never succeeded in the {limit} s since it was created.",
                    job.name,
                    job.kind.as_str()
                ),
            };
            app.alerter
                .fire(&app.pool, &key, Some(&job.tenant_id), &message)
                .await?;
        } else {
            let message = format!(
                "Job {} ({}) succeeded: no longer stale.",
                job.name,
                job.kind.as_str()
            );
            app.alerter.resolve(&app.pool, &key, &message).await?;
        }
    }
    Ok(())
}

async fn tick(app: &Arc<AppState>) -> Result<()> {
    let now = now_millis();
    for job in jobs::all_enabled_jobs(&app.pool).await? {
        let Some(due) = job.next_run_at else { continue };
        if due > now {
            continue;
        }
        let Ok(cron) = parse_schedule(&job.schedule) else {
            continue;
        };
        let next = next_after(&cron, now);
        let claimed =
            sqlx::query("UPDATE jobs SET next_run_at = $1 WHERE id = $2 AND next_run_at = $3")
                .bind(next)
                .bind(&job.id)
                .bind(due)
                .execute(&app.pool)
                .await?
                .rows_affected()
                == 1;
        if !claimed {
            continue;
        }
        let trigger = if now - due > 60_000 {
            "catch-up"
        } else {
            "schedule"
        };
        if !start(app, job.clone(), trigger).await? {
            tracing::info!(job = %job.id, "still running: this start is skipped");
        }
    }
    Ok(())
}

/// Starts `job` now unless it is running, here or on another server sharing the catalog;
/// false if it was.
pub async fn start(app: &Arc<AppState>, job: JobInfo, trigger: &'static str) -> Result<bool> {
    // A continuous job is kept running by its supervisor, never started as a run.
    if job.kind.is_continuous() || !app.running.claim(&job.id) {
        return Ok(false);
    }
    match acquire_lease(&app.pool, &job.id, &app.instance).await {
        Ok(true) => {}
        Ok(false) => {
            app.running.release(&job.id);
            return Ok(false);
        }
        Err(e) => {
            app.running.release(&job.id);
            return Err(e);
        }
    }
    let app = Arc::clone(app);
    tokio::spawn(async move {
        let job_id = job.id.clone();
        if let Err(e) = run_with_retries(&app, &job, trigger).await {
            tracing::warn!(job = %job_id, "run could not be recorded: {e}");
        }
        if let Err(e) = release_lease(&app.pool, &job_id, &app.instance).await {
            tracing::warn!(job = %job_id, "cannot release the job's lease (it lapses): {e}");
        }
        app.running.release(&job_id);
    });
    Ok(true)
}

async fn run_with_retries(
    app: &Arc<AppState>,
    job: &JobInfo,
    first_trigger: &'static str,
) -> Result<()> {
    let attempts = 1 + job.max_retries.max(0);
    let mut trigger = first_trigger;
    for attempt in 1..=attempts {
        let run_id = new_id();
        let started_at = now_millis();
        sqlx::query("INSERT INTO runs (id, job_id, tenant_id, attempt, trigger, status, started_at) VALUES ($1, $2, $3, $4, $5, 'running', $6)")
            .bind(&run_id)
            .bind(&job.id)
            .bind(&job.tenant_id)
            .bind(attempt)
            .bind(trigger)
            .bind(started_at)
            .execute(&app.pool)
            .await?;
        let clock = Instant::now();
        let result = match access(app, job).await {
            Ok((Some((location, password)), destination)) => {
                let kind = job.kind;
                let options = job.options.clone();
                tokio::task::spawn_blocking(move || {
                    jobs::execute(kind, &options, &location, &password, destination)
                })
                .await
                .unwrap_or_else(|e| Err(format!("the run panicked: {e}")))
            }
            Ok((None, _)) => Err("the job's repository no longer exists".to_owned()),
            Err(e) => Err(e.to_string()),
        };
        let duration = clock.elapsed();
        let (status, bytes, log) = match &result {
            Ok(output) => ("succeeded", Some(output.bytes as i64), output.log.clone()),
            Err(message) => ("failed", None, message.clone()),
        };
        let log: String = log.chars().take(LOG_EXCERPT).collect();
        sqlx::query(
            "UPDATE runs SET status = $1, finished_at = $2, bytes = $3, log = $4 WHERE id = $5",
        )
        .bind(status)
        .bind(now_millis())
        .bind(bytes)
        .bind(&log)
        .bind(&run_id)
        .execute(&app.pool)
        .await?;
        app.audit
            .append(
                &app.pool,
                Event::new("system:scheduler", "job.run", "local")
                    .outcome(if result.is_ok() { "ok" } else { "failed" })
                    .tenant(Some(&job.tenant_id))
                    .target(job.id.clone())
                    .detail(serde_json::json!({
                        "job": job.name, "kind": job.kind.as_str(), "run": run_id, "attempt": attempt,
                        "trigger": trigger, "seconds": duration.as_secs_f64(),
                    })),
            )
            .await?;
        let alert_key = format!("job-failed:{}", job.id);
        match result {
            Ok(_) => {
                app.alerter
                    .resolve(
                        &app.pool,
                        &alert_key,
                        &format!("Job {} ({}) succeeded again.", job.name, job.kind.as_str()),
                    )
                    .await?;
                return Ok(());
            }
            Err(message) if attempt == attempts => {
                app.alerter
                    .fire(
                        &app.pool,
                        &alert_key,
                        Some(&job.tenant_id),
                        &format!(
                            "Job {} ({}) failed after {attempts} attempt(s): {}",
                            job.name,
                            job.kind.as_str(),
                            first_line(&message)
                        ),
                    )
                    .await?;
            }
            Err(_) => {
                let delay = Duration::from_secs(
                    job.retry_base_secs.max(1) as u64 * (1 << (attempt - 1).min(10)),
                );
                tokio::time::sleep(delay).await;
                // A job deleted meanwhile is not retried.
                if jobs::get_job(&app.pool, &job.tenant_id, &job.id)
                    .await?
                    .is_none()
                {
                    return Ok(());
                }
                trigger = "retry";
            }
        }
    }
    Ok(())
}

/// The job's repository and, for a copy job, its destination.
async fn access(
    app: &AppState,
    job: &JobInfo,
) -> Result<(
    Option<jobs::RepositoryAccess>,
    Option<jobs::RepositoryAccess>,
)> {
    let source =
        jobs::repository_secret(&app.pool, &app.sealer, &job.tenant_id, &job.repository_id).await?;
    let destination = match job.kind {
        jobs::JobKind::Copy => {
            let to = jobs::copy_destination(&job.options)?;
            jobs::repository_secret(&app.pool, &app.sealer, &job.tenant_id, &to).await?
        }
        _ => None,
    };
    Ok((source, destination))
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_parse_with_optional_seconds() {
        let every_minute = parse_schedule("* * * * *").unwrap();
        let start = 1_700_000_000_000; // a whole minute plus 20 s
        let next = next_after(&every_minute, start).unwrap();
        assert!(next > start && next - start <= 60_000);
        assert_eq!(next % 60_000, 0);
        let every_two_seconds = parse_schedule("*/2 * * * * *").unwrap();
        let next = next_after(&every_two_seconds, start).unwrap();
        assert!(next - start <= 2000);
        assert!(parse_schedule("every day").is_err());
    }
}
