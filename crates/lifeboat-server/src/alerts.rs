//! Alerts: a condition fires once and resolves once. The catalog's `alerts` table holds what is
//! firing, so a condition that persists over many runs (or a restart) is announced once, and
//! its end is announced with a resolved message. Delivery: a webhook taking Slack-compatible
//! JSON (`{"text": "..."}`); a failed delivery is logged and tried again the next time the
//! condition is evaluated.

use std::time::Duration;

use crate::catalog::{Pool, now_millis};
use crate::error::Result;

/// Sends alerts.
#[derive(Debug, Clone)]
pub struct Alerter {
    webhook_url: Option<String>,
    client: reqwest::Client,
}

impl Alerter {
    /// An alerter posting to `webhook_url`, if any.
    pub fn new(webhook_url: Option<String>) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("a reqwest client with rustls builds");
        Alerter {
            webhook_url,
            client,
        }
    }

    async fn deliver(&self, text: &str) -> bool {
        let Some(url) = &self.webhook_url else {
            return true;
        };
        let body = serde_json::json!({ "text": text }).to_string();
        match self
            .client
            .post(url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
        {
            Ok(response) if response.status().is_success() => true,
            Ok(response) => {
                tracing::warn!("alert webhook answered {}", response.status());
                false
            }
            Err(e) => {
                tracing::warn!("alert webhook: {e}");
                false
            }
        }
    }

    /// Raises alert `key` unless it is firing and was delivered already.
    pub async fn fire(
        &self,
        pool: &Pool,
        key: &str,
        tenant_id: Option<&str>,
        message: &str,
    ) -> Result<()> {
        let existing: Option<(Option<i64>,)> =
            sqlx::query_as("SELECT notified_at FROM alerts WHERE alert_key = $1")
                .bind(key)
                .fetch_optional(pool)
                .await?;
        if let Some((Some(_),)) = existing {
            return Ok(());
        }
        if existing.is_none() {
            sqlx::query("INSERT INTO alerts (alert_key, tenant_id, message, firing_since) VALUES ($1, $2, $3, $4)")
                .bind(key)
                .bind(tenant_id)
                .bind(message)
                .bind(now_millis())
                .execute(pool)
                .await?;
        }
        if self
            .deliver(&format!(":rotating_light: [FIRING] {message}"))
            .await
        {
            sqlx::query("UPDATE alerts SET notified_at = $1 WHERE alert_key = $2")
                .bind(now_millis())
                .bind(key)
                .execute(pool)
                .await?;
        }
        Ok(())
    }

    /// Ends alert `key` if it is firing, announcing it.
    pub async fn resolve(&self, pool: &Pool, key: &str, message: &str) -> Result<()> {
        let existing: Option<(Option<i64>,)> =
            sqlx::query_as("SELECT notified_at FROM alerts WHERE alert_key = $1")
                .bind(key)
                .fetch_optional(pool)
                .await?;
        let Some((notified,)) = existing else {
            return Ok(());
        };
        // Nobody heard it fire: no need to hear it resolve.
        if notified.is_some()
            && !self
                .deliver(&format!(":white_check_mark: [RESOLVED] {message}"))
                .await
        {
            return Ok(());
        }
        sqlx::query("DELETE FROM alerts WHERE alert_key = $1")
            .bind(key)
            .execute(pool)
            .await?;
        Ok(())
    }
}

/// Alerts firing now, as (key, tenant, message, since).
pub async fn firing(pool: &Pool) -> Result<Vec<(String, Option<String>, String, i64)>> {
    Ok(sqlx::query_as(
        "SELECT alert_key, tenant_id, message, firing_since FROM alerts ORDER BY firing_since",
    )
    .fetch_all(pool)
    .await?)
}
