//! `/metrics` in the Prometheus text format.
//!
//! HTTP request counts live in memory (they restart at zero with the process, as Prometheus
//! counters may). Job figures are read from the catalog at each scrape, so they survive
//! restarts: last success time and age, last run's duration and bytes, runs by outcome, and
//! alerts firing. Replication figures (lag, shipped bytes) are what the running replicators
//! last reported ([`crate::replication`]), kept in memory.

use std::collections::BTreeMap;
use std::fmt::Write;

use parking_lot::Mutex;
use sqlx::Row;

use crate::catalog::{Pool, now_millis};
use crate::error::Result;

/// In-memory counters.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    replication: Mutex<BTreeMap<String, ReplicationReport>>,
}

/// What a continuous job's replicator last reported about its destination.
#[derive(Debug, Clone, Default)]
pub struct ReplicationReport {
    /// The job's tenant.
    pub tenant_id: String,
    /// The job's name.
    pub job_name: String,
    /// The database replicated.
    pub database: String,
    /// The replicator runs (false while it waits to restart after a failure).
    pub up: bool,
    /// The destination fell past the lag limit or failed, and no longer holds the WAL.
    pub released: bool,
    /// Seconds since the oldest commit not yet stored in the repository was captured.
    pub lag_seconds: f64,
    /// Committed WAL bytes not yet stored in the repository.
    pub lag_bytes: u64,
    /// Frame bytes stored by the current session.
    pub bytes_shipped: u64,
    /// The destination's (or reader's) last error.
    pub last_error: Option<String>,
    /// Each destination (the job's repository first); the fields above are their worst
    /// (lag), any (released) or sum (bytes shipped).
    pub destinations: Vec<DestinationReport>,
}

/// What the replicator reports about one of a job's repositories.
#[derive(Debug, Clone)]
pub struct DestinationReport {
    /// The repository's id.
    pub repository_id: String,
    /// Live, released, or not open yet.
    pub state: lifeboat_sqlite::DestinationState,
    /// Seconds since the oldest commit not stored there was captured.
    pub lag_seconds: f64,
    /// Committed WAL bytes not stored there.
    pub lag_bytes: u64,
    /// Frame bytes stored there by the current session.
    pub bytes_shipped: u64,
    /// Its last error.
    pub last_error: Option<String>,
}

impl Metrics {
    /// Records what a replicator reports.
    pub fn report_replication(&self, job_id: &str, report: ReplicationReport) {
        self.replication.lock().insert(job_id.to_owned(), report);
    }

    /// Marks a job's replicator as down (its lag is unknown until it runs again).
    pub fn replication_down(&self, job_id: &str) {
        if let Some(report) = self.replication.lock().get_mut(job_id) {
            report.up = false;
        }
    }

    /// Forgets a job whose replicator was stopped for good.
    pub fn remove_replication(&self, job_id: &str) {
        self.replication.lock().remove(job_id);
    }

    /// The last report of a job's replicator.
    pub fn replication(&self, job_id: &str) -> Option<ReplicationReport> {
        self.replication.lock().get(job_id).cloned()
    }
}

impl Metrics {
    /// Counts one answered request. `route` is the route pattern, never the raw path, so ids do
    /// not become labels.
    pub fn count_request(&self, method: &str, route: &str, status: u16) {
        *self
            .requests
            .lock()
            .entry((method.to_owned(), route.to_owned(), status))
            .or_default() += 1;
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Renders every metric.
pub async fn render(metrics: &Metrics, pool: &Pool) -> Result<String> {
    let mut out = String::new();
    out.push_str("# HELP lifeboat_http_requests_total HTTP requests answered, by route pattern and status.\n");
    out.push_str("# TYPE lifeboat_http_requests_total counter\n");
    for ((method, route, status), count) in metrics.requests.lock().iter() {
        let _ = writeln!(
            out,
            "lifeboat_http_requests_total{{method=\"{}\",route=\"{}\",status=\"{status}\"}} {count}",
            escape(method),
            escape(route)
        );
    }

    let jobs = sqlx::query(
        "SELECT j.id, j.name, j.kind, j.tenant_id, \
           (SELECT MAX(r.finished_at) FROM runs r WHERE r.job_id = j.id AND r.status = 'succeeded') AS last_success, \
           (SELECT COUNT(*) FROM runs r WHERE r.job_id = j.id AND r.status = 'succeeded') AS succeeded, \
           (SELECT COUNT(*) FROM runs r WHERE r.job_id = j.id AND r.status = 'failed') AS failed, \
           (SELECT COUNT(*) FROM runs r WHERE r.job_id = j.id AND r.status = 'interrupted') AS interrupted \
         FROM jobs j ORDER BY j.tenant_id, j.name",
    )
    .fetch_all(pool)
    .await?;
    let now = now_millis();
    let mut success_time = String::new();
    let mut success_age = String::new();
    let mut runs = String::new();
    let mut failures = String::new();
    let mut duration = String::new();
    let mut bytes = String::new();
    for job in &jobs {
        let id: String = job.try_get("id")?;
        let name: String = job.try_get("name")?;
        let kind: String = job.try_get("kind")?;
        let tenant: String = job.try_get("tenant_id")?;
        let labels = format!(
            "tenant=\"{}\",job=\"{}\",job_id=\"{}\",kind=\"{}\"",
            escape(&tenant),
            escape(&name),
            escape(&id),
            escape(&kind)
        );
        if let Some(last) = job.try_get::<Option<i64>, _>("last_success")? {
            let _ = writeln!(
                success_time,
                "lifeboat_job_last_success_timestamp_seconds{{{labels}}} {}",
                last as f64 / 1000.0
            );
            let _ = writeln!(
                success_age,
                "lifeboat_job_last_success_age_seconds{{{labels}}} {}",
                (now - last).max(0) as f64 / 1000.0
            );
        }
        for outcome in ["succeeded", "failed", "interrupted"] {
            let count: i64 = job.try_get(outcome)?;
            let _ = writeln!(
                runs,
                "lifeboat_job_runs_total{{{labels},outcome=\"{outcome}\"}} {count}"
            );
        }
        let failed: i64 = job.try_get("failed")?;
        let _ = writeln!(failures, "lifeboat_job_failures_total{{{labels}}} {failed}");
        let last_run = sqlx::query("SELECT started_at, finished_at, bytes FROM runs WHERE job_id = $1 AND finished_at IS NOT NULL ORDER BY finished_at DESC LIMIT 1")
            .bind(&id)
            .fetch_optional(pool)
            .await?;
        if let Some(run) = last_run {
            let started: i64 = run.try_get("started_at")?;
            let finished: i64 = run.try_get("finished_at")?;
            let _ = writeln!(
                duration,
                "lifeboat_job_last_run_duration_seconds{{{labels}}} {}",
                (finished - started).max(0) as f64 / 1000.0
            );
            if let Some(b) = run.try_get::<Option<i64>, _>("bytes")? {
                let _ = writeln!(bytes, "lifeboat_job_last_run_bytes{{{labels}}} {b}");
            }
        }
    }
    for (name, kind, help, body) in [
        (
            "lifeboat_job_last_success_timestamp_seconds",
            "gauge",
            "End of the job's last successful run, Unix time.",
            &success_time,
        ),
        (
            "lifeboat_job_last_success_age_seconds",
            "gauge",
            "Seconds since the job's last successful run ended.",
            &success_age,
        ),
        (
            "lifeboat_job_last_run_duration_seconds",
            "gauge",
            "Duration of the job's last finished run.",
            &duration,
        ),
        (
            "lifeboat_job_last_run_bytes",
            "gauge",
            "Bytes added (backup) or read (check) by the job's last finished run.",
            &bytes,
        ),
        (
            "lifeboat_job_runs_total",
            "counter",
            "Runs of the job by outcome (each retry is a run).",
            &runs,
        ),
        (
            "lifeboat_job_failures_total",
            "counter",
            "Failed runs of the job.",
            &failures,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        out.push_str(body);
    }
    render_replication(metrics, &mut out);
    let (firing,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM alerts")
        .fetch_one(pool)
        .await?;
    let _ = writeln!(
        out,
        "# HELP lifeboat_alerts_firing Alerts firing now.\n# TYPE lifeboat_alerts_firing gauge\nlifeboat_alerts_firing {firing}"
    );
    Ok(out)
}

/// The replication gauges, labelled like the job metrics (`kind` is always
/// `sqlite-replicate`). Lag is left out while a replicator is down: it is unknown then, and
/// `lifeboat_replication_up` says so.
fn render_replication(metrics: &Metrics, out: &mut String) {
    let reports = metrics.replication.lock().clone();
    let mut up = String::new();
    let mut released = String::new();
    let mut seconds = String::new();
    let mut bytes = String::new();
    let mut shipped = String::new();
    let mut dest_live = String::new();
    let mut dest_seconds = String::new();
    let mut dest_bytes = String::new();
    for (job_id, r) in &reports {
        let labels = format!(
            "tenant=\"{}\",job=\"{}\",job_id=\"{}\",kind=\"sqlite-replicate\"",
            escape(&r.tenant_id),
            escape(&r.job_name),
            escape(job_id)
        );
        let _ = writeln!(up, "lifeboat_replication_up{{{labels}}} {}", u8::from(r.up));
        if !r.up {
            continue;
        }
        let _ = writeln!(
            released,
            "lifeboat_replication_released{{{labels}}} {}",
            u8::from(r.released)
        );
        let _ = writeln!(
            seconds,
            "lifeboat_replication_lag_seconds{{{labels}}} {}",
            r.lag_seconds
        );
        let _ = writeln!(
            bytes,
            "lifeboat_replication_lag_bytes{{{labels}}} {}",
            r.lag_bytes
        );
        let _ = writeln!(
            shipped,
            "lifeboat_replication_shipped_bytes_total{{{labels}}} {}",
            r.bytes_shipped
        );
        for d in &r.destinations {
            let labels = format!("{labels},repository_id=\"{}\"", escape(&d.repository_id));
            let _ = writeln!(
                dest_live,
                "lifeboat_replication_destination_live{{{labels}}} {}",
                u8::from(d.state == lifeboat_sqlite::DestinationState::Live)
            );
            let _ = writeln!(
                dest_seconds,
                "lifeboat_replication_destination_lag_seconds{{{labels}}} {}",
                d.lag_seconds
            );
            let _ = writeln!(
                dest_bytes,
                "lifeboat_replication_destination_lag_bytes{{{labels}}} {}",
                d.lag_bytes
            );
        }
    }
    for (name, kind, help, body) in [
        (
            "lifeboat_replication_up",
            "gauge",
            "1 while the job's replicator runs, 0 while it waits to restart after a failure.",
            &up,
        ),
        (
            "lifeboat_replication_lag_seconds",
            "gauge",
            "Seconds since the oldest commit not yet stored in the repository was captured (0: nothing waits).",
            &seconds,
        ),
        (
            "lifeboat_replication_lag_bytes",
            "gauge",
            "Committed WAL bytes not yet stored in the repository.",
            &bytes,
        ),
        (
            "lifeboat_replication_released",
            "gauge",
            "1 if the repository fell past max_lag_mib (or failed) and no longer holds the WAL; it resyncs when it answers.",
            &released,
        ),
        (
            "lifeboat_replication_shipped_bytes_total",
            "counter",
            "WAL frame bytes stored by the replicator since it (re)started.",
            &shipped,
        ),
        (
            "lifeboat_replication_destination_live",
            "gauge",
            "1 while the repository holds the WAL; 0 while it is released or not open yet (it is retried).",
            &dest_live,
        ),
        (
            "lifeboat_replication_destination_lag_seconds",
            "gauge",
            "Per repository of the job: seconds since the oldest commit not yet stored there was captured.",
            &dest_seconds,
        ),
        (
            "lifeboat_replication_destination_lag_bytes",
            "gauge",
            "Per repository of the job: committed WAL bytes not yet stored there.",
            &dest_bytes,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        out.push_str(body);
    }
}
