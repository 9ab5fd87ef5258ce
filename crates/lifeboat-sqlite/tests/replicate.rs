//! Replication and restore against real SQLite files written by another process.
//!
//! The writer (and, for the kill -9 test, the replicator) run as child processes: this test
//! binary started again on a helper test (`writer_process`, `replicator_process`) that does its
//! work only when its environment variable is set. Writers stamp each row with the time of its
//! commit, so a restore to time T can be checked against the rows themselves.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lifeboat_repo::{IndexedRepository, InitOptions, KdfParams, Repository};
use lifeboat_sqlite::{
    Destination, DestinationState, ReplicateOptions, ReplicationStatus, Replicator, RestorePoint,
    Selector, restore,
};
use lifeboat_storage::{NetworkOptions, Storage};
use rusqlite::Connection;

// The fault-injecting proxy of the file source's S3 tests: here it plays an S3 destination
// that goes away and comes back.
#[path = "../../lifeboat-files/tests/common/faultproxy.rs"]
mod faultproxy;

const PASSWORD: &[u8] = b"a test password";

fn now_micros() -> i64 {
    jiff::Timestamp::now().as_microsecond()
}

/// Helper process: commits rows with their own timestamps (run by [`spawn_writer`]).
#[test]
fn writer_process() {
    let Ok(path) = std::env::var("LIFEBOAT_TEST_SQLITE_WRITER") else {
        return;
    };
    let rows: u64 = std::env::var("LIFEBOAT_TEST_ROWS")
        .unwrap()
        .parse()
        .unwrap();
    let pause: u64 = std::env::var("LIFEBOAT_TEST_PAUSE_MS")
        .unwrap()
        .parse()
        .unwrap();
    let payload: usize = std::env::var("LIFEBOAT_TEST_PAYLOAD")
        .unwrap()
        .parse()
        .unwrap();
    let conn = Connection::open(&path).unwrap();
    conn.busy_timeout(Duration::from_secs(30)).unwrap();
    for _ in 0..rows {
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        conn.execute(
            "INSERT INTO rows (ts, payload) VALUES (?1, randomblob(?2))",
            rusqlite::params![now_micros(), payload],
        )
        .unwrap();
        conn.execute_batch("COMMIT").unwrap();
        std::thread::sleep(Duration::from_millis(pause));
    }
}

/// Helper process: replicates a database until killed (run by the kill -9 test).
#[test]
fn replicator_process() {
    let Ok(db) = std::env::var("LIFEBOAT_TEST_SQLITE_REPLICATE") else {
        return;
    };
    let repo_path = std::env::var("LIFEBOAT_TEST_SQLITE_REPO").unwrap();
    let repo = Repository::open(Storage::local(Path::new(&repo_path)).unwrap(), PASSWORD)
        .unwrap()
        .load_index()
        .unwrap();
    let mut replicator = Replicator::open(Path::new(&db), repo, options()).unwrap();
    replicator.run(&AtomicBool::new(false), |_| {});
}

fn spawn_writer(db: &Path, rows: u64, pause_ms: u64, payload: usize) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["writer_process", "--exact", "--nocapture"])
        .env("LIFEBOAT_TEST_SQLITE_WRITER", db)
        .env("LIFEBOAT_TEST_ROWS", rows.to_string())
        .env("LIFEBOAT_TEST_PAUSE_MS", pause_ms.to_string())
        .env("LIFEBOAT_TEST_PAYLOAD", payload.to_string())
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

fn wait_ok(mut child: Child) {
    let status = child.wait().unwrap();
    assert!(status.success(), "child process failed: {status}");
}

fn options() -> ReplicateOptions {
    ReplicateOptions {
        interval: Duration::from_millis(100),
        snapshot_interval: Duration::from_secs(2),
        // Small, so that checkpoints and WAL restarts happen many times in each test.
        checkpoint_frames: 40,
        ..Default::default()
    }
}

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        let setup = Setup {
            dir: tempfile::tempdir().unwrap(),
        };
        let conn = Connection::open(setup.db()).unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        conn.execute_batch(
            "CREATE TABLE rows (id INTEGER PRIMARY KEY, ts INTEGER NOT NULL, payload BLOB)",
        )
        .unwrap();
        let options = InitOptions {
            kdf: KdfParams::insecure_for_tests(),
            pack_size: 1 << 20,
            ..Default::default()
        };
        Repository::init(
            Storage::create(setup.repo_path().to_str().unwrap()).unwrap(),
            PASSWORD,
            &options,
        )
        .unwrap();
        setup
    }

    fn db(&self) -> PathBuf {
        self.dir.path().join("app.db")
    }

    fn repo_path(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    fn repo(&self) -> lifeboat_repo::IndexedRepository {
        Repository::open(Storage::local(&self.repo_path()).unwrap(), PASSWORD)
            .unwrap()
            .load_index()
            .unwrap()
    }

    /// Starts a replicator thread; the returned guard stops it (shipping the rest) on `stop`.
    fn replicate(&self, options: ReplicateOptions) -> Running {
        self.replicate_to(vec![Destination::new(self.repo())], options)
    }

    /// Starts a replicator thread feeding several destinations.
    fn replicate_to(&self, destinations: Vec<Destination>, options: ReplicateOptions) -> Running {
        let stop = Arc::new(AtomicBool::new(false));
        let mut replicator = Replicator::open_with(&self.db(), destinations, options).unwrap();
        let flag = stop.clone();
        let status = Arc::new(Mutex::new(replicator.status()));
        let latest = status.clone();
        let thread = std::thread::spawn(move || {
            replicator.run(&flag, |s| *latest.lock().unwrap() = s.clone());
            replicator.status()
        });
        Running {
            stop,
            thread,
            status,
        }
    }

    fn restore(
        &self,
        name: &str,
        point: RestorePoint,
    ) -> lifeboat_sqlite::Result<(PathBuf, lifeboat_sqlite::RestoreOutcome)> {
        let target = self.dir.path().join(name);
        let outcome = restore(&self.repo(), &Selector::path(&self.db()), &target, point)?;
        Ok((target, outcome))
    }
}

struct Running {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<lifeboat_sqlite::ReplicationStatus>,
    /// As of the replicator's last round.
    status: Arc<Mutex<ReplicationStatus>>,
}

impl Running {
    fn status(&self) -> ReplicationStatus {
        self.status.lock().unwrap().clone()
    }

    fn stop(self) -> lifeboat_sqlite::ReplicationStatus {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// (id, ts, payload hash) of every row, in id order.
fn rows(db: &Path) -> Vec<(i64, i64, String)> {
    let conn = Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT id, ts, hex(payload) FROM rows ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, String>(2)?)))
        .unwrap()
        .map(|r| {
            let (id, ts, payload) = r.unwrap();
            (
                id,
                ts,
                blake3::hash(payload.as_bytes()).to_hex().to_string(),
            )
        })
        .collect()
}

#[test]
fn restores_at_several_times_hold_exactly_the_rows_committed_by_then() {
    let setup = Setup::new();
    let running = setup.replicate(options());
    wait_ok(spawn_writer(&setup.db(), 400, 15, 300));
    let status = running.stop();
    assert!(status.checkpoints > 0, "{status:?}");
    // The base snapshot and periodic ones (taken on their own thread while shipping goes on):
    // the restores below start from them.
    assert!(status.destinations[0].snapshots_taken >= 2, "{status:?}");
    let source = rows(&setup.db());
    assert_eq!(source.len(), 400);

    let (latest, outcome) = setup.restore("latest.db", RestorePoint::Latest).unwrap();
    assert_eq!(rows(&latest), source, "{outcome:?}");

    // Times inside the run: each restore holds a prefix of the rows, none committed after T,
    // and every row committed more than the sync interval (0.1 s, plus generous slack for a
    // loaded machine) before T.
    let slack = 3_000_000;
    for (i, index) in [40usize, 150, 260, 399].into_iter().enumerate() {
        let t_micros = source[index].1 + 5_000;
        let t = jiff::Timestamp::from_microsecond(t_micros).unwrap();
        let (path, outcome) = setup
            .restore(&format!("at-{i}.db"), RestorePoint::Time(t))
            .unwrap();
        let restored = rows(&path);
        assert_eq!(restored[..], source[..restored.len()], "a prefix");
        assert!(restored.iter().all(|r| r.1 <= t_micros), "no row after T");
        let due = source.iter().filter(|r| r.1 <= t_micros - slack).count();
        assert!(
            restored.len() >= due,
            "restore to {t} has {} rows, but {due} were committed more than 3 s before: {outcome:?}",
            restored.len()
        );
        assert!(outcome.captured <= t);
    }

    // Before the first snapshot nothing can be restored, and the error says from when.
    let before = jiff::Timestamp::from_microsecond(source[0].1 - 60_000_000).unwrap();
    let error = setup
        .restore("too-early.db", RestorePoint::Time(before))
        .unwrap_err()
        .to_string();
    assert!(error.contains("earliest restorable moment"), "{error}");

    // An existing target is never overwritten.
    let error = setup
        .restore("latest.db", RestorePoint::Latest)
        .unwrap_err();
    assert!(
        matches!(error, lifeboat_sqlite::Error::TargetExists(_)),
        "{error}"
    );
    assert_eq!(rows(&latest), source);
}

#[test]
fn kill_9_of_the_replicator_loses_no_shipped_row_and_it_resumes() {
    let setup = Setup::new();
    let writer = spawn_writer(&setup.db(), 600, 5, 200);
    let spawn_replicator = || {
        Command::new(std::env::current_exe().unwrap())
            .args(["replicator_process", "--exact", "--nocapture"])
            .env("LIFEBOAT_TEST_SQLITE_REPLICATE", setup.db())
            .env("LIFEBOAT_TEST_SQLITE_REPO", setup.repo_path())
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut shipped_before = Vec::new();
    for round in 0..3 {
        let mut replicator = spawn_replicator();
        // The first replicator must have stored its base snapshot (slow on a loaded machine)
        // before the kill means anything.
        let deadline = Instant::now() + Duration::from_secs(120);
        while std::fs::read_dir(setup.repo_path().join("snapshots")).map_or(0, |d| d.count()) == 0 {
            assert!(Instant::now() < deadline, "no snapshot was stored");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(500 + 300 * round));
        replicator.kill().unwrap();
        replicator.wait().unwrap();
        // What was shipped before the kill restores, and later restores keep all of it.
        let (path, _) = setup
            .restore(&format!("after-kill-{round}.db"), RestorePoint::Latest)
            .unwrap();
        let restored = rows(&path);
        assert!(restored.len() >= shipped_before.len());
        assert_eq!(restored[..shipped_before.len()], shipped_before[..]);
        shipped_before = restored;
    }
    wait_ok(writer);
    // The last replicator catches up with everything and stops cleanly.
    let status = setup.replicate(options()).stop();
    let (path, _) = setup.restore("final.db", RestorePoint::Latest).unwrap();
    let restored = rows(&path);
    assert_eq!(restored, rows(&setup.db()), "{status:?}");
    assert_eq!(restored.len(), 600);
    assert_eq!(restored[..shipped_before.len()], shipped_before[..]);
}

#[test]
fn a_truncate_checkpoint_by_another_connection_is_detected_and_handled() {
    let setup = Setup::new();
    // While the replicator runs, TRUNCATE checkpoints by another connection either wait for
    // its read transaction (and fail busy) or happen exactly where everything was shipped.
    let running = setup.replicate(options());
    let writer = spawn_writer(&setup.db(), 300, 5, 200);
    let other = Connection::open(setup.db()).unwrap();
    other.busy_timeout(Duration::from_millis(50)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut truncated = 0;
    while Instant::now() < deadline {
        if let Ok((0, _, _)) = other.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        }) {
            truncated += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
        if std::fs::metadata(setup.db()).is_ok() && rows(&setup.db()).len() >= 300 {
            break;
        }
    }
    wait_ok(writer);
    let status = running.stop();
    eprintln!("TRUNCATE checkpoints that went through while replicating: {truncated}");
    assert_eq!(status.destinations[0].generations_started, 1, "{status:?}");
    assert_eq!(status.destinations[0].releases, 0, "{status:?}");
    let (path, _) = setup.restore("running.db", RestorePoint::Latest).unwrap();
    assert_eq!(rows(&path), rows(&setup.db()));

    // With the replicator stopped, another connection's TRUNCATE resets the WAL: the next
    // replicator notices that the log no longer continues its journal and starts a new
    // generation with a fresh snapshot.
    wait_ok(spawn_writer(&setup.db(), 50, 1, 100));
    let (busy, _, _): (i64, i64, i64) = other
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!(busy, 0);
    assert_eq!(
        std::fs::metadata(setup.db().with_extension("db-wal"))
            .unwrap()
            .len(),
        0
    );
    wait_ok(spawn_writer(&setup.db(), 50, 1, 100));
    let status = setup.replicate(options()).stop();
    assert_eq!(
        status.destinations[0].generations_started, 1,
        "a new generation: {status:?}"
    );
    let (path, _) = setup
        .restore("after-truncate.db", RestorePoint::Latest)
        .unwrap();
    assert_eq!(rows(&path), rows(&setup.db()));
    assert_eq!(rows(&path).len(), 400);
}

#[test]
fn resume_after_a_clean_stop_continues_the_same_generation() {
    let setup = Setup::new();
    // The application keeps its database open (else SQLite deletes the WAL when the last
    // connection closes, and the next replicator must start a new generation).
    let app = Connection::open(setup.db()).unwrap();
    app.query_row("SELECT count(*) FROM rows", [], |r| r.get::<_, i64>(0))
        .unwrap();
    wait_ok(spawn_writer(&setup.db(), 30, 0, 100));
    let first = setup.replicate(options()).stop();
    assert_eq!(first.destinations[0].generations_started, 1);
    wait_ok(spawn_writer(&setup.db(), 30, 0, 100));
    let second = setup.replicate(options()).stop();
    assert_eq!(second.destinations[0].generations_started, 0, "{second:?}");
    assert_eq!(
        second.destinations[0].generation,
        first.destinations[0].generation
    );
    let (path, _) = setup.restore("r.db", RestorePoint::Latest).unwrap();
    assert_eq!(rows(&path), rows(&setup.db()));
}

#[test]
fn a_corrupt_segment_is_named_and_earlier_moments_still_restore() {
    let setup = Setup::new();
    let running = setup.replicate(ReplicateOptions {
        snapshot_interval: Duration::from_secs(3600),
        ..options()
    });
    wait_ok(spawn_writer(&setup.db(), 200, 5, 100));
    running.stop();
    let streams = std::fs::read_dir(setup.repo_path().join("streams")).unwrap();
    let stream_dir = streams.map(|e| e.unwrap().path()).next().unwrap();
    let mut segments: Vec<PathBuf> = std::fs::read_dir(&stream_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segments.sort();
    assert!(segments.len() > 4, "{segments:?}");
    let victim = &segments[segments.len() / 2];
    let mut bytes = std::fs::read(victim).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(victim, &bytes).unwrap();

    let error = setup
        .restore("latest.db", RestorePoint::Latest)
        .unwrap_err()
        .to_string();
    let victim_name = victim.file_name().unwrap().to_str().unwrap();
    assert!(error.contains(victim_name), "{error}");
    assert!(error.contains("can be restored up to"), "{error}");
    assert!(!setup.dir.path().join("latest.db").exists());
    // The moment the error names restores.
    let time: jiff::Timestamp = error
        .split("--time ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let (path, outcome) = setup
        .restore("earlier.db", RestorePoint::Time(time))
        .unwrap();
    assert!(outcome.segments > 0);
    let restored = rows(&path);
    assert_eq!(restored[..], rows(&setup.db())[..restored.len()]);
}

#[test]
fn a_database_not_in_wal_mode_is_refused_with_advice() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("plain.db");
    Connection::open(&db)
        .unwrap()
        .execute_batch("CREATE TABLE t (x)")
        .unwrap();
    let repo_path = dir.path().join("repo");
    let options = InitOptions {
        kdf: KdfParams::insecure_for_tests(),
        ..Default::default()
    };
    let repo = Repository::init(
        Storage::create(repo_path.to_str().unwrap()).unwrap(),
        PASSWORD,
        &options,
    )
    .unwrap()
    .load_index()
    .unwrap();
    let error = Replicator::open(&db, repo, ReplicateOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("journal_mode=WAL"), "{error}");
}

/// A database of tens of MiB (1 GiB with `LIFEBOAT_TEST_SQLITE_LARGE=1`): snapshot, a second
/// snapshot that deduplicates against the first, and a restore that matches bit for bit.
#[test]
fn a_large_database_snapshots_and_restores() {
    let large = std::env::var_os("LIFEBOAT_TEST_SQLITE_LARGE").is_some();
    let setup = Setup::new();
    let rows_wanted: i64 = if large { 256 * 1024 } else { 6 * 1024 };
    {
        let conn = Connection::open(setup.db()).unwrap();
        conn.execute_batch("BEGIN").unwrap();
        let mut stmt = conn
            .prepare("INSERT INTO rows (ts, payload) VALUES (?1, randomblob(4000))")
            .unwrap();
        for i in 0..rows_wanted {
            stmt.execute([i]).unwrap();
        }
        drop(stmt);
        conn.execute_batch("COMMIT; PRAGMA wal_checkpoint(TRUNCATE)")
            .unwrap();
    }
    let started = Instant::now();
    let mut replicator = Replicator::open(&setup.db(), setup.repo(), options()).unwrap();
    let first_snapshot = started.elapsed();
    Connection::open(setup.db())
        .unwrap()
        .execute_batch(
            "UPDATE rows SET ts = -ts WHERE id < 20;
             INSERT INTO rows (ts, payload) SELECT ts, randomblob(4000) FROM rows LIMIT 50;",
        )
        .unwrap();
    replicator.tick().unwrap();
    replicator.sync(Duration::from_secs(120)).unwrap();
    let before = dir_size(&setup.repo_path());
    replicator.snapshot_now().unwrap();
    let added = dir_size(&setup.repo_path()) - before;
    let db_size = std::fs::metadata(setup.db()).unwrap().len();
    drop(replicator);
    eprintln!(
        "database {} MiB: first snapshot {:?}, second snapshot added {} KiB",
        db_size >> 20,
        first_snapshot,
        added >> 10
    );
    assert!(
        added < db_size / 4,
        "the second snapshot deduplicates: {added}"
    );
    let started = Instant::now();
    let (path, outcome) = setup.restore("big.db", RestorePoint::Latest).unwrap();
    eprintln!("restore took {:?}: {outcome:?}", started.elapsed());
    assert_eq!(rows(&path), rows(&setup.db()));
}

/// A writer that fills `checkpoint_frames` within one interval makes rounds (and so
/// checkpoints and WAL restarts) ten times as frequent; a quiet one gets the interval back.
#[test]
fn a_busy_writer_shortens_the_pause_between_rounds() {
    let setup = Setup::new();
    let options = ReplicateOptions {
        interval: Duration::from_secs(1),
        snapshot_interval: Duration::from_secs(3600),
        checkpoint_frames: 100,
        ..Default::default()
    };
    let mut replicator = Replicator::open(&setup.db(), setup.repo(), options).unwrap();
    replicator.tick().unwrap();
    assert_eq!(
        replicator.pause(),
        Duration::from_secs(1),
        "nothing written"
    );

    let conn = Connection::open(setup.db()).unwrap();
    // 200 rows of 4000 bytes: at least 200 frames in well under a second.
    for i in 0..200 {
        conn.execute(
            "INSERT INTO rows (ts, payload) VALUES (?1, randomblob(4000))",
            [i],
        )
        .unwrap();
    }
    replicator.tick().unwrap();
    assert_eq!(
        replicator.pause(),
        Duration::from_millis(100),
        "a busy writer gets a tenth of the interval"
    );

    conn.execute("INSERT INTO rows (ts, payload) VALUES (1, x'00')", [])
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    replicator.tick().unwrap();
    assert_eq!(replicator.pause(), Duration::from_secs(1), "quiet again");
    replicator.sync(Duration::from_secs(60)).unwrap();
}

/// The salts of the WAL's header: they change when SQLite restarts the log.
fn wal_salts(db: &Path) -> [u8; 8] {
    let bytes = std::fs::read(format!("{}-wal", db.display())).unwrap();
    bytes[16..24].try_into().unwrap()
}

/// A writer that fills `checkpoint_frames` frames of a new WAL cycle wakes the replicator long
/// before the interval is up (it looks at the WAL every few ms between rounds), so the
/// checkpoint and the WAL restart come promptly; the second checkpoint hands the read
/// transaction over and copies most of the WAL without the write lock. Nothing written: no
/// early round. Restores stay exact.
#[test]
fn a_long_wal_cycle_brings_the_next_round_forward() {
    let setup = Setup::new();
    let options = ReplicateOptions {
        interval: Duration::from_secs(60),
        snapshot_interval: Duration::from_secs(3600),
        checkpoint_frames: 100,
        ..Default::default()
    };
    let mut replicator = Replicator::open(&setup.db(), setup.repo(), options).unwrap();
    replicator.tick().unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let stopper = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            stop.store(true, Ordering::SeqCst);
        })
    };
    let started = Instant::now();
    replicator.idle(&stop);
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "nothing written, yet idle returned after {:?}",
        started.elapsed()
    );
    stopper.join().unwrap();

    let conn = Connection::open(setup.db()).unwrap();
    conn.busy_timeout(Duration::from_secs(30)).unwrap();
    let mut salts = None;
    for cycle in 0..3 {
        // 150 rows of 4000 bytes: at least 150 frames, in well under the interval.
        for i in 0..150 {
            conn.execute(
                "INSERT INTO rows (ts, payload) VALUES (?1, randomblob(4000))",
                [i],
            )
            .unwrap();
        }
        let now = wal_salts(&setup.db());
        assert_ne!(
            Some(now),
            salts,
            "the WAL restarted after the last checkpoint"
        );
        salts = Some(now);
        let started = Instant::now();
        replicator.idle(&AtomicBool::new(false));
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "a long WAL cycle should end the pause early (took {:?})",
            started.elapsed()
        );
        let before = replicator.status().checkpoints;
        replicator.tick().unwrap();
        assert_eq!(replicator.status().checkpoints, before + 1, "cycle {cycle}");
    }
    replicator.sync(Duration::from_secs(60)).unwrap();
    let (path, _) = setup.restore("latest.db", RestorePoint::Latest).unwrap();
    assert_eq!(rows(&path), rows(&setup.db()));
}

fn dir_size(path: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(path).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            dir_size(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

#[test]
fn an_unreachable_destination_lets_go_of_the_wal_past_the_lag_limit_then_resyncs() {
    let setup = Setup::new();
    let running = setup.replicate(ReplicateOptions {
        max_lag_bytes: Some(64 << 10),
        ..options()
    });
    wait_ok(spawn_writer(&setup.db(), 20, 1, 100));
    // The destination goes away: a plain file where the repository directory was.
    let away = setup.dir.path().join("repo-away");
    std::fs::rename(setup.repo_path(), &away).unwrap();
    std::fs::write(setup.repo_path(), b"not a directory").unwrap();
    wait_ok(spawn_writer(&setup.db(), 100, 1, 1000));
    // Past the limit the replicator stops holding the WAL: another connection's TRUNCATE
    // checkpoint then goes through, and local disk use falls back.
    let other = Connection::open(setup.db()).unwrap();
    other.busy_timeout(Duration::from_millis(100)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (busy, _, _): (i64, i64, i64) = other
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        if busy == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the WAL is still held");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The destination comes back; more is written; the replicator resyncs with a new
    // generation, and the latest restore has everything.
    std::fs::remove_file(setup.repo_path()).unwrap();
    std::fs::rename(&away, setup.repo_path()).unwrap();
    wait_ok(spawn_writer(&setup.db(), 20, 1, 100));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        if let Ok((path, _)) =
            setup.restore(&format!("probe-{}.db", now_micros()), RestorePoint::Latest)
            && rows(&path).len() == 140
        {
            break;
        }
        assert!(Instant::now() < deadline, "the replicator did not resync");
    }
    let status = running.stop();
    assert_eq!(status.destinations[0].generations_started, 2, "{status:?}");
    assert!(status.destinations[0].last_error.is_some());
    let (path, _) = setup.restore("final.db", RestorePoint::Latest).unwrap();
    assert_eq!(rows(&path), rows(&setup.db()));
}

#[test]
fn follow_keeps_a_read_only_replica_current() {
    let setup = Setup::new();
    let running = setup.replicate(options());
    let replica = setup.dir.path().join("replica.db");
    let mut follower =
        lifeboat_sqlite::Follower::start(setup.repo(), Selector::path(&setup.db()), &replica)
            .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let following = std::thread::spawn(move || {
        follower.run(Duration::from_millis(100), &flag);
        follower.state().clone()
    });
    let writer = spawn_writer(&setup.db(), 300, 5, 200);
    // Readers of the replica always see a consistent database that only moves forward.
    let reader =
        Connection::open_with_flags(&replica, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    reader.busy_timeout(Duration::from_secs(30)).unwrap();
    let mut seen = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (count, max): (i64, Option<i64>) = reader
            .query_row("SELECT count(*), max(id) FROM rows", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert!(
            count >= seen,
            "the replica went back from {seen} to {count} rows"
        );
        assert_eq!(Some(count), max.or(Some(0)), "rows are a prefix");
        seen = count;
        if count == 300 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replica stopped at {count} rows"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_ok(writer);
    let check: String = reader
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    drop(reader);
    stop.store(true, Ordering::Relaxed);
    let state = following.join().unwrap();
    running.stop();
    assert!(state.segments > 0, "{state:?}");
    assert_eq!(rows(&replica), rows(&setup.db()));
}

#[test]
fn segment_retention_keeps_every_moment_of_the_window_restorable() {
    let setup = Setup::new();
    let app = Connection::open(setup.db()).unwrap();
    app.query_row("SELECT count(*) FROM rows", [], |r| r.get::<_, i64>(0))
        .unwrap();
    let mut replicator = Replicator::open(&setup.db(), setup.repo(), options()).unwrap();
    let write = |n: i64| {
        for i in 0..n {
            app.execute(
                "INSERT INTO rows (ts, payload) VALUES (?1, randomblob(100))",
                [now_micros() + i],
            )
            .unwrap();
        }
    };
    write(10);
    replicator.tick().unwrap();
    write(10);
    replicator.tick().unwrap();
    // A second snapshot; the window starts after it.
    replicator.snapshot_now().unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let window_start = jiff::Timestamp::now();
    write(10);
    replicator.tick().unwrap();
    drop(replicator);

    let repo = setup.repo();
    let snapshots = lifeboat_sqlite::catalog::database_snapshots(&repo, None).unwrap();
    assert_eq!(snapshots.len(), 2);
    let stream = snapshots[0].state.stream.clone();
    let plan = lifeboat_sqlite::retention::plan_segments(&repo, &stream, &snapshots, window_start)
        .unwrap();
    assert_eq!(plan.delete.len(), 2, "{plan:?}");
    assert_eq!(plan.keep, 1, "{plan:?}");
    lifeboat_sqlite::retention::apply_segments(&repo, &plan).unwrap();
    // Every moment from the window's start on still restores; the latest has everything.
    let (path, _) = setup
        .restore("window.db", RestorePoint::Time(window_start))
        .unwrap();
    assert_eq!(rows(&path).len(), 20);
    let (path, _) = setup.restore("latest.db", RestorePoint::Latest).unwrap();
    assert_eq!(rows(&path), rows(&setup.db()));
    // A window reaching before everything deletes nothing more.
    let plan = lifeboat_sqlite::retention::plan_segments(
        &repo,
        &stream,
        &snapshots,
        jiff::Timestamp::UNIX_EPOCH,
    )
    .unwrap();
    assert!(plan.delete.is_empty(), "{plan:?}");
}

/// The second destination of the two-destination test: a fresh prefix on the S3 test server,
/// reached through a proxy the test can stop, or (without the server) a second local
/// repository whose directory the test can take away.
enum Second {
    S3 {
        proxy: faultproxy::FaultProxy,
        location: String,
    },
    Local {
        path: PathBuf,
        away: PathBuf,
    },
}

impl Second {
    fn new(setup: &Setup) -> Second {
        let second = match std::env::var("LIFEBOAT_TEST_S3_ENDPOINT") {
            Ok(endpoint) => {
                let bucket = std::env::var("LIFEBOAT_TEST_S3_BUCKET")
                    .unwrap_or_else(|_| "lifeboat-test".into());
                let proxy = faultproxy::FaultProxy::start(
                    endpoint.trim_start_matches("http://"),
                    faultproxy::FaultConfig {
                        rate: 0.0,
                        stall: Duration::from_secs(4),
                        seed: 6,
                        deny_deletes: false,
                    },
                );
                let location = format!(
                    "s3:{}/{bucket}/sqlite-two-{}-{}",
                    proxy.endpoint(),
                    std::process::id(),
                    now_micros()
                );
                Second::S3 { proxy, location }
            }
            Err(_) => {
                println!("second destination: local (LIFEBOAT_TEST_S3_ENDPOINT is not set)");
                Second::Local {
                    path: setup.dir.path().join("second"),
                    away: setup.dir.path().join("second-away"),
                }
            }
        };
        let options = InitOptions {
            kdf: KdfParams::insecure_for_tests(),
            pack_size: 1 << 20,
            ..Default::default()
        };
        Repository::init(second.storage(true), PASSWORD, &options).unwrap();
        second
    }

    fn storage(&self, create: bool) -> Storage {
        match self {
            // Short timeouts and few retries: an outage costs seconds, not minutes.
            Second::S3 { location, .. } => Storage::open_with(
                location,
                create,
                &NetworkOptions {
                    timeout: Duration::from_secs(2),
                    io_timeout: Duration::from_secs(2),
                    retries: 2,
                    min_backoff: Duration::from_millis(20),
                    max_backoff: Duration::from_millis(200),
                },
            )
            .unwrap(),
            Second::Local { path, .. } if create => {
                Storage::create(path.to_str().unwrap()).unwrap()
            }
            Second::Local { path, .. } => Storage::local(path).unwrap(),
        }
    }

    /// Where it is, as a user would name it.
    fn location(&self) -> String {
        match self {
            Second::S3 { location, .. } => location.clone(),
            Second::Local { path, .. } => path.to_str().unwrap().to_string(),
        }
    }

    fn repo(&self) -> IndexedRepository {
        Repository::open(self.storage(false), PASSWORD)
            .unwrap()
            .load_index()
            .unwrap()
    }

    /// The destination stops answering: the proxy is closed, or the directory is replaced by
    /// a plain file.
    fn go_away(&self) {
        match self {
            Second::S3 { proxy, .. } => proxy.stop(),
            Second::Local { path, away } => {
                std::fs::rename(path, away).unwrap();
                std::fs::write(path, b"not a repository").unwrap();
            }
        }
    }

    fn come_back(&self) {
        match self {
            Second::S3 { proxy, .. } => proxy.start_again(),
            Second::Local { path, away } => {
                std::fs::remove_file(path).unwrap();
                std::fs::rename(away, path).unwrap();
            }
        }
    }
}

fn restore_from(
    repo: &IndexedRepository,
    setup: &Setup,
    name: &str,
    point: RestorePoint,
) -> lifeboat_sqlite::Result<PathBuf> {
    let target = setup.dir.path().join(name);
    restore(repo, &Selector::path(&setup.db()), &target, point)?;
    Ok(target)
}

/// Polls until the latest restore from `repo` holds `count` rows.
fn wait_for_rows(repo: impl Fn() -> IndexedRepository, setup: &Setup, count: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if let Ok(path) = restore_from(
            &repo(),
            setup,
            &format!("probe-{}.db", now_micros()),
            RestorePoint::Latest,
        ) && rows(&path).len() == count
        {
            return;
        }
        assert!(Instant::now() < deadline, "{what} never held {count} rows");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn two_destinations_restore_exactly_and_one_going_away_does_not_stop_the_other() {
    let setup = Setup::new();
    let second = Second::new(&setup);
    let running = setup.replicate_to(
        vec![
            Destination::new(setup.repo()),
            Destination::new(second.repo()),
        ],
        ReplicateOptions {
            max_lag_bytes: Some(256 << 10),
            ..options()
        },
    );
    wait_ok(spawn_writer(&setup.db(), 60, 5, 300));
    wait_for_rows(|| setup.repo(), &setup, 60, "the first destination");
    wait_for_rows(|| second.repo(), &setup, 60, "the second destination");

    // The second destination goes away while the application writes on: the first keeps
    // receiving every transaction.
    second.go_away();
    let salt_before = lifeboat_sqlite::wal::read_header(&setup.db().with_extension("db-wal"))
        .unwrap()
        .map(|h| h.salt);
    let checkpoints_before = running.status().checkpoints;
    wait_ok(spawn_writer(&setup.db(), 150, 5, 1000));
    wait_for_rows(|| setup.repo(), &setup, 210, "the first destination");
    // Past the lag limit the second is released and holds nothing: checkpoints go on for the
    // first, and SQLite restarts the log (new salts).
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let status = running.status();
        let salt = lifeboat_sqlite::wal::read_header(&setup.db().with_extension("db-wal"))
            .unwrap()
            .map(|h| h.salt);
        if status.destinations[1].state == DestinationState::Released
            && status.checkpoints > checkpoints_before
            && salt != salt_before
        {
            assert_eq!(status.destinations[0].state, DestinationState::Live);
            assert!(status.destinations[1].releases >= 1, "{status:?}");
            assert!(status.destinations[1].last_error.is_some(), "{status:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the second destination still holds the WAL: {status:?}"
        );
        // More writes, so the WAL has something to restart with.
        wait_ok(spawn_writer(&setup.db(), 5, 1, 100));
        std::thread::sleep(Duration::from_millis(200));
    }
    let written = rows(&setup.db()).len();
    wait_for_rows(|| setup.repo(), &setup, written, "the first destination");

    // Back again: it resyncs (a new generation with a fresh snapshot) and catches up.
    second.come_back();
    wait_ok(spawn_writer(&setup.db(), 40, 5, 300));
    let written = rows(&setup.db()).len();
    wait_for_rows(|| second.repo(), &setup, written, "the second destination");
    let status = running.stop();
    assert_eq!(status.destinations[0].generations_started, 1, "{status:?}");
    assert_eq!(status.destinations[0].releases, 0, "{status:?}");
    assert_eq!(status.destinations[1].generations_started, 2, "{status:?}");

    // Restores from each hold exactly the committed rows: the latest state, and a moment in
    // the middle (a prefix, nothing committed after it).
    let source = rows(&setup.db());
    for (name, repo) in [("first", setup.repo()), ("second", second.repo())] {
        let path = restore_from(
            &repo,
            &setup,
            &format!("{name}-latest.db"),
            RestorePoint::Latest,
        )
        .unwrap();
        assert_eq!(rows(&path), source, "latest from the {name} destination");
    }
    let t_micros = source[150].1 + 5_000;
    let t = jiff::Timestamp::from_microsecond(t_micros).unwrap();
    let path = restore_from(&setup.repo(), &setup, "first-at.db", RestorePoint::Time(t)).unwrap();
    let restored = rows(&path);
    assert_eq!(restored[..], source[..restored.len()], "a prefix");
    assert!(restored.iter().all(|r| r.1 <= t_micros), "no row after T");
    assert!(
        restored.len() > 60,
        "moments while the other was away restore"
    );
}

/// Regression test for "a destination down at start stops the command" (docs/sqlite.md).
#[test]
fn a_destination_down_at_start_is_retried_while_the_other_replicates() {
    let setup = Setup::new();
    let second = Second::new(&setup);
    // Down before replication starts: the proxy closed (a closed port), or a plain file
    // where the directory should be.
    second.go_away();
    let pending =
        lifeboat_sqlite::open_destination(second.location(), &second.location(), PASSWORD.to_vec())
            .unwrap();
    let running = setup.replicate_to(
        vec![Destination::new(setup.repo()), pending],
        ReplicateOptions {
            max_lag_bytes: Some(256 << 10),
            ..options()
        },
    );
    let status = running.status();
    assert_eq!(status.destinations[0].state, DestinationState::Live);
    assert_eq!(
        status.destinations[1].state,
        DestinationState::NotOpen,
        "{status:?}"
    );
    assert!(status.destinations[1].last_error.is_some(), "{status:?}");
    wait_ok(spawn_writer(&setup.db(), 120, 5, 1000));
    wait_for_rows(|| setup.repo(), &setup, 120, "the first destination");
    // The one that is down holds nothing: checkpoints go on and the log restarts.
    let status = running.status();
    assert!(status.checkpoints > 0, "{status:?}");
    assert_eq!(status.destinations[1].state, DestinationState::NotOpen);
    assert!(status.destinations[1].lag_seconds > 0.0, "{status:?}");
    let away_rows = rows(&setup.db());

    // It comes up: it opens, starts its first generation and catches up.
    second.come_back();
    wait_ok(spawn_writer(&setup.db(), 40, 5, 300));
    let written = rows(&setup.db()).len();
    wait_for_rows(|| second.repo(), &setup, written, "the late destination");
    wait_for_rows(|| setup.repo(), &setup, written, "the first destination");
    let status = running.stop();
    assert_eq!(status.destinations[1].state, DestinationState::Live);
    assert_eq!(status.destinations[1].generations_started, 1, "{status:?}");
    assert_eq!(status.destinations[0].releases, 0, "{status:?}");

    // Rows written while it was down restore exactly from the first; both restore the
    // latest state exactly.
    let source = rows(&setup.db());
    let t_micros = away_rows.last().unwrap().1 + 1;
    let t = jiff::Timestamp::from_microsecond(t_micros).unwrap();
    let path = restore_from(&setup.repo(), &setup, "first-at.db", RestorePoint::Time(t)).unwrap();
    let restored = rows(&path);
    assert_eq!(restored[..], source[..restored.len()], "a prefix");
    assert!(restored.iter().all(|r| r.1 <= t_micros), "no row after T");
    assert!(restored.len() >= 60, "moments while the other was down");
    for (name, repo) in [("first", setup.repo()), ("second", second.repo())] {
        let path = restore_from(
            &repo,
            &setup,
            &format!("{name}-latest.db"),
            RestorePoint::Latest,
        )
        .unwrap();
        assert_eq!(rows(&path), source, "latest from the {name} destination");
    }
    // The late one has nothing before its first snapshot.
    let early = jiff::Timestamp::from_microsecond(source[10].1).unwrap();
    assert!(
        restore_from(
            &second.repo(),
            &setup,
            "second-early.db",
            RestorePoint::Time(early)
        )
        .is_err()
    );
}

/// With every destination down at start the replicator keeps running and retrying, and holds
/// no read transaction meanwhile (nobody to hold the WAL for), so anyone's checkpoint can
/// reset the log; a wrong password is refused at once.
#[test]
fn every_destination_down_at_start_keeps_retrying_without_holding_the_wal() {
    let setup = Setup::new();
    // A wrong password is a mistake, not an outage.
    let wrong = lifeboat_sqlite::open_destination(
        "main",
        setup.repo_path().to_str().unwrap(),
        b"not the password".to_vec(),
    );
    let Err(error) = wrong else {
        panic!("a wrong password opened the repository")
    };
    assert!(error.to_string().contains("wrong password"), "{error}");

    // An unmounted mount point: the directory is there, empty.
    let mount = setup.dir.path().join("mnt");
    std::fs::create_dir(&mount).unwrap();
    let pending =
        lifeboat_sqlite::open_destination("mnt", mount.to_str().unwrap(), PASSWORD.to_vec())
            .unwrap();
    let running = setup.replicate_to(vec![pending], options());
    wait_ok(spawn_writer(&setup.db(), 50, 1, 1000));
    let other = Connection::open(setup.db()).unwrap();
    other.busy_timeout(Duration::from_millis(100)).unwrap();
    let (busy, _, _): (i64, i64, i64) = other
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!(
        busy, 0,
        "the WAL is held for a destination that never opened"
    );
    let status = running.status();
    assert_eq!(status.destinations[0].state, DestinationState::NotOpen);
    assert!(
        status.destinations[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("not a Lifeboat repository")),
        "{status:?}"
    );

    // The disk is mounted (a repository appears): the replicator joins it and ships.
    let options = InitOptions {
        kdf: KdfParams::insecure_for_tests(),
        pack_size: 1 << 20,
        ..Default::default()
    };
    Repository::init(Storage::local(&mount).unwrap(), PASSWORD, &options).unwrap();
    wait_ok(spawn_writer(&setup.db(), 20, 1, 100));
    let mounted = || {
        Repository::open(Storage::local(&mount).unwrap(), PASSWORD)
            .unwrap()
            .load_index()
            .unwrap()
    };
    wait_for_rows(mounted, &setup, 70, "the mounted destination");
    let status = running.stop();
    assert_eq!(
        status.destinations[0].state,
        DestinationState::Live,
        "{status:?}"
    );
    let path = restore_from(&mounted(), &setup, "mounted.db", RestorePoint::Latest).unwrap();
    assert_eq!(rows(&path), rows(&setup.db()));
}

/// Regression test for "transactions larger than 16 MiB go whole into one segment".
#[test]
fn a_transaction_larger_than_a_segment_is_split_and_restores_only_whole() {
    let setup = Setup::new();
    let running = setup.replicate(ReplicateOptions {
        // Only the base snapshot: the journal alone carries the large transaction.
        snapshot_interval: Duration::from_secs(3600),
        ..options()
    });
    let conn = Connection::open(setup.db()).unwrap();
    conn.busy_timeout(Duration::from_secs(30)).unwrap();
    for _ in 0..10 {
        conn.execute(
            "INSERT INTO rows (ts, payload) VALUES (?1, randomblob(100))",
            [now_micros()],
        )
        .unwrap();
    }
    wait_for_rows(|| setup.repo(), &setup, 10, "the repository");
    // One transaction of 40 MiB.
    conn.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 40)
         INSERT INTO rows (ts, payload) SELECT ?1, randomblob(1048576) FROM n",
        [now_micros()],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO rows (ts, payload) VALUES (?1, randomblob(100))",
        [now_micros()],
    )
    .unwrap();
    wait_for_rows(|| setup.repo(), &setup, 51, "the repository");
    running.stop();

    // Segments stay at most a segment's size (plus a frame); the large transaction is in
    // parts, each without a commit, sharing the capture time of their round.
    let repo = setup.repo();
    let base =
        lifeboat_sqlite::catalog::database_snapshots(&repo, Some(&Selector::path(&setup.db())))
            .unwrap()
            .pop()
            .unwrap();
    let segments = lifeboat_sqlite::catalog::generation_segments(
        &repo,
        &base.state.stream,
        &base.state.generation,
    )
    .unwrap();
    let mut headers = Vec::new();
    for listed in &segments {
        let bytes = repo
            .get_stream_object(&base.state.stream, &listed.name)
            .unwrap();
        let (header, frames) = lifeboat_sqlite::segment::decode(&bytes).unwrap();
        assert!(
            frames.len() as u64 <= (16 << 20) + 4096 + 24,
            "{} holds {} bytes",
            listed.name,
            frames.len()
        );
        headers.push((listed.name.clone(), header, bytes));
    }
    let first_part = headers.iter().position(|(_, h, _)| h.part).expect("a part");
    let closing = first_part
        + headers[first_part..]
            .iter()
            .position(|(_, h, _)| !h.part)
            .expect("the part's commit");
    assert!(closing - first_part >= 2, "40 MiB in parts of 16 MiB");
    let captured = headers[closing].1.captured;
    assert!(
        headers[first_part..closing]
            .iter()
            .all(|(_, h, _)| h.captured == captured && h.commits == 0)
    );

    // Restores at the transaction's boundary: just before its capture none of it, at its
    // capture all of it; the latest is the source.
    let source = rows(&setup.db());
    let before = captured
        .checked_sub(jiff::SignedDuration::from_micros(1))
        .unwrap();
    let path = restore_from(&repo, &setup, "before.db", RestorePoint::Time(before)).unwrap();
    assert_eq!(rows(&path), source[..10]);
    let path = restore_from(&repo, &setup, "at.db", RestorePoint::Time(captured)).unwrap();
    assert!(rows(&path).len() >= 50);
    assert_eq!(rows(&path)[..], source[..rows(&path).len()]);
    let path = restore_from(&repo, &setup, "latest.db", RestorePoint::Latest).unwrap();
    assert_eq!(rows(&path), source);

    // A replicator killed between the parts: the segment with the commit (and all after it)
    // never stored. The latest restore and a follower hold none of the transaction.
    let kept: Vec<(String, Vec<u8>)> = headers[closing..]
        .iter()
        .map(|(name, _, bytes)| (name.clone(), bytes.clone()))
        .collect();
    for (name, _) in &kept {
        repo.delete_stream_object(&base.state.stream, name).unwrap();
    }
    let repo = setup.repo();
    let path = restore_from(&repo, &setup, "killed.db", RestorePoint::Latest).unwrap();
    assert_eq!(rows(&path), source[..10]);
    let replica = setup.dir.path().join("replica.db");
    let mut follower =
        lifeboat_sqlite::Follower::start(setup.repo(), Selector::path(&setup.db()), &replica)
            .unwrap();
    assert_eq!(follower.poll().unwrap(), 0, "parts wait for their commit");
    assert_eq!(rows(&replica), source[..10]);
    // The rest arrives: the follower applies the parts and their commit together.
    for (name, bytes) in &kept {
        repo.put_stream_object(&base.state.stream, name, bytes)
            .unwrap();
    }
    assert!(follower.poll().unwrap() >= 3);
    assert_eq!(rows(&replica), source);
}

/// `lifeboat forget --keep-within D` on SQLite snapshots, with the timelines the CLI passes:
/// the newest snapshot before the window stays, so the window's first moments restore.
#[test]
fn forget_with_a_recovery_window_keeps_the_snapshot_its_first_moments_replay_from() {
    use lifeboat_repo::retention::{self, GroupBy, KeepPolicy};
    let setup = Setup::new();
    let app = Connection::open(setup.db()).unwrap();
    app.query_row("SELECT count(*) FROM rows", [], |r| r.get::<_, i64>(0))
        .unwrap();
    let mut replicator = Replicator::open(&setup.db(), setup.repo(), options()).unwrap();
    let write = |n: usize| {
        for _ in 0..n {
            app.execute(
                "INSERT INTO rows (ts, payload) VALUES (?1, randomblob(100))",
                [now_micros()],
            )
            .unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    // Snapshots S0 (the base), S1, S2, S3 with rows between them; the window starts among
    // the rows written after S1.
    let mut window_start = None;
    for phase in 0..3 {
        write(10);
        replicator.tick().unwrap();
        if phase == 1 {
            std::thread::sleep(Duration::from_millis(50));
            window_start = Some(jiff::Timestamp::now());
            std::thread::sleep(Duration::from_millis(50));
            write(10);
            replicator.tick().unwrap();
        }
        replicator.sync(Duration::from_secs(120)).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        replicator.snapshot_now().unwrap();
    }
    write(10);
    replicator.tick().unwrap();
    drop(replicator);
    let window_start = window_start.unwrap();

    let repo = setup.repo();
    let entries = repo.snapshots().unwrap();
    assert_eq!(entries.len(), 4);
    let newest = entries.iter().map(|e| e.snapshot.time).max().unwrap();
    let span =
        jiff::Span::new().microseconds(newest.as_microsecond() - window_start.as_microsecond());
    let policy = KeepPolicy {
        within: Some(span),
        ..Default::default()
    };
    let tz = jiff::tz::TimeZone::UTC;
    let timeline =
        |e: &lifeboat_repo::SnapshotEntry| lifeboat_sqlite::catalog::timeline(&e.snapshot);
    let decisions =
        retention::apply_with_timelines(&entries, &policy, GroupBy::default(), &tz, &timeline);
    let mut by_time = entries.clone();
    by_time.sort_by_key(|e| e.snapshot.time);
    let verdict = |i: usize| decisions.iter().find(|d| d.id == by_time[i].id).unwrap();
    assert!(!verdict(0).keep, "S0 is before the window and not needed");
    assert!(
        verdict(1).keep,
        "S1 is where the window's start replays from"
    );
    assert!(
        verdict(1).reasons[0].ends_with("(replay base)"),
        "{:?}",
        verdict(1)
    );
    assert!(verdict(2).keep && verdict(3).keep);
    // Plain retention (as for files) would have removed S1.
    let plain = retention::apply(&entries, &policy, GroupBy::default(), &tz);
    assert!(!plain.iter().find(|d| d.id == by_time[1].id).unwrap().keep);

    // Forget what the policy removes, and the segments the window does not need.
    for d in decisions.iter().filter(|d| !d.keep) {
        repo.forget_snapshot(&d.id).unwrap();
    }
    let repo = setup.repo();
    let snapshots = lifeboat_sqlite::catalog::database_snapshots(&repo, None).unwrap();
    assert_eq!(snapshots.len(), 3);
    let plan = lifeboat_sqlite::retention::plan_segments(
        &repo,
        &snapshots[0].state.stream,
        &snapshots,
        window_start,
    )
    .unwrap();
    assert!(!plan.delete.is_empty(), "{plan:?}");
    lifeboat_sqlite::retention::apply_segments(&repo, &plan).unwrap();

    // Every moment of the window restores exactly: its start, a moment among the rows after
    // it, and the latest state.
    let source = rows(&setup.db());
    assert_eq!(source.len(), 50);
    let mut moments = vec![window_start.as_microsecond(), source[25].1 + 1];
    moments.push(source[45].1 + 1);
    for (i, t_micros) in moments.into_iter().enumerate() {
        let t = jiff::Timestamp::from_microsecond(t_micros).unwrap();
        let (path, _) = setup
            .restore(&format!("window-{i}.db"), RestorePoint::Time(t))
            .unwrap();
        let restored = rows(&path);
        // Rows were shipped by explicit ticks: a restore to T holds exactly those committed
        // before the last tick at or before T, a prefix with nothing after T.
        assert_eq!(restored[..], source[..restored.len()], "a prefix at {t}");
        assert!(
            restored.iter().all(|r| r.1 <= t_micros),
            "nothing after {t}"
        );
        assert!(restored.len() >= 20, "at {t}: {} rows", restored.len());
    }
    let (path, _) = setup.restore("latest.db", RestorePoint::Latest).unwrap();
    assert_eq!(rows(&path), source);
}
