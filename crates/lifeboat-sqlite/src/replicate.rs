//! The replicator: ships a live database's committed WAL frames to one or more repositories.
//!
//! # Why frames cannot be lost
//!
//! SQLite overwrites WAL frames only when it *restarts* the log, and it restarts only when every
//! frame has been copied into the database file and no reader holds a read mark in the log.
//! The replicator keeps a read transaction open on its `read` connection at all times, so:
//!
//! * if its read mark is in the log, no restart can happen at all (and RESTART or TRUNCATE
//!   checkpoints by others wait or fail with `SQLITE_BUSY`);
//! * if SQLite gave it read mark 0 (the log was fully checkpointed when the transaction began),
//!   it blocks every further copy into the database, so a restart can happen only at the very
//!   frame the log held when the transaction began, and at most once.
//!
//! Every read transaction is begun while the replicator holds the write lock (`BEGIN
//! IMMEDIATE` on its `lock` connection, which writes nothing) and after every *live*
//! destination stored every committed frame: so the frame where a restart may happen has
//! always been stored, and a new WAL cycle (new salts) seen later continues the journal
//! exactly. That is the protocol Litestream follows, without writing tables into the
//! application's database.
//!
//! # Several destinations
//!
//! One reader per database captures the committed frames every round and notes, for each
//! round, where it starts and ends in the WAL and when it was captured. Each destination (a
//! repository) has its own *lane*: a queue of those rounds, a worker thread that stores them as
//! segments of its own generation, its own cursor and lag. The queue holds no frame bytes: the
//! worker reads the frames from the WAL itself, which the read transaction keeps in place, so
//! memory stays small whatever the backlog. A checkpoint (which renews the read transaction)
//! waits until every live lane has stored everything: the WAL is checkpointed as far as the
//! slowest live destination allows. A destination that falls more than `max_lag_bytes` behind,
//! or whose worker cannot go on, is *released*: its queue is dropped and it no longer holds the
//! WAL back, so one destination that is down or slow never stops the others and never grows
//! local disk without bound. When it answers again it either finds the WAL still continuing
//! its journal (and catches up), or starts a new generation with a fresh snapshot.
//!
//! A destination whose repository cannot be opened at start (unreachable, not mounted) is
//! *not open*: it holds nothing, its worker retries opening it in the background, and once it
//! opens it joins like a released destination that answers again. With no live destination
//! the read transaction is not held at all.
//!
//! A transaction larger than a segment is stored in parts (see [`crate::segment`]): the reader
//! only notes where commits end, and a worker reads at most one segment of frames at a time.
//!
//! If the replicator loses track (it was stopped and the log was restarted meanwhile, say by
//! someone's `wal_checkpoint(TRUNCATE)`), each destination starts a new *generation* with a
//! fresh snapshot.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use lifeboat_files::{BackupOptions, BackupProgress};
use lifeboat_repo::{Id, IndexedRepository, SourceKind};
use rusqlite::{Connection, OpenFlags};
use serde::Serialize;

use crate::catalog::{self, Selector, SnapshotState};
use crate::error::{Error, Result};
use crate::segment::{self, SegmentHeader};
use crate::wal::{self, WalCursor};

/// How to replicate.
#[derive(Debug, Clone)]
pub struct ReplicateOptions {
    /// How often new frames are shipped: the most a crash of the machine can lose.
    pub interval: Duration,
    /// How often a whole-database snapshot is taken (they deduplicate against each other).
    pub snapshot_interval: Duration,
    /// Checkpoint once the current WAL cycle holds this many frames.
    pub checkpoint_frames: u64,
    /// How long to wait for the write lock before a checkpoint (skipped if it is not free).
    pub lock_timeout: Duration,
    /// How long a checkpoint may hold the write lock waiting for the destinations to store the
    /// last frames; past it the checkpoint is postponed (the application's writers wait that
    /// long at most).
    pub max_lock_hold: Duration,
    /// Largest segment (a bigger transaction is stored in parts of this size).
    pub max_segment_bytes: u64,
    /// Unstored WAL bytes after which a destination that is unreachable or slow is released:
    /// it stops holding the WAL on local disk, and resyncs when it answers (`None`: hold it
    /// without limit).
    pub max_lag_bytes: Option<u64>,
    /// Directory for the temporary copy a snapshot is read from (default: the system's).
    pub spool_dir: Option<PathBuf>,
    /// Host name recorded in snapshots.
    pub hostname: String,
    /// User name recorded in snapshots.
    pub username: String,
    /// Tags recorded in snapshots.
    pub tags: Vec<String>,
}

impl Default for ReplicateOptions {
    fn default() -> Self {
        ReplicateOptions {
            interval: Duration::from_secs(1),
            snapshot_interval: Duration::from_secs(3600),
            checkpoint_frames: 1000,
            lock_timeout: Duration::from_secs(2),
            max_lock_hold: Duration::from_secs(5),
            max_segment_bytes: 16 << 20,
            max_lag_bytes: Some(1 << 30),
            spool_dir: None,
            hostname: String::new(),
            username: String::new(),
            tags: Vec::new(),
        }
    }
}

/// Opens a destination's repository (index loaded) that did not answer when replication
/// began; its error says why it is still not reachable. Called again, with a growing wait,
/// until it succeeds.
pub type Opener = Box<dyn FnMut() -> std::result::Result<IndexedRepository, String> + Send>;

/// One repository to replicate into.
pub struct Destination {
    /// How status and logs name it (its location; never a secret).
    pub name: String,
    repo: Option<IndexedRepository>,
    opener: Option<Opener>,
    /// Why it could not be opened at start.
    first_error: Option<String>,
}

impl Destination {
    /// A destination named by its storage location.
    pub fn new(repo: IndexedRepository) -> Destination {
        Destination::named(repo.storage().location().to_string(), repo)
    }

    /// An open destination with the name status and logs give it.
    pub fn named(name: impl Into<String>, repo: IndexedRepository) -> Destination {
        Destination {
            name: name.into(),
            repo: Some(repo),
            opener: None,
            first_error: None,
        }
    }

    /// A destination whose repository could not be opened yet (unreachable, not mounted):
    /// it starts [`DestinationState::NotOpen`], holding nothing, and its thread calls
    /// `opener` (after 1 s, doubling to 60 s while it fails) until the repository opens; it
    /// then joins like a released destination that answers again. `last_error` is what the
    /// first attempt met.
    pub fn pending(
        name: impl Into<String>,
        last_error: impl Into<String>,
        opener: Opener,
    ) -> Destination {
        Destination {
            name: name.into(),
            repo: None,
            opener: Some(opener),
            first_error: Some(last_error.into()),
        }
    }
}

/// Opens the repository at `location` as a destination named `name`, telling an outage from a
/// mistake: a repository that does not answer (network, server down), a local directory that
/// is missing or is not a directory (not mounted), or a location holding no repository yet
/// (an empty mount point) gives a [`Destination::pending`] that is tried again in the
/// background with the same password; a wrong password, credentials the storage refuses, an
/// unusable location or damaged key files are an error now, as retrying cannot mend them.
pub fn open_destination<P>(
    name: impl Into<String>,
    location: &str,
    password: P,
) -> Result<Destination>
where
    P: AsRef<[u8]> + Send + 'static,
{
    let local = matches!(
        lifeboat_storage::Location::parse(location).map_err(lifeboat_repo::Error::from)?,
        lifeboat_storage::Location::Local(_)
    );
    let location = location.to_string();
    let open = move || -> std::result::Result<IndexedRepository, (bool, lifeboat_repo::Error)> {
        let storage = lifeboat_storage::Storage::open(&location).map_err(|e| {
            // For a local path, the only check at open is that the directory is there.
            let outage = local && matches!(e, lifeboat_storage::StorageError::Config { .. });
            (outage, e.into())
        })?;
        lifeboat_repo::Repository::open(storage, password.as_ref())
            .and_then(lifeboat_repo::Repository::load_index)
            .map_err(|e| (is_outage(&e), e))
    };
    let name = name.into();
    match open() {
        Ok(repo) => Ok(Destination::named(name, repo)),
        Err((true, e)) => Ok(Destination::pending(
            name,
            e.to_string(),
            Box::new(move || open().map_err(|(_, e)| e.to_string())),
        )),
        Err((false, e)) => Err(e.into()),
    }
}

/// Whether an error opening a repository may pass by itself (the storage does not answer,
/// or holds no repository yet) rather than being a misconfiguration.
fn is_outage(error: &lifeboat_repo::Error) -> bool {
    use lifeboat_storage::StorageError;
    match error {
        lifeboat_repo::Error::NotARepository { .. } => true,
        lifeboat_repo::Error::Storage(e) => !matches!(
            e,
            StorageError::PermissionDenied { .. } | StorageError::Config { .. }
        ),
        _ => false,
    }
}

/// Whether a destination holds the WAL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DestinationState {
    /// It holds the WAL: checkpoints wait until it has stored every committed frame.
    #[default]
    Live,
    /// It fell past the lag limit or failed: it holds nothing, and resyncs when it answers.
    Released,
    /// Its repository has not opened since the replicator started (it did not answer, or
    /// is not there yet): it holds nothing, is tried again in the background, and joins as a
    /// released destination that answers once it opens.
    NotOpen,
}

/// What one destination has received, for status output and metrics.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DestinationStatus {
    /// The repository (its location).
    pub repository: String,
    /// Live or released.
    pub state: DestinationState,
    /// The database's journal stream in this repository.
    pub stream: String,
    /// Current generation in this repository.
    pub generation: String,
    /// Position stored within the generation (bytes of frames).
    pub position: u64,
    /// Committed WAL bytes captured but not stored here yet.
    pub lag_bytes: u64,
    /// Seconds since the oldest commit not stored here was captured (0 when nothing waits).
    pub lag_seconds: f64,
    /// Segments stored by this process.
    pub segments_shipped: u64,
    /// Frame bytes stored by this process.
    pub bytes_shipped: u64,
    /// Snapshots stored by this process.
    pub snapshots_taken: u64,
    /// Generations started by this process (1 on a fresh start, 0 on a resume).
    pub generations_started: u64,
    /// Times it was released (past the lag limit, or after a failure).
    pub releases: u64,
    /// Capture time of the last segment stored.
    pub last_segment_time: Option<jiff::Timestamp>,
    /// Capture time of the last snapshot stored.
    pub last_snapshot_time: Option<jiff::Timestamp>,
    /// The last error met (replication goes on after errors of the destination).
    pub last_error: Option<String>,
}

/// What a replicator has done, for status output and metrics.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplicationStatus {
    /// The database.
    pub database: String,
    /// Checkpoints run by this process.
    pub checkpoints: u64,
    /// Committed WAL bytes captured by this process.
    pub bytes_captured: u64,
    /// The last error of the reader itself (SQLite, the WAL file).
    pub last_error: Option<String>,
    /// Each destination, in the order given.
    pub destinations: Vec<DestinationStatus>,
}

/// Committed frames captured in one round: where they are in the WAL and when they were read.
#[derive(Debug, Clone, Copy)]
struct Round {
    start: WalCursor,
    end: WalCursor,
    new_cycle: bool,
    captured: jiff::Timestamp,
    seen: Instant,
}

impl Round {
    fn bytes(&self) -> u64 {
        self.end.offset.saturating_sub(self.start.offset)
    }
}

/// A copy of the database as one read transaction sees it, made once (by the first lane that
/// needs it) and shared by every lane that stores it as a snapshot.
struct SharedCopy {
    db_path: PathBuf,
    spool_dir: PathBuf,
    /// The connection whose read transaction (begun under the write lock) shows the state.
    conn: Mutex<Option<Connection>>,
    file: OnceLock<std::result::Result<tempfile::TempPath, String>>,
    /// The WAL position the state is consistent with.
    cursor: Option<WalCursor>,
    /// When that state was current.
    captured: jiff::Timestamp,
    page_size: u32,
}

impl SharedCopy {
    /// The copy's path, making it first if no lane has.
    fn path(&self) -> Result<&Path> {
        let made = self.file.get_or_init(|| {
            let conn = self.conn.lock().expect("copy lock").take();
            let Some(conn) = conn else {
                return Err("the snapshot connection is gone".to_string());
            };
            copy_database(&conn, &self.db_path, &self.spool_dir).map_err(|e| e.to_string())
        });
        match made {
            Ok(path) => Ok(path),
            Err(reason) => Err(Error::SnapshotCopy {
                path: self.db_path.clone(),
                reason: reason.clone(),
            }),
        }
    }
}

#[derive(Clone)]
enum Job {
    /// Start a new generation whose base is this copy.
    Base(Arc<SharedCopy>),
    /// A periodic snapshot at the current position.
    Snapshot(Arc<SharedCopy>),
    /// Store these frames (the front job is advanced as its pieces are stored).
    Upload(Round),
}

/// One destination's queue and journal state, shared by the reader and the lane's worker.
struct LaneState {
    jobs: VecDeque<Job>,
    /// Bumped whenever the reader drops the queue: a worker's result for an older epoch only
    /// records what it stored, it no longer advances the queue.
    epoch: u64,
    busy: bool,
    stop: bool,
    /// The worker cannot go on in this epoch (a base snapshot failed, frames left the WAL).
    failed: Option<String>,
    /// The generation's base snapshot is stored, so segments may follow.
    based: bool,
    /// Where the stored journal ends in the WAL (true to the repository whatever the epoch).
    uploaded: Option<WalCursor>,
    /// Captured bytes not stored here.
    backlog: u64,
    /// When the oldest commit not stored here was captured, while released.
    waiting_since: Option<Instant>,
    /// The worker has its repository and knows where its journal stands (false only for a
    /// destination that did not open at start, until it does).
    open: bool,
    status: DestinationStatus,
}

struct Lane {
    state: Mutex<LaneState>,
    wake: Condvar,
}

impl Lane {
    fn lock(&self) -> MutexGuard<'_, LaneState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

struct LaneHandle {
    lane: Arc<Lane>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// While released: when to try again, and the current wait.
    retry: Option<(Instant, Duration)>,
    /// Segments and snapshots it had stored when last released: a lane released again without
    /// storing anything waits twice as long before the next try.
    progress_at_release: u64,
}

/// Replicates one database into one or more repositories.
pub struct Replicator {
    db_path: PathBuf,
    wal_path: PathBuf,
    database: String,
    options: ReplicateOptions,
    read: Connection,
    /// A second read connection: the read transaction moves to it before a checkpoint, so
    /// the WAL stays held while most of it is copied into the database without the write
    /// lock (see [`Replicator::backfill_unlocked`]).
    spare: Connection,
    lock: Connection,
    /// The read transaction is open and holds the WAL: it was begun at a position every live
    /// lane had stored, or handed over from one that was ([`Replicator::backfill_unlocked`]).
    protected: bool,
    /// The read transaction was begun under the write lock right after a checkpoint that
    /// copied the whole WAL, with everything stored: SQLite gave it read mark 0 at a stored
    /// position, so it may be handed over to `spare` without the write lock.
    read_mark_zero: bool,
    /// The end of the frames captured into the lanes.
    captured: Option<WalCursor>,
    /// The cursor at the last checkpoint: until the WAL moves on, another one would do nothing
    /// but take the write lock again.
    checkpointed_at: Option<WalCursor>,
    /// When the read transaction began: the moment the state it sees was current.
    read_began: jiff::Timestamp,
    page_size: u32,
    last_snapshot: Instant,
    checkpoints: u64,
    bytes_captured: u64,
    /// Bytes the last round captured and since when (the round before's start): a busy
    /// writer shortens the pause before the next round.
    last_round_bytes: u64,
    last_round_span: Duration,
    last_round_at: Option<Instant>,
    last_error: Option<String>,
    lanes: Vec<LaneHandle>,
}

/// Syncs the database file at `path` through a descriptor opened once per database and kept
/// for the life of the process. Closing any descriptor of a file drops every POSIX lock this
/// process holds on it, SQLite's included (those of the application's connections too, when
/// it runs in this process): another process closing its last connection would then think
/// itself alone, checkpoint past our read mark and delete the WAL. So it is never closed.
fn sync_database_file(path: &Path) -> std::io::Result<()> {
    static FILES: OnceLock<Mutex<std::collections::HashMap<PathBuf, std::fs::File>>> =
        OnceLock::new();
    let mut files = FILES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let file = match files.entry(path.to_path_buf()) {
        std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
        std::collections::hash_map::Entry::Vacant(entry) => {
            entry.insert(std::fs::File::open(path)?)
        }
    };
    file.sync_data()
}

/// The shortest pause between rounds while the application writes heavily.
const BUSY_PAUSE: Duration = Duration::from_millis(50);

/// How often [`Replicator::idle`] looks at the WAL between rounds: two reads of a few bytes.
const WAL_POLL: Duration = Duration::from_millis(5);

/// The shortest time between rounds started because the WAL cycle grew long.
const LONG_WAL_SPACING: Duration = Duration::from_millis(20);

fn open_connection(path: &Path, busy: Duration) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| Error::sqlite("open", path, e))?;
    conn.busy_timeout(busy)
        .map_err(|e| Error::sqlite("set busy timeout", path, e))?;
    // Closing the last connection would otherwise checkpoint and delete the WAL: that is the
    // application's business, and it would cost a new generation on the next start.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )
    .map_err(|e| Error::sqlite("configure", path, e))?;
    Ok(conn)
}

/// Begins a read transaction on `conn` and reads, so that it holds a WAL read mark.
fn begin_read_on(conn: &Connection, path: &Path) -> Result<()> {
    conn.execute_batch("BEGIN")
        .and_then(|()| {
            conn.query_row("SELECT count(*) FROM sqlite_master", [], |row| {
                row.get::<_, i64>(0)
            })
        })
        .map_err(|e| Error::sqlite("begin the read transaction on", path, e))?;
    Ok(())
}

/// Runs `PRAGMA wal_checkpoint(PASSIVE)` on `conn`: (busy, frames in the WAL, frames copied
/// into the database).
fn passive_checkpoint(conn: &Connection, path: &Path) -> Result<(i64, i64, i64)> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })
    .map_err(|e| Error::sqlite("checkpoint", path, e))
}

fn is_busy(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// Now, in whole microseconds (as segment names record it).
fn now_micros() -> jiff::Timestamp {
    jiff::Timestamp::from_microsecond(jiff::Timestamp::now().as_microsecond())
        .expect("now is in range")
}

/// Where a repository's journal of `database` stands.
struct Resume {
    stream: String,
    generation: String,
    position: u64,
    cursor: Option<WalCursor>,
}

/// Looks up the newest generation of `database` in `repo` and where its journal ends.
fn find_resume(repo: &IndexedRepository, database: &str) -> Result<Option<Resume>> {
    let selector = Selector::Path(database.to_string());
    let snapshots = catalog::database_snapshots(repo, Some(&selector))?;
    let Some(latest) = snapshots.last() else {
        return Ok(None);
    };
    let stream = latest.state.stream.clone();
    let generation = latest.state.generation.clone();
    let segments = catalog::generation_segments(repo, &stream, &generation)?;
    let (cursor, position) = match segments.last() {
        Some(last) => {
            let bytes = repo.get_stream_object(&stream, &last.name)?;
            let (header, _) = segment::decode(&bytes).map_err(|reason| Error::Segment {
                stream: stream.clone(),
                name: last.name.clone(),
                reason,
            })?;
            (Some(header.end), header.end_position)
        }
        None => (latest.state.wal, latest.state.position),
    };
    Ok(Some(Resume {
        stream,
        generation,
        position,
        cursor,
    }))
}

impl Replicator {
    /// Opens `db` (which must exist and be in WAL mode) and replicates it into `repo`: see
    /// [`Replicator::open_with`].
    pub fn open(db: &Path, repo: IndexedRepository, options: ReplicateOptions) -> Result<Self> {
        Self::open_with(db, vec![Destination::new(repo)], options)
    }

    /// Opens `db` (which must exist and be in WAL mode) and, for each destination, either
    /// resumes the journal stored there where it stopped, or starts a new generation with a
    /// snapshot (stored by the destination's own thread, like everything after it). Returns
    /// once every destination has stored its start, failed, or taken two minutes.
    pub fn open_with(
        db: &Path,
        destinations: Vec<Destination>,
        options: ReplicateOptions,
    ) -> Result<Self> {
        if destinations.is_empty() {
            return Err(Error::NotFound(
                "no destination to replicate into: name at least one repository".into(),
            ));
        }
        let db_path = std::fs::canonicalize(db).map_err(|e| Error::io("open database", db, e))?;
        let mut wal_name = db_path.as_os_str().to_owned();
        wal_name.push("-wal");
        let wal_path = PathBuf::from(wal_name);
        let read = open_connection(&db_path, Duration::from_secs(10))?;
        let mode: String = read
            .query_row("PRAGMA journal_mode", [], |row| row.get(0))
            .map_err(|e| Error::sqlite("read journal mode of", &db_path, e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::NotWal {
                path: db_path,
                mode,
            });
        }
        let page_size: u32 = read
            .query_row("PRAGMA page_size", [], |row| row.get(0))
            .map_err(|e| Error::sqlite("read page size of", &db_path, e))?;
        let lock = open_connection(&db_path, options.lock_timeout)?;
        let spare = open_connection(&db_path, Duration::from_secs(10))?;
        let database = db_path.to_string_lossy().into_owned();
        let mut lanes = Vec::new();
        let mut unreachable = Vec::new();
        for (i, destination) in destinations.into_iter().enumerate() {
            let mut status = DestinationStatus {
                repository: destination.name.clone(),
                ..Default::default()
            };
            let mut based = false;
            let mut uploaded = None;
            let open = destination.repo.is_some();
            match &destination.repo {
                None => {
                    tracing::warn!(
                        database,
                        destination = destination.name,
                        "{}; tried again in the background",
                        destination.first_error.as_deref().unwrap_or("not open")
                    );
                    status.state = DestinationState::NotOpen;
                    status.last_error = destination.first_error.clone();
                }
                Some(repo) => match find_resume(repo, &database) {
                    Ok(Some(resume)) => {
                        status.stream = resume.stream;
                        status.generation = resume.generation;
                        status.position = resume.position;
                        uploaded = resume.cursor;
                        based = true;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(database, destination = destination.name, "{e}");
                        status.last_error = Some(e.to_string());
                        unreachable.push(i);
                    }
                },
            }
            let lane = Arc::new(Lane {
                state: Mutex::new(LaneState {
                    jobs: VecDeque::new(),
                    epoch: 0,
                    busy: false,
                    stop: false,
                    failed: None,
                    based,
                    uploaded,
                    backlog: 0,
                    waiting_since: (!open).then(Instant::now),
                    open,
                    status,
                }),
                wake: Condvar::new(),
            });
            let worker = Worker {
                lane: lane.clone(),
                repo: destination.repo,
                opener: destination.opener,
                wal_path: wal_path.clone(),
                db_path: db_path.clone(),
                database: database.clone(),
                options: options.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("lifeboat-sqlite-lane-{i}"))
                .spawn(move || worker.run())
                .map_err(|e| Error::io("start a replication thread for", &db_path, e))?;
            lanes.push(LaneHandle {
                lane,
                thread: Some(thread),
                retry: None,
                progress_at_release: 0,
            });
        }
        let mut replicator = Replicator {
            wal_path,
            database,
            read,
            spare,
            lock,
            protected: false,
            read_mark_zero: false,
            captured: None,
            checkpointed_at: None,
            read_began: jiff::Timestamp::now(),
            page_size,
            last_snapshot: Instant::now(),
            checkpoints: 0,
            bytes_captured: 0,
            last_round_bytes: 0,
            last_round_span: Duration::ZERO,
            last_round_at: None,
            last_error: None,
            lanes,
            db_path,
            options,
        };
        for i in unreachable {
            replicator.release(i, None);
        }
        // With no destination live there is nobody to hold the WAL for (the rule of
        // `round`): the read transaction is taken when the first one joins.
        if !replicator.live_lanes().is_empty() {
            replicator.start()?;
        }
        // Callers expect the base snapshots stored when this returns; a destination that
        // takes longer (or fails) goes on in the background.
        replicator.wait_for_live_lanes(Duration::from_secs(120), false);
        Ok(replicator)
    }

    /// What the replicator and each destination have done so far.
    pub fn status(&self) -> ReplicationStatus {
        ReplicationStatus {
            database: self.database.clone(),
            checkpoints: self.checkpoints,
            bytes_captured: self.bytes_captured,
            last_error: self.last_error.clone(),
            destinations: self
                .lanes
                .iter()
                .map(|handle| {
                    let state = handle.lane.lock();
                    let mut status = state.status.clone();
                    status.lag_bytes = state.backlog;
                    let oldest = match status.state {
                        DestinationState::Released | DestinationState::NotOpen => {
                            state.waiting_since
                        }
                        DestinationState::Live => state.jobs.iter().find_map(|job| match job {
                            Job::Upload(round) => Some(round.seen),
                            _ => None,
                        }),
                    };
                    status.lag_seconds = oldest.map_or(0.0, |t| t.elapsed().as_secs_f64());
                    status
                })
                .collect(),
        }
    }

    /// Takes the read transaction under the write lock and sets every destination going.
    fn start(&mut self) -> Result<()> {
        self.acquire_write_lock_patiently()?;
        let outcome = (|| {
            self.begin_read()?;
            self.captured = self.committed_end()?;
            let live = self.live_lanes();
            self.rejoin_locked(&live)?;
            // Our read mark may be 0 (the log was checkpointed completely while nobody held
            // it), and SQLite may then restart the log as soon as we release the lock: let the
            // destinations that resume store their catch-up first. One that takes too long
            // finds its frames gone if a restart happens, and starts a new generation.
            self.wait_for_lanes(self.options.max_lock_hold, false, true);
            Ok(())
        })();
        self.release_write_lock();
        if outcome.is_err() {
            self.end_read();
        }
        outcome
    }

    fn live_lanes(&self) -> Vec<usize> {
        (0..self.lanes.len())
            .filter(|&i| self.lanes[i].lane.lock().status.state == DestinationState::Live)
            .collect()
    }

    /// With the write lock held and everything committed captured: sets each lane in `which`
    /// going again, from where its repository's journal ends if the WAL still continues it,
    /// else from a new generation whose base is a copy taken now.
    fn rejoin_locked(&mut self, which: &[usize]) -> Result<()> {
        let mut need_base = Vec::new();
        for &i in which {
            let handle = &mut self.lanes[i];
            let mut state = handle.lane.lock();
            state.jobs.clear();
            state.epoch += 1;
            state.failed = None;
            let continues = state.based
                && state.uploaded.is_some_and(|cursor| {
                    wal::cursor_still_valid(&self.wal_path, &cursor).unwrap_or(false)
                });
            if continues {
                let start = state.uploaded.expect("checked");
                if let Some(end) = self.captured
                    && end != start
                {
                    let round = Round {
                        start,
                        end,
                        new_cycle: false,
                        captured: now_micros(),
                        seen: state.waiting_since.unwrap_or_else(Instant::now),
                    };
                    state.backlog = round.bytes();
                    state.jobs.push_back(Job::Upload(round));
                } else {
                    state.backlog = 0;
                }
                tracing::info!(
                    database = %self.database,
                    destination = state.status.repository,
                    generation = state.status.generation,
                    position = state.status.position,
                    "continuing the stored journal"
                );
            } else {
                if state.based {
                    tracing::info!(
                        database = %self.database,
                        destination = state.status.repository,
                        "the WAL no longer continues the stored journal; starting a new generation"
                    );
                }
                state.based = false;
                state.backlog = 0;
                need_base.push(i);
            }
            state.status.state = DestinationState::Live;
            state.waiting_since = None;
            handle.lane.wake.notify_all();
        }
        if !need_base.is_empty() {
            let copy = Arc::new(self.shared_copy(now_micros())?);
            for i in need_base {
                let lane = &self.lanes[i].lane;
                lane.lock().jobs.push_back(Job::Base(copy.clone()));
                lane.wake.notify_all();
            }
        }
        Ok(())
    }

    /// A connection whose read transaction, begun now (under the write lock, with everything
    /// committed captured), shows exactly the captured position.
    fn shared_copy(&self, captured: jiff::Timestamp) -> Result<SharedCopy> {
        let conn = open_connection(&self.db_path, Duration::from_secs(10))?;
        conn.execute_batch("BEGIN")
            .and_then(|()| {
                conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
                    r.get::<_, i64>(0)
                })
            })
            .map_err(|e| Error::sqlite("begin a snapshot read on", &self.db_path, e))?;
        Ok(SharedCopy {
            db_path: self.db_path.clone(),
            spool_dir: self
                .options
                .spool_dir
                .clone()
                .unwrap_or_else(std::env::temp_dir),
            conn: Mutex::new(Some(conn)),
            file: OnceLock::new(),
            cursor: self.captured,
            captured,
            page_size: self.page_size,
        })
    }

    /// The end of the committed frames in the WAL, read without keeping them.
    fn committed_end(&self) -> Result<Option<WalCursor>> {
        let mut cursor: Option<WalCursor> = None;
        loop {
            match wal::scan_committed(&self.wal_path, cursor.as_ref(), 64 << 20)? {
                None => return Ok(cursor),
                Some(read) => {
                    if read.commits == 0 {
                        // A new cycle without commits yet starts at its header.
                        return Ok(Some(if read.new_cycle { read.start } else { read.end }));
                    }
                    cursor = Some(read.end);
                }
            }
        }
    }

    fn acquire_write_lock_patiently(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60).max(self.options.lock_timeout);
        loop {
            match self.lock.execute_batch("BEGIN IMMEDIATE") {
                Ok(()) => return Ok(()),
                Err(e) if is_busy(&e) && Instant::now() < deadline => continue,
                Err(e) => return Err(Error::sqlite("take the write lock of", &self.db_path, e)),
            }
        }
    }

    /// Takes the write lock if it is free within the lock timeout.
    fn try_write_lock(&self) -> Result<bool> {
        match self.lock.execute_batch("BEGIN IMMEDIATE") {
            Ok(()) => Ok(true),
            Err(e) if is_busy(&e) => {
                tracing::debug!(database = %self.database, "write lock busy; postponed");
                Ok(false)
            }
            Err(e) => Err(Error::sqlite("take the write lock of", &self.db_path, e)),
        }
    }

    fn release_write_lock(&self) {
        if let Err(e) = self.lock.execute_batch("ROLLBACK") {
            tracing::warn!(database = %self.database, "releasing the write lock: {e}");
        }
    }

    fn begin_read(&mut self) -> Result<()> {
        begin_read_on(&self.read, &self.db_path)?;
        self.read_began = jiff::Timestamp::now();
        self.protected = true;
        self.read_mark_zero = false;
        Ok(())
    }

    fn end_read(&mut self) {
        self.protected = false;
        self.read_mark_zero = false;
        if !self.read.is_autocommit() {
            let _ = self.read.execute_batch("COMMIT");
        }
    }

    /// Captures every committed frame not captured yet into the live lanes' queues (released
    /// lanes only count it as lag).
    fn capture(&mut self) -> Result<()> {
        loop {
            // Only where the committed frames end: the lanes read the frames themselves.
            let Some(read) = wal::scan_committed(
                &self.wal_path,
                self.captured.as_ref(),
                self.options.max_segment_bytes,
            )?
            else {
                break;
            };
            if read.commits == 0 {
                break;
            }
            self.page_size = read.header.page_size;
            let full = read.bytes >= self.options.max_segment_bytes;
            let round = Round {
                start: read.start,
                end: read.end,
                new_cycle: read.new_cycle,
                captured: now_micros(),
                seen: Instant::now(),
            };
            for handle in &self.lanes {
                let mut state = handle.lane.lock();
                state.backlog += round.bytes();
                if state.status.state == DestinationState::Live {
                    state.jobs.push_back(Job::Upload(round));
                    handle.lane.wake.notify_all();
                }
            }
            self.captured = Some(read.end);
            self.bytes_captured += read.bytes;
            if !full {
                break;
            }
        }
        Ok(())
    }

    /// Releases lane `i`: drops its queue so it no longer holds the WAL; it is tried again
    /// after a wait (1 s, doubling to 60 s while it keeps failing).
    fn release(&mut self, i: usize, reason: Option<String>) {
        let handle = &mut self.lanes[i];
        let mut state = handle.lane.lock();
        let progress = state.status.segments_shipped + state.status.snapshots_taken;
        let wait = match handle.retry {
            Some((_, wait)) if progress == handle.progress_at_release => {
                (wait * 2).min(Duration::from_secs(60))
            }
            _ => Duration::from_secs(1),
        };
        handle.retry = Some((Instant::now() + wait, wait));
        handle.progress_at_release = progress;
        let oldest = state.jobs.iter().find_map(|job| match job {
            Job::Upload(round) => Some(round.seen),
            _ => None,
        });
        if state.status.state == DestinationState::Live {
            state.status.releases += 1;
            state.waiting_since = oldest.or(state.waiting_since);
        }
        state.jobs.clear();
        state.epoch += 1;
        state.failed = None;
        state.status.state = DestinationState::Released;
        if let Some(reason) = reason {
            tracing::warn!(
                database = %self.database,
                destination = state.status.repository,
                "{reason}; released (it resyncs when it answers)"
            );
            state.status.last_error = Some(reason);
        }
    }

    /// Releases live lanes that failed or fell past the lag limit.
    fn release_failed_and_lagging(&mut self) {
        for i in 0..self.lanes.len() {
            let reason = {
                let state = self.lanes[i].lane.lock();
                if state.status.state != DestinationState::Live {
                    continue;
                }
                if let Some(failure) = &state.failed {
                    Some(failure.clone())
                } else {
                    self.options
                        .max_lag_bytes
                        .filter(|&limit| state.backlog > limit)
                        .map(|limit| {
                            format!(
                                "{} bytes of WAL are not stored there (more than the lag limit of {limit})",
                                state.backlog
                            )
                        })
                }
            };
            if let Some(reason) = reason {
                self.release(i, Some(reason));
            }
        }
    }

    fn frames_in_cycle(&self) -> u64 {
        self.captured.map_or(0, |c| {
            (c.offset.saturating_sub(wal::HEADER_SIZE)) / (24 + u64::from(self.page_size))
        })
    }

    /// Waits until every live lane has stored everything queued (false: one failed, or the
    /// time ran out). With `stop_on_failure`, a failed lane ends the wait at once.
    fn wait_for_live_lanes(&self, timeout: Duration, stop_on_failure: bool) -> bool {
        self.wait_for_lanes(timeout, stop_on_failure, false)
    }

    /// As [`Self::wait_for_live_lanes`]; with `uploads_only`, a lane busy with a new
    /// generation's base snapshot counts as done.
    fn wait_for_lanes(&self, timeout: Duration, stop_on_failure: bool, uploads_only: bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let mut done = true;
            for handle in &self.lanes {
                let state = handle.lane.lock();
                if state.status.state != DestinationState::Live {
                    continue;
                }
                if state.failed.is_some() {
                    if stop_on_failure {
                        return false;
                    }
                    continue;
                }
                let base_first = matches!(state.jobs.front(), Some(Job::Base(_)));
                if (!state.jobs.is_empty() || state.busy) && !(uploads_only && base_first) {
                    done = false;
                }
            }
            if done {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// One round: release destinations that failed or lag too far, resync those that are
    /// due, capture, then checkpoint and snapshot when due. Waits for destinations only as
    /// long as a checkpoint allows.
    pub fn tick(&mut self) -> Result<()> {
        let captured_before = self.bytes_captured;
        let started = Instant::now();
        let outcome = self.round();
        self.last_round_bytes = self.bytes_captured - captured_before;
        self.last_round_span = self
            .last_round_at
            .map_or(self.options.interval, |at| started - at);
        self.last_round_at = Some(started);
        outcome
    }

    /// How long to wait before the next [`tick`](Self::tick): the interval, or a tenth of it
    /// (at least 50 ms) while the application writes at a rate that fills
    /// `checkpoint_frames` frames within one interval. That costs more, smaller segments
    /// (at most ten rounds per interval) while the writer is that busy. SQLite cannot restart a WAL that is held between checkpoints, and an
    /// application's automatic checkpoint then runs on each of its commits: checkpointing
    /// more often keeps the WAL short and the writer fast (docs/sqlite.md, *Cost to the
    /// application*). It also shortens the window a crash can lose.
    pub fn pause(&self) -> Duration {
        let frame = 24 + u64::from(self.page_size);
        let span = self.last_round_span.as_secs_f64().max(1e-3);
        let frames_per_interval =
            (self.last_round_bytes / frame) as f64 * self.options.interval.as_secs_f64() / span;
        if frames_per_interval >= self.options.checkpoint_frames as f64 {
            (self.options.interval / 10)
                .max(BUSY_PAUSE)
                .min(self.options.interval)
        } else {
            self.options.interval
        }
    }

    fn round(&mut self) -> Result<()> {
        self.release_failed_and_lagging();
        if self.protected && self.live_lanes().is_empty() {
            // Nobody to hold the WAL for: let the application's checkpoints restart it.
            tracing::debug!(database = %self.database, "no live destination; letting go of the WAL");
            self.end_read();
        }
        self.resync()?;
        if self.protected {
            // The lag limit was judged above, on what a lane left unstored since the last
            // round: a round just captured is not yet a sign of trouble.
            self.capture()?;
        }
        let snapshot_due = self.last_snapshot.elapsed() >= self.options.snapshot_interval;
        let wal_is_long = self.frames_in_cycle() >= self.options.checkpoint_frames
            && self.checkpointed_at != self.captured;
        if self.protected && (snapshot_due || wal_is_long) {
            self.checkpoint(snapshot_due)?;
        }
        Ok(())
    }

    /// Takes the read transaction again if it was lost, and lets released lanes whose wait is
    /// over rejoin (resuming, or with a new generation).
    fn resync(&mut self) -> Result<()> {
        let now = Instant::now();
        let due: Vec<usize> = (0..self.lanes.len())
            .filter(|&i| {
                let handle = &self.lanes[i];
                let state = handle.lane.lock();
                state.status.state == DestinationState::Released
                    && !state.busy
                    && handle.retry.is_none_or(|(at, _)| now >= at)
            })
            .collect();
        let lost = !self.protected && !self.live_lanes().is_empty();
        if due.is_empty() && !lost {
            return Ok(());
        }
        if lost {
            self.acquire_write_lock_patiently()?;
        } else if !self.try_write_lock()? {
            return Ok(());
        }
        let outcome = (|| {
            if self.protected {
                self.capture()?;
            } else {
                self.begin_read()?;
                let continues = self.captured.is_some_and(|cursor| {
                    wal::cursor_still_valid(&self.wal_path, &cursor).unwrap_or(false)
                });
                if continues {
                    self.capture()?;
                } else {
                    // What happened to the WAL while nobody held it is unknown: every live lane
                    // continues only if the WAL provably continues its own journal.
                    self.captured = self.committed_end()?;
                    let live = self.live_lanes();
                    self.rejoin_locked(&live)?;
                }
            }
            self.rejoin_locked(&due)
        })();
        self.release_write_lock();
        if let Err(e) = outcome {
            self.end_read();
            for i in due {
                self.release(i, Some(format!("resync: {e}")));
            }
            return Err(e);
        }
        Ok(())
    }

    /// Takes the write lock (if it is free within the lock timeout and every live destination
    /// has stored what it was given), captures the last frames, waits for the live
    /// destinations to store them, runs a PASSIVE checkpoint and renews the read transaction;
    /// then queues a snapshot for every live destination if asked. Returns whether the
    /// checkpoint ran.
    pub fn checkpoint(&mut self, then_snapshot: bool) -> Result<bool> {
        // The round just captured is usually stored within moments; wait at most one interval
        // for it, so the write lock is taken only to store the last few frames.
        if !self.wait_for_live_lanes(self.options.interval, true) {
            return Ok(false);
        }
        if self.backfill_unlocked()? {
            // The application went on writing meanwhile: store that too before taking the
            // lock, so that only the last few frames are stored (and copied) under it.
            self.capture()?;
            if !self.wait_for_live_lanes(self.options.interval, true) {
                return Ok(false);
            }
        }
        if !self.try_write_lock()? {
            return Ok(false);
        }
        let outcome = self.checkpoint_locked(then_snapshot, self.options.max_lock_hold);
        self.release_write_lock();
        let ran = outcome?;
        if ran {
            self.checkpointed_at = self.captured;
            self.checkpoints += 1;
        }
        Ok(ran)
    }

    /// Before a checkpoint: copies most of the WAL into the database without the write lock,
    /// so that the application's writers wait only for the last few frames (and two short
    /// syncs) under it. Returns whether it did (the read transaction must hold read mark 0 at
    /// a stored position, as after a complete checkpoint).
    ///
    /// Why no frame can be lost: the read transaction moves from `read` to `spare` by
    /// beginning the new one before ending the old one, so a read mark is held throughout.
    /// The old one holds read mark 0 at a stored position X; while it is held SQLite can copy
    /// nothing into the database, so the log can restart only at X, once, and a new cycle
    /// stays uncopied. The new one therefore gets either a read mark above 0, which forbids
    /// any restart until we end it (and we end it only under the write lock with everything
    /// stored), or read mark 0 at X or at the empty start of a new cycle. Either way, ending
    /// the old one lets no restart happen anywhere but at a stored position. The PASSIVE
    /// checkpoint then copies frames up to the new read mark only, never past it.
    fn backfill_unlocked(&mut self) -> Result<bool> {
        if !self.protected || !self.read_mark_zero {
            return Ok(false);
        }
        begin_read_on(&self.spare, &self.db_path)?;
        std::mem::swap(&mut self.read, &mut self.spare);
        if let Err(e) = self.spare.execute_batch("COMMIT") {
            tracing::warn!(database = %self.database, "ending the previous read transaction: {e}");
        }
        self.read_mark_zero = false;
        // The `lock` connection holds no transaction now; PASSIVE never waits for anyone.
        passive_checkpoint(&self.lock, &self.db_path)?;
        // SQLite syncs the database file only when a checkpoint copies the whole WAL, which
        // happens next, under the write lock: syncing what was copied now keeps that short.
        // (Syncing a file changes nothing in it: it is safe whoever else writes.)
        sync_database_file(&self.db_path).map_err(|e| Error::io("sync", &self.db_path, e))?;
        Ok(true)
    }

    /// Whether the WAL's current cycle, begun after our last checkpoint, already holds
    /// `checkpoint_frames` frames. Cheap (the WAL header and one frame header), for asking
    /// every few milliseconds between rounds; uncommitted frames count, as it is only a
    /// reason to run the next round early.
    fn wal_cycle_is_long(&self) -> bool {
        use std::os::unix::fs::FileExt;
        // (SQLite holds no POSIX lock on the `-wal` file, so opening and closing it is harmless;
        // see `sync_database_file` for the database file.)
        let Ok(file) = std::fs::File::open(&self.wal_path) else {
            return false;
        };
        let mut bytes = [0u8; wal::HEADER_SIZE as usize];
        if file.read_exact_at(&mut bytes, 0).is_err() {
            return false;
        }
        let Some(header) = wal::WalHeader::parse(&bytes) else {
            return false;
        };
        if self.checkpointed_at.is_some_and(|c| c.salt == header.salt) {
            // Not restarted since our checkpoint: the rounds on the timer see to this cycle.
            return false;
        }
        let at =
            wal::HEADER_SIZE + (self.options.checkpoint_frames.max(1) - 1) * header.frame_size();
        let mut frame = [0u8; wal::FRAME_HEADER_SIZE];
        if file.read_exact_at(&mut frame, at).is_err() {
            return false;
        }
        wal::FrameHeader::parse(&frame).salt == header.salt
    }

    /// Waits until the next round is due: after [`pause`](Self::pause), or as soon as the
    /// WAL's current cycle holds `checkpoint_frames` frames (looked at every 5 ms, and at
    /// most every 20 ms after a round), or once `stop` is set. A writer that fills the WAL
    /// quickly so gets its checkpoint (and the WAL restart) promptly instead of committing
    /// into an ever longer log, on which every one of its own automatic checkpoints fails
    /// after sorting the whole log (docs/sqlite.md, *Cost to the application*).
    pub fn idle(&self, stop: &AtomicBool) {
        let now = Instant::now();
        let until = now + self.pause();
        let earliest = self.last_round_at.map_or(now, |at| at + LONG_WAL_SPACING);
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let now = Instant::now();
            if now >= until {
                return;
            }
            if now >= earliest && self.protected && self.wal_cycle_is_long() {
                return;
            }
            std::thread::sleep(WAL_POLL.min(until - now));
        }
    }

    fn checkpoint_locked(&mut self, then_snapshot: bool, wait: Duration) -> Result<bool> {
        // Nothing can commit now: once the live lanes stored this, they have everything.
        self.capture()?;
        if !self.wait_for_live_lanes(wait, true) {
            tracing::debug!(database = %self.database, "a destination is behind; checkpoint postponed");
            return Ok(false);
        }
        self.end_read();
        let checkpoint = passive_checkpoint(&self.read, &self.db_path);
        self.begin_read()?;
        let (busy, in_wal, copied) = checkpoint?;
        // The whole WAL is in the database and nothing can be written while we hold the write
        // lock: SQLite gave the new read transaction read mark 0 (it reads the database file
        // only), at a position every live lane has stored.
        self.read_mark_zero = busy == 0 && in_wal >= 0 && in_wal == copied;
        if then_snapshot {
            let live = self.live_lanes();
            if !live.is_empty() {
                let copy = Arc::new(self.shared_copy(jiff::Timestamp::now())?);
                for i in live {
                    let lane = &self.lanes[i].lane;
                    let mut state = lane.lock();
                    if !state.jobs.iter().any(|j| matches!(j, Job::Snapshot(_))) {
                        state.jobs.push_back(Job::Snapshot(copy.clone()));
                        lane.wake.notify_all();
                    }
                }
            }
            self.last_snapshot = Instant::now();
        }
        Ok(true)
    }

    /// Captures what is committed and waits until every live destination has stored it.
    /// Fails if one of them cannot within `timeout`.
    pub fn sync(&mut self, timeout: Duration) -> Result<()> {
        if self.protected {
            self.capture()?;
        }
        if self.wait_for_live_lanes(timeout, true) {
            return Ok(());
        }
        let behind: Vec<String> = self
            .status()
            .destinations
            .into_iter()
            .filter(|d| d.state == DestinationState::Live)
            .map(|d| {
                format!(
                    "{} ({} bytes behind{})",
                    d.repository,
                    d.lag_bytes,
                    d.last_error.map(|e| format!(": {e}")).unwrap_or_default()
                )
            })
            .collect();
        Err(Error::Behind {
            database: self.database.clone(),
            destinations: behind.join(", "),
        })
    }

    /// Checkpoints and stores a snapshot in every live destination now, waiting for all of it.
    pub fn snapshot_now(&mut self) -> Result<()> {
        let timeout = Duration::from_secs(600);
        self.sync(timeout)?;
        let before: Vec<u64> = self
            .status()
            .destinations
            .iter()
            .map(|d| d.snapshots_taken)
            .collect();
        self.acquire_write_lock_patiently()?;
        let outcome = self.checkpoint_locked(true, timeout);
        self.release_write_lock();
        if !outcome? {
            return self.sync(Duration::ZERO);
        }
        self.checkpointed_at = self.captured;
        self.checkpoints += 1;
        self.sync(timeout)?;
        for (status, before) in self.status().destinations.iter().zip(before) {
            if status.state == DestinationState::Live && status.snapshots_taken == before {
                return Err(Error::Behind {
                    database: self.database.clone(),
                    destinations: format!(
                        "{}: the snapshot was not stored ({})",
                        status.repository,
                        status.last_error.as_deref().unwrap_or("unknown error")
                    ),
                });
            }
        }
        Ok(())
    }

    /// Replicates until `stop` is set, then captures what is committed, lets every
    /// destination store what it can, and returns. Errors are logged and retried; unstored
    /// frames stay protected meanwhile.
    pub fn run(&mut self, stop: &AtomicBool, mut on_tick: impl FnMut(&ReplicationStatus)) {
        while !stop.load(Ordering::Relaxed) {
            if let Err(e) = self.tick() {
                tracing::warn!(database = %self.database, "replication: {e}");
                self.last_error = Some(e.to_string());
            }
            on_tick(&self.status());
            self.idle(stop);
        }
        if self.protected
            && let Err(e) = self.capture()
        {
            tracing::warn!(database = %self.database, "final capture: {e}");
            self.last_error = Some(e.to_string());
        }
        self.stop_lanes();
        on_tick(&self.status());
    }

    /// Lets every worker store what is queued (one attempt each) and waits for them.
    fn stop_lanes(&mut self) {
        for handle in &self.lanes {
            handle.lane.lock().stop = true;
            handle.lane.wake.notify_all();
        }
        for handle in &mut self.lanes {
            if let Some(thread) = handle.thread.take()
                && thread.join().is_err()
            {
                handle.lane.lock().status.last_error =
                    Some("the destination's thread panicked".into());
            }
        }
    }
}

impl Drop for Replicator {
    fn drop(&mut self) {
        self.stop_lanes();
    }
}

/// A lane's worker: stores its queue into its repository, in order.
struct Worker {
    lane: Arc<Lane>,
    /// `None` until a destination that did not open at start opens.
    repo: Option<IndexedRepository>,
    opener: Option<Opener>,
    wal_path: PathBuf,
    db_path: PathBuf,
    database: String,
    options: ReplicateOptions,
}

/// What a job changed in the repository.
enum Done {
    Segment {
        end: WalCursor,
        end_position: u64,
        bytes: u64,
        captured: jiff::Timestamp,
    },
    Base {
        stream: String,
        generation: String,
        cursor: Option<WalCursor>,
        captured: jiff::Timestamp,
    },
    Snapshot {
        captured: jiff::Timestamp,
    },
    /// The round was already stored (by an upload in flight when the queue was rebuilt).
    Nothing,
}

/// Why a job did not complete.
enum Failure {
    /// Try again (the repository did not answer).
    Retry(String),
    /// The lane cannot go on in this epoch.
    Fatal(String),
    /// Skip the job (a periodic snapshot that failed; the next interval tries again).
    Skip(String),
}

/// What the worker knows of its journal when it picks a job.
struct Journal {
    stream: String,
    generation: String,
    position: u64,
    based: bool,
    uploaded: Option<WalCursor>,
}

impl Worker {
    fn run(mut self) {
        let mut backoff = Duration::ZERO;
        // A destination that did not open at start: its first try was the caller's.
        let mut open_wait = Duration::from_secs(1);
        let mut next_open = Instant::now() + open_wait;
        loop {
            let (job, epoch, journal, stopping) = {
                let mut state = self.lane.lock();
                loop {
                    if !state.jobs.is_empty() {
                        break;
                    }
                    if state.stop {
                        return;
                    }
                    let mut wait = Duration::from_secs(1);
                    if !state.open {
                        let now = Instant::now();
                        if now >= next_open {
                            drop(state);
                            let outcome = self.attach();
                            state = self.lane.lock();
                            match outcome {
                                Ok(resume) => join_opened(&mut state, resume),
                                Err(reason) => {
                                    tracing::debug!(database = %self.database, destination = state.status.repository, "still not open: {reason}");
                                    state.status.last_error = Some(reason);
                                    open_wait = (open_wait * 2).min(Duration::from_secs(60));
                                    next_open = Instant::now() + open_wait;
                                }
                            }
                            continue;
                        }
                        wait = wait.min(next_open - now);
                    }
                    state = self
                        .lane
                        .wake
                        .wait_timeout(state, wait)
                        .map_or_else(|p| p.into_inner().0, |(s, _)| s);
                }
                state.busy = true;
                let journal = Journal {
                    stream: state.status.stream.clone(),
                    generation: state.status.generation.clone(),
                    position: state.status.position,
                    based: state.based,
                    uploaded: state.uploaded,
                };
                (
                    state.jobs.front().cloned().expect("checked"),
                    state.epoch,
                    journal,
                    state.stop,
                )
            };
            let outcome = self.perform(&job, &journal);
            let mut state = self.lane.lock();
            state.busy = false;
            let current = state.epoch == epoch;
            match outcome {
                Ok(done) => {
                    backoff = Duration::ZERO;
                    record(&mut state, done, current);
                }
                Err(Failure::Skip(reason)) => {
                    tracing::warn!(database = %self.database, destination = state.status.repository, "{reason}");
                    state.status.last_error = Some(reason);
                    if current {
                        state.jobs.pop_front();
                    }
                }
                Err(Failure::Fatal(reason)) => {
                    state.status.last_error = Some(reason.clone());
                    if current {
                        state.failed = Some(reason);
                        if stopping {
                            state.jobs.clear();
                        }
                    }
                    // Nothing more can happen in this epoch until the reader decides.
                    while state.epoch == epoch && !state.stop {
                        state = self
                            .lane
                            .wake
                            .wait_timeout(state, Duration::from_millis(100))
                            .map_or_else(|p| p.into_inner().0, |(s, _)| s);
                    }
                    if state.stop && state.epoch == epoch {
                        return;
                    }
                }
                Err(Failure::Retry(reason)) => {
                    tracing::debug!(database = %self.database, destination = state.status.repository, "{reason}");
                    state.status.last_error = Some(reason);
                    if stopping {
                        // Stopping: one attempt only; what is left is resumed or resynced by
                        // the next start.
                        state.jobs.clear();
                        return;
                    }
                    drop(state);
                    backoff =
                        (backoff * 2).clamp(Duration::from_millis(100), Duration::from_secs(5));
                    let until = Instant::now() + backoff;
                    while Instant::now() < until {
                        let state = self.lane.lock();
                        if state.epoch != epoch || state.stop {
                            break;
                        }
                        drop(state);
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
        }
    }

    /// Opens the repository of a destination that did not open at start (if it has not yet)
    /// and finds where its journal of this database stands.
    fn attach(&mut self) -> std::result::Result<Option<Resume>, String> {
        if self.repo.is_none() {
            let opener = self
                .opener
                .as_mut()
                .ok_or_else(|| "no way to open the repository".to_string())?;
            self.repo = Some(opener()?);
        }
        let repo = self.repo.as_ref().expect("opened above");
        find_resume(repo, &self.database).map_err(|e| e.to_string())
    }

    fn perform(&mut self, job: &Job, journal: &Journal) -> std::result::Result<Done, Failure> {
        if self.repo.is_none() {
            return Err(Failure::Fatal("the repository is not open".into()));
        }
        match job {
            Job::Upload(round) => self.upload(round, journal),
            Job::Base(copy) => self.base(copy, journal),
            Job::Snapshot(copy) => self.snapshot(copy, journal),
        }
    }

    /// Stores the next piece (at most one segment) of `round`.
    fn upload(&mut self, round: &Round, journal: &Journal) -> std::result::Result<Done, Failure> {
        if !journal.based {
            return Err(Failure::Fatal(
                "frames were queued before the generation's snapshot was stored".into(),
            ));
        }
        // The journal here must end where the round starts, or inside it (an upload that was
        // in flight when the queue was rebuilt already stored its beginning), or the round
        // must open a new WAL cycle.
        let mut round = *round;
        match journal.uploaded {
            Some(at) if at == round.start => {}
            Some(at)
                if at.salt == round.start.salt
                    && at.offset > round.start.offset
                    && at.offset <= round.end.offset =>
            {
                if at.offset == round.end.offset {
                    return Ok(Done::Nothing);
                }
                round.start = at;
                round.new_cycle = false;
            }
            _ if round.new_cycle => {}
            _ => {
                return Err(Failure::Fatal(format!(
                    "frames queued at WAL offset {} do not continue the journal stored here; a new generation follows",
                    round.start.offset
                )));
            }
        }
        let gone = |what: &str| {
            Failure::Fatal(format!(
                "the WAL no longer holds the frames at offset {} ({what}); a new generation follows",
                round.start.offset
            ))
        };
        // A transaction larger than a segment is stored in parts, so neither a segment nor
        // the memory to build it grows with the transaction.
        let read = wal::read_piece(
            &self.wal_path,
            &round.start,
            round.end.offset,
            self.options.max_segment_bytes,
        )
        .map_err(|e| Failure::Fatal(e.to_string()))?
        .ok_or_else(|| gone("the log was restarted"))?;
        if read.frames.is_empty() {
            return Err(gone("the log was restarted"));
        }
        if read.end.offset > round.end.offset || read.end.salt != round.end.salt {
            return Err(gone("they no longer end where they were captured"));
        }
        let frames = read.frames.len() as u64;
        let header = SegmentHeader {
            generation: journal.generation.clone(),
            position: journal.position,
            end_position: journal.position + frames,
            captured: round.captured,
            page_size: read.header.page_size,
            big_endian: read.header.big_endian,
            new_cycle: round.new_cycle,
            start: read.start,
            end: read.end,
            commits: read.commits,
            part: read.open,
        };
        let name = segment::name(&header.generation, header.position, header.captured);
        self.repo
            .as_ref()
            .expect("perform checks it is open")
            .put_stream_object(
                &journal.stream,
                &name,
                &segment::encode(&header, &read.frames),
            )
            .map_err(|e| Failure::Retry(format!("storing segment {name}: {e}")))?;
        tracing::debug!(database = %self.database, segment = name, bytes = frames, "shipped");
        Ok(Done::Segment {
            end: read.end,
            end_position: header.end_position,
            bytes: frames,
            captured: round.captured,
        })
    }

    /// Starts a new generation: stores the copy as its base snapshot.
    fn base(&mut self, copy: &SharedCopy, journal: &Journal) -> std::result::Result<Done, Failure> {
        let fatal = |e: Error| Failure::Fatal(format!("new generation: {e}"));
        let stream = if journal.stream.is_empty() {
            // Not known yet (the repository did not answer at start): ask it first, which also
            // tells whether it answers before a copy of the database is made.
            find_resume(
                self.repo.as_ref().expect("perform checks it is open"),
                &self.database,
            )
            .map_err(fatal)?
            .map_or_else(catalog::new_stream_id, |r| r.stream)
        } else {
            // A cheap request first: a repository that does not answer costs no copy.
            self.repo
                .as_ref()
                .expect("perform checks it is open")
                .list_stream_objects(&journal.stream)
                .map_err(|e| fatal(e.into()))?;
            journal.stream.clone()
        };
        let generation = catalog::new_generation();
        let state = SnapshotState {
            format: catalog::STATE_FORMAT,
            database: self.database.clone(),
            stream: stream.clone(),
            generation: generation.clone(),
            position: 0,
            captured: copy.captured,
            wal: copy.cursor,
            page_size: copy.page_size,
        };
        let path = copy.path().map_err(fatal)?;
        let repo = self.repo.as_mut().expect("perform checks it is open");
        store_snapshot(path, &state, repo, &self.db_path, &self.options).map_err(fatal)?;
        Ok(Done::Base {
            stream,
            generation,
            cursor: copy.cursor,
            captured: copy.captured,
        })
    }

    /// A periodic snapshot at the position everything before it reached.
    fn snapshot(
        &mut self,
        copy: &SharedCopy,
        journal: &Journal,
    ) -> std::result::Result<Done, Failure> {
        if !journal.based || journal.uploaded != copy.cursor {
            return Err(Failure::Skip(
                "snapshot skipped: the journal here does not stand where the copy was taken".into(),
            ));
        }
        let state = SnapshotState {
            format: catalog::STATE_FORMAT,
            database: self.database.clone(),
            stream: journal.stream.clone(),
            generation: journal.generation.clone(),
            position: journal.position,
            captured: copy.captured,
            wal: copy.cursor,
            page_size: copy.page_size,
        };
        let skip = |e: Error| Failure::Skip(format!("snapshot: {e}"));
        let path = copy.path().map_err(skip)?;
        let repo = self.repo.as_mut().expect("perform checks it is open");
        store_snapshot(path, &state, repo, &self.db_path, &self.options).map_err(skip)?;
        Ok(Done::Snapshot {
            captured: copy.captured,
        })
    }
}

/// A destination that did not open at start has opened: it knows where its journal stands and
/// becomes a released destination due at once, which the reader's next round lets join
/// (continuing that journal if the WAL still does, else with a new generation).
fn join_opened(state: &mut LaneState, resume: Option<Resume>) {
    if let Some(resume) = resume {
        state.status.stream = resume.stream;
        state.status.generation = resume.generation;
        state.status.position = resume.position;
        state.uploaded = resume.cursor;
        state.based = true;
    }
    tracing::info!(
        destination = state.status.repository,
        "the repository opened; joining"
    );
    state.open = true;
    state.status.state = DestinationState::Released;
}

/// Records what a job stored; advances the queue only if it is still the epoch's.
fn record(state: &mut LaneState, done: Done, current: bool) {
    match done {
        Done::Segment {
            end,
            end_position,
            bytes,
            captured,
        } => {
            state.uploaded = Some(end);
            state.status.position = end_position;
            state.status.segments_shipped += 1;
            state.status.bytes_shipped += bytes;
            state.status.last_segment_time = Some(captured);
            state.backlog = state.backlog.saturating_sub(bytes);
            if current && let Some(Job::Upload(round)) = state.jobs.front_mut() {
                if end == round.end {
                    state.jobs.pop_front();
                } else {
                    round.start = end;
                    round.new_cycle = false;
                }
            }
        }
        Done::Base {
            stream,
            generation,
            cursor,
            captured,
        } => {
            state.status.stream = stream;
            state.status.generation = generation;
            state.status.position = 0;
            state.uploaded = cursor;
            state.based = true;
            state.status.snapshots_taken += 1;
            state.status.generations_started += 1;
            state.status.last_snapshot_time = Some(captured);
            if current {
                state.jobs.pop_front();
            }
        }
        Done::Snapshot { captured } => {
            state.status.snapshots_taken += 1;
            state.status.last_snapshot_time = Some(captured);
            if current {
                state.jobs.pop_front();
            }
        }
        Done::Nothing => {
            if current {
                state.jobs.pop_front();
            }
        }
    }
}

/// Copies the database as `conn`'s read transaction sees it (through SQLite's backup API, page
/// for page) into a temporary file in `spool`.
fn copy_database(conn: &Connection, db_path: &Path, spool: &Path) -> Result<tempfile::TempPath> {
    let copy = tempfile::Builder::new()
        .prefix(".lifeboat-sqlite-snapshot-")
        .tempfile_in(spool)
        .map_err(|e| Error::io("create a snapshot copy in", spool, e))?
        .into_temp_path();
    {
        let mut target = Connection::open(&copy)
            .map_err(|e| Error::sqlite("open the snapshot copy", copy.to_path_buf(), e))?;
        let backup = rusqlite::backup::Backup::new(conn, &mut target)
            .map_err(|e| Error::sqlite("start the snapshot copy of", db_path, e))?;
        backup
            .run_to_completion(1024, Duration::ZERO, None)
            .map_err(|e| Error::sqlite("copy", db_path, e))?;
    }
    Ok(copy)
}

/// Stores the copy at `copy` as a snapshot recording `state`.
fn store_snapshot(
    copy: &Path,
    state: &SnapshotState,
    repo: &mut IndexedRepository,
    db_path: &Path,
    options: &ReplicateOptions,
) -> Result<Id> {
    let name = db_path
        .file_name()
        .map_or_else(|| "database".into(), |n| n.to_string_lossy().into_owned());
    let file =
        std::fs::File::open(copy).map_err(|e| Error::io("read the snapshot copy", copy, e))?;
    let backup_options = BackupOptions {
        hostname: options.hostname.clone(),
        username: options.username.clone(),
        tags: options.tags.clone(),
        source: SourceKind::Sqlite,
        source_state: Some(serde_json::to_value(state).expect("state serialises")),
        ..Default::default()
    };
    let outcome = lifeboat_files::backup_stream(
        repo,
        std::io::BufReader::with_capacity(1 << 20, file),
        &name,
        &backup_options,
        &BackupProgress::default(),
    )?;
    tracing::info!(
        database = %state.database,
        snapshot = %outcome.snapshot_id.short(),
        generation = %state.generation,
        position = state.position,
        "snapshot stored"
    );
    Ok(outcome.snapshot_id)
}
