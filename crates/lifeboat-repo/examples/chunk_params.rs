//! Measures chunker parameters on real data: how many chunks (index size), and how much must be
//! stored again after small edits (deduplication), for several min/avg/max settings.
//!
//! ```text
//! cargo run --release -p lifeboat-repo --example chunk_params -- DIR [EDITS_PER_FILE]
//! ```
//!
//! The edit workload inserts 100 bytes at `EDITS_PER_FILE` (default 3) random places in every
//! file of at least 1 MiB, the way an updated library or database file changes in place. The
//! figures behind the defaults are in `docs/format.md`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use lifeboat_repo::{Chunker, ChunkerParams};
use rand::{Rng, SeedableRng};

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let ty = entry.file_type().unwrap();
        if ty.is_dir() {
            files(&entry.path(), out);
        } else if ty.is_file() {
            out.push(entry.path());
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .expect("usage: chunk_params DIR [EDITS_PER_FILE]"),
    );
    let edits: usize = args.next().map_or(3, |a| a.parse().unwrap());
    let mut paths = Vec::new();
    files(&dir, &mut paths);
    paths.sort();
    let contents: Vec<Vec<u8>> = paths
        .iter()
        .map(|p| std::fs::read(p).unwrap_or_default())
        .collect();
    let total: usize = contents.iter().map(Vec::len).sum();
    let large: Vec<usize> = (0..contents.len())
        .filter(|&i| contents[i].len() >= 1 << 20)
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let edited: Vec<Vec<u8>> = large
        .iter()
        .map(|&i| {
            let mut data = contents[i].clone();
            for _ in 0..edits {
                let at = rng.random_range(0..data.len());
                let insert: Vec<u8> = (0..100).map(|_| rng.random()).collect();
                data.splice(at..at, insert);
            }
            data
        })
        .collect();
    let large_bytes: usize = large.iter().map(|&i| contents[i].len()).sum();
    println!(
        "{} files, {:.0} MiB; {} files >= 1 MiB ({:.0} MiB) get {edits} insertions each",
        paths.len(),
        total as f64 / 1048576.0,
        large.len(),
        large_bytes as f64 / 1048576.0
    );
    println!(
        "| min / avg / max | chunks | mean chunk | index memory | re-stored after edits | chunking MB/s |"
    );
    println!("|---|---|---|---|---|---|");
    for (min, avg, max) in [
        (64, 256, 1024),
        (256, 512, 2048),
        (512, 1024, 8192),
        (1024, 2048, 8192),
        (1024, 4096, 16384),
    ] {
        let params = ChunkerParams {
            min_size: min * 1024,
            avg_size: avg * 1024,
            max_size: max * 1024,
        };
        let chunker = Chunker::new(params, 0x5eed);
        let started = Instant::now();
        let mut seen = HashSet::new();
        let mut chunks = 0usize;
        for data in &contents {
            for chunk in chunker.chunks(&data[..]) {
                chunks += 1;
                seen.insert(blake3::hash(&chunk.unwrap()));
            }
        }
        let secs = started.elapsed().as_secs_f64();
        let unique = seen.len();
        let mut restored = 0usize;
        for data in &edited {
            for chunk in chunker.chunks(&data[..]) {
                let chunk = chunk.unwrap();
                if seen.insert(blake3::hash(&chunk)) {
                    restored += chunk.len();
                }
            }
        }
        println!(
            "| {min} KiB / {avg} KiB / {max} KiB | {chunks} | {:.0} KiB | {:.1} MiB | {:.1} MiB ({:.1}% of edited files) | {:.0} |",
            total as f64 / chunks as f64 / 1024.0,
            unique as f64 * 60.0 / 1048576.0,
            restored as f64 / 1048576.0,
            100.0 * restored as f64 / large_bytes as f64,
            total as f64 / secs / 1e6
        );
    }
}
