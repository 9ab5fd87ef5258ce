//! Continuous jobs: one supervised SQLite replicator per enabled `sqlite-replicate` job.
//!
//! * **Reconciled with the catalog.** Every scheduler tick compares the enabled continuous
//!   jobs with the replicators running: a new job starts within a second of its creation (and
//!   every such job when the server starts), a deleted or disabled one is stopped. Shutdown
//!   stops them all and waits for their last capture.
//! * **A session per start.** Each start of a replicator is one run in the catalog (trigger
//!   `start`, or `restart` after a failure), `running` while it replicates, then `stopped`
//!   (stopped on purpose) or `failed`; its `bytes` are the frame bytes shipped, updated while
//!   it runs. Shipped transactions are not runs: there are thousands a day.
//! * **Restarted with backoff.** A session fails when the replicator cannot start (no database,
//!   not in WAL mode, repository unreachable for the resume) or its reader keeps failing for
//!   [`FAIL_AFTER`]. The next start waits `retry_base_secs`, doubled after each further failure
//!   up to [`MAX_BACKOFF`]. After `max_retries + 1` failures in a row the job's `job-failed`
//!   alert fires; it resolves once a session has replicated for [`HEALTHY_AFTER`].
//! * **Lag.** What the replicator reports for each destination (the job's repository and those
//!   in `also_to_repository_ids`, all of the job's tenant: seconds since the oldest commit not
//!   stored, bytes not stored) is kept in [`crate::metrics::Metrics`] for `/metrics` (per
//!   repository, and the worst per job) and for the `lag_alert_secs` rule (evaluated by the
//!   scheduler on the worst). A destination that does not answer keeps the WAL only up to
//!   `max_lag_mib`, and its lag keeps growing meanwhile; one that does not answer when the
//!   session starts is retried in the background while the others replicate.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lifeboat_sqlite::{DestinationState, ReplicationStatus, Replicator};
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::audit::Event;
use crate::catalog::{new_id, now_millis};
use crate::error::Result;
use crate::jobs::{self, JobInfo, SqliteReplicateOptions};
use crate::metrics::{DestinationReport, ReplicationReport};
use crate::scheduler::{self, LOG_EXCERPT};
use crate::server::AppState;

/// A session whose reader fails this long without a good round ends, and is restarted.
pub const FAIL_AFTER: Duration = Duration::from_secs(30);
/// Longest wait before a restart.
pub const MAX_BACKOFF: Duration = Duration::from_secs(600);
/// A session that replicated this long resets the failure count and resolves `job-failed`.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(60);
/// How often a running session's run row is updated with the bytes shipped.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// How long a stop waits for the last frames to be stored.
const FINAL_SYNC: Duration = Duration::from_secs(30);

struct Supervised {
    stop: Arc<AtomicBool>,
    wake: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Supervised {
    fn signal(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }
}

/// The supervised replicators of this process, by job id.
#[derive(Default)]
pub struct Replication {
    tasks: Mutex<HashMap<String, Supervised>>,
}

impl std::fmt::Debug for Replication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replication")
            .field("jobs", &self.tasks.lock().len())
            .finish()
    }
}

/// Starts a replicator for every enabled continuous job that has none, and stops those whose
/// job is gone or disabled.
pub async fn reconcile(app: &Arc<AppState>) -> Result<()> {
    let wanted: HashMap<String, JobInfo> = jobs::all_enabled_jobs(&app.pool)
        .await?
        .into_iter()
        .filter(|j| j.kind.is_continuous())
        .map(|j| (j.id.clone(), j))
        .collect();
    let mut gone = Vec::new();
    let mut to_lease = Vec::new();
    {
        let mut tasks = app.replication.tasks.lock();
        let stale: Vec<String> = tasks
            .iter()
            .filter(|(id, s)| !wanted.contains_key(*id) || s.task.is_finished())
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            if let Some(supervised) = tasks.remove(&id) {
                supervised.signal();
                gone.push((id, supervised));
            }
        }
        for (id, job) in wanted {
            if tasks.contains_key(&id) {
                continue;
            }
            // Another server sharing the catalog may replicate this job already.
            to_lease.push((id, job));
        }
    }
    for (id, job) in to_lease {
        match scheduler::acquire_lease(&app.pool, &id, &app.instance).await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::warn!(job = %id, "cannot take the job's lease: {e}");
                continue;
            }
        }
        app.replication.tasks.lock().entry(id).or_insert_with(|| {
            let stop = Arc::new(AtomicBool::new(false));
            let wake = Arc::new(Notify::new());
            let task = tokio::spawn(supervise(
                Arc::clone(app),
                job,
                Arc::clone(&stop),
                Arc::clone(&wake),
            ));
            Supervised { stop, wake, task }
        });
    }
    for (id, supervised) in gone {
        let app = Arc::clone(app);
        tokio::spawn(async move {
            let _ = supervised.task.await;
            if let Err(e) = scheduler::release_lease(&app.pool, &id, &app.instance).await {
                tracing::warn!(job = %id, "cannot release the job's lease (it lapses): {e}");
            }
            app.metrics.remove_replication(&id);
            // The job is gone or disabled: nothing is lagging any more.
            let _ = app
                .alerter
                .resolve(
                    &app.pool,
                    &lag_key(&id),
                    &format!("Replication job {id} was stopped (deleted or disabled)."),
                )
                .await;
        });
    }
    Ok(())
}

/// Stops every replicator and waits until each has stored what it could and recorded its run.
pub async fn stop_all(app: &AppState) {
    let all: Vec<(String, Supervised)> = app.replication.tasks.lock().drain().collect();
    for (_, supervised) in &all {
        supervised.signal();
    }
    for (id, supervised) in all {
        let _ = supervised.task.await;
        // Another server sharing the catalog may take the job over at once.
        if let Err(e) = scheduler::release_lease(&app.pool, &id, &app.instance).await {
            tracing::warn!(job = %id, "cannot release the job's lease (it lapses): {e}");
        }
    }
}

/// The alert key of a job's lag rule.
pub fn lag_key(job_id: &str) -> String {
    format!("lag:{job_id}")
}

async fn supervise(app: Arc<AppState>, job: JobInfo, stop: Arc<AtomicBool>, wake: Arc<Notify>) {
    let mut failures: u32 = 0;
    let mut trigger = "start";
    while !stop.load(Ordering::SeqCst) {
        let ended = match session(&app, &job, &stop, trigger, failures + 1).await {
            Ok(ended) => ended,
            Err(e) => {
                tracing::warn!(job = %job.id, "replication session could not be recorded: {e}");
                Ended {
                    failure: Some(e.to_string()),
                    healthy: false,
                }
            }
        };
        let Some(message) = ended.failure else {
            break;
        };
        if ended.healthy {
            failures = 0;
        }
        failures += 1;
        let delay = Duration::from_secs(job.retry_base_secs.max(1) as u64)
            .saturating_mul(1 << (failures - 1).min(16))
            .min(MAX_BACKOFF);
        if i64::from(failures) > job.max_retries.max(0) {
            let fired = app
                .alerter
                .fire(
                    &app.pool,
                    &format!("job-failed:{}", job.id),
                    Some(&job.tenant_id),
                    &format!(
                        "Job {} ({}) failed {failures} time(s) in a row: {}; restarting in {} s.",
                        job.name,
                        job.kind.as_str(),
                        message.lines().next().unwrap_or(""),
                        delay.as_secs()
                    ),
                )
                .await;
            if let Err(e) = fired {
                tracing::warn!(job = %job.id, "alert: {e}");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = wake.notified() => {}
        }
        trigger = "restart";
    }
    app.metrics.remove_replication(&job.id);
}

/// How a session ended.
struct Ended {
    /// `None`: stopped on purpose.
    failure: Option<String>,
    /// It replicated for [`HEALTHY_AFTER`].
    healthy: bool,
}

/// What the replicator's thread hands back.
struct ThreadOutcome {
    status: Option<ReplicationStatus>,
    error: Option<String>,
}

async fn session(
    app: &Arc<AppState>,
    job: &JobInfo,
    stop: &Arc<AtomicBool>,
    trigger: &'static str,
    attempt: u32,
) -> Result<Ended> {
    let run_id = new_id();
    let started_at = now_millis();
    sqlx::query("INSERT INTO runs (id, job_id, tenant_id, attempt, trigger, status, started_at) VALUES ($1, $2, $3, $4, $5, 'running', $6)")
        .bind(&run_id)
        .bind(&job.id)
        .bind(&job.tenant_id)
        .bind(i64::from(attempt))
        .bind(trigger)
        .bind(started_at)
        .execute(&app.pool)
        .await?;
    let clock = Instant::now();
    let outcome = match prepare(app, job).await {
        Err(message) => ThreadOutcome {
            status: None,
            error: Some(message),
        },
        Ok((options, targets)) => {
            app.running.claim(&job.id);
            let outcome = run_thread(app, job, stop, options, targets, &run_id).await;
            app.running.release(&job.id);
            outcome
        }
    };
    let healthy = outcome.status.is_some() && clock.elapsed() >= HEALTHY_AFTER;
    if outcome.error.is_some() {
        app.metrics.replication_down(&job.id);
    }
    let shipped = outcome
        .status
        .as_ref()
        .map(|s| s.destinations.iter().map(|d| d.bytes_shipped).sum::<u64>());
    let mut log = match &outcome.status {
        Some(status) => summary(status),
        None => String::new(),
    };
    if let Some(error) = &outcome.error {
        if !log.is_empty() {
            log.push('\n');
        }
        log.push_str(error);
    } else if let Some(d) = outcome.status.as_ref().and_then(|s| s.destinations.first())
        && d.lag_bytes > 0
    {
        log.push_str(&format!(
            "\nstopped with {} bytes not yet stored: they are shipped when replication starts again",
            d.lag_bytes
        ));
    }
    let log: String = log.chars().take(LOG_EXCERPT).collect();
    let status = if outcome.error.is_some() {
        "failed"
    } else {
        "stopped"
    };
    sqlx::query(
        "UPDATE runs SET status = $1, finished_at = $2, bytes = $3, log = $4 WHERE id = $5",
    )
    .bind(status)
    .bind(now_millis())
    .bind(shipped.map(|b| b as i64))
    .bind(&log)
    .bind(&run_id)
    .execute(&app.pool)
    .await?;
    app.audit
        .append(
            &app.pool,
            Event::new("system:replication", "job.run", "local")
                .outcome(if outcome.error.is_none() {
                    "ok"
                } else {
                    "failed"
                })
                .tenant(Some(&job.tenant_id))
                .target(job.id.clone())
                .detail(serde_json::json!({
                    "job": job.name, "kind": job.kind.as_str(), "run": run_id, "attempt": attempt,
                    "trigger": trigger, "seconds": clock.elapsed().as_secs_f64(), "status": status,
                })),
        )
        .await?;
    Ok(Ended {
        failure: outcome.error,
        healthy,
    })
}

/// A repository the job replicates into: its id, location and password.
type Target = (String, String, zeroize::Zeroizing<Vec<u8>>);

type Prepared = (SqliteReplicateOptions, Vec<Target>);

async fn prepare(app: &AppState, job: &JobInfo) -> std::result::Result<Prepared, String> {
    let options: SqliteReplicateOptions = serde_json::from_value(job.options.clone())
        .map_err(|e| format!("options of a sqlite-replicate job: {e}"))?;
    let mut targets = Vec::new();
    let ids = std::iter::once(&job.repository_id).chain(&options.also_to_repository_ids);
    for id in ids {
        // Looked up within the job's tenant only.
        match jobs::repository_secret(&app.pool, &app.sealer, &job.tenant_id, id).await {
            Ok(Some((location, password))) => targets.push((id.clone(), location, password)),
            Ok(None) => return Err(format!("the job's repository {id} no longer exists")),
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok((options, targets))
}

/// Runs the replicator on its own thread until `stop` or a failure; meanwhile records the
/// bytes shipped in the run, and resolves `job-failed` once the session is healthy.
async fn run_thread(
    app: &Arc<AppState>,
    job: &JobInfo,
    stop: &Arc<AtomicBool>,
    options: SqliteReplicateOptions,
    targets: Vec<Target>,
    run_id: &str,
) -> ThreadOutcome {
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    let thread_app = Arc::clone(app);
    let thread_stop = Arc::clone(stop);
    let thread_job = job.clone();
    let spawned = std::thread::Builder::new()
        .name(format!(
            "lifeboat-replicate-{}",
            &job.id[..8.min(job.id.len())]
        ))
        .spawn(move || {
            let outcome = replicate(&thread_app, &thread_job, &thread_stop, &options, targets);
            let _ = tx.send(outcome);
        });
    if let Err(e) = spawned {
        return ThreadOutcome {
            status: None,
            error: Some(format!("cannot start a replication thread: {e}")),
        };
    }
    let started = Instant::now();
    let mut resolved = false;
    let mut progress = tokio::time::interval(PROGRESS_EVERY);
    progress.tick().await;
    loop {
        tokio::select! {
            outcome = &mut rx => {
                return outcome.unwrap_or_else(|_| ThreadOutcome {
                    status: None,
                    error: Some("the replication thread panicked".into()),
                });
            }
            _ = progress.tick() => {
                let Some(report) = app.metrics.replication(&job.id) else { continue };
                if !report.up {
                    continue;
                }
                let _ = sqlx::query("UPDATE runs SET bytes = $1 WHERE id = $2 AND status = 'running'")
                    .bind(report.bytes_shipped as i64)
                    .bind(run_id)
                    .execute(&app.pool)
                    .await;
                if !resolved && started.elapsed() >= HEALTHY_AFTER {
                    resolved = true;
                    let _ = app
                        .alerter
                        .resolve(
                            &app.pool,
                            &format!("job-failed:{}", job.id),
                            &format!("Job {} ({}) is replicating again.", job.name, job.kind.as_str()),
                        )
                        .await;
                }
            }
        }
    }
}

/// The replicator itself (blocking).
fn replicate(
    app: &AppState,
    job: &JobInfo,
    stop: &AtomicBool,
    options: &SqliteReplicateOptions,
    targets: Vec<Target>,
) -> ThreadOutcome {
    let failed = |message: String| ThreadOutcome {
        status: None,
        error: Some(message),
    };
    let repository_ids: Vec<String> = targets.iter().map(|(id, _, _)| id.clone()).collect();
    let mut destinations = Vec::new();
    for (_, location, password) in targets {
        // One that does not answer is retried by the replicator in the background (the others
        // replicate meanwhile); a wrong password fails the session.
        match lifeboat_sqlite::open_destination(location.clone(), &location, password) {
            Ok(d) => destinations.push(d),
            Err(e) => return failed(format!("cannot open the repository at {location}: {e}")),
        }
    }
    let library_options = options.replicate_options();
    let mut replicator =
        match Replicator::open_with(&options.database, destinations, library_options) {
            Ok(r) => r,
            Err(e) => {
                return failed(format!(
                    "cannot start replicating {}: {e}",
                    options.database.display()
                ));
            }
        };
    let report = |status: &ReplicationStatus| {
        app.metrics
            .report_replication(&job.id, report_of(job, &repository_ids, status));
    };
    report(&replicator.status());
    let mut failing_since: Option<Instant> = None;
    let mut error = None;
    while !stop.load(Ordering::SeqCst) {
        match replicator.tick() {
            Ok(()) => failing_since = None,
            Err(e) => {
                tracing::warn!(job = %job.id, database = %options.database.display(), "replication: {e}");
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= FAIL_AFTER {
                    error = Some(format!(
                        "replication of {} kept failing for {} s: {e}",
                        options.database.display(),
                        FAIL_AFTER.as_secs()
                    ));
                    break;
                }
            }
        }
        report(&replicator.status());
        replicator.idle(stop);
    }
    if error.is_none()
        && let Err(e) = replicator.sync(FINAL_SYNC)
    {
        tracing::warn!(job = %job.id, "final capture: {e}");
    }
    let status = replicator.status();
    // Dropping it stops the destination's thread after one last attempt at its queue.
    drop(replicator);
    if error.is_none() {
        report(&status);
    }
    ThreadOutcome {
        status: Some(status),
        error,
    }
}

/// The job's report: the worst of its destinations at the job level (what the lag alert
/// watches), and each destination by repository id.
fn report_of(
    job: &JobInfo,
    repository_ids: &[String],
    status: &ReplicationStatus,
) -> ReplicationReport {
    let destinations: Vec<DestinationReport> = status
        .destinations
        .iter()
        .zip(repository_ids)
        .map(|(d, id)| DestinationReport {
            repository_id: id.clone(),
            state: d.state,
            lag_seconds: d.lag_seconds,
            lag_bytes: d.lag_bytes,
            bytes_shipped: d.bytes_shipped,
            last_error: d.last_error.clone(),
        })
        .collect();
    ReplicationReport {
        tenant_id: job.tenant_id.clone(),
        job_name: job.name.clone(),
        database: status.database.clone(),
        up: true,
        released: destinations
            .iter()
            .any(|d| d.state != DestinationState::Live),
        lag_seconds: destinations
            .iter()
            .map(|d| d.lag_seconds)
            .fold(0.0, f64::max),
        lag_bytes: destinations.iter().map(|d| d.lag_bytes).max().unwrap_or(0),
        bytes_shipped: destinations.iter().map(|d| d.bytes_shipped).sum(),
        last_error: destinations
            .iter()
            .find_map(|d| d.last_error.clone())
            .or_else(|| status.last_error.clone()),
        destinations,
    }
}

fn summary(status: &ReplicationStatus) -> String {
    if status.destinations.is_empty() {
        return format!("replicated {}", status.database);
    }
    let mut lines = Vec::new();
    for d in &status.destinations {
        lines.push(format!(
            "replicated {} to {} (stream {}, generation {}): {} segments ({} bytes), {} snapshot(s), {} checkpoint(s); {} s behind ({} bytes) at the end{}",
            status.database,
            d.repository,
            d.stream,
            d.generation,
            d.segments_shipped,
            d.bytes_shipped,
            d.snapshots_taken,
            status.checkpoints,
            d.lag_seconds.round(),
            d.lag_bytes,
            match d.state {
                DestinationState::Live => String::new(),
                DestinationState::Released => "; released".into(),
                DestinationState::NotOpen => "; never opened".into(),
            }
        ));
    }
    lines.join("\n")
}
