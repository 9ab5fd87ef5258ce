//! Object storage for Lifeboat repositories.
//!
//! This crate is the only place in Lifeboat that knows about [OpenDAL]. Everything above it sees a
//! flat namespace of immutable objects addressed by `/`-separated keys (`data/ab/abcdef…`,
//! `snapshots/…`) and five operations: put, get (whole or a byte range), list, stat and delete.
//!
//! # Guarantees the repository relies on
//!
//! * **Atomic, durable puts.** An object is either absent or complete. On the local filesystem
//!   (the embedded default) a put writes a temporary file under `tmp/`, fsyncs it, renames it
//!   into place and fsyncs the directory, so neither a crash nor a full disk can leave a partial
//!   object under its final name.
//! * **Create-only puts where the repository asks for them** ([`Storage::put_new`]): used for
//!   `config`, whose loss or replacement would make the repository unreadable.
//! * **Retries and timeouts on networked backends.** S3 requests go through OpenDAL's
//!   `TimeoutLayer` and `RetryLayer` (exponential backoff with jitter); see [`NetworkOptions`].
//!   Every retry is counted as one more request of its kind in [`RequestStats`].
//! * **Synchronous calls.** The repository drives storage from plain threads; this crate owns the
//!   async runtime OpenDAL needs, so callers never see it. Do not call it from inside an async
//!   task: use `spawn_blocking`.
//!
//! [OpenDAL]: https://opendal.apache.org

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use opendal::layers::{RetryEvent, RetryLayer, TimeoutLayer};
use opendal::raw::Operation;
use opendal::{ErrorKind, Operator, blocking, services};

mod location;
pub use location::{AzureLocation, GcsLocation, Location, S3Location};

/// What went wrong talking to storage, and on which object.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The object does not exist.
    #[error("object {key} does not exist in {location}")]
    NotFound {
        /// Key of the missing object.
        key: String,
        /// Where the repository lives.
        location: String,
    },
    /// A create-only put found the object already there.
    #[error("object {key} already exists in {location}; refusing to overwrite it")]
    AlreadyExists {
        /// Key of the existing object.
        key: String,
        /// Where the repository lives.
        location: String,
    },
    /// The storage refused the operation (S3 `AccessDenied`): the credentials lack a permission.
    #[error(
        "{operation} {key} in {location} was refused: permission denied{}",
        if *operation == "delete" {
            " (append-only credentials cannot delete: backup and copy work with them, but \
             forget, prune and key removal need credentials that may delete; see docs/storage.md)"
        } else {
            " (check the credentials' permissions on this bucket and prefix)"
        }
    )]
    PermissionDenied {
        /// The operation (put, get, list, stat, delete).
        operation: &'static str,
        /// The object or prefix.
        key: String,
        /// Where the repository lives.
        location: String,
    },
    /// A range read asked for bytes past the end of the object.
    #[error("object {key} in {location} ends before byte {end}: it is truncated")]
    Truncated {
        /// The short object.
        key: String,
        /// Where the repository lives.
        location: String,
        /// End of the range asked for.
        end: u64,
    },
    /// The storage location could not be set up (bad path, bad URL, unsupported scheme).
    #[error("cannot open storage {location}: {reason}")]
    Config {
        /// What the user gave.
        location: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// Any other failure of an operation, with the backend's own message.
    #[error("{operation} {key} in {location} failed: {source}")]
    Backend {
        /// The operation (put, get, list, stat, delete).
        operation: &'static str,
        /// The object or prefix.
        key: String,
        /// Where the repository lives.
        location: String,
        /// The backend's error.
        #[source]
        source: Box<opendal::Error>,
    },
    /// A local filesystem operation that OpenDAL does not cover (directory sync).
    #[error("{operation} {path} failed: {source}")]
    Io {
        /// What was attempted.
        operation: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl StorageError {
    /// True if the object was missing.
    pub fn is_not_found(&self) -> bool {
        matches!(self, StorageError::NotFound { .. })
    }

    /// True if retrying the same call later might succeed (network blips, throttling).
    pub fn is_transient(&self) -> bool {
        matches!(self, StorageError::Backend { source, .. } if source.is_temporary())
    }
}

/// Result of a storage call.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// One object found by [`Storage::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Key relative to the repository root, e.g. `snapshots/4f…`.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
}

/// Request counters, by kind: on object stores the request count is what costs money.
#[derive(Debug, Default)]
pub struct RequestCounters {
    puts: AtomicU64,
    gets: AtomicU64,
    lists: AtomicU64,
    stats: AtomicU64,
    deletes: AtomicU64,
    retries: AtomicU64,
    bytes_written: AtomicU64,
    bytes_read: AtomicU64,
}

/// A snapshot of [`RequestCounters`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RequestStats {
    /// Objects written.
    pub puts: u64,
    /// Objects or ranges read.
    pub gets: u64,
    /// Listings.
    pub lists: u64,
    /// Metadata lookups.
    pub stats: u64,
    /// Objects deleted.
    pub deletes: u64,
    /// Requests that failed transiently and were sent again (already included in the counts
    /// above, since each one costs a request).
    pub retries: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Bytes read.
    pub bytes_read: u64,
}

impl RequestCounters {
    /// Counts a retry as one more request of the kind being retried.
    fn count_retry(&self, operation: Operation) {
        let counter = match operation {
            Operation::Read => &self.gets,
            Operation::Write => &self.puts,
            Operation::Stat => &self.stats,
            Operation::List => &self.lists,
            Operation::Delete => &self.deletes,
            _ => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> RequestStats {
        RequestStats {
            puts: self.puts.load(Ordering::Relaxed),
            gets: self.gets.load(Ordering::Relaxed),
            lists: self.lists.load(Ordering::Relaxed),
            stats: self.stats.load(Ordering::Relaxed),
            deletes: self.deletes.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
        }
    }
}

/// Handle to a repository's storage. Cheap to clone; safe to share between threads.
#[derive(Clone)]
pub struct Storage {
    inner: Arc<Inner>,
}

struct Inner {
    op: blocking::Operator,
    location: String,
    /// Set for the local filesystem backend, so puts can fsync directories after renames.
    local_root: Option<PathBuf>,
    counters: Arc<RequestCounters>,
    /// GCS: OpenDAL sends a create-only put as a resumable upload (one request to start the
    /// session, one per 8 MiB sent), so it costs more than one request.
    resumable_create_only: bool,
    // Declared last so it is dropped after the operator that uses it.
    _runtime: tokio::runtime::Runtime,
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Storage")
            .field("location", &self.inner.location)
            .finish()
    }
}

/// Retries and timeouts of networked backends (S3).
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkOptions {
    /// Deadline of one metadata request (stat). `LIFEBOAT_TIMEOUT_SECS`, default 30.
    pub timeout: Duration,
    /// Deadline of each step of a transfer (sending a whole put, each read of a body, each
    /// listing page). `LIFEBOAT_IO_TIMEOUT_SECS`, default 120: a 16 MiB pack must go out at
    /// 1.2 Mbit/s or better.
    pub io_timeout: Duration,
    /// How often a transient failure (5xx, throttling, reset, timeout) is retried before the
    /// operation fails. `LIFEBOAT_RETRIES`, default 8.
    pub retries: usize,
    /// First backoff; each next one doubles, with jitter. `LIFEBOAT_RETRY_MIN_SECS`, default 0.2.
    pub min_backoff: Duration,
    /// Longest backoff. Default 15 s.
    pub max_backoff: Duration,
}

impl Default for NetworkOptions {
    fn default() -> Self {
        NetworkOptions {
            timeout: Duration::from_secs(30),
            io_timeout: Duration::from_secs(120),
            retries: 8,
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(15),
        }
    }
}

impl NetworkOptions {
    /// Defaults, overridden by `LIFEBOAT_TIMEOUT_SECS`, `LIFEBOAT_IO_TIMEOUT_SECS`,
    /// `LIFEBOAT_RETRIES` and `LIFEBOAT_RETRY_MIN_SECS` where set.
    pub fn from_env() -> Result<Self> {
        let mut options = NetworkOptions::default();
        let seconds = |name: &str| -> Result<Option<Duration>> {
            match std::env::var(name) {
                Ok(text) => text
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s > 0.0)
                    .map(|s| Some(Duration::from_secs_f64(s)))
                    .ok_or_else(|| StorageError::Config {
                        location: format!("{name}={text}"),
                        reason: "expected a positive number of seconds".to_string(),
                    }),
                Err(_) => Ok(None),
            }
        };
        if let Some(t) = seconds("LIFEBOAT_TIMEOUT_SECS")? {
            options.timeout = t;
        }
        if let Some(t) = seconds("LIFEBOAT_IO_TIMEOUT_SECS")? {
            options.io_timeout = t;
        }
        if let Some(t) = seconds("LIFEBOAT_RETRY_MIN_SECS")? {
            options.min_backoff = t;
            options.max_backoff = options.max_backoff.max(t);
        }
        if let Ok(text) = std::env::var("LIFEBOAT_RETRIES") {
            options.retries = text.trim().parse().map_err(|_| StorageError::Config {
                location: format!("LIFEBOAT_RETRIES={text}"),
                reason: "expected a whole number".to_string(),
            })?;
        }
        Ok(options)
    }
}

/// Environment variable holding an OAuth2 access token for GCS (the name Google's Terraform
/// provider reads; `gcloud auth print-access-token` prints one, valid for about an hour).
pub const GCS_TOKEN_VAR: &str = "GOOGLE_OAUTH_ACCESS_TOKEN";

/// Environment variable naming a Google credentials file (Application Default Credentials).
pub const GCS_CREDENTIALS_VAR: &str = "GOOGLE_APPLICATION_CREDENTIALS";

/// Bytes per request of OpenDAL's GCS resumable uploads (its `RESUMABLE_CHUNK_SIZE`).
const GCS_RESUMABLE_CHUNK: u64 = 8 * 1024 * 1024;

/// gcloud's Application Default Credentials file (`gcloud auth application-default login`),
/// if it exists; OpenDAL looks there when nothing else is configured.
fn gcloud_default_credentials() -> Option<PathBuf> {
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".config")))?;
    let path = config.join("gcloud/application_default_credentials.json");
    path.is_file().then_some(path)
}

/// Reads the credentials file now, so a wrong path or a file that is not a Google credentials
/// JSON is reported when the repository is opened, not as a failure of the first request.
/// The message names the file and never quotes its contents.
fn check_gcs_credentials_file(path: &str) -> std::result::Result<(), String> {
    let text = std::fs::read(path)
        .map_err(|e| format!("cannot read {GCS_CREDENTIALS_VAR}={path}: {e}"))?;
    let kind = serde_json::from_slice::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_string));
    match kind.as_deref() {
        Some(
            "service_account"
            | "authorized_user"
            | "external_account"
            | "impersonated_service_account",
        ) => Ok(()),
        Some(other) => Err(format!(
            "{GCS_CREDENTIALS_VAR}={path} holds credentials of type {other:?}, which Lifeboat \
             cannot use; create a service-account key (type \"service_account\")"
        )),
        None => Err(format!(
            "{GCS_CREDENTIALS_VAR}={path} is not a Google credentials JSON file (no \"type\"); \
             download a service-account key from the Cloud console or with \
             `gcloud iam service-accounts keys create`"
        )),
    }
}

/// Directory (relative to a local repository) where half-written objects live until renamed.
pub const LOCAL_TEMP_DIR: &str = "tmp";

impl Storage {
    /// Opens existing storage from a location string (see [`Location`] for the forms): a local
    /// path (the embedded default), an S3 URL, or `memory:` (for tests; contents vanish with the
    /// process). Network settings come from the environment ([`NetworkOptions::from_env`]).
    pub fn open(location: &str) -> Result<Self> {
        Self::open_with(location, false, &NetworkOptions::from_env()?)
    }

    /// Like [`Storage::open`], creating a local directory that does not exist yet (for `init`).
    /// An S3 bucket must exist already: Lifeboat never creates buckets.
    pub fn create(location: &str) -> Result<Self> {
        Self::open_with(location, true, &NetworkOptions::from_env()?)
    }

    /// Opens storage with explicit network settings; `create` creates a missing local directory.
    pub fn open_with(location: &str, create: bool, network: &NetworkOptions) -> Result<Self> {
        match Location::parse(location)? {
            Location::Memory => Self::memory(),
            Location::Local(path) if create => Self::local_create(Path::new(&path)),
            Location::Local(path) => Self::local(Path::new(&path)),
            Location::S3(s3) => Self::s3(location, &s3, network),
            Location::Azure(azure) => Self::azure(location, &azure, network),
            Location::Gcs(gcs) => Self::gcs(location, &gcs, network),
        }
    }

    /// Opens a Google Cloud Storage bucket through its JSON API. Credentials, first found wins:
    /// an OAuth2 access token in `GOOGLE_OAUTH_ACCESS_TOKEN`; a credentials file (service-account
    /// key, or any other Application Default Credentials JSON) named by
    /// `GOOGLE_APPLICATION_CREDENTIALS`; gcloud's `application_default_credentials.json`; and, for
    /// `storage.googleapis.com` only, the metadata server of a Compute Engine VM or GKE pod.
    pub fn gcs(location: &str, gcs: &GcsLocation, network: &NetworkOptions) -> Result<Self> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let refuse = |reason: String| StorageError::Config {
            location: location.to_string(),
            reason,
        };
        let mut builder = services::Gcs::default()
            .bucket(&gcs.bucket)
            .root(&gcs.root());
        if let Some(endpoint) = &gcs.endpoint {
            // The metadata server belongs to Google's own service: a client pointed elsewhere
            // must not send requests to it (the same rule as for S3's instance metadata).
            builder = builder.endpoint(endpoint).disable_vm_metadata();
        }
        if let Some(token) = env(GCS_TOKEN_VAR) {
            builder = builder.token(token.trim().to_string());
        } else if let Some(path) = env(GCS_CREDENTIALS_VAR) {
            check_gcs_credentials_file(&path).map_err(refuse)?;
            builder = builder.credential_path(&path);
        } else if gcs.endpoint.is_some() && gcloud_default_credentials().is_none() {
            return Err(refuse(format!(
                "no credentials: set {GCS_CREDENTIALS_VAR} to a service-account key file, or \
                 {GCS_TOKEN_VAR} to an access token (an emulator accepts any token)"
            )));
        }
        opendal::install_default();
        let mut storage = Self::build(builder, location.to_string(), None, Some(network))?;
        Arc::get_mut(&mut storage.inner)
            .expect("a storage just built has one owner")
            .resumable_create_only = true;
        Ok(storage)
    }

    /// Opens an Azure Blob container. The account comes from the URL or `AZURE_STORAGE_ACCOUNT`,
    /// its key from `AZURE_STORAGE_KEY` (or a SAS token from `AZURE_STORAGE_SAS_TOKEN`).
    pub fn azure(location: &str, azure: &AzureLocation, network: &NetworkOptions) -> Result<Self> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let account = azure
            .account
            .clone()
            .or_else(|| env("AZURE_STORAGE_ACCOUNT"))
            .ok_or_else(|| StorageError::Config {
                location: location.to_string(),
                reason: "no storage account: set AZURE_STORAGE_ACCOUNT, or give the endpoint \
                         in the URL (azure:https://host/account/container/prefix)"
                    .to_string(),
            })?;
        let endpoint = azure
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("https://{account}.blob.core.windows.net"));
        let mut builder = services::Azblob::default()
            .container(&azure.container)
            .root(&azure.root())
            .endpoint(&endpoint)
            .account_name(&account);
        match (env("AZURE_STORAGE_KEY"), env("AZURE_STORAGE_SAS_TOKEN")) {
            (Some(key), _) => builder = builder.account_key(&key),
            (None, Some(sas)) => builder = builder.sas_token(&sas),
            (None, None) => {
                return Err(StorageError::Config {
                    location: location.to_string(),
                    reason: "no credentials: set AZURE_STORAGE_KEY (or AZURE_STORAGE_SAS_TOKEN)"
                        .to_string(),
                });
            }
        }
        opendal::install_default();
        Self::build(builder, location.to_string(), None, Some(network))
    }

    /// Opens an S3 bucket (AWS or S3-compatible). Credentials come from the usual AWS sources:
    /// `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`, then the profile files
    /// (`AWS_PROFILE`, `AWS_SHARED_CREDENTIALS_FILE`, `AWS_CONFIG_FILE`), then, for AWS
    /// endpoints only, the EC2 instance metadata service.
    pub fn s3(location: &str, s3: &S3Location, network: &NetworkOptions) -> Result<Self> {
        let env_region = std::env::var("AWS_REGION")
            .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
            .ok()
            .filter(|r| !r.is_empty());
        let mut builder = services::S3::default().bucket(&s3.bucket).root(&s3.root());
        match &s3.endpoint {
            Some(endpoint) => {
                // Path-style addressing (OpenDAL's default) works with every S3-compatible
                // server; the region only enters the signature, so any value will do for
                // servers that ignore it. Instance metadata is an AWS thing: never ask for it
                // when talking to another server.
                builder = builder
                    .endpoint(endpoint)
                    .region(env_region.as_deref().unwrap_or("us-east-1"))
                    .disable_ec2_metadata();
            }
            None => {
                let Some(region) = env_region else {
                    return Err(StorageError::Config {
                        location: location.to_string(),
                        reason: "no AWS region: set AWS_REGION (or AWS_DEFAULT_REGION), or give \
                                 the endpoint in the URL (s3:https://host/bucket/prefix)"
                            .to_string(),
                    });
                };
                builder = builder.region(&region);
            }
        }
        // Content-MD5 on every PUT: the server checks the bytes it received against it (so
        // corruption on the way is refused, not stored), and buckets with Object Lock
        // retention require it. Lifeboat's PUTs are single-part, where MD5 is allowed.
        builder = builder.checksum_algorithm("md5");
        // The reqwest (rustls) HTTP transport, installed once per process.
        opendal::install_default();
        Self::build(builder, location.to_string(), None, Some(network))
    }

    /// Opens an existing local directory as storage.
    pub fn local(root: &Path) -> Result<Self> {
        if !root.is_dir() {
            return Err(StorageError::Config {
                location: root.display().to_string(),
                reason: "the directory does not exist".to_string(),
            });
        }
        Self::local_create(root)
    }

    /// Opens a local directory as storage, creating it if needed.
    pub fn local_create(root: &Path) -> Result<Self> {
        let root = std::path::absolute(root).map_err(|source| StorageError::Io {
            operation: "resolve",
            path: root.to_path_buf(),
            source,
        })?;
        let root_str = root.to_str().ok_or_else(|| StorageError::Config {
            location: root.display().to_string(),
            reason: "the repository path must be valid UTF-8".to_string(),
        })?;
        let temp = root.join(LOCAL_TEMP_DIR);
        let builder = services::Fs::default()
            .root(root_str)
            .atomic_write_dir(temp.to_str().expect("UTF-8 root gives UTF-8 temp dir"));
        Self::build(builder, root.display().to_string(), Some(root), None)
    }

    /// In-memory storage for unit tests.
    pub fn memory() -> Result<Self> {
        Self::build(
            services::Memory::default(),
            "memory:".to_string(),
            None,
            None,
        )
    }

    fn build(
        builder: impl opendal::Builder,
        location: String,
        local_root: Option<PathBuf>,
        network: Option<&NetworkOptions>,
    ) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("lifeboat-io")
            .enable_all()
            .build()
            .map_err(|source| StorageError::Io {
                operation: "start I/O runtime for",
                path: PathBuf::from(&location),
                source,
            })?;
        let config_error = |source: opendal::Error| StorageError::Config {
            location: location.clone(),
            reason: source.to_string(),
        };
        let counters = Arc::new(RequestCounters::default());
        let mut op = Operator::new(builder).map_err(config_error)?;
        if let Some(network) = network {
            let retry_counters = counters.clone();
            let notify = move |event: RetryEvent<'_>| {
                retry_counters.count_retry(event.op);
                tracing::warn!(
                    "retrying {} (attempt {}) in {:.1} s: {}",
                    event.op,
                    event.attempt,
                    event.retry_after.as_secs_f64(),
                    event.err
                );
            };
            // Timeout inside retry, so each attempt has its own deadline and a timed-out
            // attempt is retried (OpenDAL's documented order).
            op = op
                .layer(
                    TimeoutLayer::new()
                        .with_timeout(network.timeout)
                        .with_io_timeout(network.io_timeout),
                )
                .layer(
                    RetryLayer::new()
                        .with_jitter()
                        .with_factor(2.0)
                        .with_min_delay(network.min_backoff)
                        .with_max_delay(network.max_backoff)
                        .with_max_times(network.retries)
                        .with_notify(notify),
                );
        }
        let op = {
            let _guard = runtime.enter();
            blocking::Operator::new(op).map_err(config_error)?
        };
        Ok(Storage {
            inner: Arc::new(Inner {
                op,
                location,
                local_root,
                counters,
                resumable_create_only: false,
                _runtime: runtime,
            }),
        })
    }

    /// Human-readable location, for messages.
    pub fn location(&self) -> &str {
        &self.inner.location
    }

    /// The local directory behind this storage, if it is the filesystem backend.
    pub fn local_root(&self) -> Option<&Path> {
        self.inner.local_root.as_deref()
    }

    /// Requests made so far through this handle (and its clones).
    pub fn request_stats(&self) -> RequestStats {
        self.inner.counters.snapshot()
    }

    fn backend_error(
        &self,
        operation: &'static str,
        key: &str,
        source: opendal::Error,
    ) -> StorageError {
        match source.kind() {
            ErrorKind::NotFound => StorageError::NotFound {
                key: key.to_string(),
                location: self.inner.location.clone(),
            },
            ErrorKind::PermissionDenied => StorageError::PermissionDenied {
                operation,
                key: key.to_string(),
                location: self.inner.location.clone(),
            },
            ErrorKind::AlreadyExists | ErrorKind::ConditionNotMatch => {
                StorageError::AlreadyExists {
                    key: key.to_string(),
                    location: self.inner.location.clone(),
                }
            }
            _ => StorageError::Backend {
                operation,
                key: key.to_string(),
                location: self.inner.location.clone(),
                source: Box::new(source),
            },
        }
    }

    /// Writes an object atomically and durably, replacing any object of the same key.
    ///
    /// Content-addressed objects never change, so replacing means rewriting identical bytes.
    pub fn put(&self, key: &str, data: Bytes) -> Result<()> {
        self.put_inner(key, data, false)
    }

    /// Writes an object only if no object with this key exists yet.
    ///
    /// On the local disk this is an exclusive create. On S3 it is a conditional PUT
    /// (`If-None-Match: *`), which AWS S3 and current S3-compatible servers honour (a second
    /// writer gets 412 and this returns [`StorageError::AlreadyExists`]); a server that ignores
    /// the header overwrites, so there two racing `init`s can both appear to succeed. On Azure it
    /// is `If-None-Match: *`; on GCS `ifGenerationMatch=0` on a resumable upload (counted as the
    /// requests it takes: one to start it, one per 8 MiB sent).
    ///
    /// A conditional put whose answer was lost (a reset or a cut-off response after the server
    /// stored the object) is retried and then meets its own object. So an existing object with
    /// exactly the bytes given counts as success: that is indistinguishable from having written
    /// it, and callers write objects no other writer could produce byte for byte (random salts).
    pub fn put_new(&self, key: &str, data: Bytes) -> Result<()> {
        match self.put_inner(key, data.clone(), true) {
            Err(StorageError::AlreadyExists { key: k, location }) => match self.get(key) {
                Ok(existing) if existing == data => Ok(()),
                _ => Err(StorageError::AlreadyExists { key: k, location }),
            },
            other => other,
        }
    }

    fn put_inner(&self, key: &str, data: Bytes, if_not_exists: bool) -> Result<()> {
        let len = data.len() as u64;
        let requests = if if_not_exists && self.inner.resumable_create_only {
            1 + len.div_ceil(GCS_RESUMABLE_CHUNK).max(1)
        } else {
            1
        };
        self.inner
            .counters
            .puts
            .fetch_add(requests, Ordering::Relaxed);
        let options = opendal::options::WriteOptions {
            if_not_exists,
            ..Default::default()
        };
        let new_dirs = self.missing_parent_dirs(key);
        self.inner
            .op
            .write_options(key, data, options)
            .map_err(|e| self.backend_error("put", key, e))?;
        self.inner
            .counters
            .bytes_written
            .fetch_add(len, Ordering::Relaxed);
        self.sync_parent_dirs(key, &new_dirs)
    }

    /// The directories (local storage only) that a put of `key` will create, deepest first.
    fn missing_parent_dirs(&self, key: &str) -> Vec<PathBuf> {
        let Some(root) = &self.inner.local_root else {
            return Vec::new();
        };
        let mut missing = Vec::new();
        let mut dir = Path::new(key).parent();
        while let Some(relative) = dir.filter(|d| !d.as_os_str().is_empty()) {
            let absolute = root.join(relative);
            if absolute.is_dir() {
                break;
            }
            missing.push(absolute);
            dir = relative.parent();
        }
        missing
    }

    /// OpenDAL fsyncs the file before renaming it into place, but not the directory that now
    /// holds the new name, nor the parents of directories it created; without this a power cut
    /// could forget an object a snapshot refers to.
    fn sync_parent_dirs(&self, key: &str, created: &[PathBuf]) -> Result<()> {
        let Some(root) = &self.inner.local_root else {
            return Ok(());
        };
        let mut dirs = vec![match key.rsplit_once('/') {
            Some((parent, _)) => root.join(parent),
            None => root.clone(),
        }];
        dirs.extend(
            created
                .iter()
                .filter_map(|d| d.parent().map(Path::to_path_buf)),
        );
        dirs.dedup();
        for dir in dirs {
            std::fs::File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(|source| StorageError::Io {
                    operation: "sync directory",
                    path: dir,
                    source,
                })?;
        }
        Ok(())
    }

    /// Reads a whole object.
    pub fn get(&self, key: &str) -> Result<Bytes> {
        self.inner.counters.gets.fetch_add(1, Ordering::Relaxed);
        let buf = self
            .inner
            .op
            .read(key)
            .map_err(|e| self.backend_error("get", key, e))?;
        let bytes = buf.to_bytes();
        self.inner
            .counters
            .bytes_read
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(bytes)
    }

    /// Reads a byte range of an object. A range past the end is [`StorageError::Truncated`];
    /// callers still check the length they got, as not every backend reports it.
    pub fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        self.inner.counters.gets.fetch_add(1, Ordering::Relaxed);
        let options = opendal::options::ReadOptions {
            range: opendal::BytesRange::new(range.start, Some(range.end - range.start)),
            ..Default::default()
        };
        let buf = self
            .inner
            .op
            .read_options(key, options)
            .map_err(|e| match e.kind() {
                ErrorKind::RangeNotSatisfied => StorageError::Truncated {
                    key: key.to_string(),
                    location: self.inner.location.clone(),
                    end: range.end,
                },
                _ => self.backend_error("get", key, e),
            })?;
        let bytes = buf.to_bytes();
        self.inner
            .counters
            .bytes_read
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(bytes)
    }

    /// Size of an object.
    pub fn size(&self, key: &str) -> Result<u64> {
        self.inner.counters.stats.fetch_add(1, Ordering::Relaxed);
        let meta = self
            .inner
            .op
            .stat(key)
            .map_err(|e| self.backend_error("stat", key, e))?;
        Ok(meta.content_length())
    }

    /// True if the object exists.
    pub fn exists(&self, key: &str) -> Result<bool> {
        match self.size(key) {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Lists every object under a prefix such as `snapshots/` (recursively). A prefix that does
    /// not exist lists as empty.
    pub fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        self.inner.counters.lists.fetch_add(1, Ordering::Relaxed);
        let options = opendal::options::ListOptions {
            recursive: true,
            ..Default::default()
        };
        let entries = match self.inner.op.list_options(prefix, options) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.backend_error("list", prefix, e)),
        };
        let mut objects: Vec<ObjectInfo> = entries
            .into_iter()
            .filter(|entry| entry.metadata().is_file())
            .map(|entry| ObjectInfo {
                key: entry.path().trim_start_matches('/').to_string(),
                size: entry.metadata().content_length(),
            })
            .collect();
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(objects)
    }

    /// Deletes an object. Deleting a missing object is not an error.
    pub fn delete(&self, key: &str) -> Result<()> {
        self.inner.counters.deletes.fetch_add(1, Ordering::Relaxed);
        match self.inner.op.delete(key) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.backend_error("delete", key, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_put_that_creates_directories_knows_which_to_sync() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::local_create(dir.path()).unwrap();
        let root = std::path::absolute(dir.path()).unwrap();
        assert_eq!(
            storage.missing_parent_dirs("streams/s1/0001"),
            vec![root.join("streams/s1"), root.join("streams")]
        );
        storage
            .put_new("streams/s1/0001", Bytes::from_static(b"x"))
            .unwrap();
        assert!(storage.missing_parent_dirs("streams/s1/0002").is_empty());
        assert_eq!(
            storage.missing_parent_dirs("streams/s2/0001"),
            vec![root.join("streams/s2")]
        );
        assert!(storage.missing_parent_dirs("config").is_empty());
    }

    fn roundtrip(storage: &Storage) {
        storage
            .put("a/b/one", Bytes::from_static(b"hello"))
            .unwrap();
        storage.put("a/two", Bytes::from_static(b"world!")).unwrap();
        assert_eq!(
            storage.get("a/b/one").unwrap(),
            Bytes::from_static(b"hello")
        );
        assert_eq!(
            storage.get_range("a/two", 1..4).unwrap(),
            Bytes::from_static(b"orl")
        );
        assert_eq!(storage.size("a/two").unwrap(), 6);
        let keys: Vec<_> = storage
            .list("a/")
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        assert_eq!(keys, vec!["a/b/one".to_string(), "a/two".to_string()]);
        assert!(storage.get("a/missing").unwrap_err().is_not_found());
        assert!(storage.list("nothing/").unwrap().is_empty());
        let err = storage
            .put_new("a/two", Bytes::from_static(b"x"))
            .unwrap_err();
        assert!(matches!(err, StorageError::AlreadyExists { .. }), "{err}");
        assert_eq!(storage.get("a/two").unwrap(), Bytes::from_static(b"world!"));
        // The same bytes again: a retried create-only put that meets its own object.
        storage
            .put_new("a/two", Bytes::from_static(b"world!"))
            .unwrap();
        storage.delete("a/two").unwrap();
        storage.delete("a/two").unwrap();
        assert!(!storage.exists("a/two").unwrap());
        let stats = storage.request_stats();
        assert!(stats.puts >= 3 && stats.gets >= 3 && stats.deletes == 2);
    }

    #[test]
    fn memory_backend_roundtrip() {
        roundtrip(&Storage::memory().unwrap());
    }

    #[test]
    fn local_backend_roundtrip_and_no_temp_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Storage::local(&dir.path().join("missing")).is_err());
        assert!(
            !dir.path().join("missing").exists(),
            "opening must not create"
        );
        let storage = Storage::local(dir.path()).unwrap();
        roundtrip(&storage);
        // Temporary files are renamed into place, never left behind.
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join(LOCAL_TEMP_DIR))
            .map(|rd| rd.flatten().collect())
            .unwrap_or_default();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        // Temporary files never show up in listings of real prefixes.
        assert!(
            storage
                .list("a/")
                .unwrap()
                .iter()
                .all(|o| !o.key.starts_with(LOCAL_TEMP_DIR))
        );
    }
}
