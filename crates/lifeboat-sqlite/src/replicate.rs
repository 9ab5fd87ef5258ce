//! The replicator: ships a live database's committed WAL frames to a repository.
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
//! IMMEDIATE` on its `lock` connection, which writes nothing) and after it shipped every
//! committed frame: so the frame where a restart may happen has always been shipped, and a
//! new WAL cycle (new salts) seen later continues the journal exactly. That is the same
//! protocol Litestream follows, without writing tables into the application's database.
//!
//! The write lock is held only for the moment of a checkpoint: ship the last frames, end the
//! read transaction, run a PASSIVE checkpoint, begin a new read transaction, release.
//! Applications should set a busy timeout (they need one for any second connection anyway).
//!
//! If the replicator loses track (it was stopped and the log was restarted meanwhile, say by
//! someone's `wal_checkpoint(TRUNCATE)`), it starts a new *generation* with a fresh snapshot.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// Largest segment (a single bigger transaction still goes into one segment).
    pub max_segment_bytes: u64,
    /// Unshipped WAL bytes after which an unreachable destination stops holding the WAL on
    /// local disk (`None`: hold it without limit).
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
            max_segment_bytes: 16 << 20,
            max_lag_bytes: Some(1 << 30),
            spool_dir: None,
            hostname: String::new(),
            username: String::new(),
            tags: Vec::new(),
        }
    }
}

/// What a replicator has done, for status output and metrics.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplicationStatus {
    /// The database.
    pub database: String,
    /// Its journal stream.
    pub stream: String,
    /// Current generation.
    pub generation: String,
    /// Position shipped within the generation (bytes of frames).
    pub position: u64,
    /// Committed WAL bytes not yet shipped, at the last look.
    pub lag_bytes: u64,
    /// Seconds since the oldest unshipped commit was first seen (0 when nothing is waiting).
    pub lag_seconds: f64,
    /// Segments shipped by this process.
    pub segments_shipped: u64,
    /// Frame bytes shipped by this process.
    pub bytes_shipped: u64,
    /// Snapshots taken by this process.
    pub snapshots_taken: u64,
    /// Checkpoints run by this process.
    pub checkpoints: u64,
    /// Generations started by this process (1 on a fresh start, 0 on a resume).
    pub generations_started: u64,
    /// Capture time of the last segment shipped.
    pub last_segment_time: Option<jiff::Timestamp>,
    /// Time of the last snapshot taken.
    pub last_snapshot_time: Option<jiff::Timestamp>,
    /// The last error met (replication goes on after errors of the destination).
    pub last_error: Option<String>,
}

type BackgroundSnapshot = std::thread::JoinHandle<(IndexedRepository, SnapshotState, Result<Id>)>;

/// Replicates one database into one repository.
pub struct Replicator {
    db_path: PathBuf,
    wal_path: PathBuf,
    repo: IndexedRepository,
    options: ReplicateOptions,
    read: Connection,
    lock: Connection,
    /// The read transaction is open and was begun at a fully shipped position.
    protected: bool,
    /// A new generation was started and its snapshot is not stored yet: nothing may be
    /// shipped, and the read transaction may not be renewed, until it is.
    needs_snapshot: bool,
    /// A periodic snapshot being copied and stored on its own connection and thread, so that
    /// shipping goes on meanwhile. It returns its view of the index.
    background: Option<BackgroundSnapshot>,
    /// The cursor at the last checkpoint: until the WAL moves on, another one would do nothing
    /// but take the write lock again.
    checkpointed_at: Option<WalCursor>,
    /// After a failed resync (destination unreachable), when to try again, and the wait.
    resync_after: Option<(Instant, Duration)>,
    cursor: Option<WalCursor>,
    /// When the read transaction began: the moment the state it sees was current.
    read_began: jiff::Timestamp,
    page_size: u32,
    last_snapshot: Instant,
    /// When committed frames were first seen waiting (for lag in seconds).
    waiting_since: Option<Instant>,
    status: ReplicationStatus,
}

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

fn is_busy(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

impl Replicator {
    /// Opens `db` (which must exist and be in WAL mode) and either resumes the journal stored
    /// in `repo` where it stopped, or starts a new generation with a snapshot.
    pub fn open(db: &Path, repo: IndexedRepository, options: ReplicateOptions) -> Result<Self> {
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
        let database = db_path.to_string_lossy().into_owned();
        let mut replicator = Replicator {
            wal_path,
            repo,
            read,
            lock,
            protected: false,
            needs_snapshot: false,
            resync_after: None,
            checkpointed_at: None,
            background: None,
            cursor: None,
            read_began: jiff::Timestamp::now(),
            page_size,
            last_snapshot: Instant::now(),
            waiting_since: None,
            status: ReplicationStatus {
                database,
                ..Default::default()
            },
            db_path,
            options,
        };
        replicator.start()?;
        Ok(replicator)
    }

    /// What the replicator has done so far.
    pub fn status(&self) -> &ReplicationStatus {
        &self.status
    }

    /// The repository (with the blobs this replicator added).
    pub fn repository(&self) -> &IndexedRepository {
        &self.repo
    }

    /// Resumes the stored journal if the WAL still continues it, else starts a generation.
    fn start(&mut self) -> Result<()> {
        let selector = Selector::Path(self.status.database.clone());
        let snapshots = catalog::database_snapshots(&self.repo, Some(&selector))?;
        let latest = snapshots.last().cloned();
        self.status.stream = latest
            .as_ref()
            .map_or_else(catalog::new_stream_id, |s| s.state.stream.clone());
        self.acquire_write_lock_patiently()?;
        let outcome = self.start_locked(latest.as_ref());
        self.release_write_lock();
        if outcome? {
            self.needs_snapshot = true;
            self.take_snapshot()?;
            self.needs_snapshot = false;
            self.status.generations_started += 1;
        }
        Ok(())
    }

    /// With the write lock held: opens the read transaction and decides where to continue.
    /// Returns whether a new generation (and so a snapshot) is needed.
    fn start_locked(&mut self, latest: Option<&catalog::DatabaseSnapshot>) -> Result<bool> {
        self.end_read();
        self.begin_read()?;
        if let Some(latest) = latest {
            let generation = latest.state.generation.clone();
            let segments =
                catalog::generation_segments(&self.repo, &self.status.stream, &generation)?;
            let (cursor, position) = match segments.last() {
                Some(last) => {
                    let name = &last.name;
                    let bytes = self.repo.get_stream_object(&self.status.stream, name)?;
                    let (header, _) = segment::decode(&bytes).map_err(|reason| Error::Segment {
                        stream: self.status.stream.clone(),
                        name: name.clone(),
                        reason,
                    })?;
                    (Some(header.end), header.end_position)
                }
                None => (latest.state.wal, latest.state.position),
            };
            if let Some(cursor) = cursor
                && wal::cursor_still_valid(&self.wal_path, &cursor)?
            {
                tracing::info!(
                    database = %self.status.database,
                    generation, position, "resuming the stored journal"
                );
                self.cursor = Some(cursor);
                self.status.generation = generation;
                self.status.position = position;
                self.last_snapshot = Instant::now();
                // The log may have been checkpointed completely while nobody held it, in which
                // case our read mark is 0 and SQLite may restart the log as soon as we release
                // the write lock: ship everything first, so that restart happens at a shipped
                // position.
                if let Err(e) = self.ship() {
                    self.end_read();
                    return Err(e);
                }
                return Ok(false);
            }
            tracing::info!(
                database = %self.status.database,
                "the WAL no longer continues the stored journal; starting a new generation"
            );
        }
        // New generation: it starts where the WAL ends now (no writer can add to it while we
        // hold the write lock), which is exactly what our read transaction sees.
        self.cursor = self.committed_end()?;
        self.status.generation = catalog::new_generation();
        self.status.position = 0;
        Ok(true)
    }

    /// The end of the committed frames in the WAL, read without keeping them.
    fn committed_end(&self) -> Result<Option<WalCursor>> {
        let mut cursor: Option<WalCursor> = None;
        loop {
            match wal::read_committed(&self.wal_path, cursor.as_ref(), 64 << 20)? {
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

    fn release_write_lock(&self) {
        if let Err(e) = self.lock.execute_batch("ROLLBACK") {
            tracing::warn!(database = %self.status.database, "releasing the write lock: {e}");
        }
    }

    fn begin_read(&mut self) -> Result<()> {
        self.read
            .execute_batch("BEGIN")
            .and_then(|()| {
                self.read
                    .query_row("SELECT count(*) FROM sqlite_master", [], |row| {
                        row.get::<_, i64>(0)
                    })
            })
            .map_err(|e| Error::sqlite("begin the read transaction on", &self.db_path, e))?;
        self.read_began = jiff::Timestamp::now();
        self.protected = true;
        Ok(())
    }

    fn end_read(&mut self) {
        self.protected = false;
        if !self.read.is_autocommit() {
            let _ = self.read.execute_batch("COMMIT");
        }
    }

    /// Ships every committed frame not yet shipped. Returns the number of segments written.
    pub fn ship(&mut self) -> Result<u64> {
        let mut segments = 0;
        loop {
            let Some(read) = wal::read_committed(
                &self.wal_path,
                self.cursor.as_ref(),
                self.options.max_segment_bytes,
            )?
            else {
                break;
            };
            if read.commits == 0 {
                break;
            }
            if read.header.page_size != self.page_size {
                self.page_size = read.header.page_size;
            }
            let full = read.frames.len() as u64 >= self.options.max_segment_bytes;
            self.waiting_since.get_or_insert_with(Instant::now);
            let header = SegmentHeader {
                generation: self.status.generation.clone(),
                position: self.status.position,
                end_position: self.status.position + read.frames.len() as u64,
                // Whole microseconds, as in the segment's name.
                captured: jiff::Timestamp::from_microsecond(
                    jiff::Timestamp::now().as_microsecond(),
                )
                .expect("now is in range"),
                page_size: read.header.page_size,
                big_endian: read.header.big_endian,
                new_cycle: read.new_cycle,
                start: read.start,
                end: read.end,
                commits: read.commits,
            };
            let name = segment::name(&header.generation, header.position, header.captured);
            self.status.lag_bytes = self.unshipped_bytes(&read);
            self.repo.put_stream_object(
                &self.status.stream,
                &name,
                &segment::encode(&header, &read.frames),
            )?;
            tracing::debug!(database = %self.status.database, segment = name, bytes = read.frames.len(), "shipped");
            self.cursor = Some(read.end);
            self.status.position = header.end_position;
            self.status.segments_shipped += 1;
            self.status.bytes_shipped += read.frames.len() as u64;
            self.status.last_segment_time = Some(header.captured);
            segments += 1;
            if !full {
                break;
            }
        }
        self.status.lag_bytes = 0;
        self.status.lag_seconds = 0.0;
        self.waiting_since = None;
        Ok(segments)
    }

    fn unshipped_bytes(&self, read: &wal::WalRead) -> u64 {
        let size = std::fs::metadata(&self.wal_path).map_or(0, |m| m.len());
        size.saturating_sub(read.start.offset)
    }

    /// One round: ship, then checkpoint and snapshot when due. Errors leave everything
    /// unshipped protected, so the next round retries.
    pub fn tick(&mut self) -> Result<()> {
        if !self.protected
            && let Some((at, _)) = self.resync_after
            && Instant::now() < at
        {
            return Ok(());
        }
        if let Err(e) = self.resync_and_snapshot() {
            // Back off (1 s, doubling to 60 s): a resync may copy the whole database.
            let wait = self.resync_after.map_or(Duration::from_secs(1), |(_, w)| {
                (w * 2).min(Duration::from_secs(60))
            });
            self.resync_after = Some((Instant::now() + wait, wait));
            return Err(e);
        }
        self.resync_after = None;
        self.collect_background_snapshot(false);
        if let Some(since) = self.waiting_since {
            self.status.lag_seconds = since.elapsed().as_secs_f64();
        }
        if let Err(e) = self.ship() {
            self.bound_the_wal();
            return Err(e);
        }
        let snapshot_due = self.background.is_none()
            && self.last_snapshot.elapsed() >= self.options.snapshot_interval;
        let wal_is_long = self.frames_in_cycle() >= self.options.checkpoint_frames
            && self.checkpointed_at != self.cursor;
        if snapshot_due || wal_is_long {
            self.checkpoint(snapshot_due)?;
        }
        Ok(())
    }

    /// If the read transaction was lost, takes it again (resuming, or starting a new
    /// generation); stores a new generation's snapshot if it is still missing.
    fn resync_and_snapshot(&mut self) -> Result<()> {
        if !self.protected {
            // We lost our read transaction (an error in the middle of a checkpoint): what
            // happened to the WAL meanwhile is unknown, so continue only if it provably still
            // continues the journal, else start a new generation.
            self.acquire_write_lock_patiently()?;
            let continues = match &self.cursor {
                // A generation without its snapshot cannot be continued: start it again.
                _ if self.needs_snapshot => Ok(false),
                Some(cursor) => wal::cursor_still_valid(&self.wal_path, cursor),
                None => Ok(false),
            };
            let outcome = match continues {
                // As on start: ship everything under the lock before claiming protection.
                Ok(true) => self.begin_read().and_then(|()| match self.ship() {
                    Ok(_) => Ok(false),
                    Err(e) => {
                        self.end_read();
                        Err(e)
                    }
                }),
                Ok(false) => self.end_read_and_restart(),
                Err(e) => Err(e),
            };
            self.release_write_lock();
            if outcome? {
                self.needs_snapshot = true;
            }
        }
        if self.needs_snapshot {
            if let Err(e) = self.take_snapshot() {
                // Nothing of this generation is shipped, so holding the WAL protects nothing:
                // let go of it (local disk stays bounded); the next attempt starts afresh.
                self.end_read();
                return Err(e);
            }
            self.needs_snapshot = false;
            self.status.generations_started += 1;
        }
        Ok(())
    }

    /// While the destination is unreachable our read transaction keeps the whole WAL on local
    /// disk. Past `max_lag_bytes` we let go of it: the application's checkpoints may then
    /// restart the log, and when the destination answers again we either find the log still
    /// continuing the journal or start a new generation with a snapshot.
    fn bound_the_wal(&mut self) {
        let Some(limit) = self.options.max_lag_bytes else {
            return;
        };
        let size = std::fs::metadata(&self.wal_path).map_or(0, |m| m.len());
        let shipped = self.cursor.map_or(0, |c| c.offset);
        if self.protected && size.saturating_sub(shipped) > limit {
            tracing::warn!(
                database = %self.status.database,
                unshipped = size - shipped,
                "the destination is unreachable and the WAL passed --max-lag; releasing it (a new generation may follow)"
            );
            self.end_read();
        }
    }

    fn end_read_and_restart(&mut self) -> Result<bool> {
        self.end_read();
        self.begin_read()?;
        self.cursor = self.committed_end()?;
        self.status.generation = catalog::new_generation();
        self.status.position = 0;
        Ok(true)
    }

    fn frames_in_cycle(&self) -> u64 {
        self.cursor.map_or(0, |c| {
            (c.offset.saturating_sub(wal::HEADER_SIZE)) / (24 + u64::from(self.page_size))
        })
    }

    /// Takes the write lock (if it is free within the lock timeout), ships the last frames,
    /// runs a PASSIVE checkpoint and renews the read transaction; then takes a snapshot if
    /// asked. Returns whether the checkpoint ran.
    pub fn checkpoint(&mut self, then_snapshot: bool) -> Result<bool> {
        match self.lock.execute_batch("BEGIN IMMEDIATE") {
            Ok(()) => {}
            Err(e) if is_busy(&e) => {
                tracing::debug!(database = %self.status.database, "write lock busy; checkpoint postponed");
                return Ok(false);
            }
            Err(e) => return Err(Error::sqlite("take the write lock of", &self.db_path, e)),
        }
        let outcome = self.checkpoint_locked().and_then(|()| {
            if then_snapshot && self.background.is_none() {
                // Its own read transaction, begun under the write lock with everything
                // shipped: it shows exactly the current position.
                let conn = open_connection(&self.db_path, Duration::from_secs(10))?;
                conn.execute_batch("BEGIN")
                    .and_then(|()| {
                        conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
                            r.get::<_, i64>(0)
                        })
                    })
                    .map_err(|e| Error::sqlite("begin a snapshot read on", &self.db_path, e))?;
                Ok(Some((conn, self.snapshot_state(jiff::Timestamp::now()))))
            } else {
                Ok(None)
            }
        });
        self.release_write_lock();
        let snapshot = outcome?;
        self.checkpointed_at = self.cursor;
        self.status.checkpoints += 1;
        if let Some((conn, state)) = snapshot {
            let mut repo = self.repo.clone();
            let db_path = self.db_path.clone();
            let options = self.options.clone();
            self.background = Some(std::thread::spawn(move || {
                let result = store_snapshot(&conn, &state, &mut repo, &db_path, &options);
                (repo, state, result)
            }));
            // Not due again until this one is collected.
            self.last_snapshot = Instant::now();
        }
        Ok(true)
    }

    fn checkpoint_locked(&mut self) -> Result<()> {
        // Nothing can commit now: after this, every committed frame is shipped.
        self.ship()?;
        self.end_read();
        let checkpoint = self
            .read
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
            .map_err(|e| Error::sqlite("checkpoint", &self.db_path, e));
        self.begin_read()?;
        checkpoint
    }

    /// Copies the database as our read transaction sees it (exactly the shipped position) and
    /// stores it as a snapshot.
    fn take_snapshot(&mut self) -> Result<Id> {
        // The copy shows the database as of the start of our read transaction (begun under the
        // write lock, with everything shipped): that is the moment it restores.
        let state = self.snapshot_state(self.read_began);
        let id = store_snapshot(
            &self.read,
            &state,
            &mut self.repo,
            &self.db_path,
            &self.options,
        )?;
        self.snapshot_stored(&state);
        Ok(id)
    }

    fn snapshot_state(&self, captured: jiff::Timestamp) -> SnapshotState {
        SnapshotState {
            format: catalog::STATE_FORMAT,
            database: self.status.database.clone(),
            stream: self.status.stream.clone(),
            generation: self.status.generation.clone(),
            position: self.status.position,
            captured,
            wal: self.cursor,
            page_size: self.page_size,
        }
    }

    fn snapshot_stored(&mut self, state: &SnapshotState) {
        self.last_snapshot = Instant::now();
        self.status.snapshots_taken += 1;
        self.status.last_snapshot_time = Some(state.captured);
    }

    /// Collects a finished background snapshot (waiting for it if `wait`).
    fn collect_background_snapshot(&mut self, wait: bool) {
        let finished = self.background.as_ref().is_some_and(|h| h.is_finished());
        if !(finished || wait) {
            return;
        }
        let Some(handle) = self.background.take() else {
            return;
        };
        match handle.join() {
            Ok((repo, state, Ok(_))) => {
                // Its view of the index knows the blobs it stored: keep it, so the next
                // snapshot deduplicates against this one.
                self.repo = repo;
                self.snapshot_stored(&state);
            }
            Ok((_, _, Err(e))) => {
                tracing::warn!(database = %self.status.database, "snapshot: {e}");
                self.status.last_error = Some(format!("snapshot: {e}"));
                // Try again at the next interval rather than at every round.
                self.last_snapshot = Instant::now();
            }
            Err(_) => {
                self.status.last_error = Some("the snapshot thread panicked".to_string());
                self.last_snapshot = Instant::now();
            }
        }
    }

    /// Takes a snapshot now (after a checkpoint, so it starts a short WAL).
    pub fn snapshot_now(&mut self) -> Result<()> {
        self.collect_background_snapshot(true);
        self.acquire_write_lock_patiently()?;
        let outcome = self.checkpoint_locked();
        self.release_write_lock();
        outcome?;
        self.checkpointed_at = self.cursor;
        self.status.checkpoints += 1;
        self.take_snapshot()?;
        Ok(())
    }

    /// Replicates until `stop` is set, then ships what is committed and returns. Errors of
    /// the destination are logged and retried; unshipped frames stay protected meanwhile.
    pub fn run(&mut self, stop: &AtomicBool, mut on_tick: impl FnMut(&ReplicationStatus)) {
        while !stop.load(Ordering::Relaxed) {
            if let Err(e) = self.tick() {
                tracing::warn!(database = %self.status.database, "replication: {e}");
                self.status.last_error = Some(e.to_string());
            }
            on_tick(&self.status);
            let until = Instant::now() + self.options.interval;
            while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20).min(self.options.interval));
            }
        }
        if let Err(e) = self.ship() {
            tracing::warn!(database = %self.status.database, "final shipping: {e}");
            self.status.last_error = Some(e.to_string());
        }
        // A snapshot in progress is finished, not abandoned.
        self.collect_background_snapshot(true);
        on_tick(&self.status);
    }
}

/// Copies the database as `conn`'s read transaction sees it (through SQLite's backup API, page
/// for page, into a temporary file) and stores the copy as a snapshot recording `state`.
fn store_snapshot(
    conn: &Connection,
    state: &SnapshotState,
    repo: &mut IndexedRepository,
    db_path: &Path,
    options: &ReplicateOptions,
) -> Result<Id> {
    let spool = options.spool_dir.clone().unwrap_or_else(std::env::temp_dir);
    let copy = tempfile::Builder::new()
        .prefix(".lifeboat-sqlite-snapshot-")
        .tempfile_in(&spool)
        .map_err(|e| Error::io("create a snapshot copy in", &spool, e))?;
    {
        let mut target = Connection::open(copy.path())
            .map_err(|e| Error::sqlite("open the snapshot copy", copy.path(), e))?;
        let backup = rusqlite::backup::Backup::new(conn, &mut target)
            .map_err(|e| Error::sqlite("start the snapshot copy of", db_path, e))?;
        backup
            .run_to_completion(1024, Duration::ZERO, None)
            .map_err(|e| Error::sqlite("copy", db_path, e))?;
    }
    let name = db_path
        .file_name()
        .map_or_else(|| "database".into(), |n| n.to_string_lossy().into_owned());
    let file = std::fs::File::open(copy.path())
        .map_err(|e| Error::io("read the snapshot copy", copy.path(), e))?;
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
