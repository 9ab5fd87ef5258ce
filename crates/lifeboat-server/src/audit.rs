//! The audit log: every login, every change and every restore or download, appended with who,
//! what, on which tenant, from where and when.
//!
//! # Chain
//!
//! Row `n` stores `mac_n = BLAKE3-keyed(audit key, canonical(row n) ‖ mac_{n-1})` (hex), with
//! `mac_0` = 64 zeros. The canonical encoding is the version tag `lifeboat-audit-v1` followed by
//! each field as an 8-byte little-endian length and its bytes, in the order seq, at, actor,
//! action, outcome, tenant, source, target, detail, prev_mac; an absent optional field is the
//! length `u64::MAX` and no bytes (see [`canonical`]). Because the sequence number is
//! inside the MAC, moving a row changes nothing the attacker can fix without the key; because
//! each MAC covers the previous one, a deleted row breaks the next; and the newest `seq mac`
//! pair is also written to `audit.head` in the state directory, so cutting the tail is seen.
//!
//! The key (`audit.key`) lives in the state directory, outside the catalog: someone who can
//! write the database but not read that file cannot forge a row.
//!
//! Details never hold secrets: callers pass names and ids, never request bodies.

use std::io::Write;

use serde::Serialize;
use sqlx::Row;
use zeroize::Zeroizing;

use crate::catalog::{Pool, now_millis};
use crate::error::{Error, Result};
use crate::state::{AUDIT_HEAD, AUDIT_KEY, StateDir};

/// The MAC before the first row.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One event to append.
#[derive(Debug, Clone)]
pub struct Event {
    /// Who: `user:alice`, `token:alice/<id>`, `anonymous:<name tried>`, `system`.
    pub actor: String,
    /// What: `login`, `user.create`, `job.run`, …
    pub action: String,
    /// `ok`, `denied` or `failed`.
    pub outcome: String,
    /// The tenant concerned, if any.
    pub tenant_id: Option<String>,
    /// The source address (or `local` for the command line).
    pub source: String,
    /// The object acted on (an id or name).
    pub target: Option<String>,
    /// More facts, as JSON; never secrets.
    pub detail: serde_json::Value,
}

impl Event {
    /// An event with outcome `ok` and no tenant, target or detail.
    pub fn new(actor: impl Into<String>, action: &str, source: impl Into<String>) -> Self {
        Event {
            actor: actor.into(),
            action: action.to_owned(),
            outcome: "ok".into(),
            tenant_id: None,
            source: source.into(),
            target: None,
            detail: serde_json::Value::Null,
        }
    }

    /// Sets the outcome.
    pub fn outcome(mut self, outcome: &str) -> Self {
        self.outcome = outcome.to_owned();
        self
    }

    /// Sets the tenant.
    pub fn tenant(mut self, tenant_id: Option<&str>) -> Self {
        self.tenant_id = tenant_id.map(str::to_owned);
        self
    }

    /// Sets the target.
    pub fn target(mut self, target: impl Into<String>) -> Self {
        self.target = Some(target.into());
        self
    }

    /// Sets the detail.
    pub fn detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = detail;
        self
    }
}

/// A stored row, as exported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Record {
    /// Position in the chain, from 1.
    pub seq: i64,
    /// Milliseconds since the Unix epoch.
    pub at: i64,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// Outcome.
    pub outcome: String,
    /// Tenant.
    pub tenant_id: Option<String>,
    /// Source address.
    pub source: String,
    /// Object.
    pub target: Option<String>,
    /// Detail (JSON text).
    pub detail: String,
    /// The previous row's MAC.
    pub prev_mac: String,
    /// This row's MAC.
    pub mac: String,
}

fn put(out: &mut Vec<u8>, field: Option<&[u8]>) {
    match field {
        Some(bytes) => {
            out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            out.extend_from_slice(bytes);
        }
        // u64::MAX as a length marks an absent field: no present field can have it.
        None => out.extend_from_slice(&u64::MAX.to_le_bytes()),
    }
}

/// The bytes the MAC covers.
pub fn canonical(record: &Record) -> Vec<u8> {
    let mut out = b"lifeboat-audit-v1".to_vec();
    put(&mut out, Some(record.seq.to_string().as_bytes()));
    put(&mut out, Some(record.at.to_string().as_bytes()));
    put(&mut out, Some(record.actor.as_bytes()));
    put(&mut out, Some(record.action.as_bytes()));
    put(&mut out, Some(record.outcome.as_bytes()));
    put(&mut out, record.tenant_id.as_deref().map(str::as_bytes));
    put(&mut out, Some(record.source.as_bytes()));
    put(&mut out, record.target.as_deref().map(str::as_bytes));
    put(&mut out, Some(record.detail.as_bytes()));
    put(&mut out, Some(record.prev_mac.as_bytes()));
    out
}

fn mac(key: &[u8; 32], record: &Record) -> String {
    blake3::keyed_hash(key, &canonical(record))
        .to_hex()
        .to_string()
}

/// The audit log of one server.
pub struct AuditLog {
    key: Zeroizing<[u8; 32]>,
    state: StateDir,
    append_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditLog(..)")
    }
}

const COLUMNS: &str =
    "seq, at, actor, action, outcome, tenant_id, source, target, detail, prev_mac, mac";

fn record_from_row(row: &crate::catalog::Row) -> std::result::Result<Record, sqlx::Error> {
    Ok(Record {
        seq: row.try_get("seq")?,
        at: row.try_get("at")?,
        actor: row.try_get("actor")?,
        action: row.try_get("action")?,
        outcome: row.try_get("outcome")?,
        tenant_id: row.try_get("tenant_id")?,
        source: row.try_get("source")?,
        target: row.try_get("target")?,
        detail: row.try_get("detail")?,
        prev_mac: row.try_get("prev_mac")?,
        mac: row.try_get("mac")?,
    })
}

impl AuditLog {
    /// The log of the server whose state directory is `state` (creates the key on first use).
    pub fn open(state: &StateDir) -> Result<Self> {
        Ok(AuditLog {
            key: state.key(AUDIT_KEY)?,
            state: state.clone(),
            append_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// Appends `event`; returns its sequence number. Appends are serialised in this process
    /// and, through the catalog's lock, with every other process writing the same catalog (the
    /// CLI, or other servers sharing a PostgreSQL catalog); each runs in one transaction.
    pub async fn append(&self, pool: &Pool, event: Event) -> Result<i64> {
        let _guard = self.append_lock.lock().await;
        // Take the lock before reading the newest row, so no other append comes in between.
        let mut tx = crate::catalog::begin_write(pool).await?;
        crate::catalog::lock_audit(&mut tx).await?;
        let last: Option<(i64, String)> =
            sqlx::query_as("SELECT seq, mac FROM audit_log ORDER BY seq DESC LIMIT 1")
                .fetch_optional(&mut *tx)
                .await?;
        let (seq, prev_mac) = match last {
            Some((seq, mac)) => (seq + 1, mac),
            None => (1, GENESIS.to_owned()),
        };
        let mut record = Record {
            seq,
            at: now_millis(),
            actor: event.actor,
            action: event.action,
            outcome: event.outcome,
            tenant_id: event.tenant_id,
            source: event.source,
            target: event.target,
            detail: event.detail.to_string(),
            prev_mac,
            mac: String::new(),
        };
        record.mac = mac(&self.key, &record);
        sqlx::query(
            "INSERT INTO audit_log (seq, at, actor, action, outcome, tenant_id, source, target, detail, prev_mac, mac) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(record.seq)
        .bind(record.at)
        .bind(&record.actor)
        .bind(&record.action)
        .bind(&record.outcome)
        .bind(&record.tenant_id)
        .bind(&record.source)
        .bind(&record.target)
        .bind(&record.detail)
        .bind(&record.prev_mac)
        .bind(&record.mac)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.state.replace(
            AUDIT_HEAD,
            format!("{} {}\n", record.seq, record.mac).as_bytes(),
        )?;
        Ok(seq)
    }
}

/// Rows, oldest first; only `tenant_id`'s when given.
pub async fn records(pool: &Pool, tenant_id: Option<&str>) -> Result<Vec<Record>> {
    let rows = match tenant_id {
        None => {
            sqlx::query(&format!("SELECT {COLUMNS} FROM audit_log ORDER BY seq"))
                .fetch_all(pool)
                .await?
        }
        Some(tenant) => {
            sqlx::query(&format!(
                "SELECT {COLUMNS} FROM audit_log WHERE tenant_id = $1 ORDER BY seq"
            ))
            .bind(tenant)
            .fetch_all(pool)
            .await?
        }
    };
    Ok(rows
        .iter()
        .map(record_from_row)
        .collect::<std::result::Result<_, _>>()?)
}

/// Writes rows as JSON lines.
pub fn write_json_lines(records: &[Record], mut out: impl Write) -> std::io::Result<()> {
    for record in records {
        serde_json::to_writer(&mut out, record)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// One thing wrong with the chain, naming the row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The sequence number of the row (as stored) where the problem shows.
    pub seq: i64,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "row {}: {}", self.seq, self.message)
    }
}

/// What verification found.
#[derive(Debug, Clone, Default)]
pub struct Verification {
    /// Rows read.
    pub rows: usize,
    /// Problems, in chain order; empty when the log is intact.
    pub problems: Vec<Problem>,
}

/// Verifies the whole chain with the key and head file of `state`.
pub async fn verify(pool: &Pool, state: &StateDir) -> Result<Verification> {
    let key = state.existing_key(AUDIT_KEY)?;
    let head = match std::fs::read_to_string(state.path(AUDIT_HEAD)) {
        Ok(text) => {
            let mut parts = text.split_whitespace();
            let seq = parts.next().and_then(|s| s.parse::<i64>().ok());
            let mac = parts.next().map(str::to_owned);
            match (seq, mac) {
                (Some(seq), Some(mac)) => Some((seq, mac)),
                _ => {
                    return Err(Error::AuditBroken(format!(
                        "{} is not `seq mac`",
                        state.path(AUDIT_HEAD).display()
                    )));
                }
            }
        }
        Err(_) => None,
    };
    let records = records(pool, None).await?;
    Ok(verify_records(&key, &records, head))
}

/// Verifies `records` (ordered by seq) against `key` and the head `(seq, mac)` if known.
pub fn verify_records(
    key: &[u8; 32],
    records: &[Record],
    head: Option<(i64, String)>,
) -> Verification {
    let mut problems = Vec::new();
    let mut expected_seq = 1;
    let mut previous_mac = GENESIS.to_owned();
    for record in records {
        if record.seq != expected_seq {
            problems.push(Problem {
                seq: record.seq,
                message: if record.seq > expected_seq {
                    format!(
                        "rows {expected_seq}..{} are missing (deleted)",
                        record.seq - 1
                    )
                } else {
                    format!("sequence number repeats or goes back (expected {expected_seq})")
                },
            });
        }
        if record.prev_mac != previous_mac {
            problems.push(Problem {
                seq: record.seq,
                message:
                    "does not follow the row before it: a row was deleted, inserted or moved here"
                        .into(),
            });
        }
        if mac(key, record) != record.mac {
            problems.push(Problem {
                seq: record.seq,
                message: "its contents do not match its MAC: the row was edited or moved".into(),
            });
        }
        expected_seq = record.seq + 1;
        previous_mac = record.mac.clone();
    }
    if let Some((head_seq, head_mac)) = head {
        match records.iter().find(|r| r.seq == head_seq) {
            Some(row) if row.mac != head_mac => problems.push(Problem {
                seq: head_seq,
                message: "differs from the newest row recorded in audit.head: it was replaced".into(),
            }),
            Some(_) => {}
            None => problems.push(Problem {
                seq: head_seq,
                message: format!(
                    "audit.head records row {head_seq} as the newest, but the log ends at row {}: the tail was deleted",
                    records.last().map_or(0, |r| r.seq)
                ),
            }),
        }
    }
    Verification {
        rows: records.len(),
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(key: &[u8; 32], n: i64) -> Vec<Record> {
        let mut previous = GENESIS.to_owned();
        (1..=n)
            .map(|seq| {
                let mut record = Record {
                    seq,
                    at: 1000 + seq,
                    actor: format!("user:u{seq}"),
                    action: "login".into(),
                    outcome: "ok".into(),
                    tenant_id: None,
                    source: "127.0.0.1".into(),
                    target: None,
                    detail: "null".into(),
                    prev_mac: previous.clone(),
                    mac: String::new(),
                };
                record.mac = mac(key, &record);
                previous = record.mac.clone();
                record
            })
            .collect()
    }

    #[test]
    fn intact_chain_verifies_and_tampering_names_the_row() {
        let key = [9u8; 32];
        let rows = chain(&key, 5);
        let head = Some((5, rows[4].mac.clone()));
        assert!(
            verify_records(&key, &rows, head.clone())
                .problems
                .is_empty()
        );

        let mut edited = rows.clone();
        edited[2].actor = "user:mallory".into();
        let found = verify_records(&key, &edited, head.clone()).problems;
        assert_eq!(found[0].seq, 3, "{found:?}");

        let mut deleted = rows.clone();
        deleted.remove(1);
        let found = verify_records(&key, &deleted, head.clone()).problems;
        assert_eq!(found[0].seq, 3, "{found:?}");

        let mut cut = rows.clone();
        cut.pop();
        let found = verify_records(&key, &cut, head.clone()).problems;
        assert_eq!(found[0].seq, 5, "{found:?}");

        assert!(
            !verify_records(&[8u8; 32], &rows, head).problems.is_empty(),
            "wrong key"
        );
    }

    #[test]
    fn absent_and_empty_fields_encode_differently() {
        let key = [1u8; 32];
        let mut a = chain(&key, 1).remove(0);
        a.target = None;
        let mut b = a.clone();
        b.target = Some(String::new());
        assert_ne!(canonical(&a), canonical(&b));
    }
}
