//! Content-defined chunking with FastCDC (2020), seeded per repository.
//!
//! The `fastcdc` crate supplies the cut-point search; this module adds a streaming reader that
//! refills a large buffer and only moves leftover bytes when fewer than `max` remain, so each
//! byte is copied once into the buffer and once into its chunk (the crate's own streaming type
//! moves the whole tail after every chunk).

use std::borrow::Cow;
use std::io::{self, Read};

use fastcdc::v2020::{Normalization, cut_gear, get_gear_with_seed, select_masks};
use serde::{Deserialize, Serialize};

/// Chunk size bounds, stored in the repository config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    /// Smallest chunk (except a file's last).
    pub min_size: u32,
    /// Target average chunk size.
    pub avg_size: u32,
    /// Largest chunk.
    pub max_size: u32,
}

impl Default for ChunkerParams {
    /// 256 KiB / 512 KiB / 2 MiB; `docs/format.md` gives the measurements behind the choice.
    fn default() -> Self {
        ChunkerParams {
            min_size: 256 * 1024,
            avg_size: 512 * 1024,
            max_size: 2 * 1024 * 1024,
        }
    }
}

/// A configured chunker: cheap to clone and share.
#[derive(Clone)]
pub struct Chunker {
    params: ChunkerParams,
    masks: (u64, u64),
    gear: Cow<'static, [u64]>,
    gear_ls: Cow<'static, [u64]>,
}

impl Chunker {
    /// A chunker with the repository's parameters and secret seed.
    pub fn new(params: ChunkerParams, seed: u64) -> Chunker {
        let (gear, gear_ls) = get_gear_with_seed(seed);
        Chunker {
            params,
            masks: select_masks(params.avg_size as usize, Normalization::Level1),
            gear,
            gear_ls,
        }
    }

    /// The configured bounds.
    pub fn params(&self) -> ChunkerParams {
        self.params
    }

    /// Length of the first chunk of `data` (all of it if it is short, or at the end of input).
    fn cut(&self, data: &[u8]) -> usize {
        let p = self.params;
        let (mask_s, mask_l) = self.masks;
        let (_, len) = cut_gear(
            data,
            p.min_size as usize,
            p.avg_size as usize,
            p.max_size as usize,
            mask_s,
            mask_l,
            mask_s << 1,
            mask_l << 1,
            &self.gear,
            &self.gear_ls,
        );
        len
    }

    /// Splits a stream into chunks.
    pub fn chunks<R: Read>(&self, source: R) -> Chunks<'_, R> {
        self.chunks_with_buffer(source, Vec::new())
    }

    /// Like [`Chunker::chunks`], reusing a buffer from an earlier call (see [`Chunks::into_buffer`])
    /// so that a thread reading many files allocates once.
    pub fn chunks_with_buffer<R: Read>(&self, source: R, buf: Vec<u8>) -> Chunks<'_, R> {
        Chunks {
            chunker: self,
            source,
            buf,
            start: 0,
            end: 0,
            eof: false,
        }
    }
}

/// Iterator over the chunks of a stream, see [`Chunker::chunks`].
pub struct Chunks<'a, R> {
    chunker: &'a Chunker,
    source: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
}

impl<R: Read> Chunks<'_, R> {
    /// Gives the buffer back for reuse.
    pub fn into_buffer(self) -> Vec<u8> {
        self.buf
    }

    fn fill(&mut self) -> io::Result<()> {
        let max = self.chunker.params.max_size as usize;
        if self.buf.is_empty() {
            // Start small so that small files do not pay for a large buffer.
            self.buf = vec![0; max.min(256 * 1024)];
        }
        while !self.eof && self.end - self.start < max {
            if self.end == self.buf.len() {
                if self.start > 0 {
                    self.buf.copy_within(self.start..self.end, 0);
                    self.end -= self.start;
                    self.start = 0;
                } else {
                    // Room for two maximal chunks: leftovers are then moved at most once per
                    // `max` bytes consumed.
                    let grown = (self.buf.len() * 2).min(2 * max);
                    self.buf.resize(grown, 0);
                }
                continue;
            }
            match self.source.read(&mut self.buf[self.end..]) {
                Ok(0) => self.eof = true,
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl<R: Read> Iterator for Chunks<'_, R> {
    type Item = io::Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Err(e) = self.fill() {
            return Some(Err(e));
        }
        let available = &self.buf[self.start..self.end];
        if available.is_empty() {
            return None;
        }
        let len = if available.len() <= self.chunker.params.min_size as usize {
            available.len()
        } else {
            self.chunker.cut(available)
        };
        let chunk = available[..len].to_vec();
        self.start += len;
        Some(Ok(chunk))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn small() -> ChunkerParams {
        ChunkerParams {
            min_size: 4 * 1024,
            avg_size: 16 * 1024,
            max_size: 64 * 1024,
        }
    }

    fn random(len: usize, seed: u64) -> Vec<u8> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut data = vec![0u8; len];
        rng.fill(&mut data[..]);
        data
    }

    /// A reader that returns at most 1000 bytes per call, to exercise refills.
    struct Trickle<'a>(&'a [u8]);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.0.len()).min(1000);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn chunks_cover_input_within_bounds_and_do_not_depend_on_read_sizes() {
        let data = random(2_000_000, 1);
        let chunker = Chunker::new(small(), 7);
        let chunks: Vec<Vec<u8>> = chunker.chunks(&data[..]).map(|c| c.unwrap()).collect();
        let trickled: Vec<Vec<u8>> = chunker.chunks(Trickle(&data)).map(|c| c.unwrap()).collect();
        assert_eq!(chunks, trickled);
        assert_eq!(chunks.concat(), data);
        for c in &chunks[..chunks.len() - 1] {
            assert!(c.len() >= 4 * 1024 && c.len() <= 64 * 1024, "{}", c.len());
        }
        let avg = data.len() / chunks.len();
        assert!((8 * 1024..32 * 1024).contains(&avg), "average {avg}");
    }

    #[test]
    fn boundaries_resynchronise_after_an_insertion() {
        let data = random(1_000_000, 2);
        let mut shifted = b"a few bytes in front".to_vec();
        shifted.extend_from_slice(&data);
        let chunker = Chunker::new(small(), 7);
        let a: std::collections::HashSet<Vec<u8>> =
            chunker.chunks(&data[..]).map(|c| c.unwrap()).collect();
        let b: Vec<Vec<u8>> = chunker.chunks(&shifted[..]).map(|c| c.unwrap()).collect();
        let shared: usize = b.iter().filter(|c| a.contains(*c)).map(|c| c.len()).sum();
        assert!(
            shared as f64 > 0.9 * data.len() as f64,
            "only {shared} bytes shared"
        );
    }

    #[test]
    fn seed_changes_boundaries() {
        let data = random(1_000_000, 3);
        let one: Vec<usize> = Chunker::new(small(), 1)
            .chunks(&data[..])
            .map(|c| c.unwrap().len())
            .collect();
        let two: Vec<usize> = Chunker::new(small(), 2)
            .chunks(&data[..])
            .map(|c| c.unwrap().len())
            .collect();
        assert_ne!(one, two);
    }

    #[test]
    fn empty_and_tiny_inputs() {
        let chunker = Chunker::new(small(), 0);
        assert_eq!(chunker.chunks(&b""[..]).count(), 0);
        let one: Vec<_> = chunker.chunks(&b"abc"[..]).map(|c| c.unwrap()).collect();
        assert_eq!(one, vec![b"abc".to_vec()]);
    }
}
