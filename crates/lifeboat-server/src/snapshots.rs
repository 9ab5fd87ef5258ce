//! Browsing a tenant's snapshots and downloading files from them, for the API.
//!
//! The repository is opened on the server with its sealed password, so a member can restore
//! a file without ever holding the repository password. These functions block (they read the
//! repository); the routes run them on the blocking pool and audit every call.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use lifeboat_repo::repository::IndexedRepository;
use lifeboat_repo::{Id, Node, NodeKind, Repository, browse};
use lifeboat_storage::Storage;
use schemars::JsonSchema;
use serde::Serialize;

use crate::error::{Error, Result};

/// At most this many entries in one listing: a larger tree is listed a directory at a time.
pub const LISTING_LIMIT: usize = 100_000;

/// One entry of a snapshot, as listed.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct EntryInfo {
    /// Absolute path in the snapshot.
    pub path: String,
    /// `file`, `dir`, `symlink`, `fifo`, `char_device`, `block_device` or `socket`.
    pub kind: String,
    /// Size in bytes (files).
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Symlink target.
    pub target: Option<String>,
}

/// A listing below one path of a snapshot.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Listing {
    /// The snapshot's full id.
    pub snapshot: String,
    /// The entries: the path itself when it is not a directory, else what is below it (one
    /// level, or all levels when asked).
    pub entries: Vec<EntryInfo>,
}

fn kind_name(kind: NodeKind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{kind:?}").to_lowercase())
}

fn entry(path: &Path, node: &Node) -> EntryInfo {
    EntryInfo {
        path: path.to_string_lossy().into_owned(),
        kind: kind_name(node.kind),
        size: node.size,
        mode: node.mode,
        uid: node.uid,
        gid: node.gid,
        mtime: node.mtime.sec,
        target: node.target.as_ref().map(|t| t.to_string()),
    }
}

/// A path of the snapshot as asked: absolute, without `.` or `..` (refused, not resolved).
fn snapshot_path(path: &str) -> Result<PathBuf> {
    let path = Path::new(if path.is_empty() { "/" } else { path });
    let mut clean = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(name) => clean.push(name),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(Error::Invalid(format!(
                    "path {}: use an absolute path without ..",
                    path.display()
                )));
            }
        }
    }
    Ok(clean)
}

fn open(location: &str, password: &[u8]) -> Result<IndexedRepository> {
    let storage =
        Storage::open(location).map_err(|e| Error::Job(format!("cannot reach {location}: {e}")))?;
    Repository::open(storage, password)
        .and_then(Repository::load_index)
        .map_err(|e| Error::Job(format!("cannot open {location}: {e}")))
}

/// The snapshot `query` names (full id, unique prefix or `latest`) and the node at `path`.
fn find(repo: &IndexedRepository, query: &str, path: &Path) -> Result<(Id, Node)> {
    let found = repo.find_snapshot(query).map_err(|e| match e {
        lifeboat_repo::Error::SnapshotNotFound(m) => Error::NotFound(m),
        other => Error::Job(other.to_string()),
    })?;
    let node = browse::lookup(repo, &found.snapshot.tree, path)
        .map_err(|e| Error::Job(e.to_string()))?
        .ok_or_else(|| Error::NotFound(format!("{} is not in the snapshot", path.display())))?;
    Ok((found.id, node))
}

/// Lists `path` of a snapshot: its children (all levels with `recursive`), or the entry itself.
pub fn list(
    location: &str,
    password: &[u8],
    query: &str,
    path: &str,
    recursive: bool,
) -> Result<Listing> {
    let path = snapshot_path(path)?;
    let repo = open(location, password)?;
    let (id, node) = find(&repo, query, &path)?;
    let mut entries = Vec::new();
    match (node.kind, node.subtree) {
        (NodeKind::Dir, Some(tree)) => {
            let mut too_many = false;
            browse::walk(&repo, &tree, &path, &mut |p, n| {
                if entries.len() >= LISTING_LIMIT {
                    too_many = true;
                    return Ok(false);
                }
                entries.push(entry(p, n));
                Ok(recursive)
            })
            .map_err(|e| Error::Job(e.to_string()))?;
            if too_many {
                return Err(Error::Invalid(format!(
                    "{} holds more than {LISTING_LIMIT} entries: list a subdirectory, or without recursive",
                    path.display()
                )));
            }
        }
        _ => entries.push(entry(&path, &node)),
    }
    Ok(Listing {
        snapshot: id.to_string(),
        entries,
    })
}

/// A file of a snapshot, ready to be read blob by blob.
pub struct Download {
    /// The snapshot's full id.
    pub snapshot: String,
    /// The file's path in the snapshot.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    repo: IndexedRepository,
    content: Vec<Id>,
}

impl Download {
    /// The file's name, for a download's suggested name.
    pub fn file_name(&self) -> String {
        self.path
            .file_name()
            .map(|n| String::from_utf8_lossy(OsStr::as_bytes(n)).into_owned())
            .unwrap_or_else(|| "download".to_owned())
    }

    /// The file's content, decrypted and verified, in order; stops at the first error.
    pub fn chunks(self) -> impl Iterator<Item = Result<Vec<u8>>> {
        let Download { repo, content, .. } = self;
        content.into_iter().map(move |id| {
            repo.read_blob(&id)
                .map_err(|e| Error::Job(format!("blob {}: {e}", id.short())))
        })
    }
}

/// Opens the file at `path` of a snapshot for download; a directory is refused.
pub fn open_file(location: &str, password: &[u8], query: &str, path: &str) -> Result<Download> {
    let path = snapshot_path(path)?;
    let repo = open(location, password)?;
    let (id, node) = find(&repo, query, &path)?;
    if node.kind != NodeKind::File {
        return Err(Error::Invalid(format!(
            "{} is a {}, not a file: download files one at a time, or restore the directory with the CLI",
            path.display(),
            kind_name(node.kind)
        )));
    }
    Ok(Download {
        snapshot: id.to_string(),
        path,
        size: node.size,
        repo,
        content: node.content,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_absolute_and_never_climb() {
        assert_eq!(snapshot_path("").unwrap(), PathBuf::from("/"));
        assert_eq!(
            snapshot_path("srv/app/./x").unwrap(),
            PathBuf::from("/srv/app/x")
        );
        assert!(snapshot_path("/srv/../etc/shadow").is_err());
    }
}
