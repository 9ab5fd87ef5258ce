//! `lifeboat pg` against a real PostgreSQL: WAL archiving through `archive_command`, base
//! backups, point-in-time restores started and queried, an unreachable repository, and a
//! missing segment found by `pg check`.
//!
//! Clusters run on loopback ports with their sockets in the test's directory. PostgreSQL
//! refuses to run as root, so as root (CI) every PostgreSQL and lifeboat process runs as
//! `nobody` through `setpriv`, in a directory that user owns. Without PostgreSQL binaries the
//! tests print `SKIPPED: no PostgreSQL` and pass; `.ci/run` installs them.

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const NOBODY: u32 = 65534;
const DEADLINE: Duration = Duration::from_secs(180);

/// The directory holding initdb, pg_ctl and postgres: on `PATH`, else Debian's
/// `/usr/lib/postgresql/<version>/bin` (the newest version).
fn pg_bin() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() {
                // Debian links initdb into /usr/local/bin in some images; use the real dir.
                let real = fs::canonicalize(dir.join("initdb")).ok()?;
                return real.parent().map(Path::to_path_buf);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn as_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A command that runs as the unprivileged user when the test runs as root.
fn unprivileged(program: &Path) -> Command {
    if as_root() {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            format!("--reuid={NOBODY}"),
            format!("--regid={NOBODY}"),
            "--clear-groups".to_string(),
        ])
        .arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn check(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A test directory owned by the user the clusters run as.
struct World {
    dir: tempfile::TempDir,
    bin: PathBuf,
    lifeboat: PathBuf,
}

impl World {
    fn new() -> Option<World> {
        let Some(bin) = pg_bin() else {
            println!(
                "SKIPPED: no PostgreSQL (initdb not on PATH nor in /usr/lib/postgresql/*/bin)"
            );
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let world = World {
            dir,
            bin,
            lifeboat: assert_cmd::cargo::cargo_bin("lifeboat"),
        };
        fs::write(world.path("password"), "a long test password\n").unwrap();
        world.chown(&world.path("password"));
        world.chown(world.dir.path());
        world
            .lifeboat(&["init", "--insecure-kdf-for-tests", "--pack-size-mib", "1"])
            .pipe(|o| check(o, "init"));
        Some(world)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Restores a warm standby (`pg restore --standby`) into `name` and starts it.
    fn standby(&self, name: &str) -> Cluster {
        let dir = self.path(name);
        self.lifeboat_json(&[
            "pg",
            "restore",
            "--standby",
            "--to",
            &dir.display().to_string(),
        ]);
        self.start(dir)
    }

    /// Starts PostgreSQL on the data directory `data` (a restored copy, say).
    fn start(&self, data: PathBuf) -> Cluster {
        Cluster {
            world_dir: self.dir.path().to_path_buf(),
            bin: self.bin.clone(),
            data,
            port: 0,
        }
        .start_on(free_port())
    }

    fn chown(&self, path: &Path) {
        if as_root() {
            rustix::fs::chown(
                path,
                Some(rustix::fs::Uid::from_raw(NOBODY)),
                Some(rustix::fs::Gid::from_raw(NOBODY)),
            )
            .unwrap();
        }
    }

    fn repo_args(&self) -> Vec<String> {
        vec![
            "--repo".to_string(),
            self.path("repo").display().to_string(),
            "--password-file".to_string(),
            self.path("password").display().to_string(),
        ]
    }

    fn lifeboat_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = unprivileged(&self.lifeboat);
        cmd.args(self.repo_args())
            .args(args)
            .env("HOME", self.dir.path())
            .env("XDG_CONFIG_HOME", self.path("config-home"))
            .env_remove("LIFEBOAT_CONFIG")
            .env_remove("LIFEBOAT_REPOSITORY")
            .env_remove("LIFEBOAT_PASSWORD_FILE")
            .env_remove("LIFEBOAT_PASSWORD_COMMAND")
            .env_remove("PGDATA")
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        cmd
    }

    fn lifeboat(&self, args: &[&str]) -> Output {
        self.lifeboat_cmd(args).output().unwrap()
    }

    /// Runs lifeboat as the test's own user (root in CI), as an administrator restoring a
    /// cluster that belongs to another user would.
    fn lifeboat_json_as_invoker(&self, args: &[&str]) -> serde_json::Value {
        let out = Command::new(&self.lifeboat)
            .args(self.repo_args())
            .arg("--json")
            .args(args)
            .env("HOME", self.dir.path())
            .env_remove("LIFEBOAT_CONFIG")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let out = check(out, &format!("lifeboat {args:?}"));
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    fn lifeboat_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = check(self.lifeboat(&all), &format!("lifeboat {args:?}"));
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    /// initdb a cluster that archives through lifeboat (pushing ahead through a spool
    /// directory if `spool`), and start it.
    fn cluster(&self, name: &str, spool: bool) -> Cluster {
        let data = self.path(name);
        let out = unprivileged(&self.bin.join("initdb"))
            .args(["-U", "postgres", "--auth=trust", "--no-sync", "-D"])
            .arg(&data)
            .env("LC_ALL", "C")
            .output()
            .unwrap();
        check(out, "initdb");
        let spool = if spool {
            format!("--spool {} ", self.path("spool").display())
        } else {
            String::new()
        };
        let archive_command = format!(
            "{} {} pg archive-push {spool}%p",
            self.lifeboat.display(),
            self.repo_args().join(" ")
        );
        let conf = format!(
            "archive_mode = on\narchive_command = '{archive_command}'\nwal_level = replica\n\
             max_wal_senders = 0\nfsync = off\nshared_buffers = 16MB\nmax_connections = 20\n\
             log_min_messages = info\n"
        );
        let mut text = fs::read_to_string(data.join("postgresql.conf")).unwrap();
        text.push_str(&conf);
        fs::write(data.join("postgresql.conf"), text).unwrap();
        let cluster = Cluster {
            world_dir: self.dir.path().to_path_buf(),
            bin: self.bin.clone(),
            data,
            port: 0,
        };
        cluster.start_on(free_port())
    }
}

trait Pipe: Sized {
    fn pipe<T>(self, f: impl FnOnce(Self) -> T) -> T {
        f(self)
    }
}
impl<T> Pipe for T {}

struct Cluster {
    world_dir: PathBuf,
    bin: PathBuf,
    data: PathBuf,
    port: u16,
}

impl Cluster {
    fn start_on(mut self, port: u16) -> Cluster {
        self.port = port;
        let log = self.data.with_extension("log");
        let out = unprivileged(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&log)
            .arg("-o")
            .arg(format!(
                "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={}",
                self.world_dir.display()
            ))
            .args(["-w", "-t", "120", "start"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        if !out.status.success() {
            panic!(
                "pg_ctl start failed:\n{}\n{}",
                String::from_utf8_lossy(&out.stderr),
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        self
    }

    fn psql_out(&self, sql: &str) -> Output {
        let psql = if self.bin.join("psql").is_file() {
            self.bin.join("psql")
        } else {
            PathBuf::from("psql")
        };
        let mut child = Command::new(psql)
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-p"])
            .arg(self.port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(sql.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// Runs SQL from standard input (each statement its own transaction); returns the output.
    fn psql(&self, sql: &str) -> String {
        check(self.psql_out(sql), &format!("psql {sql}"))
            .trim()
            .to_string()
    }

    fn conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }

    /// Waits until recovery has ended and the server takes writes.
    fn wait_promoted(&self, what: &str) {
        wait_until(&format!("{what} to promote"), || {
            self.psql_out("SELECT pg_is_in_recovery();")
                .stdout
                .starts_with(b"f")
        });
    }

    /// Switches to a new segment and waits until the finished one is archived.
    fn switch_and_wait(&self) -> String {
        let segment = self.psql("SELECT pg_walfile_name(pg_switch_wal());");
        self.wait_archived(&segment);
        segment
    }

    fn wait_archived(&self, segment: &str) {
        wait_until(&format!("{segment} to be archived"), || {
            let last = self.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver;");
            last.as_str() >= segment
        });
    }

    fn stop(&self) {
        let _ = unprivileged(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "-w", "stop"])
            .stdin(Stdio::null())
            .output();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

const SCHEMA: &str =
    "CREATE TABLE rows (id int PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp());\n";

fn insert_rows(cluster: &Cluster, ids: std::ops::Range<i32>) {
    // One statement per row, each its own transaction, so each has its own commit time.
    let sql: String = ids
        .map(|id| format!("INSERT INTO rows (id) VALUES ({id});\n"))
        .collect();
    cluster.psql(&sql);
}

/// Server time now, as RFC 3339.
fn server_time(cluster: &Cluster) -> String {
    cluster.psql(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"');",
    )
}

#[test]
fn point_in_time_restores_hold_exactly_the_rows_committed_before_each_target() {
    let Some(world) = World::new() else { return };
    let primary = world.cluster("primary", false);
    primary.psql(SCHEMA);
    let pgbench = world.bin.join("pgbench");
    if pgbench.is_file() {
        let out = Command::new(&pgbench)
            .args([
                "-i",
                "-s",
                "1",
                "-q",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-p",
            ])
            .arg(primary.port.to_string())
            .arg("postgres")
            .output()
            .unwrap();
        check(out, "pgbench -i");
    }
    insert_rows(&primary, 0..10);
    let first = world.lifeboat_json(&["pg", "backup", "--connect", &primary.conninfo()]);
    let first_id = first["snapshot"].as_str().unwrap().to_string();

    // Targets between batches of rows: (time, rows committed before it).
    let mut targets = Vec::new();
    let mut next = 10;
    let mut second_id = String::new();
    for batch in 0..3 {
        insert_rows(&primary, next..next + 7);
        next += 7;
        if pgbench.is_file() && batch == 2 {
            let out = Command::new(&pgbench)
                .args([
                    "-T",
                    "2",
                    "-c",
                    "2",
                    "-n",
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "postgres",
                    "-p",
                ])
                .arg(primary.port.to_string())
                .arg("postgres")
                .output()
                .unwrap();
            check(out, "pgbench");
        }
        std::thread::sleep(Duration::from_millis(150));
        targets.push((server_time(&primary), next));
        std::thread::sleep(Duration::from_millis(150));
        primary.switch_and_wait();
        if batch == 1 {
            // A second full backup: it deduplicates against the first, and restores to the
            // last target start from it.
            let second = world.lifeboat_json(&["pg", "backup", "--connect", &primary.conninfo()]);
            second_id = second["snapshot"].as_str().unwrap().to_string();
            let (a, b) = (
                first["summary"]["bytes_stored"].as_u64().unwrap(),
                second["summary"]["bytes_stored"].as_u64().unwrap(),
            );
            eprintln!("base backups stored {a} bytes (first) and {b} bytes (second)");
            assert!(
                b * 2 < a,
                "the second full backup stored {b} bytes, the first {a}"
            );
        }
    }
    // A commit after the last target, archived, so recovery can see it has passed the target.
    insert_rows(&primary, next..next + 3);
    let total = next + 3;
    primary.switch_and_wait();

    let check_out = world.lifeboat(&["pg", "check"]);
    let report = check(check_out, "pg check");
    assert!(!report.contains("GAP"), "{report}");

    let status = world.lifeboat_json(&["pg", "status", "--connect", &primary.conninfo()]);
    assert_eq!(status["base_backups"], 2, "{status}");
    assert_eq!(status["server"]["lag_segments"], 0, "{status}");
    assert!(status["last_archived"].as_str().is_some(), "{status}");
    let metrics = check(
        world.lifeboat(&[
            "pg",
            "status",
            "--prometheus",
            "--connect",
            &primary.conninfo(),
        ]),
        "pg status --prometheus",
    );
    let stream = status["stream"].as_str().unwrap();
    for line in [
        format!("lifeboat_pg_base_backups{{stream=\"{stream}\"}} 2"),
        format!("lifeboat_pg_archive_lag_segments{{stream=\"{stream}\"}} 0"),
        format!("lifeboat_pg_archive_failures_total{{stream=\"{stream}\"}} 0"),
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    assert!(
        metrics.contains("lifeboat_pg_last_backup_age_seconds{"),
        "{metrics}"
    );

    let restore_and_count = |name: &str, args: &[&str]| -> (serde_json::Value, i64) {
        let dir = world.path(name);
        let mut all = vec!["pg", "restore", "--archive-off", "--to"];
        let dir_text = dir.display().to_string();
        all.push(&dir_text);
        all.extend_from_slice(args);
        // The latest restore runs as the invoking user (root in CI): the files it writes
        // itself must still belong to the cluster's owner.
        let restored = if name == "restore-latest" {
            world.lifeboat_json_as_invoker(&all)
        } else {
            world.lifeboat_json(&all)
        };
        let cluster = world.start(dir);
        cluster.wait_promoted("the restored cluster");
        let count: i64 = cluster.psql("SELECT count(*) FROM rows;").parse().unwrap();
        let max: i64 = cluster
            .psql("SELECT coalesce(max(id), -1) FROM rows;")
            .parse()
            .unwrap();
        assert_eq!(max, count - 1, "rows are committed in id order");
        (restored, count)
    };

    for (i, (time, expected)) in targets.iter().enumerate() {
        let (restored, count) = restore_and_count(&format!("restore-{i}"), &["--time", time]);
        assert_eq!(count, *expected as i64, "restore to {time} (target {i})");
        let expected_backup = if i < 2 { &first_id } else { &second_id };
        assert_eq!(
            restored["backup"].as_str().unwrap(),
            expected_backup,
            "target {i}"
        );
    }
    let (_, count) = restore_and_count("restore-latest", &["--latest"]);
    assert_eq!(count, total as i64);

    // A recovery window that reaches back past both backups keeps them and all WAL.
    let window = world.lifeboat_json(&["pg", "expire", "--keep-within", "1d", "--dry-run"]);
    assert_eq!(window["keep"].as_array().unwrap().len(), 2, "{window}");
    assert!(
        window["delete_wal"].as_array().unwrap().is_empty(),
        "{window}"
    );

    // Retention: keep the second backup and the WAL from its start; the first backup's
    // targets are then out of reach, the chain stays whole.
    let plan = world.lifeboat_json(&["pg", "expire", "--keep", "1"]);
    assert_eq!(plan["forget"][0].as_str().unwrap(), first_id, "{plan}");
    assert!(!plan["delete_wal"].as_array().unwrap().is_empty(), "{plan}");
    let report = check(world.lifeboat(&["pg", "check"]), "pg check after expire");
    assert!(!report.contains("GAP"), "{report}");
    let out = world.lifeboat(&[
        "pg",
        "restore",
        "--to",
        &world.path("expired").display().to_string(),
        "--time",
        &targets[0].0,
    ]);
    assert!(!out.status.success());

    // A target older than every backup is refused with a reason.
    let out = world.lifeboat(&[
        "pg",
        "restore",
        "--to",
        &world.path("too-early").display().to_string(),
        "--time",
        "2000-01-01T00:00:00Z",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("choose a later target"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn archiving_survives_an_unreachable_repository_and_check_names_a_missing_segment() {
    let Some(world) = World::new() else { return };
    let primary = world.cluster("primary", true);
    primary.psql(SCHEMA);
    insert_rows(&primary, 0..5);
    primary.switch_and_wait();
    world.lifeboat_json(&["pg", "backup", "--connect", &primary.conninfo()]);

    // A data directory file the backup cannot read makes it fail, not a broken backup.
    let unreadable = primary.data.join("unreadable");
    fs::write(&unreadable, "secret").unwrap();
    fs::set_permissions(&unreadable, fs::Permissions::from_mode(0o000)).unwrap();
    let out = world.lifeboat(&["pg", "backup", "--connect", &primary.conninfo()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("could not be read") && stderr.contains("unreadable"),
        "{stderr}"
    );
    fs::remove_file(&unreadable).unwrap();
    assert_eq!(world.lifeboat_json(&["pg", "status"])["base_backups"], 1);

    // The repository goes away: archive-push fails and PostgreSQL keeps the segment.
    fs::rename(world.path("repo"), world.path("repo-away")).unwrap();
    insert_rows(&primary, 5..10);
    let pending = primary.psql("SELECT pg_walfile_name(pg_switch_wal());");
    wait_until("archive-push to fail", || {
        primary.psql("SELECT failed_count FROM pg_stat_archiver;") != "0"
    });
    let failed = primary.psql("SELECT last_failed_wal FROM pg_stat_archiver;");
    assert_eq!(failed, pending);
    // archive-get cannot reach it either: not "no such file" (1), which would end a recovery
    // early, but a code that makes PostgreSQL abort recovery.
    let out = world.lifeboat(&[
        "pg",
        "archive-get",
        "--pgdata",
        &primary.data.display().to_string(),
        &pending,
        &world.path("nowhere").display().to_string(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(255),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It comes back: PostgreSQL retries and nothing is lost.
    fs::rename(world.path("repo-away"), world.path("repo")).unwrap();
    primary.wait_archived(&pending);
    insert_rows(&primary, 10..15);
    // Several segments at once: the spool pushes ready ones ahead of PostgreSQL's calls.
    for _ in 0..4 {
        insert_rows(&primary, 100..101);
        primary.psql("SELECT pg_switch_wal(); DELETE FROM rows WHERE id = 100;");
    }
    let last = primary.switch_and_wait();
    let report = check(world.lifeboat(&["pg", "check"]), "pg check");
    assert!(!report.contains("GAP"), "{report}");

    // archive-get: a missing file exits 1 quietly; an archived one is written whole.
    let stream = world.lifeboat_json(&["pg", "status"])["stream"]
        .as_str()
        .unwrap()
        .to_string();
    let fetched = world.path("fetched");
    let out = world.lifeboat(&[
        "pg",
        "archive-get",
        "--stream",
        &stream,
        "00000009.history",
        &fetched.display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = world.lifeboat(&[
        "pg",
        "archive-get",
        "--stream",
        &stream,
        &pending,
        &fetched.display().to_string(),
    ]);
    check(out, "archive-get");
    let segment = fs::read(&fetched).unwrap();
    assert_eq!(segment.len(), 16 * 1024 * 1024);

    // Pushing the same segment again succeeds (PostgreSQL retries after a crash); other
    // bytes under the same name are refused.
    let again = world.path(&pending);
    fs::write(&again, &segment).unwrap();
    world.chown(&again);
    let push = |world: &World| {
        world.lifeboat(&[
            "pg",
            "archive-push",
            "--stream",
            &stream,
            &again.display().to_string(),
        ])
    };
    check(push(&world), "archive-push of an archived segment");
    let mut changed = segment.clone();
    changed[100] ^= 1;
    fs::write(&again, &changed).unwrap();
    let out = push(&world);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("different content"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A segment lost from the repository is named by pg check.
    let object = world
        .path("repo")
        .join("streams")
        .join(&stream)
        .join(&pending);
    fs::remove_file(&object).unwrap();
    let out = world.lifeboat(&["pg", "check"]);
    assert_eq!(out.status.code(), Some(1));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("GAP") && report.contains(&pending),
        "{report}"
    );
    assert!(report.contains(&last), "{report}");
}

#[test]
fn a_standby_replays_archived_wal_and_a_restore_follows_its_new_timeline() {
    let Some(world) = World::new() else { return };
    let primary = world.cluster("primary", false);
    primary.psql(SCHEMA);
    insert_rows(&primary, 0..10);
    world.lifeboat_json(&["pg", "backup", "--connect", &primary.conninfo()]);
    primary.switch_and_wait();

    // A warm standby fed from the archive only.
    let standby = world.standby("standby");
    assert!(standby.data.join("standby.signal").exists());
    let count = |cluster: &Cluster| -> Option<i64> {
        let out = cluster.psql_out("SELECT count(*) FROM rows;");
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
            .flatten()
    };
    wait_until("the standby to replay the first rows", || {
        count(&standby) == Some(10)
    });
    insert_rows(&primary, 10..20);
    primary.switch_and_wait();
    wait_until("the standby to replay newly archived WAL", || {
        count(&standby) == Some(20)
    });
    assert_eq!(standby.psql("SELECT pg_is_in_recovery();"), "t");

    // Fail over: the standby is promoted to a new timeline and archives into the same stream.
    primary.stop();
    let out = unprivileged(&world.bin.join("pg_ctl"))
        .arg("-D")
        .arg(&standby.data)
        .args(["-w", "promote"])
        .output()
        .unwrap();
    check(out, "pg_ctl promote");
    standby.wait_promoted("the standby");
    insert_rows(&standby, 20..25);
    let backup = world.lifeboat_json(&["pg", "backup", "--connect", &standby.conninfo()]);
    assert_eq!(backup["timeline"], 2, "{backup}");
    insert_rows(&standby, 25..30);
    standby.switch_and_wait();
    let report = check(world.lifeboat(&["pg", "check"]), "pg check");
    assert!(!report.contains("GAP"), "{report}");

    // The latest restore starts from the new timeline's backup and replays it.
    let again = world.path("again");
    let restored = world.lifeboat_json(&[
        "pg",
        "restore",
        "--latest",
        "--archive-off",
        "--to",
        &again.display().to_string(),
    ]);
    assert_eq!(restored["backup"], backup["snapshot"]);
    let again = world.start(again);
    again.wait_promoted("the restored cluster");
    assert_eq!(count(&again), Some(30));

    // Restoring over a used directory needs --delta, which removes what the backup lacks,
    // keeps the files that still hold the backup's bytes and rewrites the others (here the
    // table the rows below change in place, with the same size).
    insert_rows(&again, 30..40);
    again.stop();
    let dir = again.data.display().to_string();
    let args = [
        "pg",
        "restore",
        "--latest",
        "--archive-off",
        "--to",
        dir.as_str(),
    ];
    let out = world.lifeboat(&args);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--delta"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stray = again.data.join("base").join("stray-file");
    fs::write(&stray, "not from the backup").unwrap();
    let mut delta = args.to_vec();
    delta.push("--delta");
    let summary = world.lifeboat_json(&delta);
    assert!(!stray.exists());
    eprintln!("delta restore over the used copy: {summary}");
    let number = |key: &str| summary[key].as_u64().unwrap_or_else(|| panic!("{summary}"));
    let (files, reused, written) = (
        number("files"),
        number("reused_files"),
        number("written_files"),
    );
    assert_eq!(reused + written, files, "{summary}");
    // Recovery, ten inserts and the shutdown checkpoint touch a handful of the cluster's
    // files; the hundreds of catalog files are kept.
    assert!(reused * 10 >= files * 8, "most files are kept: {summary}");
    assert!(written >= 1, "the changed table is rewritten: {summary}");
    assert!(
        number("reused_bytes") > number("written_bytes"),
        "{summary}"
    );
    assert!(number("removed") >= 1, "the stray file at least: {summary}");
    let again = again.start_on(free_port());
    again.wait_promoted("the delta-restored cluster");
    assert_eq!(count(&again), Some(30));
}

/// Restores with `pg restore --archive-off --to <world>/<name> ARGS`, starts PostgreSQL on the
/// result and waits until recovery has promoted it.
fn restore_and_start(world: &World, name: &str, args: &[&str]) -> (serde_json::Value, Cluster) {
    let dir = world.path(name);
    let dir_text = dir.display().to_string();
    let mut all = vec!["pg", "restore", "--archive-off", "--to", &dir_text];
    all.extend_from_slice(args);
    let restored = world.lifeboat_json(&all);
    let cluster = world.start(dir);
    cluster.wait_promoted(name);
    (restored, cluster)
}

/// The ids in `rows`, in order.
fn row_ids(cluster: &Cluster) -> Vec<i64> {
    cluster
        .psql("SELECT id FROM rows ORDER BY id;")
        .lines()
        .map(|l| l.parse().unwrap())
        .collect()
}

#[test]
fn after_a_point_in_time_restore_restores_follow_the_new_timeline_not_the_abandoned_branch() {
    let Some(world) = World::new() else { return };
    let primary = world.cluster("primary", false);
    primary.psql(SCHEMA);
    insert_rows(&primary, 0..10);
    let before = world.lifeboat_json(&["pg", "backup", "--connect", &primary.conninfo()]);
    insert_rows(&primary, 10..20);
    std::thread::sleep(Duration::from_millis(150));
    let branch_time = server_time(&primary);
    std::thread::sleep(Duration::from_millis(150));
    // The mistake the point-in-time restore undoes, and a base backup taken after it: both
    // stay in the archive on timeline 1.
    insert_rows(&primary, 1000..1010);
    let abandoned = world.lifeboat_json(&["pg", "backup", "--connect", &primary.conninfo()]);
    primary.switch_and_wait();
    primary.stop();

    // Recover to just before the mistake and carry on there: timeline 2, archiving into the
    // same stream.
    let recovered_dir = world.path("recovered");
    let out = world.lifeboat_json(&[
        "pg",
        "restore",
        "--time",
        &branch_time,
        "--to",
        &recovered_dir.display().to_string(),
    ]);
    assert_eq!(out["backup"], before["snapshot"], "{out}");
    let recovered = world.start(recovered_dir);
    recovered.wait_promoted("the recovered cluster");
    assert_eq!(row_ids(&recovered), (0..20).collect::<Vec<_>>());
    insert_rows(&recovered, 20..30);
    std::thread::sleep(Duration::from_millis(150));
    let later = server_time(&recovered);
    std::thread::sleep(Duration::from_millis(150));
    insert_rows(&recovered, 30..33);
    recovered.switch_and_wait();

    // The check follows timeline 2: whole, and the abandoned branch's backup is named as such.
    let report = world.lifeboat_json(&["pg", "check"]);
    assert_eq!(report["timeline"], 2, "{report}");
    assert!(report["gaps"].as_array().unwrap().is_empty(), "{report}");
    let on_timeline = |id: &serde_json::Value| {
        report["backups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["id"] == *id)
            .unwrap_or_else(|| panic!("{report}"))["on_timeline"]
            .clone()
    };
    assert_eq!(on_timeline(&before["snapshot"]), true);
    assert_eq!(on_timeline(&abandoned["snapshot"]), false);
    // Retention counts backups on timeline 2's history: keeping one keeps the backup the new
    // timeline restores from, although the abandoned branch's is newer.
    let plan = world.lifeboat_json(&["pg", "expire", "--keep", "1", "--dry-run"]);
    assert!(
        plan["keep"]
            .as_array()
            .unwrap()
            .contains(&before["snapshot"]),
        "{plan}"
    );
    assert!(plan["forget"].as_array().unwrap().is_empty(), "{plan}");

    // A time on timeline 2 before it has a backup of its own: the abandoned branch's backup
    // ends before that time too, but only the one from before the branch point leads there.
    let (restored, again) = restore_and_start(&world, "again", &["--time", &later]);
    assert_eq!(restored["backup"], before["snapshot"], "{restored}");
    assert_eq!(restored["timeline"], 2, "{restored}");
    assert_eq!(row_ids(&again), (0..30).collect::<Vec<_>>());
    drop(again);
    let (_, latest) = restore_and_start(&world, "latest", &["--latest"]);
    assert_eq!(row_ids(&latest), (0..33).collect::<Vec<_>>());
    drop(latest);

    // The abandoned branch stays reachable on request.
    let (restored, old) = restore_and_start(&world, "old-branch", &["--latest", "--timeline", "1"]);
    assert_eq!(restored["backup"], abandoned["snapshot"], "{restored}");
    assert_eq!(restored["timeline"], 1, "{restored}");
    let expected: Vec<i64> = (0..20).chain(1000..1010).collect();
    assert_eq!(row_ids(&old), expected);
}

#[test]
fn tablespaces_are_backed_up_and_restored_where_the_map_says() {
    let Some(world) = World::new() else { return };
    let primary = world.cluster("primary", false);
    let space = world.path("space");
    fs::create_dir(&space).unwrap();
    world.chown(&space);
    primary.psql(&format!(
        "CREATE TABLESPACE far LOCATION '{}';\n\
         CREATE TABLE distant (id int PRIMARY KEY) TABLESPACE far;\n\
         INSERT INTO distant SELECT generate_series(1, 1000);",
        space.display()
    ));
    let oid = primary.psql("SELECT oid FROM pg_tablespace WHERE spcname = 'far';");
    let backup = world.lifeboat_json(&["pg", "backup", "--connect", &primary.conninfo()]);
    primary.psql("INSERT INTO distant SELECT generate_series(1001, 1500);");
    primary.switch_and_wait();

    // The original tablespace is in use: a copy restored beside it must not write there.
    let copy = world.path("copy");
    let copy_text = copy.display().to_string();
    let out = world.lifeboat(&["pg", "restore", "--archive-off", "--to", &copy_text]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--tablespace-map"), "{stderr}");
    assert!(
        !copy.join("PG_VERSION").exists(),
        "nothing is written before the refusal"
    );
    let out = world.lifeboat(&[
        "pg",
        "restore",
        "--to",
        &copy_text,
        "--tablespace-map",
        "4242=/nowhere",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no tablespace 4242"), "{stderr}");

    let copy_space = world.path("copy-space");
    let map = format!("{oid}={}", copy_space.display());
    let (restored, copy) = restore_and_start(&world, "copy", &["--tablespace-map", &map]);
    assert_eq!(restored["backup"], backup["snapshot"], "{restored}");
    assert_eq!(
        restored["tablespaces"][0]["oid"].to_string(),
        oid,
        "{restored}"
    );
    assert_eq!(
        fs::read_link(copy.data.join("pg_tblspc").join(&oid)).unwrap(),
        copy_space
    );
    assert_eq!(copy.psql("SELECT count(*) FROM distant;"), "1500");
    assert_eq!(
        copy.psql("SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'far';"),
        copy_space.display().to_string()
    );
    // The copy writes into its own tablespace, the original keeps its rows.
    copy.psql("INSERT INTO distant SELECT generate_series(1501, 1600); CHECKPOINT;");
    assert_eq!(copy.psql("SELECT count(*) FROM distant;"), "1600");
    assert_eq!(primary.psql("SELECT count(*) FROM distant;"), "1500");
}

#[test]
fn a_base_backup_taken_from_a_standby_restores_with_every_row() {
    let Some(world) = World::new() else { return };
    let primary = world.cluster("primary", false);
    primary.psql(SCHEMA);
    insert_rows(&primary, 0..10);
    let first = world.lifeboat_json(&["pg", "backup", "--connect", &primary.conninfo()]);
    primary.switch_and_wait();
    let standby = world.standby("standby");
    insert_rows(&primary, 10..20);
    primary.psql("CHECKPOINT;");
    primary.switch_and_wait();
    wait_until("the standby to replay rows 10..20", || {
        let out = standby.psql_out("SELECT count(*) FROM rows;");
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "20"
    });

    // The backup reads the standby's files; the primary goes on writing meanwhile.
    let backup = world.lifeboat_json(&["pg", "backup", "--connect", &standby.conninfo()]);
    assert_eq!(backup["from_standby"], true, "{backup}");
    assert!(
        backup["wal_missing"].as_array().unwrap().is_empty(),
        "{backup}"
    );
    assert!(backup["stop_lsn"].as_str().is_some(), "{backup}");
    insert_rows(&primary, 20..30);
    primary.switch_and_wait();
    let report = world.lifeboat_json(&["pg", "check"]);
    let standby_backup = report["backups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == backup["snapshot"])
        .unwrap_or_else(|| panic!("{report}"))
        .clone();
    assert_eq!(standby_backup["restorable"], true, "{report}");

    // The newest backup is the standby's: restores start from it and see every row.
    let (restored, copy) = restore_and_start(&world, "copy", &["--latest"]);
    assert_eq!(restored["backup"], backup["snapshot"], "{restored}");
    assert_ne!(restored["backup"], first["snapshot"]);
    assert_eq!(row_ids(&copy), (0..30).collect::<Vec<_>>());
}
