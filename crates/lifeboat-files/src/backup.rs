//! Backing up file trees.
//!
//! Three kinds of threads share the work (all scoped to one call of [`backup`]):
//!
//! * the **walker** lists directories depth-first in name order, compares each file with the
//!   parent snapshot, and emits an ordered stream of events; files that must be read are handed
//!   to the readers, each with a one-shot channel for its result;
//! * **readers** open, read, chunk and hash files and give new chunks to the repository's
//!   [`BlobWriter`] (which compresses, encrypts, packs and uploads on its own threads);
//! * the **builder** (the calling thread) consumes the event stream in order, waits for file
//!   results as it reaches them, and writes one tree blob per directory, bottom-up.
//!
//! Every channel is bounded, so memory does not grow with the size of the tree being walked
//! beyond the directories on the current path and the events in flight.
//!
//! A file is unchanged, and not read, when the parent snapshot has a file of the same name with
//! the same size, mtime, ctime and inode whose blobs are all in the index.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, bounded};
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use lifeboat_repo::{
    BackupSummary, BlobType, BlobWriter, ByteName, Chunker, Id, IndexedRepository, Node, NodeKind,
    Snapshot, SourceKind, Tree, WriterOptions,
};
use parking_lot::Mutex;

use crate::error::{Error, Result, Warning};
use crate::meta::{node_from_metadata, read_xattrs};

/// What to back up and how.
#[derive(Debug, Clone, Default)]
pub struct BackupOptions {
    /// Paths to back up (files or directories).
    pub paths: Vec<PathBuf>,
    /// Exclude patterns: a pattern with a `/` matches whole absolute paths, one without
    /// matches file names anywhere (`*.o`, `target`).
    pub excludes: Vec<String>,
    /// Labels for the snapshot.
    pub tags: Vec<String>,
    /// Host name recorded in the snapshot and used to find the parent.
    pub hostname: String,
    /// User name recorded in the snapshot.
    pub username: String,
    /// Read every file even if the parent snapshot says it is unchanged.
    pub force: bool,
    /// Use this snapshot as the parent instead of the latest one with the same host and paths.
    pub parent: Option<Id>,
    /// Skip directories that contain a file of one of these names (e.g. `.nobackup`).
    pub exclude_if_present: Vec<String>,
    /// Skip directories tagged as caches by a `CACHEDIR.TAG` file with the standard signature.
    pub exclude_caches: bool,
    /// Do not descend into directories on other filesystems than the paths given (mount points
    /// are kept, empty).
    pub one_file_system: bool,
    /// Threads reading files; 0 picks a default.
    pub readers: usize,
    /// Tuning of the write pipeline.
    pub writer: WriterOptions,
    /// Kind of source recorded in the snapshot: database sources that store their files
    /// through this crate set their own.
    pub source: SourceKind,
    /// Source-specific position recorded in the snapshot (see [`Snapshot::source_state`]).
    pub source_state: Option<serde_json::Value>,
}

/// Live counters, readable from another thread while a backup runs (for progress bars).
#[derive(Debug, Default)]
pub struct BackupProgress {
    /// Files finished (read or skipped as unchanged).
    pub files_done: AtomicU64,
    /// Bytes read from files so far.
    pub bytes_read: AtomicU64,
    /// Bytes of finished files (read or unchanged).
    pub bytes_done: AtomicU64,
    /// Directories finished.
    pub dirs_done: AtomicU64,
    /// Entries that failed.
    pub errors: AtomicU64,
    /// Set (from a signal handler, say) to stop the backup: what is stored so far is flushed
    /// and indexed, so the next backup reuses it, and no snapshot is written.
    pub cancel: std::sync::atomic::AtomicBool,
    /// The file being read most recently.
    pub current: Mutex<PathBuf>,
}

/// Result of a backup.
#[derive(Debug, Clone)]
pub struct BackupOutcome {
    /// The new snapshot's id.
    pub snapshot_id: Id,
    /// The snapshot (with its summary).
    pub snapshot: Snapshot,
    /// Entries that could not be backed up.
    pub warnings: Vec<Warning>,
    /// Storage requests made.
    pub requests: lifeboat_storage::RequestStats,
}

/// Which parts of the filesystem to walk.
#[derive(Debug)]
enum Selection {
    /// Everything below.
    All,
    /// Only these children.
    Only(BTreeMap<OsString, Selection>),
}

fn normalise(path: &Path) -> Result<PathBuf> {
    let absolute = std::path::absolute(path).map_err(|e| Error::io("resolve", path, e))?;
    let mut out = PathBuf::from("/");
    for component in absolute.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(name) => out.push(name),
            _ => {}
        }
    }
    Ok(out)
}

fn selection_of(paths: &[PathBuf]) -> Selection {
    let mut root = Selection::Only(BTreeMap::new());
    for path in paths {
        let mut cursor = &mut root;
        for component in path.components() {
            let Component::Normal(name) = component else {
                continue;
            };
            cursor = match cursor {
                Selection::All => break,
                Selection::Only(children) => children
                    .entry(name.to_os_string())
                    .or_insert_with(|| Selection::Only(BTreeMap::new())),
            };
        }
        *cursor = Selection::All;
    }
    root
}

struct Excludes {
    names: GlobSet,
    paths: GlobSet,
}

impl Excludes {
    fn new(patterns: &[String]) -> Result<Excludes> {
        let mut names = GlobSetBuilder::new();
        let mut paths = GlobSetBuilder::new();
        for pattern in patterns {
            let glob = GlobBuilder::new(pattern.trim_end_matches('/'))
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|e| Error::Pattern {
                    pattern: pattern.clone(),
                    reason: e.to_string(),
                })?;
            if pattern.trim_end_matches('/').contains('/') {
                paths.add(glob);
            } else {
                names.add(glob);
            }
        }
        let build = |b: GlobSetBuilder| {
            b.build().map_err(|e| Error::Pattern {
                pattern: patterns.join(" "),
                reason: e.to_string(),
            })
        };
        Ok(Excludes {
            names: build(names)?,
            paths: build(paths)?,
        })
    }

    fn excluded(&self, path: &Path, name: &OsStr) -> bool {
        self.names.is_match(Path::new(name)) || self.paths.is_match(path)
    }
}

/// The signature that marks a cache directory (<https://bford.info/cachedir/>).
const CACHEDIR_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";

fn is_cache_dir(dir: &Path) -> bool {
    let mut head = [0u8; CACHEDIR_SIGNATURE.len()];
    File::open(dir.join("CACHEDIR.TAG"))
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
        .is_ok_and(|()| head == CACHEDIR_SIGNATURE)
}

/// Events per batch from the walker to the builder.
const EVENT_BATCH: usize = 256;

/// A file the readers must read.
struct FileJob {
    path: PathBuf,
    result: Sender<std::io::Result<FileRead>>,
}

struct FileRead {
    content: Vec<Id>,
    bytes: u64,
}

/// How a file entered the snapshot.
#[derive(Clone, Copy)]
enum FileState {
    New,
    Changed,
    Unchanged,
}

enum Event {
    EnterDir(Node),
    LeaveDir,
    Leaf(Node),
    File(
        Node,
        FileState,
        Option<Receiver<std::io::Result<FileRead>>>,
        PathBuf,
    ),
}

struct Walker<'a> {
    repo: &'a IndexedRepository,
    excludes: Excludes,
    markers: &'a [String],
    exclude_caches: bool,
    /// With --one-file-system: the devices of the paths given.
    devices: Option<Vec<u64>>,
    force: bool,
    events: Sender<Vec<Event>>,
    /// Events not sent yet: sending them in batches saves a thread wake-up per entry.
    batch: RefCell<Vec<Event>>,
    jobs: Sender<FileJob>,
    warnings: &'a Mutex<Vec<Warning>>,
    progress: &'a BackupProgress,
}

impl Walker<'_> {
    fn warn(&self, path: &Path, message: String) {
        self.progress.errors.fetch_add(1, Ordering::Relaxed);
        self.warnings.lock().push(Warning {
            path: path.to_path_buf(),
            message,
        });
    }

    fn parent_subtree(&self, parent: Option<&Tree>, name: &[u8]) -> Option<Tree> {
        let node = parent?.find(name)?;
        let id = node.subtree.filter(|_| node.kind == NodeKind::Dir)?;
        // A parent tree that cannot be read only costs change detection, not correctness.
        self.repo.read_tree(&id).ok()
    }

    /// Emits the events for the entries of `dir`. Returns false if the builder went away.
    fn walk(&self, dir: &Path, selection: &Selection, parent: Option<&Tree>) -> bool {
        let names: Vec<(OsString, Option<&Selection>)> = match selection {
            Selection::Only(children) => {
                children.iter().map(|(n, s)| (n.clone(), Some(s))).collect()
            }
            Selection::All => match std::fs::read_dir(dir) {
                Ok(entries) => {
                    let mut names = Vec::new();
                    for entry in entries {
                        match entry {
                            Ok(entry) => names.push((entry.file_name(), None)),
                            Err(e) => self.warn(dir, format!("cannot list directory: {e}")),
                        }
                    }
                    names.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
                    names
                }
                Err(e) => {
                    self.warn(dir, format!("cannot list directory: {e}"));
                    return true;
                }
            },
        };
        for (name, child_selection) in names {
            let path = dir.join(&name);
            if child_selection.is_none()
                && (self.excludes.excluded(&path, &name) || self.tagged(&path))
            {
                continue;
            }
            if !self.entry(
                &path,
                name.as_bytes(),
                child_selection.unwrap_or(&Selection::All),
                parent,
            ) {
                return false;
            }
        }
        true
    }

    fn entry(
        &self,
        path: &Path,
        name: &[u8],
        selection: &Selection,
        parent: Option<&Tree>,
    ) -> bool {
        if self.progress.cancel.load(Ordering::Relaxed) {
            return false;
        }
        let meta = match std::fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(e) => {
                self.warn(path, format!("cannot read metadata: {e}"));
                return true;
            }
        };
        let mut node = node_from_metadata(name, &meta);
        match read_xattrs(path) {
            Ok(xattrs) => node.xattrs = xattrs,
            Err(e) => self.warn(path, format!("cannot read extended attributes: {e}")),
        }
        match node.kind {
            NodeKind::Dir => {
                if let (Some(devices), Selection::All) = (&self.devices, selection)
                    && !devices.contains(&node.device)
                {
                    // Another filesystem: keep the mount point, not what is mounted there.
                    return self.emit(Event::EnterDir(node)) && self.emit(Event::LeaveDir);
                }
                let sub_parent = self.parent_subtree(parent, name);
                self.emit(Event::EnterDir(node))
                    && self.walk(path, selection, sub_parent.as_ref())
                    && self.emit(Event::LeaveDir)
            }
            NodeKind::File => {
                let previous = parent.and_then(|t| t.find(name));
                let state = match previous {
                    None => FileState::New,
                    Some(old) if !self.force && self.unchanged(old, &node) => FileState::Unchanged,
                    Some(_) => FileState::Changed,
                };
                if let (FileState::Unchanged, Some(old)) = (state, previous) {
                    node.content = old.content.clone();
                    return self.emit(Event::File(node, state, None, path.to_path_buf()));
                }
                let (tx, rx) = bounded(1);
                let job = FileJob {
                    path: path.to_path_buf(),
                    result: tx,
                };
                // Readers never wait for the builder, so the event may sit in the batch while
                // the job runs.
                self.emit(Event::File(node, state, Some(rx), path.to_path_buf()))
                    && self.jobs.send(job).is_ok()
            }
            NodeKind::Symlink => {
                match std::fs::read_link(path) {
                    Ok(target) => {
                        node.target = Some(ByteName(target.as_os_str().as_bytes().to_vec()))
                    }
                    Err(e) => {
                        self.warn(path, format!("cannot read symlink: {e}"));
                        return true;
                    }
                }
                self.emit(Event::Leaf(node))
            }
            _ => self.emit(Event::Leaf(node)),
        }
    }

    /// True if `path` is a directory marked to be left out (--exclude-if-present,
    /// --exclude-caches). On files the lookups fail with "not a directory", which is false.
    fn tagged(&self, path: &Path) -> bool {
        if self
            .markers
            .iter()
            .any(|m| std::fs::symlink_metadata(path.join(m)).is_ok())
        {
            return true;
        }
        self.exclude_caches && is_cache_dir(path)
    }

    /// Queues an event; returns false once the builder has gone away.
    fn emit(&self, event: Event) -> bool {
        let mut batch = self.batch.borrow_mut();
        batch.push(event);
        if batch.len() < EVENT_BATCH {
            return true;
        }
        let full = std::mem::replace(&mut *batch, Vec::with_capacity(EVENT_BATCH));
        self.events.send(full).is_ok()
    }

    /// Sends the events still queued.
    fn flush(&self) -> bool {
        let rest = std::mem::take(&mut *self.batch.borrow_mut());
        rest.is_empty() || self.events.send(rest).is_ok()
    }

    fn unchanged(&self, old: &Node, new: &Node) -> bool {
        old.kind == NodeKind::File
            && old.size == new.size
            && old.mtime == new.mtime
            && old.ctime == new.ctime
            && old.inode == new.inode
            && old
                .content
                .iter()
                .all(|id| self.repo.index().contains_reusable(id))
    }
}

fn read_file(
    path: &Path,
    chunker: &Chunker,
    writer: &BlobWriter,
    buffer: &mut Vec<u8>,
    progress: &BackupProgress,
) -> std::io::Result<FileRead> {
    let file = File::open(path)?;
    let mut content = Vec::new();
    let mut bytes = 0u64;
    let mut chunks = chunker.chunks_with_buffer(file, std::mem::take(buffer));
    for chunk in chunks.by_ref() {
        if progress.cancel.load(Ordering::Relaxed) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                "backup cancelled",
            ));
        }
        let chunk = chunk?;
        bytes += chunk.len() as u64;
        progress
            .bytes_read
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        let (id, _) = writer
            .add(BlobType::Data, chunk)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        content.push(id);
    }
    *buffer = chunks.into_buffer();
    Ok(FileRead { content, bytes })
}

fn reader_loop(
    jobs: Receiver<FileJob>,
    chunker: &Chunker,
    writer: &BlobWriter,
    progress: &BackupProgress,
) {
    let mut buffer = Vec::new();
    for job in jobs {
        *progress.current.lock() = job.path.clone();
        let result = read_file(&job.path, chunker, writer, &mut buffer, progress);
        let _ = job.result.send(result);
    }
}

struct Frame {
    node: Option<Node>,
    children: Vec<Node>,
}

struct Builder<'a> {
    writer: &'a BlobWriter,
    summary: BackupSummary,
    warnings: &'a Mutex<Vec<Warning>>,
    progress: &'a BackupProgress,
}

impl Builder<'_> {
    fn save_tree(&mut self, children: Vec<Node>) -> Result<Id> {
        let tree = Tree::new(children);
        let (id, _) = self.writer.add(BlobType::Tree, tree.to_bytes())?;
        Ok(id)
    }

    fn run(&mut self, batches: Receiver<Vec<Event>>) -> Result<Id> {
        let mut stack = vec![Frame {
            node: None,
            children: Vec::new(),
        }];
        for event in batches.into_iter().flatten() {
            match event {
                Event::EnterDir(node) => stack.push(Frame {
                    node: Some(node),
                    children: Vec::new(),
                }),
                Event::LeaveDir => {
                    let frame = stack.pop().expect("walker emits balanced events");
                    let mut node = frame.node.expect("only the root frame has no node");
                    node.subtree = Some(self.save_tree(frame.children)?);
                    self.summary.dirs += 1;
                    self.progress.dirs_done.fetch_add(1, Ordering::Relaxed);
                    stack.last_mut().expect("root frame").children.push(node);
                }
                Event::Leaf(node) => {
                    self.summary.others += 1;
                    stack.last_mut().expect("root frame").children.push(node);
                }
                Event::File(mut node, state, pending, path) => {
                    if let Some(rx) = pending {
                        match rx.recv() {
                            Ok(Ok(read)) => {
                                node.content = read.content;
                                // The file may have grown or shrunk while read: record what we read.
                                node.size = read.bytes;
                                self.summary.bytes_read += read.bytes;
                            }
                            Ok(Err(_)) if self.writer.failed() => {
                                return Err(lifeboat_repo::Error::Pipeline("stopped".into()).into());
                            }
                            Ok(Err(e)) => {
                                self.progress.errors.fetch_add(1, Ordering::Relaxed);
                                self.warnings.lock().push(Warning {
                                    path,
                                    message: format!("cannot read file: {e}"),
                                });
                                continue;
                            }
                            Err(_) => {
                                return Err(lifeboat_repo::Error::Pipeline(
                                    "a reader thread stopped".into(),
                                )
                                .into());
                            }
                        }
                    }
                    match state {
                        FileState::New => self.summary.files_new += 1,
                        FileState::Changed => self.summary.files_changed += 1,
                        FileState::Unchanged => self.summary.files_unchanged += 1,
                    }
                    self.summary.bytes_total += node.size;
                    self.progress.files_done.fetch_add(1, Ordering::Relaxed);
                    self.progress
                        .bytes_done
                        .fetch_add(node.size, Ordering::Relaxed);
                    stack.last_mut().expect("root frame").children.push(node);
                }
            }
        }
        let root = stack.pop().expect("root frame");
        assert!(stack.is_empty(), "walker emits balanced events");
        self.save_tree(root.children)
    }
}

/// Finds the latest snapshot of the same host and paths, to skip unchanged files.
fn find_parent(
    repo: &IndexedRepository,
    hostname: &str,
    paths: &[String],
) -> Result<Option<(Id, Tree)>> {
    let parent = repo.snapshots()?.into_iter().rev().find(|s| {
        s.snapshot.source == SourceKind::Files
            && s.snapshot.hostname == hostname
            && s.snapshot.paths == paths
    });
    match parent {
        Some(entry) => Ok(Some((entry.id, repo.read_tree(&entry.snapshot.tree)?))),
        None => Ok(None),
    }
}

/// Backs up `options.paths` into a new snapshot.
pub fn backup(
    repo: &mut IndexedRepository,
    options: &BackupOptions,
    progress: &BackupProgress,
) -> Result<BackupOutcome> {
    let started = Instant::now();
    let time = jiff::Timestamp::now();
    if options.paths.is_empty() {
        return Err(Error::NoPaths);
    }
    let mut paths = options
        .paths
        .iter()
        .map(|p| normalise(p))
        .collect::<Result<Vec<_>>>()?;
    paths.sort();
    paths.dedup();
    for path in &paths {
        std::fs::symlink_metadata(path).map_err(|e| Error::io("cannot back up", path, e))?;
    }
    let path_strings: Vec<String> = paths
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let parent = match (options.force, options.parent) {
        (true, _) => None,
        (false, Some(id)) => Some((id, repo.read_tree(&repo.load_snapshot(&id)?.tree)?)),
        (false, None) => find_parent(repo, &options.hostname, &path_strings)?,
    };
    match &parent {
        Some((id, _)) => tracing::info!(
            "parent snapshot {}: unchanged files are not read",
            id.short()
        ),
        None => tracing::info!("no parent snapshot: every file is read"),
    }
    let selection = selection_of(&paths);
    let devices = if options.one_file_system {
        let mut devices = Vec::new();
        for path in &paths {
            let meta = std::fs::symlink_metadata(path)
                .map_err(|e| Error::io("cannot back up", path, e))?;
            devices.push(std::os::unix::fs::MetadataExt::dev(&meta));
        }
        Some(devices)
    } else {
        None
    };
    let excludes = Excludes::new(&options.excludes)?;
    let chunker = repo.chunker();
    let writer = BlobWriter::new(repo, &options.writer);
    let warnings = Mutex::new(Vec::new());
    let readers = if options.readers == 0 {
        2
    } else {
        options.readers
    };

    let (event_tx, event_rx) = bounded::<Vec<Event>>(16);
    let (job_tx, job_rx) = bounded::<FileJob>(64);
    let root = std::thread::scope(|scope| {
        for n in 0..readers {
            let (jobs, chunker, writer) = (job_rx.clone(), &chunker, &writer);
            std::thread::Builder::new()
                .name(format!("lifeboat-read-{n}"))
                .spawn_scoped(scope, move || reader_loop(jobs, chunker, writer, progress))
                .expect("spawn reader");
        }
        drop(job_rx);
        let walker = Walker {
            repo,
            excludes,
            markers: &options.exclude_if_present,
            exclude_caches: options.exclude_caches,
            devices: devices.clone(),
            force: options.force,
            events: event_tx,
            batch: RefCell::new(Vec::with_capacity(EVENT_BATCH)),
            jobs: job_tx,
            warnings: &warnings,
            progress,
        };
        let parent_tree = parent.as_ref().map(|(_, tree)| tree);
        std::thread::Builder::new()
            .name("lifeboat-walk".into())
            .spawn_scoped(scope, move || {
                if walker.walk(Path::new("/"), &selection, parent_tree) {
                    walker.flush();
                }
            })
            .expect("spawn walker");
        let mut builder = Builder {
            writer: &writer,
            summary: BackupSummary::default(),
            warnings: &warnings,
            progress,
        };
        // On error the builder drops its receiver, which stops the walker, which drops the job
        // sender, which stops the readers: the scope then ends without deadlock.
        builder.run(event_rx).map(|root| (root, builder.summary))
    });
    let (root, summary) = match root {
        Ok(done) => done,
        // A failed pipeline stage is the cause of whatever the builder saw: report that.
        Err(e) => return Err(writer.finish().err().map_or(e, Error::from)),
    };
    if progress.cancel.load(Ordering::Relaxed) {
        // The trees are incomplete: keep the data (packs and index) but write no snapshot.
        let stats = writer.finish()?;
        return Err(Error::Cancelled {
            packs_kept: stats.packs_written,
        });
    }
    let snapshot = Pending {
        time,
        started,
        root,
        paths: path_strings,
        parent: parent.map(|(id, _)| id),
    };
    snapshot.save(
        repo,
        writer,
        summary,
        options,
        warnings.into_inner(),
        progress,
    )
}

/// What a backup knows when its trees are done; [`Pending::save`] writes the snapshot.
struct Pending {
    time: jiff::Timestamp,
    started: Instant,
    root: Id,
    paths: Vec<String>,
    parent: Option<Id>,
}

impl Pending {
    /// Flushes the pipeline (packs, then index), then writes the snapshot: always in this order.
    fn save(
        self,
        repo: &mut IndexedRepository,
        writer: BlobWriter,
        mut summary: BackupSummary,
        options: &BackupOptions,
        warnings: Vec<Warning>,
        progress: &BackupProgress,
    ) -> Result<BackupOutcome> {
        let mut stats = writer.finish()?;
        summary.errors = progress.errors.load(Ordering::Relaxed);
        summary.blobs_added = stats.blobs_added;
        summary.bytes_added = stats.bytes_added;
        summary.bytes_stored = stats.bytes_stored;
        summary.packs_written = stats.packs_written;
        summary.duration_secs = self.started.elapsed().as_secs_f64();
        let snapshot = Snapshot {
            version: lifeboat_repo::snapshot::SNAPSHOT_VERSION,
            time: self.time,
            tree: self.root,
            paths: self.paths,
            hostname: options.hostname.clone(),
            username: options.username.clone(),
            tags: options.tags.clone(),
            parent: self.parent,
            source: options.source,
            program_version: env!("CARGO_PKG_VERSION").to_string(),
            summary: Some(summary),
            source_state: options.source_state.clone(),
        };
        if options.writer.dry_run {
            // Nothing was stored, so there is nothing to name: the id stays zero.
            return Ok(BackupOutcome {
                snapshot_id: Id::default(),
                snapshot,
                warnings,
                requests: repo.storage().request_stats(),
            });
        }
        repo.add_packs(std::mem::take(&mut stats.packs));
        let snapshot_id =
            lifeboat_repo::prune::save_snapshot_guarded(repo, &snapshot, &options.writer)?;
        Ok(BackupOutcome {
            snapshot_id,
            snapshot,
            warnings,
            requests: repo.storage().request_stats(),
        })
    }
}

/// Backs up a stream (standard input, say `pg_dump` output) as one file named `name` at the
/// root of a new snapshot. The file gets mode 0644, the current user, and the time of the
/// backup as its modification time.
pub fn backup_stream(
    repo: &mut IndexedRepository,
    source: impl std::io::Read,
    name: &str,
    options: &BackupOptions,
    progress: &BackupProgress,
) -> Result<BackupOutcome> {
    let started = Instant::now();
    let time = jiff::Timestamp::now();
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(Error::Pattern {
            pattern: name.to_string(),
            reason: "a stream's file name must be one plain name, without '/'".to_string(),
        });
    }
    let writer = BlobWriter::new(repo, &options.writer);
    let chunker = repo.chunker();
    let mut node = Node::new(name, NodeKind::File);
    for chunk in chunker.chunks(source) {
        let chunk = chunk.map_err(|e| Error::io("read", PathBuf::from(name), e))?;
        node.size += chunk.len() as u64;
        progress
            .bytes_read
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        let (id, _) = writer.add(BlobType::Data, chunk)?;
        node.content.push(id);
    }
    node.mode = 0o100644;
    node.uid = rustix::process::geteuid().as_raw();
    node.gid = rustix::process::getegid().as_raw();
    node.mtime = lifeboat_repo::Timespec {
        sec: time.as_second(),
        nsec: time.subsec_nanosecond() as u32,
    };
    node.ctime = node.mtime;
    progress.files_done.fetch_add(1, Ordering::Relaxed);
    let summary = BackupSummary {
        files_new: 1,
        bytes_read: node.size,
        bytes_total: node.size,
        ..Default::default()
    };
    let (root, _) = writer.add(BlobType::Tree, Tree::new(vec![node]).to_bytes())?;
    let pending = Pending {
        time,
        started,
        root,
        paths: vec![format!("/{name}")],
        parent: None,
    };
    pending.save(repo, writer, summary, options, Vec::new(), progress)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_nests_paths_and_all_wins() {
        let sel = selection_of(&[
            PathBuf::from("/a/b"),
            PathBuf::from("/a/b/c"),
            PathBuf::from("/d"),
        ]);
        let Selection::Only(root) = sel else { panic!() };
        assert_eq!(root.len(), 2);
        let Selection::Only(a) = &root[OsStr::new("a")] else {
            panic!()
        };
        assert!(matches!(a[OsStr::new("b")], Selection::All));
        assert!(matches!(
            selection_of(&[PathBuf::from("/")]),
            Selection::All
        ));
    }

    #[test]
    fn excludes_match_names_or_paths() {
        let ex = Excludes::new(&["*.o".into(), "/srv/*/cache".into(), "target/".into()]).unwrap();
        assert!(ex.excluded(Path::new("/x/y.o"), OsStr::new("y.o")));
        assert!(ex.excluded(Path::new("/srv/app/cache"), OsStr::new("cache")));
        assert!(!ex.excluded(Path::new("/srv/app/sub/cache"), OsStr::new("cache")));
        assert!(ex.excluded(Path::new("/p/target"), OsStr::new("target")));
        assert!(!ex.excluded(Path::new("/p/src"), OsStr::new("src")));
        assert!(Excludes::new(&["a[".into()]).is_err());
    }

    #[test]
    fn normalise_makes_absolute_clean_paths() {
        assert_eq!(
            normalise(Path::new("/a/./b/../c")).unwrap(),
            PathBuf::from("/a/c")
        );
        assert!(normalise(Path::new("rel")).unwrap().is_absolute());
    }
}
