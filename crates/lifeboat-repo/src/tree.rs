//! Trees: one directory's entries, stored as a blob of type tree.
//!
//! A tree is JSON (compressed and encrypted like any blob), with entries sorted by name bytes.
//! JSON keeps trees readable through `lifeboat cat`, and its cost is small next to the data it
//! describes. Names, link targets and extended-attribute names are byte strings, because Unix
//! file names need not be UTF-8: a name that is valid UTF-8 is stored as a JSON string, any other
//! as `{"b64": "…"}`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{Error, Id, Result};

/// A byte string that serialises as text when it is UTF-8.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteName(pub Vec<u8>);

impl std::fmt::Debug for ByteName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

impl std::fmt::Display for ByteName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

impl Serialize for ByteName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(text) => serializer.serialize_str(text),
            Err(_) => {
                #[derive(Serialize)]
                struct Raw {
                    b64: String,
                }
                Raw {
                    b64: B64.encode(&self.0),
                }
                .serialize(serializer)
            }
        }
    }
}

impl<'de> Deserialize<'de> for ByteName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Text(String),
            Raw { b64: String },
        }
        match Either::deserialize(deserializer)? {
            Either::Text(text) => Ok(ByteName(text.into_bytes())),
            Either::Raw { b64 } => B64
                .decode(b64)
                .map(ByteName)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// Bytes serialised as base64 (extended attribute values).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Base64Bytes(pub Vec<u8>);

impl std::fmt::Debug for Base64Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} bytes", self.0.len())
    }
}

impl Serialize for Base64Bytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&B64.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Base64Bytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        B64.decode(text)
            .map(Base64Bytes)
            .map_err(serde::de::Error::custom)
    }
}

/// Kind of a tree entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    /// Regular file.
    File,
    /// Directory; `subtree` holds its tree.
    Dir,
    /// Symbolic link; `target` holds where it points.
    Symlink,
    /// Named pipe.
    Fifo,
    /// Character device; `rdev` holds its number.
    CharDevice,
    /// Block device; `rdev` holds its number.
    BlockDevice,
    /// Unix socket (recorded, not restorable).
    Socket,
}

/// A point in time with nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Timespec {
    /// Seconds since the Unix epoch.
    pub sec: i64,
    /// Nanoseconds.
    pub nsec: u32,
}

/// An extended attribute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xattr {
    /// Attribute name, e.g. `user.comment`.
    pub name: ByteName,
    /// Attribute value.
    pub value: Base64Bytes,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// One directory entry with its metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// File name within its directory.
    pub name: ByteName,
    /// What it is.
    pub kind: NodeKind,
    /// Permission and type bits (`st_mode`).
    pub mode: u32,
    /// Owner id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Owner name, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Group name, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Modification time.
    pub mtime: Timespec,
    /// Status-change time (used for change detection, not restored).
    pub ctime: Timespec,
    /// Size in bytes (files), 0 otherwise.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    /// Inode number (change detection and hard links).
    pub inode: u64,
    /// Device of the filesystem holding the entry.
    pub device: u64,
    /// Hard-link count.
    pub links: u64,
    /// Content blobs, in order (files).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content: Vec<Id>,
    /// Tree of a directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtree: Option<Id>,
    /// Target of a symlink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<ByteName>,
    /// Device number of a device node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdev: Option<u64>,
    /// Extended attributes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xattrs: Vec<Xattr>,
}

impl Node {
    /// A node with the given name and kind and zeroed metadata.
    pub fn new(name: impl Into<Vec<u8>>, kind: NodeKind) -> Node {
        Node {
            name: ByteName(name.into()),
            kind,
            mode: 0,
            uid: 0,
            gid: 0,
            user: None,
            group: None,
            mtime: Timespec::default(),
            ctime: Timespec::default(),
            size: 0,
            inode: 0,
            device: 0,
            links: 1,
            content: Vec::new(),
            subtree: None,
            target: None,
            rdev: None,
            xattrs: Vec::new(),
        }
    }
}

/// Tree format version.
pub const TREE_VERSION: u32 = 1;

/// A directory listing.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Tree {
    /// Format version.
    pub version: u32,
    /// Entries sorted by name.
    pub nodes: Vec<Node>,
}

impl Tree {
    /// A tree from entries in any order.
    pub fn new(mut nodes: Vec<Node>) -> Tree {
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        Tree {
            version: TREE_VERSION,
            nodes,
        }
    }

    /// Serialised form (the blob plaintext).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("trees serialise")
    }

    /// Parses a tree blob.
    pub fn from_bytes(bytes: &[u8], id: &Id) -> Result<Tree> {
        let tree: Tree = serde_json::from_slice(bytes)
            .map_err(|e| Error::malformed(format!("tree {id}"), e.to_string()))?;
        if tree.version > TREE_VERSION {
            return Err(Error::UnsupportedVersion {
                what: format!("tree {id}"),
                found: tree.version,
                supported: TREE_VERSION,
            });
        }
        Ok(tree)
    }

    /// The entry with this name.
    pub fn find(&self, name: &[u8]) -> Option<&Node> {
        self.nodes
            .binary_search_by(|n| n.name.0.as_slice().cmp(name))
            .ok()
            .map(|i| &self.nodes[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_utf8_names_survive_json() {
        let mut node = Node::new(vec![b'a', 0xff, b'b'], NodeKind::Symlink);
        node.target = Some(ByteName(b"plain".to_vec()));
        node.xattrs.push(Xattr {
            name: ByteName(b"user.x".to_vec()),
            value: Base64Bytes(vec![0, 1, 2, 255]),
        });
        let tree = Tree::new(vec![
            node,
            Node::new("zzz", NodeKind::File),
            Node::new("abc", NodeKind::Dir),
        ]);
        let bytes = tree.to_bytes();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains("\"plain\"") && text.contains("b64"), "{text}");
        let back = Tree::from_bytes(&bytes, &Id::default()).unwrap();
        assert_eq!(back, tree);
        assert_eq!(back.nodes[0].name.0, b"abc");
        assert!(back.find(&[b'a', 0xff, b'b']).is_some());
        assert!(back.find(b"nope").is_none());
    }
}
