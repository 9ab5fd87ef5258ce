//! The state directory: the catalog (SQLite by default), the server key that seals repository
//! passwords and TOTP secrets, the audit key and head, and the generated TLS certificate.
//!
//! Keys are files created with mode 0600 in a directory of mode 0700, written once and never
//! rewritten. Backing up the catalog without the keys yields nothing sealed (see
//! `docs/security.md`).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::RngCore;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// The server's state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// Opens the directory, creating it (mode 0700) when missing.
    pub fn open(root: &Path) -> Result<Self> {
        if !root.exists() {
            std::fs::create_dir_all(root).map_err(|e| Error::io("cannot create", root, e))?;
            std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| Error::io("cannot set permissions of", root, e))?;
        }
        Ok(StateDir {
            root: root.to_owned(),
        })
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A file in the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The SQLite catalog.
    pub fn catalog_path(&self) -> PathBuf {
        self.path("catalog.db")
    }

    /// Reads the 32-byte key `name`, creating it from the OS random generator when missing.
    pub fn key(&self, name: &str) -> Result<Zeroizing<[u8; 32]>> {
        let path = self.path(name);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| Error::Config {
                    path: path.clone(),
                    message: "a key file must hold exactly 32 bytes; restore it from your backup of the state directory".into(),
                })?;
                Ok(Zeroizing::new(key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = Zeroizing::new([0u8; 32]);
                rand::rng().fill_bytes(key.as_mut());
                self.write_new(name, key.as_ref())?;
                Ok(key)
            }
            Err(e) => Err(Error::io("cannot read", path, e)),
        }
    }

    /// Reads an existing key without creating it (for offline tools like `audit verify`).
    pub fn existing_key(&self, name: &str) -> Result<Zeroizing<[u8; 32]>> {
        let path = self.path(name);
        if !path.exists() {
            return Err(Error::NotFound(format!("key file {}", path.display())));
        }
        self.key(name)
    }

    /// Creates `name` with mode 0600; fails if it exists (keys are written once).
    pub fn write_new(&self, name: &str, data: &[u8]) -> Result<()> {
        let path = self.path(name);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io("cannot create", &path, e))?;
        file.write_all(data)
            .and_then(|()| file.sync_all())
            .map_err(|e| Error::io("cannot write", &path, e))
    }

    /// Replaces `name` atomically (temporary file, fsync, rename), mode 0600.
    pub fn replace(&self, name: &str, data: &[u8]) -> Result<()> {
        let path = self.path(name);
        let temporary = self.path(&format!(".{name}.tmp"));
        let _ = std::fs::remove_file(&temporary);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary)
            .map_err(|e| Error::io("cannot create", &temporary, e))?;
        file.write_all(data)
            .and_then(|()| file.sync_all())
            .map_err(|e| Error::io("cannot write", &temporary, e))?;
        std::fs::rename(&temporary, &path).map_err(|e| Error::io("cannot replace", &path, e))
    }
}

/// Name of the key that seals secrets in the catalog.
pub const SERVER_KEY: &str = "server.key";
/// Name of the key of the audit chain's MAC.
pub const AUDIT_KEY: &str = "audit.key";
/// Name of the file holding the newest audit sequence number and MAC.
pub const AUDIT_HEAD: &str = "audit.head";
