//! Restoring file trees.
//!
//! Restore is organised by pack, not by file: after walking the snapshot's trees (creating
//! directories, symlinks and special files as it goes), it knows for every pack which blobs it
//! needs and where each goes (file and offset). Worker threads then read each pack once, in a
//! few large range reads, authenticate and verify every blob, and write it to all its places
//! with positioned writes. A blob shared by many files is read once. Blocks of zeros are not
//! written, so sparse files stay sparse. Metadata is applied last, directories deepest first,
//! so that writing into a directory does not disturb its restored times.
//!
//! **Delta restore** ([`RestoreOptions::delta`]) reuses what a non-empty target already holds.
//! After the walk, every existing regular file at a file's place is read and each range the
//! snapshot's content list describes (blob `i` covers the bytes after blobs `0..i`, with the
//! length the index records) is hashed with the repository's keyed blob hash: equal ids mean
//! equal bytes, the same test a blob read from a pack must pass. A file whose every range
//! matches, at the snapshot's size, is left in place and only its metadata is set. Any other
//! file is rebuilt in a temporary file next to it (`.lifeboat-tmp-<pid>-<n>`): the matching
//! ranges are copied from the old file, only the others are read from the repository, and
//! the temporary file is renamed over the old one once it is complete. A crash therefore
//! leaves either the old file or the complete new one at each path, never a half-written
//! file under the final name. Size and modification time alone are not trusted unless
//! [`RestoreOptions::trust_mtime`] asks for it: databases rewrite pages in place, and tools
//! preserve times.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use lifeboat_repo::pack::decode_blob;
use lifeboat_repo::repository::pack_key;
use lifeboat_repo::{Id, IdMap, IndexedRepository, Node, NodeKind, Snapshot};
use parking_lot::Mutex;

use crate::error::{Error, Result, Warning};

/// Whether `name` is a delta restore's temporary file name, `.lifeboat-tmp-<pid>-<n>`.
fn is_temp_name(name: &[u8]) -> bool {
    let Some(rest) = name.strip_prefix(b".lifeboat-tmp-") else {
        return false;
    };
    let mut parts = rest.split(|&b| b == b'-');
    let numeric =
        |p: Option<&[u8]>| p.is_some_and(|p| !p.is_empty() && p.iter().all(u8::is_ascii_digit));
    numeric(parts.next()) && numeric(parts.next()) && parts.next().is_none()
}
use crate::meta::{
    Host, apply_metadata, apply_to_new_file, finish_file, finish_open_file,
    remove_extra_user_xattrs,
};

/// How to restore.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Restore only entries matching these globs (matched against the path in the snapshot,
    /// such as `/srv/app/config.toml`) and everything below them. Empty restores everything.
    pub include: Vec<String>,
    /// Allow a target that already holds files (existing files are replaced).
    pub overwrite: bool,
    /// Allow a target that already holds files, and keep the existing regular files that
    /// already hold the snapshot's content (compared chunk by chunk with keyed hashes; see the
    /// module documentation). Files that differ are rebuilt from their matching chunks plus
    /// the repository and renamed into place. Entries of other kinds in the way are replaced,
    /// as with `overwrite`; entries the snapshot lacks are left alone.
    pub delta: bool,
    /// With `delta`: take an existing file with the snapshot's size and modification time
    /// (to the nanosecond) as unchanged without reading it. Faster, but a change that kept
    /// both (a page rewritten in place within the same timestamp, a tool restoring times) goes
    /// unnoticed. Off by default.
    pub trust_mtime: bool,
    /// Threads reading packs; 0 picks a default.
    pub workers: usize,
}

/// Live counters for progress display.
#[derive(Debug, Default)]
pub struct RestoreProgress {
    /// Bytes of file content the restore will read from the repository in total (known after
    /// planning; with `delta`, after the existing files are compared).
    pub bytes_total: AtomicU64,
    /// Bytes of file content written so far.
    pub bytes_done: AtomicU64,
    /// Packs finished.
    pub packs_done: AtomicU64,
    /// With `delta`: bytes of existing files compared so far.
    pub bytes_checked: AtomicU64,
}

/// What a restore did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RestoreSummary {
    /// Regular files restored (written or reused).
    pub files: u64,
    /// With `delta`: regular files that already held the snapshot's content and were kept
    /// (only their metadata was set). Included in `files`.
    pub reused_files: u64,
    /// Bytes of the reused files. Included in `bytes`.
    pub reused_bytes: u64,
    /// Regular files written (new, or rebuilt because they differed).
    pub written_files: u64,
    /// Bytes of the written files. Included in `bytes`.
    pub written_bytes: u64,
    /// With `delta`: bytes of written files copied from the matching chunks of the file
    /// they replaced instead of read from the repository. Included in `written_bytes`.
    pub local_bytes: u64,
    /// Directories restored.
    pub dirs: u64,
    /// Symlinks, devices, pipes restored.
    pub others: u64,
    /// Hard links recreated.
    pub hardlinks: u64,
    /// Bytes of file content (written or reused).
    pub bytes: u64,
    /// Blobs read and verified.
    pub blobs_read: u64,
    /// Problems that did not stop the restore (metadata that could not be set, entries skipped,
    /// files whose data could not be read).
    pub warnings: Vec<Warning>,
}

struct TargetFile {
    path: PathBuf,
    /// With `delta`: the temporary file the content is written to, renamed to `path` once
    /// complete.
    temp: Option<PathBuf>,
    node: Node,
    /// With `delta`: the existing file already holds the content; nothing is written.
    reused: bool,
    /// With `delta`: bytes copied from the existing file's matching chunks.
    local_bytes: u64,
    /// Set by the first writer: the problems met setting metadata, or why creation failed.
    created: OnceLock<std::io::Result<Vec<String>>>,
    failed: Mutex<Option<String>>,
    /// Blob writes still to come; the writer that brings it to zero finishes the file.
    remaining: AtomicU32,
    /// Times (and late mode bits) are set.
    finished: AtomicBool,
    /// Metadata problems met when finishing through the handle.
    notes: Mutex<Vec<String>>,
}

impl TargetFile {
    /// Opens the file for writing. The first call creates it with its final length, owner,
    /// extended attributes and mode, on the open handle (no path lookups); later calls reopen.
    fn open(&self, host: &Host) -> std::io::Result<File> {
        let mut fresh = None;
        let created = self.created.get_or_init(|| {
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(self.node.mode & 0o777)
                .open(self.write_path())?;
            // The final length up front: holes at the end exist without a write.
            file.set_len(self.node.size)?;
            let problems = apply_to_new_file(&file, &self.node, host);
            fresh = Some(file);
            Ok(problems)
        });
        match (created, fresh) {
            (Err(e), _) => Err(std::io::Error::new(e.kind(), e.to_string())),
            (Ok(_), Some(file)) => Ok(file),
            (Ok(_), None) => OpenOptions::new().write(true).open(self.write_path()),
        }
    }

    /// Where the content is written.
    fn write_path(&self) -> &Path {
        self.temp.as_deref().unwrap_or(&self.path)
    }
}

/// Where one blob goes.
#[derive(Clone, Copy)]
struct Place {
    file: u32,
    offset: u64,
}

struct BlobNeed {
    id: Id,
    offset: u32,
    stored_len: u32,
    places: Vec<Place>,
}

struct Plan {
    dirs: Vec<(PathBuf, Node)>,
    others: Vec<(PathBuf, Node)>,
    files: Vec<TargetFile>,
    hardlinks: Vec<(PathBuf, u32)>,
    by_pack: HashMap<u32, Vec<BlobNeed>>,
    warnings: Vec<Warning>,
    bytes: u64,
}

struct Includes(Option<GlobSet>);

impl Includes {
    fn new(patterns: &[String]) -> Result<Includes> {
        if patterns.is_empty() {
            return Ok(Includes(None));
        }
        let mut set = GlobSetBuilder::new();
        for pattern in patterns {
            let trimmed = pattern.trim_end_matches('/');
            let anchored = if trimmed.starts_with('/') {
                trimmed.to_string()
            } else {
                format!("/{trimmed}")
            };
            let glob = GlobBuilder::new(&anchored)
                .literal_separator(true)
                .build()
                .map_err(|e| Error::Pattern {
                    pattern: pattern.clone(),
                    reason: e.to_string(),
                })?;
            set.add(glob);
        }
        let set = set.build().map_err(|e| Error::Pattern {
            pattern: patterns.join(" "),
            reason: e.to_string(),
        })?;
        Ok(Includes(Some(set)))
    }

    fn matches(&self, snapshot_path: &Path) -> bool {
        self.0
            .as_ref()
            .is_none_or(|set| set.is_match(snapshot_path))
    }
}

struct Planner<'a> {
    repo: &'a IndexedRepository,
    overwrite: bool,
    delta: bool,
    /// With `delta`: files whose place holds a regular file, to compare after the walk.
    candidates: Vec<(u32, std::fs::Metadata)>,
    target: &'a Path,
    includes: Includes,
    plan: Plan,
    blob_places: IdMap<Vec<Place>>,
    links: HashMap<(u64, u64), u32>,
}

impl Planner<'_> {
    fn warn(&mut self, path: &Path, message: String) {
        self.plan.warnings.push(Warning {
            path: path.to_path_buf(),
            message,
        });
    }

    /// Creates the directories leading to `dir` that the include filter skipped so far.
    /// With `overwrite` or `delta`, a non-directory in the way (a file, a symlink) is removed
    /// first, so nothing is restored through a symlink left in the target.
    fn ensure_dir(&mut self, dir: &Path) -> Result<()> {
        match std::fs::symlink_metadata(dir) {
            Ok(meta) if meta.is_dir() => return Ok(()),
            Ok(meta) if self.overwrite || self.delta => remove_entry(dir, &meta)?,
            _ => {}
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))
    }

    /// With `delta`: removes temporary files an earlier, interrupted delta restore left in
    /// `dir` (a killed restore cannot clean up after itself, and nothing else would). Only
    /// names of exactly this restore's pattern that the snapshot does not hold are touched.
    fn remove_stale_temps(&mut self, dir: &Path, nodes: &[Node]) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if !is_temp_name(name.as_bytes()) || nodes.iter().any(|n| n.name.0 == name.as_bytes()) {
                continue;
            }
            let path = entry.path();
            let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
            if is_file && let Err(e) = std::fs::remove_file(&path) {
                self.warn(&path, format!("cannot remove a stale temporary file: {e}"));
            }
        }
    }

    /// Walks one tree. `included` is true when an ancestor matched the include filter.
    fn walk(
        &mut self,
        tree_id: &Id,
        snapshot_dir: &Path,
        target_dir: &Path,
        included: bool,
    ) -> Result<bool> {
        let tree = self.repo.read_tree(tree_id)?;
        if self.delta {
            self.remove_stale_temps(target_dir, &tree.nodes);
        }
        let mut any = false;
        for node in tree.nodes {
            let name = OsStr::from_bytes(&node.name.0);
            if name.is_empty() || name == "." || name == ".." || node.name.0.contains(&b'/') {
                self.warn(
                    &snapshot_dir.join(name),
                    "unsafe name in snapshot, skipped".to_string(),
                );
                continue;
            }
            let snapshot_path = snapshot_dir.join(name);
            let target_path = target_dir.join(name);
            let selected = included || self.includes.matches(&snapshot_path);
            if node.kind == NodeKind::Dir {
                let Some(subtree) = node.subtree else {
                    self.warn(
                        &snapshot_path,
                        "directory without a tree, skipped".to_string(),
                    );
                    continue;
                };
                if selected {
                    self.ensure_dir(&target_path)?;
                }
                let inner = self.walk(&subtree, &snapshot_path, &target_path, selected)?;
                if selected || inner {
                    self.plan.dirs.push((target_path, node));
                    any = true;
                }
                continue;
            }
            if !selected {
                continue;
            }
            // An included directory was created by the caller, and once `any` is set the
            // directory exists too: one check per directory, not per file.
            if !any && !included {
                self.ensure_dir(target_dir)?;
            }
            any = true;
            self.leaf(node, target_path)?;
        }
        Ok(any)
    }

    fn leaf(&mut self, node: Node, path: PathBuf) -> Result<()> {
        // Without --overwrite or --delta the target was empty, so there is nothing in the way.
        let mut existing = None;
        if (self.overwrite || self.delta)
            && let Ok(meta) = std::fs::symlink_metadata(&path)
        {
            if self.delta && node.kind == NodeKind::File && meta.is_file() {
                // Compared after the walk, and replaced by a rename if it differs.
                existing = Some(meta);
            } else {
                remove_entry(&path, &meta)?;
            }
        }
        match node.kind {
            NodeKind::File => self.file(node, path, existing),
            NodeKind::Symlink => {
                let target = OsStr::from_bytes(node.target.as_ref().map_or(&[][..], |t| &t.0[..]));
                if let Err(e) = std::os::unix::fs::symlink(target, &path) {
                    self.warn(&path, format!("cannot create symlink: {e}"));
                } else {
                    self.plan.others.push((path, node));
                }
                Ok(())
            }
            NodeKind::Fifo | NodeKind::CharDevice | NodeKind::BlockDevice => {
                let (ty, dev) = match node.kind {
                    NodeKind::Fifo => (rustix::fs::FileType::Fifo, 0),
                    NodeKind::CharDevice => (
                        rustix::fs::FileType::CharacterDevice,
                        node.rdev.unwrap_or(0),
                    ),
                    _ => (rustix::fs::FileType::BlockDevice, node.rdev.unwrap_or(0)),
                };
                let mode = rustix::fs::Mode::from_raw_mode(node.mode & 0o777);
                match rustix::fs::mknodat(rustix::fs::CWD, &path, ty, mode, dev) {
                    Ok(()) => self.plan.others.push((path, node)),
                    Err(e) => self.warn(
                        &path,
                        format!("cannot create {:?}: {e} (devices need root)", node.kind),
                    ),
                }
                Ok(())
            }
            NodeKind::Socket => {
                self.warn(&path, "sockets cannot be restored, skipped".to_string());
                Ok(())
            }
            NodeKind::Dir => unreachable!("directories are walked"),
        }
    }

    fn file(
        &mut self,
        node: Node,
        path: PathBuf,
        existing: Option<std::fs::Metadata>,
    ) -> Result<()> {
        if node.links > 1
            && let Some(&first) = self.links.get(&(node.device, node.inode))
        {
            if existing.is_some() {
                std::fs::remove_file(&path).map_err(|e| Error::io("replace", &path, e))?;
            }
            self.plan.hardlinks.push((path, first));
            return Ok(());
        }
        let index = u32::try_from(self.plan.files.len()).expect("fewer than 4 billion files");
        if node.links > 1 {
            self.links.insert((node.device, node.inode), index);
        }
        let missing = node
            .content
            .iter()
            .find(|id| self.repo.index().get(id).is_none());
        let blobs = if let Some(id) = missing {
            self.warn(
                &path,
                format!("blob {id} is missing from the repository; the file is incomplete"),
            );
            // Never finished through a handle; written as far as the blobs go.
            let mut offset = 0u64;
            for id in &node.content {
                let Some(location) = self.repo.index().get(id) else {
                    break;
                };
                self.blob_places.entry(*id).or_default().push(Place {
                    file: index,
                    offset,
                });
                offset += u64::from(location.raw_len);
            }
            u32::MAX
        } else if let Some(meta) = existing {
            // Places are added once the comparison says which chunks are needed.
            self.candidates.push((index, meta));
            0
        } else {
            self.plan.bytes += self.place_blobs(index, &node, None);
            node.content.len() as u32
        };
        let temp = self.delta.then(|| {
            let dir = path.parent().unwrap_or(Path::new("."));
            dir.join(format!(".lifeboat-tmp-{}-{index}", std::process::id()))
        });
        self.plan.files.push(TargetFile {
            path,
            temp,
            node,
            reused: false,
            local_bytes: 0,
            created: OnceLock::new(),
            failed: Mutex::new(None),
            remaining: AtomicU32::new(blobs),
            finished: AtomicBool::new(false),
            notes: Mutex::new(Vec::new()),
        });
        Ok(())
    }

    /// Adds the places of file `index`'s blobs (skipping those `skip` marks); returns their
    /// bytes. All blobs are in the index.
    fn place_blobs(&mut self, index: u32, node: &Node, skip: Option<&[bool]>) -> u64 {
        let mut offset = 0u64;
        let mut needed = 0u64;
        for (i, id) in node.content.iter().enumerate() {
            let len = u64::from(self.repo.index().get(id).expect("checked").raw_len);
            if !skip.is_some_and(|s| s[i]) {
                self.blob_places.entry(*id).or_default().push(Place {
                    file: index,
                    offset,
                });
                needed += len;
            }
            offset += len;
        }
        needed
    }

    /// With `delta`: compares the existing files with the snapshot (on `workers` threads)
    /// and plans what is still needed.
    fn compare_existing(
        &mut self,
        host: &Host,
        workers: usize,
        trust_mtime: bool,
        progress: &RestoreProgress,
    ) {
        let candidates = std::mem::take(&mut self.candidates);
        let next = std::sync::atomic::AtomicUsize::new(0);
        let results: Vec<Mutex<Option<Comparison>>> =
            candidates.iter().map(|_| Mutex::new(None)).collect();
        let (repo, files) = (self.repo, &self.plan.files);
        std::thread::scope(|scope| {
            for _ in 0..workers.min(candidates.len()) {
                scope.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some((index, meta)) = candidates.get(i) else {
                            break;
                        };
                        let file = &files[*index as usize];
                        let outcome = compare(repo, host, file, meta, trust_mtime, progress);
                        *results[i].lock() = Some(outcome);
                    }
                });
            }
        });
        for ((index, _), result) in candidates.iter().zip(results) {
            let comparison = result.into_inner().expect("every candidate is compared");
            let node = self.plan.files[*index as usize].node.clone();
            let file = &mut self.plan.files[*index as usize];
            match comparison {
                Comparison::Same => file.reused = true,
                Comparison::Differs { matched, local } => {
                    file.local_bytes = local;
                    let needed = matched.iter().filter(|m| !**m).count() as u32;
                    *file.remaining.get_mut() = needed;
                    self.plan.bytes += self.place_blobs(*index, &node, Some(&matched));
                }
            }
        }
    }

    fn finish(mut self) -> Plan {
        let index = self.repo.index();
        for (id, places) in self.blob_places {
            let location = index.get(&id).expect("planned blobs are indexed");
            self.plan
                .by_pack
                .entry(location.pack)
                .or_default()
                .push(BlobNeed {
                    id,
                    offset: location.offset,
                    stored_len: location.stored_len,
                    places,
                });
        }
        self.plan
    }
}

fn remove_entry(path: &Path, meta: &std::fs::Metadata) -> Result<()> {
    if meta.is_dir() {
        std::fs::remove_dir_all(path).map_err(|e| Error::io("replace", path, e))
    } else {
        std::fs::remove_file(path).map_err(|e| Error::io("replace", path, e))
    }
}

/// What an existing file holds compared with the snapshot's content list.
enum Comparison {
    /// Exactly the snapshot's content.
    Same,
    /// Something else. `matched[i]` is set when blob `i`'s range was copied from the old file
    /// into the file's temporary file (`local` bytes in all).
    Differs { matched: Vec<bool>, local: u64 },
}

/// Compares the regular file at `file.path` with `file.node`'s content, range by range with
/// the repository's keyed blob hash. When it differs, copies the matching ranges into the
/// file's temporary file (created here), so only the others need to be fetched.
fn compare(
    repo: &IndexedRepository,
    host: &Host,
    file: &TargetFile,
    meta: &std::fs::Metadata,
    trust_mtime: bool,
    progress: &RestoreProgress,
) -> Comparison {
    use std::os::unix::fs::MetadataExt;
    let node = &file.node;
    let nothing = || Comparison::Differs {
        matched: vec![false; node.content.len()],
        local: 0,
    };
    if trust_mtime
        && meta.len() == node.size
        && meta.mtime() == node.mtime.sec
        && meta.mtime_nsec() == i64::from(node.mtime.nsec)
    {
        return Comparison::Same;
    }
    let Ok(old) = File::open(&file.path) else {
        return nothing();
    };
    let Ok(len) = old.metadata().map(|m| m.len()) else {
        return nothing();
    };
    let mut ranges = Vec::with_capacity(node.content.len());
    let mut offset = 0u64;
    for id in &node.content {
        let raw = u64::from(repo.index().get(id).expect("checked").raw_len);
        ranges.push((offset, raw));
        offset += raw;
    }
    let mut buffer = Vec::new();
    let mut matched = Vec::with_capacity(ranges.len());
    for (id, &(offset, raw)) in node.content.iter().zip(&ranges) {
        let same = read_range(&old, len, &mut buffer, offset, raw)
            .is_some_and(|data| repo.key().blob_id(data) == *id);
        progress.bytes_checked.fetch_add(raw, Ordering::Relaxed);
        matched.push(same);
    }
    if len == node.size && matched.iter().all(|m| *m) {
        return Comparison::Same;
    }
    if !matched.iter().any(|m| *m) {
        return nothing();
    }
    // Copy the matching ranges into the new file, read and checked again (the page cache
    // has them; checking again guards against a file changed since the first read). A range
    // that cannot be copied is fetched instead; the file's creation error, if any, surfaces
    // when the restore finishes it.
    let Ok(new) = file.open(host) else {
        return nothing();
    };
    let mut local = 0;
    for ((same, &(offset, raw)), id) in matched.iter_mut().zip(&ranges).zip(&node.content) {
        if !*same {
            continue;
        }
        let copied = match read_range(&old, len, &mut buffer, offset, raw) {
            Some(data) if repo.key().blob_id(data) == *id => {
                write_sparse(&new, data, offset).is_ok()
            }
            _ => false,
        };
        if copied {
            local += raw;
        } else {
            *same = false;
        }
    }
    Comparison::Differs { matched, local }
}

/// Reads `raw` bytes at `offset` of a file `len` bytes long; `None` past its end or on error.
fn read_range<'b>(
    file: &File,
    len: u64,
    buffer: &'b mut Vec<u8>,
    offset: u64,
    raw: u64,
) -> Option<&'b [u8]> {
    if offset + raw > len {
        return None;
    }
    buffer.resize(raw as usize, 0);
    file.read_exact_at(buffer, offset).ok()?;
    Some(&buffer[..])
}

/// Reads close together are merged: one request for up to this much unneeded data in between
/// is cheaper than two requests.
const MAX_GAP: u64 = 1 << 20;
/// Upper bound of one range read.
const MAX_READ: u64 = 4 << 20;

/// Writes `data` at `offset`, skipping 4 KiB blocks of zeros so holes stay holes.
fn write_sparse(file: &File, data: &[u8], offset: u64) -> std::io::Result<()> {
    const BLOCK: usize = 4096;
    let mut start = 0;
    while start < data.len() {
        let end = (start + BLOCK).min(data.len());
        if data[start..end].iter().all(|&b| b == 0) {
            start = end;
            continue;
        }
        // Extend over following non-zero blocks to write in one call.
        let mut run_end = end;
        while run_end < data.len() {
            let next = (run_end + BLOCK).min(data.len());
            if data[run_end..next].iter().all(|&b| b == 0) {
                break;
            }
            run_end = next;
        }
        file.write_all_at(&data[start..run_end], offset + start as u64)?;
        start = run_end;
    }
    Ok(())
}

struct Executor<'a> {
    repo: &'a IndexedRepository,
    host: &'a Host,
    files: &'a [TargetFile],
    progress: &'a RestoreProgress,
    blobs_read: AtomicU64,
}

impl Executor<'_> {
    fn fail_all(&self, need: &BlobNeed, message: &str) {
        for place in &need.places {
            let mut slot = self.files[place.file as usize].failed.lock();
            slot.get_or_insert_with(|| message.to_string());
        }
    }

    fn pack(&self, pack: u32, mut needs: Vec<BlobNeed>) {
        let info = *self
            .repo
            .index()
            .packs()
            .get(pack as usize)
            .expect("planned pack");
        let key = pack_key(&info.id);
        needs.sort_by_key(|n| n.offset);
        let mut i = 0;
        while i < needs.len() {
            // Grow a range over following blobs while gaps and total size stay small.
            let start = u64::from(needs[i].offset);
            let mut end = start + u64::from(needs[i].stored_len);
            let mut j = i + 1;
            while j < needs.len() {
                let next_start = u64::from(needs[j].offset);
                let next_end = next_start + u64::from(needs[j].stored_len);
                if next_start > end + MAX_GAP || next_end - start > MAX_READ {
                    break;
                }
                end = end.max(next_end);
                j += 1;
            }
            match self.repo.storage().get_range(&key, start..end) {
                Ok(bytes) => {
                    for need in &needs[i..j] {
                        let from = (u64::from(need.offset) - start) as usize;
                        let to = from + need.stored_len as usize;
                        if to > bytes.len() {
                            self.fail_all(
                                need,
                                &format!("pack {key} is truncated: blob {} is cut off", need.id),
                            );
                            continue;
                        }
                        self.blob(&info.salt, need, &bytes[from..to], &key);
                    }
                }
                Err(e) if j - i > 1 => {
                    // One damaged blob (a truncated pack, say) must not cost its neighbours:
                    // retry the blobs of the range one by one.
                    tracing::debug!("range read of {key} failed ({e}); reading blobs singly");
                    for need in &needs[i..j] {
                        let start = u64::from(need.offset);
                        match self
                            .repo
                            .storage()
                            .get_range(&key, start..start + u64::from(need.stored_len))
                        {
                            Ok(bytes) if bytes.len() == need.stored_len as usize => {
                                self.blob(&info.salt, need, &bytes, &key)
                            }
                            Ok(_) => self.fail_all(
                                need,
                                &format!("pack {key} is truncated: blob {} is cut off", need.id),
                            ),
                            Err(e) => self.fail_all(need, &e.to_string()),
                        }
                    }
                }
                Err(e) => self.fail_all(&needs[i], &e.to_string()),
            }
            i = j;
        }
        self.progress.packs_done.fetch_add(1, Ordering::Relaxed);
    }

    fn blob(&self, salt: &[u8; 32], need: &BlobNeed, sealed: &[u8], pack: &str) {
        let location = self
            .repo
            .index()
            .get(&need.id)
            .expect("planned blobs are indexed");
        let entry = self.repo.index().entry(need.id, location);
        let what = format!("blob {} in pack {pack}", need.id);
        let data = match decode_blob(self.repo.key(), salt, &entry, sealed, &what) {
            Ok(data) => data,
            Err(e) => return self.fail_all(need, &e.to_string()),
        };
        self.blobs_read.fetch_add(1, Ordering::Relaxed);
        for place in &need.places {
            let target = &self.files[place.file as usize];
            let result = target.open(self.host).and_then(|file| {
                write_sparse(&file, &data, place.offset)?;
                if target.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                    // The last write: finish through the handle we hold, saving path lookups.
                    let problems = finish_open_file(&file, &target.node, self.host);
                    target.notes.lock().extend(problems);
                    target.finished.store(true, Ordering::Release);
                }
                Ok(())
            });
            match result {
                Ok(()) => {
                    self.progress
                        .bytes_done
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    target
                        .failed
                        .lock()
                        .get_or_insert_with(|| format!("cannot write: {e}"));
                }
            }
        }
    }
}

fn is_empty_dir(path: &Path) -> Result<bool> {
    match std::fs::read_dir(path) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(Error::io("read restore target", path, e)),
    }
}

/// Restores `snapshot` (or the parts matching `options.include`) into `target`.
pub fn restore(
    repo: &IndexedRepository,
    snapshot: &Snapshot,
    target: &Path,
    options: &RestoreOptions,
    progress: &RestoreProgress,
) -> Result<RestoreSummary> {
    if !options.overwrite && !options.delta && !is_empty_dir(target)? {
        return Err(Error::TargetNotEmpty(target.to_path_buf()));
    }
    std::fs::create_dir_all(target).map_err(|e| Error::io("create restore target", target, e))?;
    let workers = if options.workers == 0 {
        4
    } else {
        options.workers
    };
    let host = Host::current();
    let as_root = host.root;
    let mut planner = Planner {
        repo,
        overwrite: options.overwrite,
        delta: options.delta,
        candidates: Vec::new(),
        target,
        includes: Includes::new(&options.include)?,
        plan: Plan {
            dirs: Vec::new(),
            others: Vec::new(),
            files: Vec::new(),
            hardlinks: Vec::new(),
            by_pack: HashMap::new(),
            warnings: Vec::new(),
            bytes: 0,
        },
        blob_places: IdMap::default(),
        links: HashMap::new(),
    };
    let root_target = planner.target.to_path_buf();
    planner.walk(&snapshot.tree, Path::new("/"), &root_target, false)?;
    planner.compare_existing(&host, workers, options.trust_mtime, progress);
    let mut plan = planner.finish();
    progress.bytes_total.store(plan.bytes, Ordering::Relaxed);

    let executor = Executor {
        repo,
        host: &host,
        files: &plan.files,
        progress,
        blobs_read: AtomicU64::new(0),
    };
    let mut packs: Vec<(u32, Vec<BlobNeed>)> = plan.by_pack.drain().collect();
    packs.sort_by_key(|(pack, _)| *pack);
    let queue = Mutex::new(packs);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let Some((pack, needs)) = queue.lock().pop() else {
                        break;
                    };
                    executor.pack(pack, needs);
                }
            });
        }
    });

    let mut summary = RestoreSummary {
        blobs_read: executor.blobs_read.load(Ordering::Relaxed),
        warnings: std::mem::take(&mut plan.warnings),
        ..Default::default()
    };
    for file in &plan.files {
        if file.reused {
            summary.files += 1;
            summary.bytes += file.node.size;
            summary.reused_files += 1;
            summary.reused_bytes += file.node.size;
            summary.note(&file.path, remove_extra_user_xattrs(&file.path, &file.node));
            summary.note(&file.path, apply_metadata(&file.path, &file.node, as_root));
            continue;
        }
        // Files of holes only (and empty files) had no write to create them.
        if file.created.get().is_none()
            && let Err(e) = file.open(&host)
        {
            file.failed
                .lock()
                .get_or_insert_with(|| format!("cannot create: {e}"));
        }
        if let Some(Err(e)) = file.created.get() {
            file.failed
                .lock()
                .get_or_insert_with(|| format!("cannot create: {e}"));
        }
        if let Some(message) = file.failed.lock().take() {
            // An existing file stays as it was rather than being replaced by a partial one.
            if let Some(temp) = &file.temp {
                let _ = std::fs::remove_file(temp);
            }
            summary.note(&file.path, [message]);
            continue;
        }
        if let Some(temp) = &file.temp
            && let Err(e) = std::fs::rename(temp, &file.path)
        {
            let _ = std::fs::remove_file(temp);
            summary.note(
                &file.path,
                [format!("cannot move {} into place: {e}", temp.display())],
            );
            continue;
        }
        summary.files += 1;
        summary.bytes += file.node.size;
        summary.written_files += 1;
        summary.written_bytes += file.node.size;
        summary.local_bytes += file.local_bytes;
        let created = file.created.get().and_then(|c| c.as_ref().ok());
        summary.note(&file.path, created.into_iter().flatten().cloned());
        if file.finished.load(Ordering::Acquire) {
            summary.note(&file.path, std::mem::take(&mut *file.notes.lock()));
        } else {
            summary.note(&file.path, finish_file(&file.path, &file.node, as_root));
        }
    }
    for (path, first) in &plan.hardlinks {
        let original = &plan.files[*first as usize].path;
        match std::fs::hard_link(original, path) {
            Ok(()) => summary.hardlinks += 1,
            Err(e) => summary.warnings.push(Warning {
                path: path.clone(),
                message: format!("cannot link to {}: {e}", original.display()),
            }),
        }
    }
    for (path, node) in &plan.others {
        summary.others += 1;
        summary.note(path, apply_metadata(path, node, as_root));
    }
    // `dirs` is in post-order (children before parents), so a directory's times are set after
    // everything inside it is finished.
    for (path, node) in &plan.dirs {
        summary.dirs += 1;
        summary.note(path, apply_metadata(path, node, as_root));
    }
    Ok(summary)
}

impl RestoreSummary {
    fn note(&mut self, path: &Path, problems: impl IntoIterator<Item = String>) {
        self.warnings
            .extend(problems.into_iter().map(|message| Warning {
                path: path.to_path_buf(),
                message,
            }));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_delta_temporary_names_count_as_temporary() {
        assert!(super::is_temp_name(b".lifeboat-tmp-123-0"));
        assert!(!super::is_temp_name(b".lifeboat-tmp-123"));
        assert!(!super::is_temp_name(b".lifeboat-tmp-123-x"));
        assert!(!super::is_temp_name(b".lifeboat-tmp--1"));
        assert!(!super::is_temp_name(b".lifeboat-tmp-1-2-3"));
        assert!(!super::is_temp_name(b"lifeboat-tmp-1-2"));
    }
}
