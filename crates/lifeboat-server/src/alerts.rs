//! Alerts: a condition fires once and resolves once. The catalog's `alerts` table holds what is
//! firing, so a condition that persists over many runs (or a restart) is announced once, and
//! its end is announced with a resolved message. Delivery: a webhook taking Slack-compatible
//! JSON (`{"text": "..."}`) and e-mail over SMTP (lettre, rustls), each when configured, with
//! the same de-duplication; a failed delivery is logged and tried again (on every channel)
//! the next time the condition is evaluated.

use std::time::Duration;

use lettre::message::{Mailbox, header::ContentType};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::catalog::{Pool, now_millis};
use crate::config::AlertConfig;
use crate::error::{Error, Result};

/// Alert e-mails: the SMTP transport, sender and recipients.
#[derive(Clone)]
struct Mail {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
}

/// Sends alerts.
#[derive(Clone)]
pub struct Alerter {
    webhook_url: Option<String>,
    client: reqwest::Client,
    mail: Option<Mail>,
}

impl std::fmt::Debug for Alerter {
    // The SMTP URL may hold a password: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alerter")
            .field("webhook", &self.webhook_url.is_some())
            .field("mail", &self.mail.as_ref().map(|m| m.to.len()))
            .finish()
    }
}

/// A firing or resolved announcement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Firing,
    Resolved,
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
            mail: None,
        }
    }

    /// An alerter for the `[alerts]` configuration: webhook and/or SMTP.
    pub fn from_config(config: &AlertConfig) -> Result<Self> {
        let mut alerter = Alerter::new(config.webhook_url.clone());
        if let Some(url) = &config.smtp_url {
            let invalid = |what: &str, e: &dyn std::fmt::Display| Error::Config {
                path: "[alerts]".into(),
                message: format!("{what}: {e}"),
            };
            let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                // The URL is not repeated: it may hold a password.
                .map_err(|e| invalid("smtp_url is not a valid SMTP URL (smtps://host:465, smtp://host:587?tls=required, smtp://127.0.0.1:25)", &e))?
                .timeout(Some(Duration::from_secs(10)))
                .build();
            let from = config
                .email_from
                .as_deref()
                .unwrap_or_default()
                .parse::<Mailbox>()
                .map_err(|e| invalid("email_from is not an e-mail address", &e))?;
            let to = config
                .email_to
                .iter()
                .map(|a| {
                    a.parse::<Mailbox>().map_err(|e| {
                        invalid(&format!("email_to {a:?} is not an e-mail address"), &e)
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            alerter.mail = Some(Mail {
                transport,
                from,
                to,
            });
        }
        Ok(alerter)
    }

    async fn deliver(&self, kind: Kind, message: &str) -> bool {
        let text = match kind {
            Kind::Firing => format!(":rotating_light: [FIRING] {message}"),
            Kind::Resolved => format!(":white_check_mark: [RESOLVED] {message}"),
        };
        let webhook = self.post_webhook(&text).await;
        let mail = self.send_mail(kind, message).await;
        webhook && mail
    }

    async fn send_mail(&self, kind: Kind, message: &str) -> bool {
        let Some(mail) = &self.mail else {
            return true;
        };
        let tag = match kind {
            Kind::Firing => "FIRING",
            Kind::Resolved => "RESOLVED",
        };
        // The subject is the first line, short enough for a phone's list of mails.
        let first: String = message
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(120)
            .collect();
        let mut builder = Message::builder()
            .from(mail.from.clone())
            .subject(format!("[{tag}] {first}"))
            .header(ContentType::TEXT_PLAIN);
        for to in &mail.to {
            builder = builder.to(to.clone());
        }
        let body = format!("[{tag}] {message}\n\n-- \nLifeboat alert (lifeboat serve)\n");
        let email = match builder.body(body) {
            Ok(email) => email,
            Err(e) => {
                tracing::warn!("alert e-mail could not be built: {e}");
                return false;
            }
        };
        match mail.transport.send(email).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!("alert e-mail: {e}");
                false
            }
        }
    }

    async fn post_webhook(&self, text: &str) -> bool {
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
            // Another server sharing the catalog may raise the same alert at the same moment.
            sqlx::query("INSERT INTO alerts (alert_key, tenant_id, message, firing_since) VALUES ($1, $2, $3, $4) ON CONFLICT (alert_key) DO NOTHING")
                .bind(key)
                .bind(tenant_id)
                .bind(message)
                .bind(now_millis())
                .execute(pool)
                .await?;
        }
        if self.deliver(Kind::Firing, message).await {
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
        if notified.is_some() && !self.deliver(Kind::Resolved, message).await {
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
