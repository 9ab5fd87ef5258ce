//! `lifeboat sqlite replicate|restore|status|forget-segments` end to end, on a real database.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::cargo::CommandCargoExt;
use rusqlite::Connection;

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let env = Env {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::write(env.path("password"), "a long test password\n").unwrap();
        let conn = Connection::open(env.db()).unwrap();
        conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get::<_, String>(0))
            .unwrap();
        conn.execute_batch("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
            .unwrap();
        let out = env
            .cmd()
            .args(["init", "--insecure-kdf-for-tests", "--pack-size-mib", "1"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        env
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn db(&self) -> PathBuf {
        self.path("app.db")
    }

    fn cmd(&self) -> Command {
        let mut cmd = Command::cargo_bin("lifeboat").unwrap();
        cmd.env("LIFEBOAT_REPOSITORY", self.path("repo"))
            .env("LIFEBOAT_PASSWORD_FILE", self.path("password"))
            .env_remove("LIFEBOAT_PASSWORD_COMMAND")
            .env("XDG_CONFIG_HOME", self.path("config-home"))
            .env_remove("LIFEBOAT_CONFIG")
            .stdin(Stdio::null());
        cmd
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.cmd().arg("--json").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

/// Kills the child when a test fails, so a leaked replicator does not keep the runner waiting.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn notes(db: &Path) -> Vec<(i64, String)> {
    let conn = Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT id, body FROM notes ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn replicate_status_restore_and_refusals() {
    let env = Env::new();
    let app = Connection::open(env.db()).unwrap();
    app.busy_timeout(Duration::from_secs(10)).unwrap();
    let mut replicate = KillOnDrop(
        env.cmd()
            .args(["sqlite", "replicate", "--interval", "100ms"])
            .arg(env.db())
            .arg("--status-file")
            .arg(env.path("status-{database}.json"))
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Once the status file exists, the replicator has its base snapshot: the rows below then
    // travel as journal segments.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !env.path("status-app.db.json").exists() {
        assert!(Instant::now() < deadline, "the replicator did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    for i in 0..50 {
        app.execute(
            "INSERT INTO notes (body) VALUES (?1)",
            [format!("note {i}")],
        )
        .unwrap();
    }
    // Wait until the repository holds every committed transaction.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status = env.json(&["sqlite", "status"]);
        let db = &status[0];
        if db["lag"]["bytes"] == 0 && db["segments"].as_u64() > Some(0) {
            assert_eq!(
                db["database"],
                env.db().canonicalize().unwrap().to_str().unwrap()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replication did not catch up: {status}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The status file is rewritten every round; the destination stores on its own thread, so
    // the round after the upload shows it.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let file_status: serde_json::Value =
            serde_json::from_slice(&std::fs::read(env.path("status-app.db.json")).unwrap())
                .unwrap();
        let destination = &file_status["destinations"][0];
        if destination["segments_shipped"].as_u64() > Some(0) {
            assert_eq!(destination["state"], "live", "{file_status}");
            assert_eq!(
                destination["repository"],
                env.path("repo").to_str().unwrap(),
                "{file_status}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{file_status}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        Command::new("kill")
            .args(["-TERM", &replicate.0.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    assert!(replicate.0.wait().unwrap().success());

    let restored = env.path("restored.db");
    let outcome = env.json(&[
        "sqlite",
        "restore",
        env.db().to_str().unwrap(),
        "--latest",
        "--to",
        restored.to_str().unwrap(),
    ]);
    assert_eq!(notes(&restored), notes(&env.db()), "{outcome}");
    assert_eq!(notes(&restored).len(), 50);

    // An existing file is never overwritten.
    let out = env
        .cmd()
        .args(["sqlite", "restore"])
        .arg(env.db())
        .arg("--to")
        .arg(&restored)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));

    // The wrong password restores nothing and says so.
    std::fs::write(env.path("wrong"), "not the password\n").unwrap();
    let out = env
        .cmd()
        .env("LIFEBOAT_PASSWORD_FILE", env.path("wrong"))
        .args(["sqlite", "restore"])
        .arg(env.db())
        .arg("--to")
        .arg(env.path("other.db"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("password"), "{stderr}");
    assert!(!env.path("other.db").exists());

    // A time before anything was captured is refused with the earliest restorable moment.
    let out = env
        .cmd()
        .args(["sqlite", "restore"])
        .arg(env.db())
        .args(["--time", "2000-01-01T00:00:00Z", "--to"])
        .arg(env.path("old.db"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("earliest restorable moment"));

    // Segment retention with a window reaching before everything keeps all of them.
    let plans = env.json(&[
        "sqlite",
        "forget-segments",
        "--keep-within",
        "1d",
        "--dry-run",
    ]);
    assert_eq!(plans[0]["delete"].as_array().unwrap().len(), 0, "{plans}");
}

#[test]
fn replicate_refuses_a_database_not_in_wal_mode() {
    let env = Env::new();
    let plain = env.path("plain.db");
    Connection::open(&plain)
        .unwrap()
        .execute_batch("CREATE TABLE t (x)")
        .unwrap();
    let out = env
        .cmd()
        .args(["sqlite", "replicate"])
        .arg(&plain)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("journal_mode=WAL"));
}

/// Polls `sqlite status --json` (run by `status`) until every listed destination holds every
/// committed transaction; returns the entries.
fn wait_until_stored(
    status: impl Fn() -> serde_json::Value,
    destinations: usize,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let value = status();
        let entries = value.as_array().unwrap().clone();
        if entries.len() == destinations
            && entries
                .iter()
                .all(|e| e["lag"]["bytes"] == 0 && e["segments"].as_u64() > Some(0))
        {
            return entries;
        }
        assert!(
            Instant::now() < deadline,
            "replication did not catch up: {value}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn sigterm(child: &mut KillOnDrop) -> std::process::Output {
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.0.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let mut stdout = Vec::new();
    if let Some(mut out) = child.0.stdout.take() {
        std::io::Read::read_to_end(&mut out, &mut stdout).unwrap();
    }
    let status = child.0.wait().unwrap();
    std::process::Output {
        status,
        stdout,
        stderr: Vec::new(),
    }
}

#[test]
fn the_config_file_job_feeds_every_destination_and_to_flags_pair_their_passwords() {
    let env = Env::new();
    std::fs::write(env.path("password2"), "another long test password\n").unwrap();
    let out = env
        .cmd()
        .env("LIFEBOAT_REPOSITORY", env.path("repo2"))
        .env("LIFEBOAT_PASSWORD_FILE", env.path("password2"))
        .args(["init", "--insecure-kdf-for-tests", "--pack-size-mib", "1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = format!(
        r#"
[sqlite]
databases = ["{db}"]
interval = "100ms"
status_file = "{status}"

[[sqlite.destinations]]
repository = "{repo1}"
password_file = "{password1}"

[[sqlite.destinations]]
repository = "{repo2}"
password_file = "{password2}"
"#,
        db = env.db().display(),
        status = env.path("status-{database}.json").display(),
        repo1 = env.path("repo").display(),
        password1 = env.path("password").display(),
        repo2 = env.path("repo2").display(),
        password2 = env.path("password2").display(),
    );
    std::fs::write(env.path("config.toml"), config).unwrap();
    // The job alone: no repository or password in the environment, no arguments.
    let job = || {
        let mut cmd = env.cmd();
        cmd.env_remove("LIFEBOAT_REPOSITORY")
            .env_remove("LIFEBOAT_PASSWORD_FILE")
            .env("LIFEBOAT_CONFIG", env.path("config.toml"));
        cmd
    };
    let app = Connection::open(env.db()).unwrap();
    app.busy_timeout(Duration::from_secs(10)).unwrap();
    let mut replicate = KillOnDrop(
        job()
            .args(["sqlite", "replicate"])
            .stderr(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while !env.path("status-app.db.json").exists() {
        assert!(Instant::now() < deadline, "the replicator did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    for i in 0..30 {
        app.execute(
            "INSERT INTO notes (body) VALUES (?1)",
            [format!("note {i}")],
        )
        .unwrap();
    }
    let status_json = || {
        let out = job().args(["--json", "sqlite", "status"]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let entries = wait_until_stored(status_json, 2);
    let repositories: Vec<&str> = entries
        .iter()
        .map(|e| e["repository"].as_str().unwrap())
        .collect();
    assert_eq!(
        repositories,
        [
            env.path("repo").to_str().unwrap(),
            env.path("repo2").to_str().unwrap()
        ]
    );
    let file_status: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.path("status-app.db.json")).unwrap()).unwrap();
    assert_eq!(
        file_status["destinations"].as_array().unwrap().len(),
        2,
        "{file_status}"
    );
    assert!(sigterm(&mut replicate).status.success());
    for (repo, password, name) in [
        ("repo", "password", "one.db"),
        ("repo2", "password2", "two.db"),
    ] {
        let out = env
            .cmd()
            .env("LIFEBOAT_REPOSITORY", env.path(repo))
            .env("LIFEBOAT_PASSWORD_FILE", env.path(password))
            .args(["sqlite", "restore"])
            .arg(env.db())
            .arg("--to")
            .arg(env.path(name))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(notes(&env.path(name)), notes(&env.db()), "{repo}");
    }

    // The same two by flags: --repo (here from the environment) and --to with its own
    // password file. Both resume their journals.
    let mut replicate = KillOnDrop(
        env.cmd()
            .args(["--json", "sqlite", "replicate", "--interval", "100ms"])
            .arg(env.db())
            .arg("--to")
            .arg(env.path("repo2"))
            .arg("--to-password-file")
            .arg(env.path("password2"))
            .stderr(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    for i in 30..50 {
        app.execute(
            "INSERT INTO notes (body) VALUES (?1)",
            [format!("note {i}")],
        )
        .unwrap();
    }
    let flags_status = || {
        env.json(&[
            "sqlite",
            "status",
            "--to",
            env.path("repo2").to_str().unwrap(),
            "--to-password-file",
            env.path("password2").to_str().unwrap(),
        ])
    };
    // Wait for the replicator to be running (it takes the write lock once at start), then
    // for both destinations to hold the new rows.
    let deadline = Instant::now() + Duration::from_secs(120);
    for probe in 0.. {
        wait_until_stored(flags_status, 2);
        let restored = env.path(&format!("probe-{probe}.db"));
        let out = env
            .cmd()
            .env("LIFEBOAT_REPOSITORY", env.path("repo2"))
            .env("LIFEBOAT_PASSWORD_FILE", env.path("password2"))
            .args(["sqlite", "restore"])
            .arg(env.db())
            .arg("--to")
            .arg(&restored)
            .output()
            .unwrap();
        if out.status.success() && notes(&restored).len() == 50 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the second repository did not catch up"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = sigterm(&mut replicate);
    assert!(out.status.success());
    let statuses: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let destinations = statuses[0]["destinations"].as_array().unwrap();
    assert_eq!(destinations.len(), 2, "{statuses}");
    for d in destinations {
        assert_eq!(d["generations_started"], 0, "resumed: {statuses}");
        assert_eq!(d["state"], "live", "{statuses}");
    }

    // A password flag must follow the --to it belongs to.
    let out = env
        .cmd()
        .args(["sqlite", "status", "--to-password-file"])
        .arg(env.path("password2"))
        .arg("--to")
        .arg(env.path("repo2"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("must follow the --to"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A `--to` that is not there at start (not mounted) does not stop the command: the main
/// repository replicates, the other is reported `not_open` and joins once it is there. A
/// `--to` with the wrong password is refused at once.
#[test]
fn a_destination_missing_at_start_is_retried_and_a_wrong_password_is_refused() {
    let env = Env::new();
    std::fs::write(env.path("wrong"), "not the password\n").unwrap();
    let out = env
        .cmd()
        .env("LIFEBOAT_REPOSITORY", env.path("elsewhere"))
        .args(["sqlite", "replicate"])
        .arg(env.db())
        .arg("--to")
        .arg(env.path("repo"))
        .arg("--to-password-file")
        .arg(env.path("wrong"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("wrong password"), "{stderr}");

    // The second destination's disk is not mounted yet.
    let late = env.path("late");
    let mut child = KillOnDrop(
        env.cmd()
            .args(["--json", "sqlite", "replicate"])
            .arg(env.db())
            .args(["--interval", "100ms", "--to"])
            .arg(&late)
            .arg("--status-file")
            .arg(env.path("{database}.json"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let conn = Connection::open(env.db()).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    let status_file = env.path("app.db.json");
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0.. {
        // Written while it replicates (rows from before its start are in the base snapshot).
        conn.execute(
            "INSERT INTO notes (body) VALUES (?1)",
            [format!("note {i}")],
        )
        .unwrap();
        let status: Option<serde_json::Value> = std::fs::read(&status_file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        if let Some(status) = status
            && status["destinations"][0]["segments_shipped"].as_u64() > Some(0)
        {
            assert_eq!(status["destinations"][1]["state"], "not_open", "{status}");
            assert!(
                status["destinations"][1]["last_error"].is_string(),
                "{status}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the main repository got nothing");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Mounted: a repository appears there, and the replicator joins it.
    let out = env
        .cmd()
        .env("LIFEBOAT_REPOSITORY", &late)
        .args(["init", "--insecure-kdf-for-tests", "--pack-size-mib", "1"])
        .output()
        .unwrap();
    assert!(out.status.success());
    // Until the replicator has joined it, the late repository has nothing of the database
    // (status fails for it).
    let polls = std::cell::Cell::new(0);
    let both = || {
        // A few rows after its base snapshot, so it receives segments too (then none, so the
        // lag can reach 0).
        polls.set(polls.get() + 1);
        if polls.get() % 10 == 1 && polls.get() < 40 {
            conn.execute("INSERT INTO notes (body) VALUES ('after')", [])
                .unwrap();
        }
        let out = env
            .cmd()
            .args(["--json", "sqlite", "status"])
            .arg(env.db())
            .arg("--to")
            .arg(&late)
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| serde_json::json!([]))
    };
    wait_until_stored(both, 2);
    let out = sigterm(&mut child);
    assert!(out.status.success());
    let statuses: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        statuses[0]["destinations"][1]["state"], "live",
        "{statuses}"
    );
    let restored = env.path("from-late.db");
    let out = env
        .cmd()
        .env("LIFEBOAT_REPOSITORY", &late)
        .args(["sqlite", "restore"])
        .arg(env.db())
        .arg("--to")
        .arg(&restored)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(notes(&restored), notes(&env.db()));
}
