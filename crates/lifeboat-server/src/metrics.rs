//! `/metrics` in the Prometheus text format.
//!
//! HTTP request counts live in memory (they restart at zero with the process, as Prometheus
//! counters may). Job figures are read from the catalog at each scrape, so they survive
//! restarts: last success time and age, last run's duration and bytes, runs by outcome, and
//! alerts firing.

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
    let (firing,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM alerts")
        .fetch_one(pool)
        .await?;
    let _ = writeln!(
        out,
        "# HELP lifeboat_alerts_firing Alerts firing now.\n# TYPE lifeboat_alerts_firing gauge\nlifeboat_alerts_firing {firing}"
    );
    Ok(out)
}
