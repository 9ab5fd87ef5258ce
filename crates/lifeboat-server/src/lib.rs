//! `lifeboat serve`: the scheduler, the multi-tenant HTTPS API, identity, the audit log,
//! metrics and alerts.
//!
//! # Design note: the invariants this crate guards
//!
//! * **Every route declares its permission in one table** ([`routes::ROUTES`]). The router is
//!   built from that table and one middleware enforces it, so a handler cannot exist without a
//!   permission, and a route missing from the table is refused (fail closed).
//! * **Tenants never see each other.** A tenant-scoped principal asking for another tenant, or
//!   for an object id that belongs to another tenant, gets 404, the same answer as for an id that
//!   does not exist, so ids cannot be probed. Every catalog query for a tenant's object filters
//!   by tenant id as well as object id.
//! * **No secret is stored in the clear.** Passwords are argon2id hashes; session ids, API tokens
//!   and recovery codes (all at least 80 random bits) are stored as BLAKE3 hashes; repository
//!   passwords and TOTP secrets are sealed with AES-256-GCM under the server key, a file in the
//!   state directory that is not in the catalog.
//! * **The audit log is append-only and hash-chained.** Each row carries a keyed BLAKE3 MAC over
//!   its canonical encoding and the previous row's MAC; the key is a file in the state
//!   directory, so whoever can write the catalog cannot forge rows. The newest sequence number
//!   and MAC are also written to the state directory, so cutting off the tail is detected.
//! * **Login failures cost time, not accounts.** Backoff per account and per source address is
//!   bounded (by default one minute per account), so an attacker can slow a user down but not
//!   lock them out for long.
//! * **Plain HTTP only redirects.** The HTTP listener answers every request with 308 to HTTPS;
//!   the TLS listener speaks TLS 1.2 and 1.3 only.
//!
//! # Example
//!
//! ```no_run
//! # async fn example() -> lifeboat_server::Result<()> {
//! let config = lifeboat_server::ServerConfig::default();
//! let server = lifeboat_server::start(config, std::path::Path::new("/var/lib/lifeboat")).await?;
//! if let Some(password) = &server.setup_password {
//!     eprintln!("first start: user admin, one-time password {password}");
//! }
//! println!("listening on https://{}", server.https_addr);
//! server.shutdown().await;
//! # Ok(())
//! # }
//! ```

pub mod alerts;
pub mod audit;
pub mod authz;
pub mod catalog;
pub mod config;
mod error;
pub mod identity;
pub mod jobs;
pub mod metrics;
pub mod offline;
pub mod openapi;
pub mod password;
pub mod replication;
pub mod routes;
pub mod scheduler;
pub mod secrets;
pub mod server;
pub mod snapshots;
pub mod state;
pub mod throttle;
pub mod tls;
pub mod totp;
pub mod ui;

pub use config::ServerConfig;
pub use error::{Error, Result};
pub use server::{RunningServer, start};
pub use state::StateDir;
