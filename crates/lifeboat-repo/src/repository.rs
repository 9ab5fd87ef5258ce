//! Opening, creating and reading a repository.
//!
//! [`Repository`] is an opened repository (key unwrapped, config read). Operations that need blob
//! locations live on [`IndexedRepository`], which exists only once the index is loaded, so
//! reading a blob before the index is there does not compile.

use std::sync::Arc;

use bytes::Bytes;
use lifeboat_storage::Storage;
use serde::{Deserialize, Serialize};

use crate::chunker::{Chunker, ChunkerParams};
use crate::crypto::{ContentKeys, MasterKey, ObjectKeys, generate_secret};
use crate::id::IdSet;
use crate::index::{Index, IndexFile, PackRecord};
use crate::keyfile::{KdfParams, KeyFile};
use crate::object::{self, ObjectKind};
use crate::pack::{self, BlobType, PackEntry};
use crate::snapshot::{Snapshot, SnapshotEntry};
use crate::tree::Tree;
use crate::{Error, Id, Result};

/// Storage key of the config object.
pub const CONFIG_KEY: &str = "config";
/// Prefix of key files.
pub const KEYS_PREFIX: &str = "keys/";
/// Prefix of packs.
pub const DATA_PREFIX: &str = "data/";
/// Prefix of index objects.
pub const INDEX_PREFIX: &str = "index/";
/// Prefix of snapshots.
pub const SNAPSHOTS_PREFIX: &str = "snapshots/";
/// Where database sources keep their journals: `streams/<stream>/<name>`.
pub const STREAMS_PREFIX: &str = "streams/";

/// Storage key of a pack: packs are spread over 256 directories by their first id byte.
pub fn pack_key(id: &Id) -> String {
    let hex = id.to_hex();
    format!("{DATA_PREFIX}{}/{hex}", &hex[..2])
}

/// Repository format version this build writes.
pub const REPO_VERSION: u32 = 1;

/// Parameters fixed when a repository is created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoConfig {
    /// Format version.
    pub version: u32,
    /// Random repository id.
    pub id: Id,
    /// Creation time.
    pub created: String,
    /// Chunk size bounds.
    pub chunker: ChunkerParams,
    /// Target pack size in bytes.
    pub pack_size: u32,
    /// zstd level for blobs.
    pub compression_level: i32,
    /// Blob-id key and chunker seed (secret: shown redacted by `lifeboat cat config`).
    pub content_keys: ContentKeys,
}

/// Options of [`Repository::init`].
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Key-derivation costs for the first key.
    pub kdf: KdfParams,
    /// Chunk size bounds.
    pub chunker: ChunkerParams,
    /// Target pack size in bytes.
    pub pack_size: u32,
    /// zstd level.
    pub compression_level: i32,
    /// Recorded in the key file.
    pub hostname: String,
    /// Recorded in the key file.
    pub username: String,
    /// Content keys to share with an existing repository (so blob ids agree and copies between
    /// the two move only missing blobs); `None` generates fresh ones.
    pub content_keys: Option<ContentKeys>,
}

/// Default target pack size: 16 MiB.
pub const DEFAULT_PACK_SIZE: u32 = 16 * 1024 * 1024;
/// Default zstd level.
pub const DEFAULT_COMPRESSION_LEVEL: i32 = 3;

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            kdf: KdfParams::default(),
            chunker: ChunkerParams::default(),
            pack_size: DEFAULT_PACK_SIZE,
            compression_level: DEFAULT_COMPRESSION_LEVEL,
            hostname: String::new(),
            username: String::new(),
            content_keys: None,
        }
    }
}

/// A snapshot object that could not be read, and why.
pub type UnreadableSnapshot = (Id, Error);

/// The index objects of a repository, as [`Repository::read_index_files`] found them.
#[derive(Debug, Clone, Default)]
pub struct IndexFiles {
    /// Every name listed, superseded or not.
    pub listed: Vec<Id>,
    /// The objects in force, with their contents.
    pub in_force: Vec<(Id, IndexFile)>,
}

/// An opened repository.
#[derive(Clone)]
pub struct Repository {
    storage: Storage,
    key: Arc<MasterKey>,
    config: RepoConfig,
    key_id: Id,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("location", &self.storage.location())
            .field("id", &self.config.id)
            .finish()
    }
}

impl Repository {
    /// Creates a repository in empty storage.
    pub fn init(storage: Storage, password: &[u8], options: &InitOptions) -> Result<Repository> {
        if storage.exists(CONFIG_KEY)? {
            return Err(Error::AlreadyInitialised {
                location: storage.location().to_string(),
            });
        }
        let content_keys = options
            .content_keys
            .clone()
            .unwrap_or_else(ContentKeys::generate);
        let key = MasterKey::new(&generate_secret(), content_keys.clone());
        let file = KeyFile::wrap(
            &key,
            password,
            options.kdf,
            &options.hostname,
            &options.username,
        )?;
        let bytes = file.to_bytes();
        let key_id = Id::of_stored_bytes(&bytes);
        storage.put(&format!("{KEYS_PREFIX}{key_id}"), Bytes::from(bytes))?;
        let config = RepoConfig {
            version: REPO_VERSION,
            id: Id(rand::random()),
            created: jiff::Timestamp::now().to_string(),
            chunker: options.chunker,
            pack_size: options.pack_size,
            compression_level: options.compression_level,
            content_keys,
        };
        let plain =
            zeroize::Zeroizing::new(serde_json::to_vec_pretty(&config).expect("config serialises"));
        let sealed = object::seal(key.objects(), ObjectKind::Config, &plain, 3);
        // The config is written last and only if absent: it is what makes the location a
        // repository, and two concurrent `init`s must not both succeed.
        storage
            .put_new(CONFIG_KEY, Bytes::from(sealed))
            .map_err(|e| match e {
                lifeboat_storage::StorageError::AlreadyExists { location, .. } => {
                    Error::AlreadyInitialised { location }
                }
                other => Error::Storage(other),
            })?;
        Ok(Repository {
            storage,
            key: Arc::new(key),
            config,
            key_id,
        })
    }

    /// Opens a repository with a password.
    pub fn open(storage: Storage, password: &[u8]) -> Result<Repository> {
        let sealed_config = match storage.get(CONFIG_KEY) {
            Ok(bytes) => bytes,
            Err(e) if e.is_not_found() => {
                return Err(Error::NotARepository {
                    location: storage.location().to_string(),
                });
            }
            Err(e) => return Err(e.into()),
        };
        let keys = storage.list(KEYS_PREFIX)?;
        let mut files = Vec::with_capacity(keys.len());
        for object in &keys {
            let bytes = storage.get(&object.key)?;
            files.push((object, KeyFile::from_bytes(&bytes, &object.key)?));
        }
        // Machine keys cost nothing to try, password keys an argon2id derivation each.
        files.sort_by_key(|(_, file)| !file.is_machine());
        let mut opened = None;
        for (object, file) in &files {
            if let Some(secret) = file.unwrap_secret(password, &object.key)? {
                let name = object.key.trim_start_matches(KEYS_PREFIX);
                opened = Some((secret, Id::from_hex(name).unwrap_or_default()));
                break;
            }
        }
        let Some((secret, key_id)) = opened else {
            return Err(Error::WrongPassword {
                keys: keys.len(),
                location: storage.location().to_string(),
            });
        };
        let plain = zeroize::Zeroizing::new(object::open(
            &ObjectKeys::from_secret(&secret),
            ObjectKind::Config,
            &sealed_config,
            CONFIG_KEY,
        )?);
        let config: RepoConfig = serde_json::from_slice(&plain)
            .map_err(|e| Error::malformed(CONFIG_KEY, e.to_string()))?;
        let key = MasterKey::new(&secret, config.content_keys.clone());
        if config.version > REPO_VERSION {
            return Err(Error::UnsupportedVersion {
                what: "repository".to_string(),
                found: config.version,
                supported: REPO_VERSION,
            });
        }
        Ok(Repository {
            storage,
            key: Arc::new(key),
            config,
            key_id,
        })
    }

    /// The storage behind the repository.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The master key.
    pub fn key(&self) -> &Arc<MasterKey> {
        &self.key
    }

    /// Parameters fixed at creation.
    pub fn config(&self) -> &RepoConfig {
        &self.config
    }

    /// Name of the key file that opened the repository.
    pub fn key_id(&self) -> Id {
        self.key_id
    }

    /// Every key file with its id.
    pub fn keys(&self) -> Result<Vec<(Id, KeyFile)>> {
        let mut keys = Vec::new();
        for id in self.list_ids(KEYS_PREFIX)? {
            let key = format!("{KEYS_PREFIX}{id}");
            keys.push((id, KeyFile::from_bytes(&self.storage.get(&key)?, &key)?));
        }
        Ok(keys)
    }

    /// Adds a key file that opens the repository with `password`; returns its id.
    pub fn add_key(
        &self,
        password: &[u8],
        kdf: KdfParams,
        hostname: &str,
        username: &str,
    ) -> Result<Id> {
        let file = KeyFile::wrap(&self.key, password, kdf, hostname, username)?;
        let bytes = file.to_bytes();
        let id = Id::of_stored_bytes(&bytes);
        self.storage
            .put(&format!("{KEYS_PREFIX}{id}"), Bytes::from(bytes))?;
        Ok(id)
    }

    /// Adds a machine key (see [`crate::keyfile`]): returns its id and the token that opens it.
    pub fn add_machine_key(
        &self,
        hostname: &str,
        username: &str,
    ) -> Result<(Id, zeroize::Zeroizing<String>)> {
        let token = crate::keyfile::generate_machine_token();
        let file = KeyFile::wrap_machine(&self.key, &token, hostname, username)?;
        let bytes = file.to_bytes();
        let id = Id::of_stored_bytes(&bytes);
        self.storage
            .put(&format!("{KEYS_PREFIX}{id}"), Bytes::from(bytes))?;
        Ok((id, token))
    }

    /// Removes a key file. Refuses to remove the last one, which would lock everyone out.
    pub fn remove_key(&self, id: &Id) -> Result<()> {
        let ids = self.list_ids(KEYS_PREFIX)?;
        if !ids.contains(id) {
            return Err(Error::malformed(format!("key {id}"), "no such key"));
        }
        if ids.len() == 1 {
            return Err(Error::malformed(
                format!("key {id}"),
                "it is the last key of the repository; add another key first",
            ));
        }
        Ok(self.storage.delete(&format!("{KEYS_PREFIX}{id}"))?)
    }

    /// The content-defined chunker of this repository.
    pub fn chunker(&self) -> Chunker {
        Chunker::new(self.config.chunker, self.key.chunker_seed())
    }

    /// Seals and stores a standalone object under `prefix`, returning its name.
    pub(crate) fn save_object(&self, prefix: &str, kind: ObjectKind, plain: &[u8]) -> Result<Id> {
        let sealed = object::seal(
            self.key.objects(),
            kind,
            plain,
            self.config.compression_level,
        );
        let id = Id::of_stored_bytes(&sealed);
        self.storage
            .put(&format!("{prefix}{id}"), Bytes::from(sealed))?;
        Ok(id)
    }

    /// Reads and opens a standalone object, checking that its bytes match its name.
    pub(crate) fn load_object(&self, prefix: &str, kind: ObjectKind, id: &Id) -> Result<Vec<u8>> {
        let key = format!("{prefix}{id}");
        let sealed = self.storage.get(&key)?;
        if Id::of_stored_bytes(&sealed) != *id {
            return Err(Error::corrupt(key));
        }
        object::open(self.key.objects(), kind, &sealed, &key)
    }

    /// Ids of objects under a prefix; names that are not ids are ignored.
    pub fn list_ids(&self, prefix: &str) -> Result<Vec<Id>> {
        Ok(self
            .storage
            .list(prefix)?
            .iter()
            .filter_map(|o| o.key.rsplit('/').next().and_then(Id::from_hex))
            .collect())
    }

    /// Stores a snapshot; this is the last write of a backup.
    pub fn save_snapshot(&self, snapshot: &Snapshot) -> Result<Id> {
        let plain = serde_json::to_vec(snapshot).expect("snapshot serialises");
        self.save_object(SNAPSHOTS_PREFIX, ObjectKind::Snapshot, &plain)
    }

    /// Removes a snapshot. Its data stays until prune finds it unreferenced.
    pub fn forget_snapshot(&self, id: &Id) -> Result<()> {
        Ok(self.storage.delete(&format!("{SNAPSHOTS_PREFIX}{id}"))?)
    }

    /// Loads one snapshot.
    pub fn load_snapshot(&self, id: &Id) -> Result<Snapshot> {
        let plain = self.load_object(SNAPSHOTS_PREFIX, ObjectKind::Snapshot, id)?;
        serde_json::from_slice(&plain)
            .map_err(|e| Error::malformed(format!("snapshot {id}"), e.to_string()))
    }

    /// All snapshots, oldest first; fails if any cannot be read (see [`Self::readable_snapshots`]).
    pub fn snapshots(&self) -> Result<Vec<SnapshotEntry>> {
        let (all, mut unreadable) = self.readable_snapshots()?;
        match unreadable.pop() {
            Some((_, error)) => Err(error),
            None => Ok(all),
        }
    }

    /// All snapshots that can be read, oldest first, and the errors of those that cannot: one
    /// damaged snapshot must not hide the others from a restore.
    pub fn readable_snapshots(&self) -> Result<(Vec<SnapshotEntry>, Vec<UnreadableSnapshot>)> {
        let mut all = Vec::new();
        let mut unreadable = Vec::new();
        for id in self.list_ids(SNAPSHOTS_PREFIX)? {
            match self.load_snapshot(&id) {
                Ok(snapshot) => all.push(SnapshotEntry { id, snapshot }),
                // Forgotten between the listing and the read.
                Err(Error::Storage(e)) if e.is_not_found() => {}
                Err(e) => unreadable.push((id, e)),
            }
        }
        all.sort_by(|a, b| a.snapshot.time.cmp(&b.snapshot.time).then(a.id.cmp(&b.id)));
        Ok((all, unreadable))
    }

    /// Finds a snapshot by `latest`, a full id or a unique id prefix, among the readable ones.
    pub fn find_snapshot(&self, query: &str) -> Result<SnapshotEntry> {
        let (all, _) = self.readable_snapshots()?;
        if query == "latest" {
            return all.into_iter().last().ok_or_else(|| {
                Error::SnapshotNotFound("the repository has no snapshots".to_string())
            });
        }
        let matches: Vec<_> = all
            .into_iter()
            .filter(|s| s.id.to_hex().starts_with(query))
            .collect();
        match matches.len() {
            1 => Ok(matches.into_iter().next().expect("one")),
            0 => Err(Error::SnapshotNotFound(format!(
                "no snapshot id starts with {query:?}"
            ))),
            _ => Err(Error::SnapshotNotFound(format!(
                "{query:?} is ambiguous; it matches {}",
                matches
                    .iter()
                    .map(|s| s.id.short())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// Seals `plain` and stores it create-only as object `name` of journal `stream`.
    ///
    /// Stream objects are how database sources keep what changes between snapshots (SQLite WAL
    /// frames, PostgreSQL WAL segments): small, named by position so they list in order, and
    /// bound to their name so storage cannot reorder or swap them. Both names may hold only
    /// ASCII letters, digits, `.`, `_` and `-`, so choose ones that sort in position order and
    /// that reveal nothing (a keyed hash rather than a database path). Writing a name that
    /// exists with other bytes fails with [`lifeboat_storage::StorageError::AlreadyExists`].
    pub fn put_stream_object(&self, stream: &str, name: &str, plain: &[u8]) -> Result<()> {
        self.put_stream_object_parts(stream, name, &[plain])
    }

    /// As [`Self::put_stream_object`] for an object given in parts (stored as their
    /// concatenation, which is never built in memory).
    pub fn put_stream_object_parts(&self, stream: &str, name: &str, parts: &[&[u8]]) -> Result<()> {
        let key = stream_key(stream, name)?;
        let sealed = object::seal_parts_bound(
            self.key.objects(),
            ObjectKind::Stream,
            parts,
            self.config.compression_level,
            key.as_bytes(),
        );
        Ok(self.storage.put_new(&key, Bytes::from(sealed))?)
    }

    /// Reads, authenticates and opens stream object `name` of `stream`.
    pub fn get_stream_object(&self, stream: &str, name: &str) -> Result<Vec<u8>> {
        let key = stream_key(stream, name)?;
        let sealed = self.storage.get(&key)?;
        object::open_bound(
            self.key.objects(),
            ObjectKind::Stream,
            &sealed,
            &key,
            key.as_bytes(),
        )
    }

    /// Names of the objects of `stream`, sorted.
    pub fn list_stream_objects(&self, stream: &str) -> Result<Vec<String>> {
        let prefix = stream_prefix(stream)?;
        let mut names: Vec<String> = self
            .storage
            .list(&prefix)?
            .into_iter()
            .filter_map(|o| o.key.strip_prefix(&prefix).map(str::to_string))
            .filter(|name| valid_stream_name(name))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Names of all streams, sorted.
    pub fn list_streams(&self) -> Result<Vec<String>> {
        let mut streams: Vec<String> = self
            .storage
            .list(STREAMS_PREFIX)?
            .into_iter()
            .filter_map(|o| {
                let rest = o.key.strip_prefix(STREAMS_PREFIX)?;
                let (stream, _) = rest.split_once('/')?;
                valid_stream_name(stream).then(|| stream.to_string())
            })
            .collect();
        streams.sort();
        streams.dedup();
        Ok(streams)
    }

    /// Deletes stream object `name` of `stream` (retention of a journal is its source's job).
    pub fn delete_stream_object(&self, stream: &str, name: &str) -> Result<()> {
        Ok(self.storage.delete(&stream_key(stream, name)?)?)
    }

    /// Stores an index object.
    pub fn save_index(&self, file: &IndexFile) -> Result<Id> {
        self.save_object(INDEX_PREFIX, ObjectKind::Index, &file.encode())
    }

    /// Loads one index object.
    pub fn load_index_file(&self, id: &Id) -> Result<IndexFile> {
        let plain = self.load_object(INDEX_PREFIX, ObjectKind::Index, id)?;
        IndexFile::decode(&plain, &format!("index {id}"))
    }

    /// Loads the index into memory: every index object that no other index object supersedes.
    ///
    /// Prune and repair write a new index before they delete the objects it replaces, so for a
    /// while both are in storage; the `supersedes` lists say which ones count. Objects written
    /// by concurrent backups are superseded by nobody and always count.
    pub fn load_index(self) -> Result<IndexedRepository> {
        let index_read_at = std::time::Instant::now();
        let index = self.read_index()?;
        Ok(IndexedRepository {
            repo: self,
            index: Arc::new(index),
            tree_packs: Arc::default(),
            index_read_at,
        })
    }

    /// Reads the current index (see [`Self::load_index`]) without keeping it.
    ///
    /// Packs that a prune plan dooms come last, so a blob that also has a copy elsewhere (a
    /// repacked one) is read from there: a reader that loaded the index just before the sweep
    /// must not depend on packs the sweep deletes.
    pub fn read_index(&self) -> Result<Index> {
        let mut doomed = IdSet::default();
        for (_, plan) in crate::prune::load_plans(self)? {
            doomed.extend(plan.doomed_ids());
        }
        let files = self.read_index_files()?.in_force;
        Ok(Index::from_files_doomed_last(&files, &doomed))
    }

    /// Lists and reads the index objects: the names listed, and the objects in force (those no
    /// other object supersedes) with their contents.
    pub fn read_index_files(&self) -> Result<IndexFiles> {
        // A sweep commits one object superseding everything it listed, then deletes what it
        // superseded. A listing taken before that commit names objects that may be gone when
        // they are read, and lacks their replacement: such a listing is stale, so list again.
        const ATTEMPTS: usize = 20;
        let mut vanished = Vec::new();
        for attempt in 1..=ATTEMPTS {
            let listed = self.list_ids(INDEX_PREFIX)?;
            match self.read_listed_index_files(listed)? {
                Ok(files) => return Ok(files),
                Err(stale) => {
                    tracing::debug!(
                        "index object {} vanished while the index was read (attempt {attempt});                          listing again",
                        stale[0].short()
                    );
                    vanished = stale;
                }
            }
        }
        Err(Error::malformed(
            format!("index (object {} and others)", vanished[0]),
            format!(
                "index objects kept vanishing while they were read, {ATTEMPTS} times in a row                  (is a prune sweeping in a loop?); try again"
            ),
        ))
    }

    /// Reads the index objects of one listing. `Err` holds the listed objects that vanished
    /// before they were read without any object read superseding them: the listing predates
    /// their replacement, and a reader that went on would miss the packs they named.
    fn read_listed_index_files(&self, listed: Vec<Id>) -> Result<Result<IndexFiles, Vec<Id>>> {
        let mut files = Vec::new();
        let mut superseded = IdSet::default();
        let mut vanished = Vec::new();
        for id in &listed {
            match self.load_index_file(id) {
                Ok(file) => {
                    superseded.extend(file.supersedes.iter().copied());
                    files.push((*id, file));
                }
                Err(Error::Storage(e)) if e.is_not_found() => vanished.push(*id),
                Err(e) => return Err(e),
            }
        }
        vanished.retain(|id| !superseded.contains(id));
        if !vanished.is_empty() {
            return Ok(Err(vanished));
        }
        files.retain(|(id, _)| !superseded.contains(id));
        Ok(Ok(IndexFiles {
            listed,
            in_force: files,
        }))
    }

    /// Writes `packs` as one new index object that supersedes `supersedes`.
    ///
    /// One object, however large, because readers list index objects while writers add them:
    /// a listing may include a later object and miss an earlier one, so a superseding object
    /// must not depend on companions. Returns `None` when there is nothing to write.
    pub fn commit_index(&self, packs: &[PackRecord], supersedes: &[Id]) -> Result<Option<Id>> {
        if packs.is_empty() && supersedes.is_empty() {
            return Ok(None);
        }
        let file = IndexFile {
            supersedes: supersedes.to_vec(),
            packs: packs.to_vec(),
        };
        self.save_index(&file).map(Some)
    }

    /// Wraps an index built elsewhere (e.g. one that leaves out packs prune will delete).
    pub fn with_index(self, index: Index) -> IndexedRepository {
        IndexedRepository {
            repo: self,
            index: Arc::new(index),
            tree_packs: Arc::default(),
            index_read_at: std::time::Instant::now(),
        }
    }

    /// Reads and authenticates a pack's header (two range reads of its tail).
    pub fn read_pack_header(&self, id: &Id) -> Result<(pack::Trailer, Vec<PackEntry>)> {
        let key = pack_key(id);
        let len = self.storage.size(&key)?;
        if len < pack::TRAILER_LEN as u64 {
            return Err(Error::malformed(&key, "shorter than a pack trailer"));
        }
        let tail = self
            .storage
            .get_range(&key, len - pack::TRAILER_LEN as u64..len)?;
        let trailer = pack::parse_trailer(&tail, &key)?;
        let header_end = len - pack::TRAILER_LEN as u64;
        let header_start = header_end
            .checked_sub(u64::from(trailer.header_len))
            .ok_or_else(|| Error::malformed(&key, "header length exceeds pack"))?;
        let sealed = self.storage.get_range(&key, header_start..header_end)?;
        let entries = pack::parse_header(&self.key, &trailer, &sealed, len, &key)?;
        Ok((trailer, entries))
    }
}

fn valid_stream_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn check_stream_name(name: &str) -> Result<()> {
    if valid_stream_name(name) {
        Ok(())
    } else {
        Err(Error::malformed(
            format!("stream name {name:?}"),
            "only ASCII letters, digits, '.', '_' and '-' are allowed, and not '.' first",
        ))
    }
}

/// `streams/<stream>/`.
fn stream_prefix(stream: &str) -> Result<String> {
    check_stream_name(stream)?;
    Ok(format!("{STREAMS_PREFIX}{stream}/"))
}

/// `streams/<stream>/<name>`.
fn stream_key(stream: &str, name: &str) -> Result<String> {
    check_stream_name(name)?;
    Ok(stream_prefix(stream)? + name)
}

/// A repository with its index loaded: blobs can be read and written.
#[derive(Clone)]
pub struct IndexedRepository {
    repo: Repository,
    index: Arc<Index>,
    tree_packs: Arc<TreePackCache>,
    /// When the index began to be read: what a prune did after this, the index cannot show.
    index_read_at: std::time::Instant,
}

/// Whole tree packs kept in memory: walking a snapshot reads one tree per directory, and one
/// request per pack instead of one per tree matters on local disks and much more on object
/// storage. Bounded; when full, further packs are read blob by blob.
#[derive(Default)]
struct TreePackCache {
    packs: parking_lot::Mutex<std::collections::HashMap<u32, Bytes>>,
    bytes: std::sync::atomic::AtomicUsize,
}

/// Memory the tree-pack cache may use.
const TREE_CACHE_BYTES: usize = 64 << 20;

impl std::fmt::Debug for IndexedRepository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexedRepository")
            .field("repo", &self.repo)
            .field("blobs", &self.index.blob_count())
            .finish()
    }
}

impl std::ops::Deref for IndexedRepository {
    type Target = Repository;
    fn deref(&self) -> &Repository {
        &self.repo
    }
}

impl IndexedRepository {
    /// The loaded index.
    pub fn index(&self) -> &Arc<Index> {
        &self.index
    }

    /// How long ago the loaded index began to be read (replacing it starts the clock again).
    pub fn index_age(&self) -> std::time::Duration {
        self.index_read_at.elapsed()
    }

    /// Replaces the loaded index with one read just now.
    pub fn replace_index(&mut self, index: Index) {
        self.index = Arc::new(index);
        self.index_read_at = std::time::Instant::now();
        // The cache is keyed by pack position, which a new index renumbers.
        self.tree_packs = Arc::default();
    }

    /// Adds packs written since the index was loaded (from [`crate::WriterStats::packs`]).
    pub fn add_packs(&mut self, packs: Vec<crate::index::PackRecord>) {
        // Cheap when no writer still holds the index; a copy otherwise.
        // Packs are only appended, so positions (the cache's keys) stay valid.
        let index = Arc::make_mut(&mut self.index);
        for pack in packs {
            index.add_pack(pack);
        }
    }

    /// A whole tree pack from the cache, fetched on first use; `None` if the cache is full.
    fn cached_tree_pack(&self, pack: u32, key: &str) -> Result<Option<Bytes>> {
        use std::sync::atomic::Ordering;
        if let Some(bytes) = self.tree_packs.packs.lock().get(&pack) {
            return Ok(Some(bytes.clone()));
        }
        if self.tree_packs.bytes.load(Ordering::Relaxed) >= TREE_CACHE_BYTES {
            return Ok(None);
        }
        let bytes = self.storage().get(key)?;
        self.tree_packs
            .bytes
            .fetch_add(bytes.len(), Ordering::Relaxed);
        self.tree_packs.packs.lock().insert(pack, bytes.clone());
        Ok(Some(bytes))
    }

    /// Reads, authenticates, decompresses and verifies one blob.
    pub fn read_blob(&self, id: &Id) -> Result<Vec<u8>> {
        let location = self.index.get(id).ok_or(Error::MissingBlob(*id))?;
        let pack = self.index.pack(location);
        let key = pack_key(&pack.id);
        let start = u64::from(location.offset);
        let end = start + u64::from(location.stored_len);
        let cached = match location.blob_type {
            BlobType::Tree => self.cached_tree_pack(location.pack, &key)?,
            BlobType::Data => None,
        };
        let sealed = match cached {
            Some(pack_bytes) => pack_bytes.slice(
                start.min(pack_bytes.len() as u64) as usize
                    ..end.min(pack_bytes.len() as u64) as usize,
            ),
            None => self.storage().get_range(&key, start..end)?,
        };
        let what = format!("blob {id} in pack {key}");
        if sealed.len() != location.stored_len as usize {
            return Err(Error::corrupt(format!("{what} (pack truncated)")));
        }
        pack::decode_blob(
            self.key(),
            &pack.salt,
            &self.index.entry(*id, location),
            &sealed,
            &what,
        )
    }

    /// Reads a tree.
    pub fn read_tree(&self, id: &Id) -> Result<Tree> {
        let location = self.index.get(id).ok_or(Error::MissingBlob(*id))?;
        if location.blob_type != BlobType::Tree {
            return Err(Error::malformed(
                format!("blob {id}"),
                "is data, not a tree",
            ));
        }
        Tree::from_bytes(&self.read_blob(id)?, id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_repo() -> Repository {
        let options = InitOptions {
            kdf: crate::KdfParams::insecure_for_tests(),
            ..Default::default()
        };
        Repository::init(Storage::memory().unwrap(), b"pw", &options).unwrap()
    }

    #[test]
    fn stream_objects_list_in_order_and_cannot_be_swapped() {
        let repo = test_repo();
        repo.put_stream_object("db1", "0002", b"second").unwrap();
        repo.put_stream_object("db1", "0001", b"first").unwrap();
        repo.put_stream_object("db2", "0001", b"other").unwrap();
        assert_eq!(repo.list_streams().unwrap(), ["db1", "db2"]);
        assert_eq!(repo.list_stream_objects("db1").unwrap(), ["0001", "0002"]);
        assert_eq!(repo.get_stream_object("db1", "0002").unwrap(), b"second");

        // Storage that moves an object to another position is caught.
        let moved = repo.storage().get("streams/db1/0001").unwrap();
        repo.storage().put("streams/db1/0002", moved).unwrap();
        assert!(matches!(
            repo.get_stream_object("db1", "0002"),
            Err(Error::Corrupt { .. })
        ));

        // Create-only: a second writer cannot replace a segment.
        assert!(repo.put_stream_object("db2", "0001", b"again").is_err());
        assert_eq!(repo.get_stream_object("db2", "0001").unwrap(), b"other");

        repo.delete_stream_object("db1", "0001").unwrap();
        assert_eq!(repo.list_stream_objects("db1").unwrap(), ["0002"]);
    }

    /// Stores one blob per writer, `objects` times, each writer leaving one index object.
    fn write_index_objects(repo: &Repository, objects: u64) -> Vec<Id> {
        let mut ids = Vec::new();
        for n in 0..objects {
            let writer = crate::writer::BlobWriter::new(
                &repo.clone().load_index().unwrap(),
                &crate::writer::WriterOptions::default(),
            );
            let (id, _) = writer
                .add(crate::pack::BlobType::Data, n.to_le_bytes().repeat(100))
                .unwrap();
            writer.finish().unwrap();
            ids.push(id);
        }
        ids
    }

    /// Regression: a backup that listed the index objects just before a prune sweep replaced
    /// them read none of them (deleted) and not the replacement (unlisted), and failed with
    /// "blob … is not in the index" (seen in the prune concurrency soak).
    #[test]
    fn a_listing_overtaken_by_a_sweep_is_taken_again() {
        let repo = test_repo();
        let blobs = write_index_objects(&repo, 3);
        let stale = repo.list_ids(INDEX_PREFIX).unwrap();
        assert_eq!(stale.len(), 3);

        // What a sweep does between the reader's listing and its reads.
        let files = repo.read_index_files().unwrap();
        let records: Vec<PackRecord> = files
            .in_force
            .iter()
            .flat_map(|(_, f)| f.packs.clone())
            .collect();
        let replacement = repo.commit_index(&records, &stale).unwrap().unwrap();
        for id in &stale {
            repo.storage()
                .delete(&format!("{INDEX_PREFIX}{id}"))
                .unwrap();
        }

        let vanished = repo
            .read_listed_index_files(stale.clone())
            .unwrap()
            .unwrap_err();
        assert_eq!(
            vanished.len(),
            3,
            "every object of the stale listing is gone"
        );

        // A listing that has the replacement is complete although superseded objects vanished.
        let mut with_replacement = stale;
        with_replacement.push(replacement);
        let complete = repo
            .read_listed_index_files(with_replacement)
            .unwrap()
            .unwrap();
        assert_eq!(complete.in_force.len(), 1);

        let fresh = repo.read_index_files().unwrap();
        assert_eq!(fresh.in_force[0].0, replacement);
        let index = repo.read_index().unwrap();
        for blob in &blobs {
            assert!(index.contains(blob), "blob {blob} lost from the index");
        }
    }

    #[test]
    fn a_machine_key_opens_the_repository_beside_passwords() {
        let repo = test_repo();
        let (id, token) = repo.add_machine_key("h", "u").unwrap();
        let by_token = Repository::open(repo.storage().clone(), token.as_bytes()).unwrap();
        assert_eq!(by_token.key_id(), id);
        assert_eq!(by_token.config().id, repo.config().id);
        let by_password = Repository::open(repo.storage().clone(), b"pw").unwrap();
        assert_ne!(by_password.key_id(), id);
        let wrong = crate::keyfile::generate_machine_token();
        assert!(matches!(
            Repository::open(repo.storage().clone(), wrong.as_bytes()),
            Err(Error::WrongPassword { keys: 2, .. })
        ));
    }

    #[test]
    fn stream_names_that_could_escape_their_prefix_are_refused() {
        let repo = test_repo();
        for bad in ["", "../config", "a/b", ".hidden", "sp ace"] {
            assert!(
                repo.put_stream_object(bad, "0001", b"x").is_err(),
                "{bad:?}"
            );
            assert!(repo.put_stream_object("db", bad, b"x").is_err(), "{bad:?}");
        }
    }
}
