//! One open connection to PostgreSQL, through a `psql` child process.
//!
//! A non-exclusive base backup must keep its session open from `pg_backup_start` to
//! `pg_backup_stop`, so this is a conversation, not one command: queries go to psql's standard
//! input, each followed by an `\echo` of a marker, and the rows are read from its standard
//! output up to that marker. psql speaks libpq, so every way users already connect works
//! (PG* environment variables, `.pgpass`, service files, peer authentication over the
//! socket, TLS). Values that may span lines are hex-encoded by the queries that ask for them.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// Separates the fields of a row (psql `-F`): a byte no value here contains.
const FIELD_SEPARATOR: char = '\u{1f}';
const END_MARKER: &str = "--lifeboat-end-of-result--";

/// How to reach the server.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// The psql program (default: `psql` from `PATH`).
    pub psql: Option<PathBuf>,
    /// A libpq connection string or URI (`host=/run/postgresql dbname=postgres`,
    /// `postgresql://backup@db1/postgres`). Empty: libpq's defaults and PG* variables.
    pub conninfo: String,
}

/// An open psql session.
pub struct Session {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    stderr: Arc<Mutex<String>>,
}

impl Session {
    /// Starts psql and checks that the connection works.
    pub fn connect(options: &ConnectOptions) -> Result<Session> {
        let psql = options
            .psql
            .clone()
            .unwrap_or_else(|| PathBuf::from("psql"));
        let mut command = Command::new(&psql);
        command
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .arg("-F")
            .arg(FIELD_SEPARATOR.to_string());
        if !options.conninfo.is_empty() {
            command.arg("-d").arg(&options.conninfo);
        }
        if std::env::var_os("PGAPPNAME").is_none() {
            command.env("PGAPPNAME", "lifeboat");
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::Postgres {
                what: format!("start {}", psql.display()),
                message: format!("{e} (install the PostgreSQL client or pass --psql)"),
            })?;
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut child_stderr = child.stderr.take().expect("piped stderr");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut text = String::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = child_stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                text.push_str(&String::from_utf8_lossy(&buf[..n]));
                if let Ok(mut shared) = sink.lock() {
                    shared.push_str(&text);
                    text.clear();
                }
            }
        });
        let mut session = Session {
            stdin: child.stdin.take().expect("piped stdin"),
            stdout: BufReader::new(child.stdout.take().expect("piped stdout")),
            child,
            stderr,
        };
        session.query("SELECT 1").map_err(|e| match e {
            Error::Postgres { message, .. } => Error::Postgres {
                what: "connect".to_string(),
                message,
            },
            other => other,
        })?;
        Ok(session)
    }

    /// Runs one statement and returns its rows, each a list of fields (NULL reads as "").
    pub fn query(&mut self, sql: &str) -> Result<Vec<Vec<String>>> {
        let sent =
            writeln!(self.stdin, "{sql};\n\\echo {END_MARKER}").and_then(|()| self.stdin.flush());
        if sent.is_err() {
            return Err(self.failure(sql));
        }
        let mut rows = Vec::new();
        loop {
            let mut line = String::new();
            match self.stdout.read_line(&mut line) {
                Ok(0) | Err(_) => return Err(self.failure(sql)),
                Ok(_) => {}
            }
            let line = line.trim_end_matches(['\n', '\r']);
            if line == END_MARKER {
                return Ok(rows);
            }
            rows.push(line.split(FIELD_SEPARATOR).map(str::to_string).collect());
        }
    }

    /// Runs a statement that returns one row.
    pub fn query_row(&mut self, sql: &str) -> Result<Vec<String>> {
        let mut rows = self.query(sql)?;
        if rows.len() != 1 {
            return Err(Error::Postgres {
                what: sql.to_string(),
                message: format!("expected one row, got {}", rows.len()),
            });
        }
        Ok(rows.remove(0))
    }

    /// Runs a statement that returns one value.
    pub fn query_value(&mut self, sql: &str) -> Result<String> {
        let row = self.query_row(sql)?;
        Ok(row.into_iter().next().unwrap_or_default())
    }

    /// psql stopped: the error is what it printed.
    fn failure(&mut self, sql: &str) -> Error {
        // Give psql a moment to finish writing its message and exit.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        let message = self
            .stderr
            .lock()
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        Error::Postgres {
            what: sql.lines().next().unwrap_or_default().to_string(),
            message: if message.is_empty() {
                "psql ended without an error message".to_string()
            } else {
                message
            },
        }
    }

    /// Ends the session (closing psql's input makes it disconnect and exit).
    pub fn close(mut self) {
        let _ = writeln!(self.stdin, "\\q").and_then(|()| self.stdin.flush());
        let _ = self.child.wait();
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // A session dropped on an error path: ending psql ends the server session, which
        // aborts a backup still in progress.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Quotes a string as an SQL literal.
pub fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Decodes a value the query hex-encoded (`encode(convert_to(x, 'UTF8'), 'hex')`).
pub fn from_hex(text: &str) -> Result<String> {
    let bytes = hex::decode(text.trim()).map_err(|e| Error::Postgres {
        what: "decode a hex value".to_string(),
        message: e.to_string(),
    })?;
    String::from_utf8(bytes).map_err(|e| Error::Postgres {
        what: "decode a hex value".to_string(),
        message: e.to_string(),
    })
}
