//! The write pipeline: deduplicate, compress, encrypt, pack, upload, index.
//!
//! ```text
//! callers (any threads) --add--> [dedup check] --jobs--> compressors (N threads)
//!        --> packer (1 thread: encrypt, append to the open data or tree pack)
//!        --> uploaders (1 thread on a local disk, 4 on object storage: put packs; every 32
//!            stored packs put an index object)
//! ```
//!
//! Every channel is bounded, so memory stays bounded whatever the input: at most
//! `2N` chunks waiting per stage, two open packs, one finished pack waiting to upload and one
//! being uploaded per upload thread.
//!
//! # Crash safety
//!
//! A pack is named in an index object only after the pack is stored, and callers write the
//! snapshot only after [`BlobWriter::finish`] has stored the last index object. A process killed
//! at any moment therefore leaves, at worst, packs no index names (wasted space that prune
//! reclaims) and index objects no snapshot uses (their blobs are reused by the next backup).
//!
//! # Failure
//!
//! The first error of any stage is kept; later stages drain their input without working so
//! nothing blocks, [`BlobWriter::add`] starts failing, and [`BlobWriter::finish`] returns the
//! error. Nothing written before is invalidated.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, bounded};
use parking_lot::Mutex;

use crate::crypto::MasterKey;
use crate::id::IdSet;
use crate::index::{INDEX_PACKS_PER_OBJECT, Index, IndexFile, PackRecord};
use crate::pack::{BlobType, Compression, FinishedPack, PackWriter};
use crate::repository::{IndexedRepository, Repository, pack_key};
use crate::{Error, Id, Result};

/// Tuning of the pipeline.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Compression threads; defaults to the number of CPUs.
    pub compressors: usize,
    /// Do everything but store: figures come out as if stored, nothing is written.
    pub dry_run: bool,
    /// Packs uploaded at once; 0 picks 1 for a local disk and 4 for object storage, where one
    /// request at a time leaves most of the bandwidth unused. Each costs a pack of memory.
    pub uploaders: usize,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            compressors: std::thread::available_parallelism().map_or(2, |n| n.get()),
            dry_run: false,
            uploaders: 0,
        }
    }
}

/// What a pipeline wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// New blobs stored.
    pub blobs_added: u64,
    /// Their plaintext bytes.
    pub bytes_added: u64,
    /// Pack bytes written.
    pub bytes_stored: u64,
    /// Packs written.
    pub packs_written: u64,
    /// Index objects written.
    pub index_files_written: u64,
    /// The packs written, to update an in-memory index (see [`IndexedRepository::add_packs`]).
    pub packs: Vec<PackRecord>,
}

struct Job {
    blob_type: BlobType,
    id: Id,
    data: Vec<u8>,
}

struct Compressed {
    blob_type: BlobType,
    id: Id,
    compression: Compression,
    raw_len: u32,
    payload: Vec<u8>,
}

#[derive(Default)]
struct Shared {
    failed: AtomicBool,
    error: Mutex<Option<Error>>,
    blobs_added: AtomicU64,
    bytes_added: AtomicU64,
    bytes_stored: AtomicU64,
    packs_written: AtomicU64,
    index_files_written: AtomicU64,
    packs: Mutex<Vec<PackRecord>>,
}

impl Shared {
    fn fail(&self, error: Error) {
        let mut slot = self.error.lock();
        if slot.is_none() {
            *slot = Some(error);
        }
        self.failed.store(true, Ordering::SeqCst);
    }

    fn failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }
}

/// Adds blobs to a repository, deduplicating against its index. Share it by reference between
/// the threads that produce blobs; call [`BlobWriter::finish`] once at the end.
pub struct BlobWriter {
    key: Arc<MasterKey>,
    index: Arc<Index>,
    pending: Mutex<IdSet>,
    jobs: Option<Sender<Job>>,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl BlobWriter {
    /// Starts the pipeline's threads.
    pub fn new(repo: &IndexedRepository, options: &WriterOptions) -> BlobWriter {
        let compressors = options.compressors.max(1);
        let shared = Arc::new(Shared::default());
        let (job_tx, job_rx) = bounded::<Job>(2 * compressors);
        let (packed_tx, packed_rx) = bounded::<Compressed>(2 * compressors);
        let (upload_tx, upload_rx) = bounded::<FinishedPack>(1);
        let mut threads = Vec::new();
        let level = repo.config().compression_level;
        for n in 0..compressors {
            let (rx, tx, shared) = (job_rx.clone(), packed_tx.clone(), shared.clone());
            threads.push(spawn(format!("lifeboat-zstd-{n}"), move || {
                compress_stage(rx, tx, level, &shared)
            }));
        }
        drop(packed_tx);
        let key = repo.key().clone();
        let pack_size = repo.config().pack_size as usize;
        {
            let (key, shared) = (key.clone(), shared.clone());
            threads.push(spawn("lifeboat-pack".into(), move || {
                pack_stage(packed_rx, upload_tx, &key, pack_size, &shared)
            }));
        }
        let uploaders = match options.uploaders {
            0 if repo.storage().local_root().is_some() => 1,
            0 => 4,
            n => n,
        };
        let batch = Arc::new(IndexBatch {
            packs: Mutex::new(Vec::new()),
            live: AtomicUsize::new(uploaders),
        });
        for n in 0..uploaders {
            let (rx, repo, shared, batch) = (
                upload_rx.clone(),
                (**repo).clone(),
                shared.clone(),
                batch.clone(),
            );
            let dry_run = options.dry_run;
            threads.push(spawn(format!("lifeboat-upload-{n}"), move || {
                upload_stage(rx, &repo, &shared, &batch, dry_run)
            }));
        }
        BlobWriter {
            key,
            index: repo.index().clone(),
            pending: Mutex::new(IdSet::default()),
            jobs: Some(job_tx),
            shared,
            threads,
        }
    }

    /// The id a blob with this content has in this repository.
    pub fn blob_id(&self, data: &[u8]) -> Id {
        self.key.blob_id(data)
    }

    /// True if the blob is stored (in a pack no prune plan dooms) or being stored.
    pub fn is_known(&self, id: &Id) -> bool {
        self.index.contains_reusable(id) || self.pending.lock().contains(id)
    }

    /// Adds a blob unless it is already stored; returns its id and whether it was new.
    pub fn add(&self, blob_type: BlobType, data: Vec<u8>) -> Result<(Id, bool)> {
        let id = self.key.blob_id(&data);
        let added = self.add_with_id(blob_type, id, data)?;
        Ok((id, added))
    }

    /// Like [`BlobWriter::add`] for a caller that computed the id already.
    pub fn add_with_id(&self, blob_type: BlobType, id: Id, data: Vec<u8>) -> Result<bool> {
        if self.shared.failed() {
            return Err(self.stopped());
        }
        if self.index.contains_reusable(&id) || !self.pending.lock().insert(id) {
            return Ok(false);
        }
        let jobs = self.jobs.as_ref().expect("jobs sender lives until finish");
        jobs.send(Job {
            blob_type,
            id,
            data,
        })
        .map_err(|_| self.stopped())?;
        Ok(true)
    }

    /// True once a stage has failed; [`BlobWriter::finish`] then returns the cause.
    pub fn failed(&self) -> bool {
        self.shared.failed()
    }

    fn stopped(&self) -> Error {
        match &*self.shared.error.lock() {
            Some(e) => Error::Pipeline(e.to_string()),
            None => Error::Pipeline("stopped".to_string()),
        }
    }

    /// Flushes open packs, waits for every upload and writes the last index object.
    ///
    /// The repository handle the writer came from does not see the new blobs until they are
    /// added with [`IndexedRepository::add_packs`].
    pub fn finish(mut self) -> Result<WriterStats> {
        self.jobs = None;
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                self.shared
                    .fail(Error::Pipeline("a pipeline thread panicked".to_string()));
            }
        }
        if let Some(error) = self.shared.error.lock().take() {
            return Err(error);
        }
        let s = &self.shared;
        Ok(WriterStats {
            blobs_added: s.blobs_added.load(Ordering::Relaxed),
            bytes_added: s.bytes_added.load(Ordering::Relaxed),
            bytes_stored: s.bytes_stored.load(Ordering::Relaxed),
            packs_written: s.packs_written.load(Ordering::Relaxed),
            index_files_written: s.index_files_written.load(Ordering::Relaxed),
            packs: std::mem::take(&mut *s.packs.lock()),
        })
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // Dropped without finish (an error elsewhere): stop the threads without waiting on work.
        self.shared.failed.store(true, Ordering::SeqCst);
        self.jobs = None;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(name)
        .spawn(f)
        .expect("spawning a pipeline thread")
}

fn compress_stage(rx: Receiver<Job>, tx: Sender<Compressed>, level: i32, shared: &Shared) {
    let mut compressor = zstd::bulk::Compressor::new(level).ok();
    for job in rx {
        if shared.failed() {
            continue;
        }
        let raw_len = u32::try_from(job.data.len()).expect("blobs are far below 4 GiB");
        // Keep the compressed form only if it saves at least 1/32 (3%); otherwise the
        // decompression on restore costs more than the bytes saved.
        let compressed = compressor
            .as_mut()
            .and_then(|c| c.compress(&job.data).ok())
            .filter(|c| c.len() < job.data.len() - job.data.len() / 32);
        let (compression, payload) = match compressed {
            Some(c) => (Compression::Zstd, c),
            None => (Compression::None, job.data),
        };
        let item = Compressed {
            blob_type: job.blob_type,
            id: job.id,
            compression,
            raw_len,
            payload,
        };
        if tx.send(item).is_err() {
            return;
        }
    }
}

fn pack_stage(
    rx: Receiver<Compressed>,
    tx: Sender<FinishedPack>,
    key: &MasterKey,
    pack_size: usize,
    shared: &Shared,
) {
    // Trees go to their own packs so that reading all trees (check, diff, ls) touches few packs.
    let capacity = pack_size + pack_size / 4;
    let mut data: Option<PackWriter> = None;
    let mut trees: Option<PackWriter> = None;
    for blob in rx {
        if shared.failed() {
            continue;
        }
        let slot = match blob.blob_type {
            BlobType::Data => &mut data,
            BlobType::Tree => &mut trees,
        };
        let writer = slot.get_or_insert_with(|| PackWriter::new(capacity));
        writer.add(
            key,
            blob.blob_type,
            blob.id,
            blob.compression,
            blob.raw_len,
            &blob.payload,
        );
        shared.blobs_added.fetch_add(1, Ordering::Relaxed);
        shared
            .bytes_added
            .fetch_add(u64::from(blob.raw_len), Ordering::Relaxed);
        if writer.len() >= pack_size {
            let finished = slot.take().expect("just used").finish(key);
            if tx.send(finished).is_err() {
                return;
            }
        }
    }
    for writer in [data, trees].into_iter().flatten() {
        if !shared.failed() && tx.send(writer.finish(key)).is_err() {
            return;
        }
    }
}

/// Packs stored but not yet named by an index object, shared by the upload threads.
struct IndexBatch {
    packs: Mutex<Vec<PackRecord>>,
    /// Upload threads still running; the last one to finish writes the remainder.
    live: AtomicUsize,
}

fn upload_stage(
    rx: Receiver<FinishedPack>,
    repo: &Repository,
    shared: &Shared,
    batch: &IndexBatch,
    dry_run: bool,
) {
    let save_batch = |packs: Vec<PackRecord>| -> Result<()> {
        if packs.is_empty() {
            return Ok(());
        }
        let file = IndexFile {
            supersedes: Vec::new(),
            packs,
        };
        repo.save_index(&file)?;
        shared.index_files_written.fetch_add(1, Ordering::Relaxed);
        Ok(())
    };
    for pack in rx {
        if shared.failed() {
            continue;
        }
        let len = pack.bytes.len() as u64;
        if dry_run {
            shared.bytes_stored.fetch_add(len, Ordering::Relaxed);
            continue;
        }
        if let Err(e) = repo
            .storage()
            .put(&pack_key(&pack.id), Bytes::from(pack.bytes))
        {
            shared.fail(e.into());
            continue;
        }
        shared.bytes_stored.fetch_add(len, Ordering::Relaxed);
        shared.packs_written.fetch_add(1, Ordering::Relaxed);
        let record = PackRecord {
            id: pack.id,
            salt: pack.salt,
            entries: pack.entries,
        };
        shared.packs.lock().push(record.clone());
        // A pack joins the batch only once it is stored, so an index object never names a
        // pack that is not there.
        let full = {
            let mut packs = batch.packs.lock();
            packs.push(record);
            (packs.len() >= INDEX_PACKS_PER_OBJECT).then(|| std::mem::take(&mut *packs))
        };
        if let Some(packs) = full
            && let Err(e) = save_batch(packs)
        {
            shared.fail(e);
        }
    }
    // The last thread out indexes what is left; the others' index writes finish before
    // `BlobWriter::finish` returns, since it joins every thread.
    let last = batch.live.fetch_sub(1, Ordering::SeqCst) == 1;
    if last && !shared.failed() && !dry_run {
        let rest = std::mem::take(&mut *batch.packs.lock());
        if let Err(e) = save_batch(rest) {
            shared.fail(e);
        }
    }
}
