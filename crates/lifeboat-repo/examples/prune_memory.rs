//! Measures memory of the index and of prune on a repository of many blobs (default a million).
//!
//! ```sh
//! cargo run --release -p lifeboat-repo --example prune_memory -- [BLOBS] [DIR]
//! ```
//!
//! Builds a local repository in DIR (default a temporary directory) holding BLOBS small blobs in
//! two snapshots, forgets the one that uses half of them, and reports the resident memory after
//! loading the index and the peak during a prune that marks and sweeps. Peak figures come from
//! the kernel's high-water mark (`VmHWM`), reset between phases through `/proc/self/clear_refs`.

use std::time::Instant;

use lifeboat_repo::prune::{self, PruneOptions};
use lifeboat_repo::{
    BlobType, BlobWriter, InitOptions, KdfParams, Node, NodeKind, Repository, Snapshot, SourceKind,
    Tree, WriterOptions,
};
use lifeboat_storage::Storage;

const BLOBS_PER_FILE: usize = 10;
const FILES_PER_TREE: usize = 100;

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn reset_peak() {
    // "5" resets the peak resident set size to the current one (Linux 4.0 and later).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn snapshot(tree: lifeboat_repo::Id, tag: &str) -> Snapshot {
    Snapshot {
        version: 1,
        time: jiff::Timestamp::now(),
        tree,
        paths: vec!["/synthetic".into()],
        hostname: "bench".into(),
        username: "bench".into(),
        tags: vec![tag.into()],
        parent: None,
        source: SourceKind::Files,
        program_version: env!("CARGO_PKG_VERSION").into(),
        summary: None,
        source_state: None,
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let blobs: usize = args.next().map_or(Ok(1_000_000), |a| a.parse())?;
    let scratch = tempfile::tempdir()?;
    let dir = args
        .next()
        .map_or_else(|| scratch.path().join("repo"), Into::into);
    let options = InitOptions {
        kdf: KdfParams::insecure_for_tests(),
        ..Default::default()
    };
    let started = Instant::now();
    let repo = Repository::init(Storage::local_create(&dir)?, b"bench", &options)?;

    // Two snapshots: "all" uses every blob, "half" the even-numbered trees.
    let indexed = repo.clone().load_index()?;
    let writer = BlobWriter::new(&indexed, &WriterOptions::default());
    let trees = blobs / (BLOBS_PER_FILE * FILES_PER_TREE);
    let mut all = Vec::new();
    let mut half = Vec::new();
    let mut counter = 0u64;
    for t in 0..trees {
        let mut nodes = Vec::new();
        for f in 0..FILES_PER_TREE {
            let mut node = Node::new(format!("f{f:03}").into_bytes(), NodeKind::File);
            for _ in 0..BLOBS_PER_FILE {
                counter += 1;
                let data = format!("blob {counter} of a synthetic repository").into_bytes();
                node.content.push(writer.add(BlobType::Data, data)?.0);
            }
            nodes.push(node);
        }
        let (id, _) = writer.add(BlobType::Tree, Tree::new(nodes).to_bytes())?;
        let mut dir_node = Node::new(format!("d{t:05}").into_bytes(), NodeKind::Dir);
        dir_node.subtree = Some(id);
        if t % 2 == 0 {
            half.push(dir_node.clone());
        }
        all.push(dir_node);
    }
    let (all_root, _) = writer.add(BlobType::Tree, Tree::new(all).to_bytes())?;
    let (half_root, _) = writer.add(BlobType::Tree, Tree::new(half).to_bytes())?;
    writer.finish()?;
    let all_id = repo.save_snapshot(&snapshot(all_root, "all"))?;
    repo.save_snapshot(&snapshot(half_root, "half"))?;
    println!(
        "wrote {counter} data blobs in {trees} trees in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // The index alone.
    let base = status_kib("VmRSS:");
    reset_peak();
    let loaded = Instant::now();
    let indexed = repo.clone().load_index()?;
    let index_rss = status_kib("VmRSS:");
    println!(
        "index: {} blobs in {} packs loaded in {:.1} s; resident +{:.1} MiB = {:.0} bytes per blob",
        indexed.index().blob_count(),
        indexed.index().packs().len(),
        loaded.elapsed().as_secs_f64(),
        mib(index_rss.saturating_sub(base)),
        (index_rss.saturating_sub(base) * 1024) as f64 / indexed.index().blob_count() as f64
    );
    drop(indexed);

    // Prune: mark with half the data unused, then sweep.
    repo.forget_snapshot(&all_id)?;
    let prune_options = PruneOptions {
        grace: prune::MIN_GRACE,
        ..Default::default()
    };
    let base = status_kib("VmRSS:");
    reset_peak();
    let marked = Instant::now();
    let report = prune::prune(&repo, &prune_options)?;
    let mark_peak = status_kib("VmHWM:");
    println!(
        "prune mark: {} blobs used, {} unused, {} packs doomed, {} repacked in {:.1} s; peak resident +{:.1} MiB ({:.0} bytes per blob)",
        report.mark.blobs_used,
        report.mark.blobs_unused,
        report.mark.packs_unused,
        report.mark.packs_repacked,
        marked.elapsed().as_secs_f64(),
        mib(mark_peak.saturating_sub(base)),
        (mark_peak.saturating_sub(base) * 1024) as f64
            / (report.mark.blobs_used + report.mark.blobs_unused) as f64
    );
    let later = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(60);
    let base = status_kib("VmRSS:");
    reset_peak();
    let swept = Instant::now();
    let report = prune::prune_at(&repo, &prune_options, later)?;
    let sweep_peak = status_kib("VmHWM:");
    println!(
        "prune sweep (and next mark): {} packs deleted in {:.1} s; peak resident +{:.1} MiB",
        report.swept.iter().map(|s| s.packs_deleted).sum::<u64>(),
        swept.elapsed().as_secs_f64(),
        mib(sweep_peak.saturating_sub(base))
    );
    Ok(())
}
