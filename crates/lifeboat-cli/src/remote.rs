//! `lifeboat --server URL …`: the read paths answered by a `lifeboat serve` instead of a
//! repository opened here.
//!
//! The client speaks the server's JSON API (docs/openapi.json) over HTTPS with an API token.
//! The server checks the token's role and tenant on every request, so the commands here can
//! show only what that token may see; repository passwords never leave the server.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use reqwest::StatusCode;
use reqwest::blocking::{Client, Response};
use serde_json::Value;

use crate::browse::{DumpArgs, LsArgs};
use crate::{GlobalArgs, SnapshotFilter};

/// How to reach a server (global flags).
#[derive(Args, Clone, Debug, Default)]
pub struct ServerArgs {
    /// Ask this `lifeboat serve` (https://host:port) instead of opening a repository:
    /// `snapshots`, `ls`, `dump`, `repositories`, `jobs` and `runs` work this way
    /// (docs/server.md).
    #[arg(long, env = "LIFEBOAT_SERVER", global = true, value_name = "URL")]
    pub server: Option<String>,
    /// File whose first line is the API token for --server (or set LIFEBOAT_SERVER_TOKEN).
    #[arg(
        long,
        env = "LIFEBOAT_SERVER_TOKEN_FILE",
        global = true,
        value_name = "FILE"
    )]
    pub server_token_file: Option<PathBuf>,
    /// Trust only this PEM certificate for --server (such as the server's generated
    /// tls-cert.pem) instead of the system's certificate authorities.
    #[arg(long, env = "LIFEBOAT_SERVER_CA", global = true, value_name = "FILE")]
    pub server_ca: Option<PathBuf>,
    /// With --server: the tenant (name or id; default: the token's own tenant). With
    /// `audit export`: only this tenant's (id) entries.
    #[arg(long, env = "LIFEBOAT_TENANT", global = true, value_name = "TENANT")]
    pub tenant: Option<String>,
}

/// Subcommands that exist only against a server.
#[derive(Subcommand)]
pub enum RemoteCommand {
    /// With --server: the tenant's repositories.
    Repositories,
    /// With --server: the tenant's jobs.
    Jobs,
    /// With --server: the latest runs of a job (name or id), newest first.
    Runs(RunsArgs),
}

#[derive(Args)]
pub struct RunsArgs {
    /// The job, by name or id.
    job: String,
    /// Show at most this many runs.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// Print each run's log too.
    #[arg(long)]
    log: bool,
}

/// A signed-in connection to one server.
struct Connection {
    client: Client,
    base: String,
    token: String,
}

impl Connection {
    fn open(args: &ServerArgs) -> Result<Connection> {
        let base = args
            .server
            .as_deref()
            .context("no server given")?
            .trim_end_matches('/')
            .to_owned();
        if !base.starts_with("https://") {
            bail!("--server {base}: the server speaks HTTPS only; use an https:// URL");
        }
        let token = match (
            &args.server_token_file,
            std::env::var("LIFEBOAT_SERVER_TOKEN"),
        ) {
            (Some(file), _) => first_line(file)?,
            (None, Ok(token)) if !token.trim().is_empty() => token.trim().to_owned(),
            _ => bail!(
                "--server needs an API token: --server-token-file FILE or LIFEBOAT_SERVER_TOKEN \
                 (create one in the dashboard or with POST /api/v1/me/tokens)"
            ),
        };
        let mut builder = Client::builder()
            .timeout(Duration::from_secs(120))
            .connect_timeout(Duration::from_secs(15))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca) = &args.server_ca {
            let pem = std::fs::read(ca).with_context(|| format!("read {}", ca.display()))?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("{} holds no PEM certificate", ca.display()))?;
            if certificates.is_empty() {
                bail!("{} holds no PEM certificate", ca.display());
            }
            builder = builder.tls_certs_only(certificates);
        }
        let client = builder.build().context("set up the HTTPS client")?;
        Ok(Connection {
            client,
            base,
            token,
        })
    }

    /// GETs an API path and parses the JSON answer; a refusal becomes an error with the
    /// server's own message.
    fn get(&self, path: &str) -> Result<Value> {
        self.get_query(path, &[])
    }

    fn get_query(&self, path: &str, query: &[(&str, &str)]) -> Result<Value> {
        let response = self.send(path, query)?;
        let (url, status) = (response.url().to_string(), response.status());
        response.json().with_context(|| {
            format!("{url} answered {status} without JSON: is it a Lifeboat server?")
        })
    }

    /// Sends a GET and returns a successful response; a refusal becomes an error with the
    /// server's own message.
    fn send(&self, path: &str, query: &[(&str, &str)]) -> Result<Response> {
        let url = format!("{}{path}", self.base);
        let response = self
            .client
            .get(&url)
            .query(query)
            .bearer_auth(&self.token)
            .send()
            .map_err(|e| describe_transport_error(&self.base, e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body: Value = response.json().unwrap_or_default();
        let message = body["error"].as_str().unwrap_or("no message");
        Err(match status {
            StatusCode::UNAUTHORIZED => anyhow!(
                "{}: the token was refused ({message}); it may be revoked or mistyped",
                self.base
            ),
            _ => anyhow!("{url}: {status}: {message}"),
        })
    }
}

fn first_line(file: &Path) -> Result<String> {
    let text = std::fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?;
    let line = text.lines().next().unwrap_or_default().trim();
    if line.is_empty() {
        bail!(
            "{} is empty: its first line should be the API token",
            file.display()
        );
    }
    Ok(line.to_owned())
}

fn describe_transport_error(base: &str, error: reqwest::Error) -> anyhow::Error {
    let mut chain = String::new();
    let mut source: Option<&dyn std::error::Error> = Some(&error);
    while let Some(e) = source {
        chain.push_str(&format!(": {e}"));
        source = e.source();
    }
    let hint = if chain.contains("certificate") || chain.contains("UnknownIssuer") {
        " (a server with its generated certificate needs --server-ca pointing at its tls-cert.pem)"
    } else if error.is_connect() || error.is_timeout() {
        " (is the server running and reachable?)"
    } else {
        ""
    };
    anyhow!("cannot reach {base}{chain}{hint}")
}

/// The tenant id to ask about: --tenant (a name or id), else the token's own tenant.
fn tenant_id(connection: &Connection, wanted: Option<&str>) -> Result<String> {
    let me = connection.get("/api/v1/me")?;
    let own = me["tenant_id"].as_str().map(str::to_owned);
    match (wanted, own) {
        (None, Some(own)) => Ok(own),
        (None, None) => bail!("this token is not bound to a tenant: name one with --tenant"),
        (Some(wanted), Some(own)) if wanted == own => Ok(own),
        (Some(wanted), own) => {
            let tenants = match connection.get("/api/v1/tenants") {
                Ok(tenants) => tenants,
                Err(_) if own.is_some() => bail!(
                    "this token belongs to tenant {}; it cannot see tenant {wanted}",
                    own.unwrap_or_default()
                ),
                Err(e) => return Err(e),
            };
            find_by_name_or_id(&tenants, wanted)
                .with_context(|| format!("no tenant {wanted} on this server"))
        }
    }
}

/// The id of the entry in a JSON list whose `id` or `name` is `wanted`.
fn find_by_name_or_id(list: &Value, wanted: &str) -> Option<String> {
    list.as_array()?
        .iter()
        .find(|item| item["id"] == wanted || item["name"] == wanted)
        .and_then(|item| item["id"].as_str().map(str::to_owned))
}

fn segment(value: &str) -> String {
    // Ids and names are path segments: keep them from adding path structure.
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The API path of the repository `-r` names (its name or id) in the tenant asked for.
fn repository_path(connection: &Connection, global: &GlobalArgs) -> Result<String> {
    let tenant = tenant_id(connection, global.remote.tenant.as_deref())?;
    let wanted = global
        .repo
        .as_deref()
        .context("name the server's repository with -r/--repo (its name or id)")?;
    let tenant_path = format!("/api/v1/tenants/{}", segment(&tenant));
    let repositories = connection.get(&format!("{tenant_path}/repositories"))?;
    let repository = find_by_name_or_id(&repositories, wanted)
        .with_context(|| format!("tenant {tenant} has no repository {wanted}"))?;
    Ok(format!(
        "{tenant_path}/repositories/{}",
        segment(&repository)
    ))
}

/// `snapshots` against the server: `-r` names the server's repository (name or id).
pub fn snapshots(global: &GlobalArgs, filter: &SnapshotFilter) -> Result<ExitCode> {
    let connection = Connection::open(&global.remote)?;
    let list = connection.get(&format!(
        "{}/snapshots",
        repository_path(&connection, global)?
    ))?;
    let strings = |item: &Value, key: &str| -> Vec<String> {
        item[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let kept: Vec<&Value> = list
        .as_array()
        .map(|a| a.iter().collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|item| {
            let host = item["hostname"].as_str().unwrap_or_default();
            let tags = strings(item, "tags");
            let paths = strings(item, "paths");
            (filter.hosts.is_empty() || filter.hosts.iter().any(|h| h == host))
                && (filter.tags.is_empty() || filter.tags.iter().any(|t| tags.contains(t)))
                && (filter.paths.is_empty() || filter.paths.iter().all(|p| paths.contains(p)))
        })
        .collect();
    if global.json {
        println!("{}", serde_json::to_string_pretty(&kept)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<10} {:<25} {:<16} {:<16}  paths",
        "id", "time", "host", "tags"
    )?;
    for item in kept {
        let id = item["id"].as_str().unwrap_or_default();
        writeln!(
            out,
            "{:<10} {:<25} {:<16} {:<16}  {}",
            id.get(..8).unwrap_or(id),
            item["time"].as_str().unwrap_or_default(),
            item["hostname"].as_str().unwrap_or_default(),
            strings(item, "tags").join(","),
            strings(item, "paths").join(" "),
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `ls` against the server: every entry below the path, listed by the server.
pub fn ls(global: &GlobalArgs, args: &LsArgs) -> Result<ExitCode> {
    let connection = Connection::open(&global.remote)?;
    let path = args.path.to_string_lossy();
    let listing = connection.get_query(
        &format!(
            "{}/snapshots/{}/entries",
            repository_path(&connection, global)?,
            segment(&args.snapshot)
        ),
        &[("path", &path), ("recursive", "true")],
    )?;
    let mut out = std::io::stdout().lock();
    for entry in listing["entries"].as_array().into_iter().flatten() {
        if global.json {
            writeln!(out, "{entry}")?;
        } else if args.long {
            let target = entry["target"]
                .as_str()
                .map(|t| format!(" -> {t}"))
                .unwrap_or_default();
            let mtime = entry["mtime"]
                .as_i64()
                .and_then(|s| jiff::Timestamp::from_second(s).ok())
                .map_or("-".to_owned(), |t| {
                    t.strftime("%Y-%m-%d %H:%M:%S").to_string()
                });
            writeln!(
                out,
                "{:<12} {:>06o} {:>6} {:>6} {:>12} {mtime} {}{target}",
                text(&entry["kind"]),
                entry["mode"].as_u64().unwrap_or_default(),
                entry["uid"],
                entry["gid"],
                entry["size"],
                text(&entry["path"]),
            )?;
        } else {
            writeln!(out, "{}", text(&entry["path"]))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `dump` against the server: streams the file to standard output and fails if the transfer
/// ends short of the size the server announced.
pub fn dump(global: &GlobalArgs, args: &DumpArgs) -> Result<ExitCode> {
    let connection = Connection::open(&global.remote)?;
    let path = args.path.to_string_lossy();
    let mut response = connection.send(
        &format!(
            "{}/snapshots/{}/file",
            repository_path(&connection, global)?,
            segment(&args.snapshot)
        ),
        &[("path", &path)],
    )?;
    let expected = response.content_length();
    let mut out = std::io::stdout().lock();
    let written = std::io::copy(&mut response, &mut out)
        .with_context(|| format!("download of {path} from {} stopped", connection.base))?;
    out.flush()?;
    if let Some(expected) = expected.filter(|&n| n != written) {
        bail!("download of {path} was cut off after {written} of {expected} bytes");
    }
    Ok(ExitCode::SUCCESS)
}

/// The subcommands that exist only against a server.
pub fn run(global: &GlobalArgs, command: &RemoteCommand) -> Result<ExitCode> {
    if global.remote.server.is_none() {
        bail!("this command asks a server: give --server URL (or set LIFEBOAT_SERVER)");
    }
    let connection = Connection::open(&global.remote)?;
    let tenant = tenant_id(&connection, global.remote.tenant.as_deref())?;
    let tenant_path = format!("/api/v1/tenants/{}", segment(&tenant));
    let mut out = std::io::stdout().lock();
    match command {
        RemoteCommand::Repositories => {
            let list = connection.get(&format!("{tenant_path}/repositories"))?;
            if global.json {
                writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
                return Ok(ExitCode::SUCCESS);
            }
            writeln!(out, "{:<28} {:<20}  location", "id", "name")?;
            for item in list.as_array().into_iter().flatten() {
                writeln!(
                    out,
                    "{:<28} {:<20}  {}",
                    text(&item["id"]),
                    text(&item["name"]),
                    text(&item["location"])
                )?;
            }
        }
        RemoteCommand::Jobs => {
            let list = connection.get(&format!("{tenant_path}/jobs"))?;
            if global.json {
                writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
                return Ok(ExitCode::SUCCESS);
            }
            writeln!(
                out,
                "{:<20} {:<8} {:<16} {:<8} next run",
                "name", "kind", "schedule", "enabled"
            )?;
            for item in list.as_array().into_iter().flatten() {
                writeln!(
                    out,
                    "{:<20} {:<8} {:<16} {:<8} {}",
                    text(&item["name"]),
                    text(&item["kind"]),
                    text(&item["schedule"]),
                    if item["enabled"] == true { "yes" } else { "no" },
                    millis(&item["next_run_at"]),
                )?;
            }
        }
        RemoteCommand::Runs(args) => {
            let jobs = connection.get(&format!("{tenant_path}/jobs"))?;
            let job = find_by_name_or_id(&jobs, &args.job)
                .with_context(|| format!("tenant {tenant} has no job {}", args.job))?;
            let list = connection.get(&format!("{tenant_path}/jobs/{}/runs", segment(&job)))?;
            let runs: Vec<&Value> = list
                .as_array()
                .into_iter()
                .flatten()
                .take(args.limit)
                .collect();
            if global.json {
                writeln!(out, "{}", serde_json::to_string_pretty(&runs)?)?;
                return Ok(ExitCode::SUCCESS);
            }
            writeln!(
                out,
                "{:<28} {:<20} {:>9} {:<11} {:<9} {:>10}",
                "id", "started", "duration", "status", "trigger", "bytes"
            )?;
            for run in runs {
                let duration = match (run["started_at"].as_i64(), run["finished_at"].as_i64()) {
                    (Some(start), Some(end)) => format!("{:.1} s", (end - start) as f64 / 1000.0),
                    _ => "-".to_owned(),
                };
                writeln!(
                    out,
                    "{:<28} {:<20} {:>9} {:<11} {:<9} {:>10}",
                    text(&run["id"]),
                    millis(&run["started_at"]),
                    duration,
                    text(&run["status"]),
                    text(&run["trigger"]),
                    run["bytes"].as_u64().map_or("-".to_owned(), crate::bytes),
                )?;
                if args.log {
                    for line in run["log"].as_str().unwrap_or_default().lines() {
                        writeln!(out, "    {line}")?;
                    }
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or("-")
}

/// A time in ms since the epoch, as local-free UTC text.
fn millis(value: &Value) -> String {
    value
        .as_i64()
        .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .map_or("-".to_owned(), |t| {
            t.strftime("%Y-%m-%d %H:%M:%S").to_string()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ids_resolve_and_segments_cannot_add_path_structure() {
        let list =
            serde_json::json!([{ "id": "a1", "name": "files" }, { "id": "b2", "name": "db" }]);
        assert_eq!(find_by_name_or_id(&list, "db").as_deref(), Some("b2"));
        assert_eq!(find_by_name_or_id(&list, "a1").as_deref(), Some("a1"));
        assert_eq!(find_by_name_or_id(&list, "nope"), None);
        assert_eq!(segment("../x y"), "..%2Fx%20y");
    }
}
