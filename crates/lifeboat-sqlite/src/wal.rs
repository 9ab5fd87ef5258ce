//! Reading an SQLite write-ahead log directly from its `-wal` file.
//!
//! The layout is SQLite's documented file format: a 32-byte header (magic, format version, page
//! size, checkpoint sequence, two salts, a checksum of the first 24 bytes), then frames of a
//! 24-byte header (page number, database size in pages after a commit or 0, the two salts, a
//! cumulative checksum) and one page. A frame is valid when its salts match the header's and its
//! checksum continues the chain from the previous frame (or the header); the log ends at the
//! first frame that is not valid. Only frames up to the last valid *commit* frame belong to
//! committed transactions; later ones are a transaction still being written or left over.
//!
//! We read the file rather than asking SQLite because SQLite has no API that hands out frames,
//! and because the same rules tell a restore whether a shipped segment is intact.

use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{Error, Result};

/// Size of the WAL file header.
pub const HEADER_SIZE: u64 = 32;
/// Size of a frame header.
pub const FRAME_HEADER_SIZE: usize = 24;
const MAGIC_LITTLE_ENDIAN: u32 = 0x377f_0682;
const MAGIC_BIG_ENDIAN: u32 = 0x377f_0683;
const FORMAT_VERSION: u32 = 3_007_000;

/// The parsed 32-byte WAL header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalHeader {
    /// Checksums are computed over big-endian words (else little-endian).
    pub big_endian: bool,
    /// Database page size in bytes.
    pub page_size: u32,
    /// Incremented by SQLite at every WAL restart.
    pub checkpoint_seq: u32,
    /// Salts: a new pair marks a new cycle of the log (after a checkpoint restarted it).
    pub salt: [u32; 2],
    /// Checksum of the first 24 bytes; the seed of the first frame's checksum.
    pub checksum: [u32; 2],
}

fn be32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

impl WalHeader {
    /// Parses and verifies a header; `None` when the bytes are not (yet) a valid header.
    pub fn parse(bytes: &[u8]) -> Option<WalHeader> {
        if bytes.len() < HEADER_SIZE as usize {
            return None;
        }
        let big_endian = match be32(bytes, 0) {
            MAGIC_LITTLE_ENDIAN => false,
            MAGIC_BIG_ENDIAN => true,
            _ => return None,
        };
        if be32(bytes, 4) != FORMAT_VERSION {
            return None;
        }
        let page_size = be32(bytes, 8);
        if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
            return None;
        }
        let header = WalHeader {
            big_endian,
            page_size,
            checkpoint_seq: be32(bytes, 12),
            salt: [be32(bytes, 16), be32(bytes, 20)],
            checksum: [be32(bytes, 24), be32(bytes, 28)],
        };
        (checksum(big_endian, [0, 0], &bytes[..24]) == header.checksum).then_some(header)
    }

    /// Bytes of one frame (header and page).
    pub fn frame_size(&self) -> u64 {
        FRAME_HEADER_SIZE as u64 + u64::from(self.page_size)
    }
}

/// SQLite's WAL checksum: two running sums over 32-bit words, each pair folded into the other.
pub fn checksum(big_endian: bool, seed: [u32; 2], data: &[u8]) -> [u32; 2] {
    debug_assert!(data.len().is_multiple_of(8));
    let [mut s0, mut s1] = seed;
    for pair in data.chunks_exact(8) {
        let (a, b) = if big_endian {
            (be32(pair, 0), be32(pair, 4))
        } else {
            (
                u32::from_le_bytes(pair[0..4].try_into().expect("4")),
                u32::from_le_bytes(pair[4..8].try_into().expect("4")),
            )
        };
        s0 = s0.wrapping_add(a).wrapping_add(s1);
        s1 = s1.wrapping_add(b).wrapping_add(s0);
    }
    [s0, s1]
}

/// One frame's header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Page number (1-based).
    pub page: u32,
    /// Database size in pages after this frame's transaction, for a commit frame; else 0.
    pub db_pages: u32,
    /// Salts, equal to the header's in a valid frame.
    pub salt: [u32; 2],
    /// Cumulative checksum up to and including this frame.
    pub checksum: [u32; 2],
}

impl FrameHeader {
    /// Parses the 24 bytes of a frame header.
    pub fn parse(bytes: &[u8]) -> FrameHeader {
        FrameHeader {
            page: be32(bytes, 0),
            db_pages: be32(bytes, 4),
            salt: [be32(bytes, 8), be32(bytes, 12)],
            checksum: [be32(bytes, 16), be32(bytes, 20)],
        }
    }

    /// A commit frame ends a transaction.
    pub fn is_commit(&self) -> bool {
        self.db_pages != 0
    }
}

/// Checks that `frame` (header and page) continues the chain from `seed` under `salt`, and
/// returns its header.
pub fn verify_frame(
    big_endian: bool,
    salt: [u32; 2],
    seed: [u32; 2],
    frame: &[u8],
) -> Option<FrameHeader> {
    let header = FrameHeader::parse(&frame[..FRAME_HEADER_SIZE]);
    if header.salt != salt || header.page == 0 {
        return None;
    }
    let sum = checksum(big_endian, seed, &frame[..8]);
    let sum = checksum(big_endian, sum, &frame[FRAME_HEADER_SIZE..]);
    (sum == header.checksum).then_some(header)
}

/// Where shipping stands in a WAL: the cycle (salts), the byte offset just after the last
/// shipped commit frame, and the checksum there (the seed of the next frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WalCursor {
    /// Salts of the WAL cycle.
    pub salt: [u32; 2],
    /// Byte offset in the `-wal` file.
    pub offset: u64,
    /// Cumulative checksum at `offset`.
    pub checksum: [u32; 2],
}

/// Committed frames read from a WAL after a cursor.
#[derive(Debug, Clone)]
pub struct WalRead {
    /// The WAL header.
    pub header: WalHeader,
    /// The frames start a new cycle of the log (its salts differ from the cursor's).
    pub new_cycle: bool,
    /// Where the frames start.
    pub start: WalCursor,
    /// Just after the last commit frame read.
    pub end: WalCursor,
    /// The frames, verbatim (headers and pages), whole transactions only (empty from
    /// [`scan_committed`]).
    pub frames: Vec<u8>,
    /// Bytes of those frames (`end` − `start`).
    pub bytes: u64,
    /// Commit frames among them.
    pub commits: u64,
}

/// Reads the committed frames after `cursor` (or from the start of the log when the cursor is
/// `None` or belongs to another cycle), stopping after the first commit at or past `max_bytes`.
/// Returns `None` when the file is missing or has no valid header yet.
pub fn read_committed(
    wal_path: &Path,
    cursor: Option<&WalCursor>,
    max_bytes: u64,
) -> Result<Option<WalRead>> {
    read_inner(wal_path, cursor, max_bytes, true)
}

/// As [`read_committed`], but only finds where the committed frames end (`frames` stays
/// empty): memory stays small however large a transaction is.
pub fn scan_committed(
    wal_path: &Path,
    cursor: Option<&WalCursor>,
    max_bytes: u64,
) -> Result<Option<WalRead>> {
    read_inner(wal_path, cursor, max_bytes, false)
}

/// Frames read for one segment by [`read_piece`].
#[derive(Debug, Clone)]
pub struct WalPiece {
    /// The WAL header.
    pub header: WalHeader,
    /// Where the frames start (the cursor given).
    pub start: WalCursor,
    /// Just after the last frame returned.
    pub end: WalCursor,
    /// The frames, verbatim.
    pub frames: Vec<u8>,
    /// Commit frames among them.
    pub commits: u64,
    /// The frames end inside a transaction (they hold no commit: one transaction larger than
    /// `max_bytes`, continued by the next piece).
    pub open: bool,
}

/// Reads the frames after `start` (in its cycle) up to offset `until`, which must follow a
/// commit frame, for one segment of at most about `max_bytes`: whole transactions if at least
/// one fits, else the first `max_bytes` of the transaction that does not (an open piece).
/// Returns `None` when the file is missing, has no header, or is in another cycle.
pub fn read_piece(
    wal_path: &Path,
    start: &WalCursor,
    until: u64,
    max_bytes: u64,
) -> Result<Option<WalPiece>> {
    let Some((file, header)) = open_with_header(wal_path)? else {
        return Ok(None);
    };
    if header.salt != start.salt {
        return Ok(None);
    }
    let frame_size = header.frame_size();
    let mut frame = vec![0u8; frame_size as usize];
    let mut frames = Vec::new();
    let mut position = *start;
    let mut committed = (0usize, *start);
    let mut commits = 0;
    while position.offset < until && (frames.len() as u64) < max_bytes.max(frame_size) {
        let complete = read_at(&file, &mut frame, position.offset)
            .map_err(|e| Error::io("read WAL", wal_path, e))?;
        if !complete {
            break;
        }
        let Some(frame_header) =
            verify_frame(header.big_endian, header.salt, position.checksum, &frame)
        else {
            break;
        };
        frames.extend_from_slice(&frame);
        position.offset += frame_size;
        position.checksum = frame_header.checksum;
        if frame_header.is_commit() {
            commits += 1;
            committed = (frames.len(), position);
        }
    }
    // Open only when the size limit cut a transaction, not when the WAL ended early (the
    // caller then finds the frames short of `until`).
    let open = commits == 0 && position.offset < until && frames.len() as u64 >= max_bytes;
    let end = if open {
        position
    } else {
        // Whole transactions only: what follows the last commit goes into the next piece.
        frames.truncate(committed.0);
        committed.1
    };
    Ok(Some(WalPiece {
        header,
        start: *start,
        end,
        frames,
        commits,
        open,
    }))
}

fn read_inner(
    wal_path: &Path,
    cursor: Option<&WalCursor>,
    max_bytes: u64,
    keep: bool,
) -> Result<Option<WalRead>> {
    let Some((file, header)) = open_with_header(wal_path)? else {
        return Ok(None);
    };
    let (start, new_cycle) = match cursor {
        Some(cursor) if cursor.salt == header.salt => (*cursor, false),
        _ => (
            WalCursor {
                salt: header.salt,
                offset: HEADER_SIZE,
                checksum: header.checksum,
            },
            true,
        ),
    };
    let frame_size = header.frame_size();
    let mut frame = vec![0u8; frame_size as usize];
    let mut pending = Vec::new();
    let mut frames = Vec::new();
    let mut position = start;
    let mut end = start;
    let mut commits = 0;
    let mut bytes = 0u64;
    loop {
        let complete = read_at(&file, &mut frame, position.offset)
            .map_err(|e| Error::io("read WAL", wal_path, e))?;
        if !complete {
            break;
        }
        let Some(frame_header) =
            verify_frame(header.big_endian, header.salt, position.checksum, &frame)
        else {
            break;
        };
        if keep {
            pending.extend_from_slice(&frame);
        }
        position.offset += frame_size;
        position.checksum = frame_header.checksum;
        if frame_header.is_commit() {
            frames.append(&mut pending);
            end = position;
            bytes = end.offset - start.offset;
            commits += 1;
            if bytes >= max_bytes {
                break;
            }
        }
    }
    Ok(Some(WalRead {
        header,
        new_cycle,
        start,
        end,
        frames,
        bytes,
        commits,
    }))
}

/// Reads exactly `buf.len()` bytes at `offset`; false if the file ends first.
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<bool> {
    match file.read_exact_at(buf, offset) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// Reads the WAL header of `wal_path`, if it has a valid one.
pub fn read_header(wal_path: &Path) -> Result<Option<WalHeader>> {
    Ok(open_with_header(wal_path)?.map(|(_, header)| header))
}

/// Opens `wal_path` and reads its header; `None` when the file is missing or has no valid
/// header (SQLite has not written one yet, or the log was truncated).
fn open_with_header(wal_path: &Path) -> Result<Option<(File, WalHeader)>> {
    let file = match File::open(wal_path) {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("open WAL", wal_path, e)),
    };
    let mut bytes = [0u8; HEADER_SIZE as usize];
    if !read_at(&file, &mut bytes, 0).map_err(|e| Error::io("read WAL", wal_path, e))? {
        return Ok(None);
    }
    Ok(WalHeader::parse(&bytes).map(|header| (file, header)))
}

/// True when the frame that ends at `cursor.offset` in the current WAL file is still the one
/// whose checksum the cursor records: the log has not been restarted or rewritten since.
pub fn cursor_still_valid(wal_path: &Path, cursor: &WalCursor) -> Result<bool> {
    let Some(header) = read_header(wal_path)? else {
        return Ok(false);
    };
    if header.salt != cursor.salt {
        return Ok(false);
    }
    if cursor.offset == HEADER_SIZE {
        return Ok(header.checksum == cursor.checksum);
    }
    let frame_size = header.frame_size();
    if cursor.offset < HEADER_SIZE + frame_size
        || !(cursor.offset - HEADER_SIZE).is_multiple_of(frame_size)
    {
        return Ok(false);
    }
    let file = File::open(wal_path).map_err(|e| Error::io("open WAL", wal_path, e))?;
    let mut bytes = [0u8; FRAME_HEADER_SIZE];
    if !read_at(&file, &mut bytes, cursor.offset - frame_size)
        .map_err(|e| Error::io("read WAL", wal_path, e))?
    {
        return Ok(false);
    }
    let frame = FrameHeader::parse(&bytes);
    Ok(frame.salt == cursor.salt && frame.checksum == cursor.checksum && frame.is_commit())
}

/// Iterates over the frames of a verbatim run of frames, verifying the checksum chain from
/// `seed`; yields the header and page of each, or the index of the first bad frame.
pub fn frames(
    bytes: &[u8],
    page_size: u32,
    big_endian: bool,
    salt: [u32; 2],
    seed: [u32; 2],
) -> impl Iterator<Item = std::result::Result<(FrameHeader, &[u8]), usize>> {
    let frame_size = FRAME_HEADER_SIZE + page_size as usize;
    let mut sum = seed;
    let mut failed = false;
    bytes
        .chunks(frame_size)
        .enumerate()
        .map_while(move |(index, frame)| {
            if failed {
                return None;
            }
            match (frame.len() == frame_size)
                .then(|| verify_frame(big_endian, salt, sum, frame))
                .flatten()
            {
                Some(header) => {
                    sum = header.checksum;
                    Some(Ok((header, &frame[FRAME_HEADER_SIZE..])))
                }
                None => {
                    failed = true;
                    Some(Err(index))
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_bytes(big_endian: bool, page_size: u32, salt: [u32; 2]) -> Vec<u8> {
        let mut h = Vec::new();
        let magic = if big_endian {
            MAGIC_BIG_ENDIAN
        } else {
            MAGIC_LITTLE_ENDIAN
        };
        for word in [magic, FORMAT_VERSION, page_size, 7, salt[0], salt[1]] {
            h.extend_from_slice(&word.to_be_bytes());
        }
        let sum = checksum(big_endian, [0, 0], &h);
        h.extend_from_slice(&sum[0].to_be_bytes());
        h.extend_from_slice(&sum[1].to_be_bytes());
        h
    }

    fn frame_bytes(
        big_endian: bool,
        salt: [u32; 2],
        seed: [u32; 2],
        page: u32,
        db_pages: u32,
        fill: u8,
        page_size: u32,
    ) -> (Vec<u8>, [u32; 2]) {
        let mut f = Vec::new();
        for word in [page, db_pages, salt[0], salt[1]] {
            f.extend_from_slice(&word.to_be_bytes());
        }
        let body = vec![fill; page_size as usize];
        let sum = checksum(big_endian, seed, &f[..8]);
        let sum = checksum(big_endian, sum, &body);
        f.extend_from_slice(&sum[0].to_be_bytes());
        f.extend_from_slice(&sum[1].to_be_bytes());
        f.extend_from_slice(&body);
        (f, sum)
    }

    #[test]
    fn reads_whole_transactions_only_and_resumes_from_a_cursor() {
        for big_endian in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("db-wal");
            let salt = [11, 22];
            let mut wal = header_bytes(big_endian, 512, salt);
            let header = WalHeader::parse(&wal).unwrap();
            let mut seed = header.checksum;
            // Transaction 1: pages 1, 2 (commit). Transaction 2: page 3 (commit). Then a frame
            // of an unfinished transaction.
            for (page, db_pages) in [(1, 0), (2, 2), (3, 3), (4, 0)] {
                let (frame, sum) = frame_bytes(big_endian, salt, seed, page, db_pages, 9, 512);
                wal.extend_from_slice(&frame);
                seed = sum;
            }
            std::fs::write(&path, &wal).unwrap();
            let read = read_committed(&path, None, u64::MAX).unwrap().unwrap();
            assert!(read.new_cycle);
            assert_eq!(read.commits, 2);
            assert_eq!(read.frames.len(), 3 * 536);
            assert_eq!(read.end.offset, 32 + 3 * 536);
            assert!(cursor_still_valid(&path, &read.end).unwrap());
            // A small budget stops after the first transaction.
            let first = read_committed(&path, None, 1).unwrap().unwrap();
            assert_eq!(first.commits, 1);
            let rest = read_committed(&path, Some(&first.end), u64::MAX)
                .unwrap()
                .unwrap();
            assert!(!rest.new_cycle);
            assert_eq!(rest.commits, 1);
            assert_eq!(rest.end, read.end);
            let pages: Vec<u32> = frames(&read.frames, 512, big_endian, salt, header.checksum)
                .map(|f| f.unwrap().0.page)
                .collect();
            assert_eq!(pages, [1, 2, 3]);
            // A flipped byte ends the valid log there.
            let mut bad = wal.clone();
            bad[32 + 536 + 100] ^= 1;
            std::fs::write(&path, &bad).unwrap();
            let read = read_committed(&path, None, u64::MAX).unwrap().unwrap();
            assert_eq!(read.commits, 0);
            assert!(
                frames(&wal[32..32 + 2 * 536], 512, big_endian, salt, [1, 2]).any(|f| f.is_err())
            );
            // A new cycle (other salts) is read from its start.
            let other = header_bytes(big_endian, 512, [12, 99]);
            std::fs::write(&path, &other).unwrap();
            let read = read_committed(&path, Some(&first.end), u64::MAX)
                .unwrap()
                .unwrap();
            assert!(read.new_cycle);
            assert_eq!(read.commits, 0);
            assert!(!cursor_still_valid(&path, &first.end).unwrap());
        }
    }

    #[test]
    fn rejects_bad_headers() {
        let good = header_bytes(false, 4096, [1, 2]);
        assert!(WalHeader::parse(&good).is_some());
        for i in 0..32 {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            assert!(WalHeader::parse(&bad).is_none(), "byte {i}");
        }
        assert!(WalHeader::parse(&good[..31]).is_none());
    }
}
