//! Browsing snapshots without restoring them: walk, look up, compare and measure trees.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::id::IdSet;
use crate::repository::IndexedRepository;
use crate::{Id, Node, NodeKind, Result, Tree};

/// Calls `visit` for every entry below `tree` in depth-first name order, with its path under
/// `prefix`. Returning false from `visit` for a directory skips its contents.
pub fn walk(
    repo: &IndexedRepository,
    tree: &Id,
    prefix: &Path,
    visit: &mut dyn FnMut(&Path, &Node) -> Result<bool>,
) -> Result<()> {
    for node in repo.read_tree(tree)?.nodes {
        let path = prefix.join(OsStr::from_bytes(&node.name.0));
        let descend = visit(&path, &node)?;
        if descend
            && node.kind == NodeKind::Dir
            && let Some(sub) = node.subtree
        {
            walk(repo, &sub, &path, visit)?;
        }
    }
    Ok(())
}

/// Visits each tree below `root` once, skipping the trees in `visited` and adding those it
/// reaches: `visit` gets the tree's id and the tree, or the error reading it (a caller that
/// reports damage goes on; one that needs every tree returns the error). The subtrees of a tree
/// that was read come next.
pub fn walk_trees(
    repo: &IndexedRepository,
    root: Id,
    visited: &mut IdSet,
    visit: &mut dyn FnMut(Id, Result<&Tree>) -> Result<()>,
) -> Result<()> {
    let mut stack = vec![root];
    while let Some(id) = stack.pop() {
        if !visited.insert(id) {
            continue;
        }
        match repo.read_tree(&id) {
            Ok(tree) => {
                visit(id, Ok(&tree))?;
                stack.extend(tree.nodes.iter().filter_map(|node| node.subtree));
            }
            Err(e) => visit(id, Err(e))?,
        }
    }
    Ok(())
}

/// The entry at `path` (absolute, as in the snapshot) below the root tree, if any. The root
/// itself (`/`) is returned as a directory node named "/".
pub fn lookup(repo: &IndexedRepository, root: &Id, path: &Path) -> Result<Option<Node>> {
    let mut node = Node::new("/", NodeKind::Dir);
    node.subtree = Some(*root);
    for part in path.components().filter_map(|c| match c {
        std::path::Component::Normal(name) => Some(name),
        _ => None,
    }) {
        let Some(subtree) = node.subtree.filter(|_| node.kind == NodeKind::Dir) else {
            return Ok(None);
        };
        match repo.read_tree(&subtree)?.find(part.as_bytes()) {
            Some(child) => node = child.clone(),
            None => return Ok(None),
        }
    }
    Ok(Some(node))
}

/// How an entry differs between two snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Only in the second.
    Added,
    /// Only in the first.
    Removed,
    /// Content or kind differs.
    Modified,
    /// Same content, other metadata (mode, owner, times, xattrs).
    Metadata,
}

impl Change {
    /// The one-letter marker used in listings.
    pub fn marker(self) -> char {
        match self {
            Change::Added => '+',
            Change::Removed => '-',
            Change::Modified => 'M',
            Change::Metadata => 'U',
        }
    }
}

fn same_metadata(a: &Node, b: &Node) -> bool {
    a.mode == b.mode
        && a.uid == b.uid
        && a.gid == b.gid
        && a.mtime == b.mtime
        && a.xattrs == b.xattrs
        && a.target == b.target
}

/// Receives each change found by [`diff`]: path, change, entry before, entry after.
pub type DiffReporter<'a> = dyn FnMut(&Path, Change, Option<&Node>, Option<&Node>) + 'a;

/// Compares two trees; `report` gets each changed path. Subtrees with equal ids are skipped
/// unread, so comparing two nearly equal snapshots reads only the directories that changed.
pub fn diff(
    repo: &IndexedRepository,
    a: Option<&Id>,
    b: Option<&Id>,
    prefix: &Path,
    report: &mut DiffReporter<'_>,
) -> Result<()> {
    if a == b {
        return Ok(());
    }
    let load = |id: Option<&Id>| -> Result<Tree> {
        id.map_or(Ok(Tree::default()), |id| repo.read_tree(id))
    };
    let (ta, tb) = (load(a)?, load(b)?);
    let (mut i, mut j) = (0, 0);
    while i < ta.nodes.len() || j < tb.nodes.len() {
        let order = match (ta.nodes.get(i), tb.nodes.get(j)) {
            (Some(x), Some(y)) => x.name.cmp(&y.name),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        let (na, nb) = match order {
            std::cmp::Ordering::Less => (ta.nodes.get(i), None),
            std::cmp::Ordering::Greater => (None, tb.nodes.get(j)),
            std::cmp::Ordering::Equal => (ta.nodes.get(i), tb.nodes.get(j)),
        };
        if na.is_some() {
            i += 1;
        }
        if nb.is_some() {
            j += 1;
        }
        let name = na.or(nb).expect("one side").name.0.clone();
        let path = prefix.join(OsStr::from_bytes(&name));
        let sub = |n: Option<&Node>| {
            n.filter(|n| n.kind == NodeKind::Dir)
                .and_then(|n| n.subtree)
        };
        match (na, nb) {
            (Some(x), Some(y)) if x.kind != y.kind || x.content != y.content => {
                report(&path, Change::Modified, na, nb);
            }
            (Some(x), Some(y)) if !same_metadata(x, y) => report(&path, Change::Metadata, na, nb),
            (Some(_), Some(_)) => {}
            (None, Some(_)) => report(&path, Change::Added, na, nb),
            (Some(_), None) => report(&path, Change::Removed, na, nb),
            (None, None) => unreachable!(),
        }
        let (sa, sb) = (sub(na), sub(nb));
        if sa.is_some() || sb.is_some() {
            diff(repo, sa.as_ref(), sb.as_ref(), &path, report)?;
        }
    }
    Ok(())
}

/// Sizes of a set of snapshots.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Stats {
    /// Snapshots measured.
    pub snapshots: u64,
    /// Files, counted once per snapshot.
    pub files: u64,
    /// Directories, counted once per snapshot.
    pub dirs: u64,
    /// Bytes a full restore of every snapshot would write.
    pub restore_size: u64,
    /// Distinct blobs (data and trees) the snapshots use.
    pub unique_blobs: u64,
    /// Plaintext bytes of those blobs.
    pub unique_raw_size: u64,
    /// Stored (compressed and encrypted) bytes of those blobs.
    pub unique_stored_size: u64,
}

impl Stats {
    /// Restore size over unique plaintext: how much deduplication saves.
    pub fn dedup_ratio(&self) -> f64 {
        self.restore_size as f64 / self.unique_raw_size.max(1) as f64
    }

    /// Unique plaintext over stored bytes: how much compression saves.
    pub fn compression_ratio(&self) -> f64 {
        self.unique_raw_size as f64 / self.unique_stored_size.max(1) as f64
    }
}

/// Measures snapshots by their root trees.
pub fn stats(repo: &IndexedRepository, roots: &[Id]) -> Result<Stats> {
    let mut stats = Stats {
        snapshots: roots.len() as u64,
        ..Default::default()
    };
    let mut seen = IdSet::default();
    let mut count = |id: &Id, stats: &mut Stats| {
        if seen.insert(*id)
            && let Some(location) = repo.index().get(id)
        {
            stats.unique_blobs += 1;
            stats.unique_raw_size += u64::from(location.raw_len);
            stats.unique_stored_size += u64::from(location.stored_len);
        }
    };
    for root in roots {
        count(root, &mut stats);
        walk(repo, root, &PathBuf::from("/"), &mut |_, node| {
            match node.kind {
                NodeKind::File => {
                    stats.files += 1;
                    stats.restore_size += node.size;
                    for id in &node.content {
                        count(id, &mut stats);
                    }
                }
                NodeKind::Dir => {
                    stats.dirs += 1;
                    if let Some(sub) = &node.subtree {
                        count(sub, &mut stats);
                    }
                }
                _ => {}
            }
            Ok(true)
        })?;
    }
    Ok(stats)
}
