//! Mapping between filesystem metadata and tree nodes, both ways.

use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use lifeboat_repo::tree::Base64Bytes;
use lifeboat_repo::{ByteName, Node, NodeKind, Timespec, Xattr};

/// The node kind of a file type.
pub fn kind_of(meta: &Metadata) -> NodeKind {
    let ft = meta.file_type();
    if ft.is_dir() {
        NodeKind::Dir
    } else if ft.is_symlink() {
        NodeKind::Symlink
    } else if ft.is_fifo() {
        NodeKind::Fifo
    } else if ft.is_char_device() {
        NodeKind::CharDevice
    } else if ft.is_block_device() {
        NodeKind::BlockDevice
    } else if ft.is_socket() {
        NodeKind::Socket
    } else {
        NodeKind::File
    }
}

fn timespec(sec: i64, nsec: i64) -> Timespec {
    Timespec {
        sec,
        nsec: nsec.clamp(0, 999_999_999) as u32,
    }
}

/// A node describing `meta` (from `lstat`), without content, subtree, target or xattrs.
pub fn node_from_metadata(name: &[u8], meta: &Metadata) -> Node {
    let kind = kind_of(meta);
    let mut node = Node::new(name.to_vec(), kind);
    node.mode = meta.mode();
    node.uid = meta.uid();
    node.gid = meta.gid();
    node.mtime = timespec(meta.mtime(), meta.mtime_nsec());
    node.ctime = timespec(meta.ctime(), meta.ctime_nsec());
    node.inode = meta.ino();
    node.device = meta.dev();
    node.links = meta.nlink();
    if kind == NodeKind::File {
        node.size = meta.len();
    }
    if matches!(kind, NodeKind::CharDevice | NodeKind::BlockDevice) {
        node.rdev = Some(meta.rdev());
    }
    node
}

/// Extended attributes of `path` (not following symlinks). Filesystems without xattr support
/// yield none.
pub fn read_xattrs(path: &Path) -> std::io::Result<Vec<Xattr>> {
    let names = match xattr::list(path) {
        Ok(names) => names,
        Err(e) if is_unsupported(&e) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for name in names {
        if let Some(value) = xattr::get(path, &name)? {
            out.push(Xattr {
                name: ByteName(name.as_bytes().to_vec()),
                value: Base64Bytes(value),
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn is_unsupported(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(rustix::io::Errno::OPNOTSUPP.raw_os_error())
}

/// True when the process may restore ownership.
pub fn running_as_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// What a restore needs to know about its own process to skip needless system calls.
#[derive(Debug, Clone, Copy)]
pub struct Host {
    /// Running as root: owners are restored, set-id bits survive writes.
    pub root: bool,
    uid: u32,
    gid: u32,
    umask: u32,
}

impl Host {
    /// The current process.
    pub fn current() -> Host {
        // umask can only be read by setting it; put it straight back.
        let umask = rustix::process::umask(rustix::fs::Mode::empty());
        rustix::process::umask(umask);
        Host {
            root: running_as_root(),
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
            umask: umask.bits(),
        }
    }
}

const SPECIAL_BITS: u32 = 0o7000;

/// Sets owner (when root), extended attributes and mode on a regular file just created for
/// restore, through its open handle. Times are set by [`finish_file`] once the content is
/// written. Returns the problems met; none of them is fatal.
pub fn apply_to_new_file(file: &std::fs::File, node: &Node, host: &Host) -> Vec<String> {
    use xattr::FileExt as _;
    let mut problems = Vec::new();
    // New files belong to the process (restore creates directories without set-gid bits, which
    // come with the directories' metadata at the end), so equal ids need no chown.
    let owner_differs = (node.uid, node.gid) != (host.uid, host.gid);
    if host.root
        && owner_differs
        && let Err(e) = std::os::unix::fs::fchown(file, Some(node.uid), Some(node.gid))
    {
        problems.push(format!("cannot set owner {}:{}: {e}", node.uid, node.gid));
    }
    for attr in &node.xattrs {
        let name = std::ffi::OsStr::from_bytes(&attr.name.0);
        if let Err(e) = file.set_xattr(name, &attr.value.0) {
            problems.push(format!("cannot set extended attribute {}: {e}", attr.name));
        }
    }
    // The file was created with its permission bits; set them again if the umask removed
    // some, or to add set-id and sticky bits (chown would have cleared them).
    if node.mode & (SPECIAL_BITS | host.umask) != 0 {
        let perms = std::fs::Permissions::from_mode(node.mode & 0o7777);
        if let Err(e) = file.set_permissions(perms) {
            problems.push(format!("cannot set mode {:o}: {e}", node.mode & 0o7777));
        }
    }
    problems
}

fn system_time(t: Timespec) -> std::time::SystemTime {
    let nanos = std::time::Duration::from_nanos(u64::from(t.nsec));
    if t.sec >= 0 {
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.sec as u64) + nanos
    } else {
        std::time::UNIX_EPOCH - std::time::Duration::from_secs(t.sec.unsigned_abs()) + nanos
    }
}

/// [`finish_file`] through an open handle, once all content is written.
pub fn finish_open_file(file: &std::fs::File, node: &Node, host: &Host) -> Vec<String> {
    let mut problems = Vec::new();
    if !host.root && node.mode & SPECIAL_BITS != 0 {
        let perms = std::fs::Permissions::from_mode(node.mode & 0o7777);
        if let Err(e) = file.set_permissions(perms) {
            problems.push(format!("cannot set mode {:o}: {e}", node.mode & 0o7777));
        }
    }
    let mtime = system_time(node.mtime);
    let times = std::fs::FileTimes::new()
        .set_modified(mtime)
        .set_accessed(mtime);
    if let Err(e) = file.set_times(times) {
        problems.push(format!("cannot set times: {e}"));
    }
    problems
}

/// Last step for a restored regular file: its times, and set-id bits again where writing may
/// have cleared them (the kernel clears them on writes by processes without CAP_FSETID).
pub fn finish_file(path: &Path, node: &Node, as_root: bool) -> Vec<String> {
    let mut problems = Vec::new();
    if !as_root && node.mode & SPECIAL_BITS != 0 {
        let perms = std::fs::Permissions::from_mode(node.mode & 0o7777);
        if let Err(e) = std::fs::set_permissions(path, perms) {
            problems.push(format!("cannot set mode {:o}: {e}", node.mode & 0o7777));
        }
    }
    let mtime = filetime_of(node.mtime);
    if let Err(e) = filetime::set_file_times(path, mtime, mtime) {
        problems.push(format!("cannot set times: {e}"));
    }
    problems
}

fn filetime_of(t: Timespec) -> filetime::FileTime {
    filetime::FileTime::from_unix_time(t.sec, t.nsec)
}

/// Removes the `user.` extended attributes of an existing, kept file that `node` does not have,
/// so that a delta restore leaves the attributes the snapshot recorded. Other namespaces
/// (`security.`, `system.`, `trusted.`) belong to the system the target lives on and are left.
pub fn remove_extra_user_xattrs(path: &Path, node: &Node) -> Vec<String> {
    let names = match xattr::list(path) {
        Ok(names) => names,
        Err(e) if is_unsupported(&e) => return Vec::new(),
        Err(e) => return vec![format!("cannot list extended attributes: {e}")],
    };
    let mut problems = Vec::new();
    for name in names {
        let bytes = name.as_bytes();
        if !bytes.starts_with(b"user.") || node.xattrs.iter().any(|a| a.name.0 == bytes) {
            continue;
        }
        if let Err(e) = xattr::remove(path, &name) {
            problems.push(format!(
                "cannot remove extended attribute {}: {e}",
                name.to_string_lossy()
            ));
        }
    }
    problems
}

/// Applies ownership (when root), extended attributes, permissions and times to a restored
/// entry, in that order: chown clears set-id bits, and xattrs may be refused once a file is
/// read-only. Returns the problems met; none of them is fatal.
pub fn apply_metadata(path: &Path, node: &Node, as_root: bool) -> Vec<String> {
    let mut problems = Vec::new();
    if as_root && let Err(e) = std::os::unix::fs::lchown(path, Some(node.uid), Some(node.gid)) {
        problems.push(format!("cannot set owner {}:{}: {e}", node.uid, node.gid));
    }
    for attr in &node.xattrs {
        let name = std::ffi::OsStr::from_bytes(&attr.name.0);
        if let Err(e) = xattr::set(path, name, &attr.value.0) {
            problems.push(format!("cannot set extended attribute {}: {e}", attr.name));
        }
    }
    if node.kind != NodeKind::Symlink {
        let perms = std::fs::Permissions::from_mode(node.mode & 0o7777);
        if let Err(e) = std::fs::set_permissions(path, perms) {
            problems.push(format!("cannot set mode {:o}: {e}", node.mode & 0o7777));
        }
    }
    // Access times are not recorded (reading a file for backup changes it, which would make
    // every tree differ from its parent's); restored entries get their mtime as atime.
    let mtime = filetime_of(node.mtime);
    if let Err(e) = filetime::set_symlink_file_times(path, mtime, mtime) {
        problems.push(format!("cannot set times: {e}"));
    }
    problems
}
