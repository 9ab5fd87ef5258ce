//! Journal segments: one batch of whole WAL transactions, stored as one stream object, or a
//! *part* of one transaction larger than a segment.
//!
//! A part (format version 2, [`SegmentHeader::part`]) holds frames of one transaction and no
//! commit; the segments after it continue the transaction, and the one holding the commit
//! closes it. Readers apply parts only together with that segment, so no restore shows half
//! a transaction; segments of whole transactions keep version 1, as before parts existed.
//!
//! A segment's plaintext is `"LBSQ"`, a version byte, three zero bytes, the length (u32,
//! big-endian) of a JSON header, the header, then the frames exactly as they were in the `-wal`
//! file. Keeping the frames verbatim keeps SQLite's cumulative checksums, so a restore verifies
//! every frame and the chain from one segment to the next, on top of the repository's
//! authenticated encryption.
//!
//! Segment names are `<generation>-<position>-<captured>`, each 16 lowercase hex digits: the
//! generation is the time (µs since the epoch) a replication with its own base snapshot started,
//! the position counts shipped frame bytes within the generation, and the capture time (µs since
//! the epoch) lets a restore to a moment skip later segments without reading them (and so reach
//! that moment even if a later segment is damaged). Names list in replay order. Storage learns
//! capture times, which object timestamps tell it anyway; it cannot alter them, because a
//! stream object is authenticated together with its name and the header repeats the time.

use serde::{Deserialize, Serialize};

use crate::wal::WalCursor;

const MAGIC: &[u8; 4] = b"LBSQ";
/// Segments of whole transactions.
const VERSION: u8 = 1;
/// A part of a transaction larger than a segment ([`SegmentHeader::part`]): a Lifeboat that
/// does not know parts must refuse it rather than apply half a transaction.
const VERSION_PART: u8 = 2;

/// The header of a segment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentHeader {
    /// Generation (16 hex digits).
    pub generation: String,
    /// Position of the first frame byte within the generation.
    pub position: u64,
    /// Position just after the last frame byte.
    pub end_position: u64,
    /// When the replicator read these frames from the WAL: every transaction in the segment had
    /// committed by then.
    pub captured: jiff::Timestamp,
    /// Database page size.
    pub page_size: u32,
    /// WAL checksums use big-endian words.
    pub big_endian: bool,
    /// The frames begin a new cycle of the WAL (SQLite restarted the log after a checkpoint that
    /// copied every earlier frame into the database).
    pub new_cycle: bool,
    /// WAL cycle, offset and checksum before the first frame.
    pub start: WalCursor,
    /// WAL cycle, offset and checksum after the last frame.
    pub end: WalCursor,
    /// Transactions (commit frames) in the segment.
    pub commits: u64,
    /// The segment holds no commit: it is a part of one transaction larger than a segment,
    /// which the following segments complete. A restore applies the parts only together with
    /// the segment holding their commit, and never a transaction whose parts end without one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub part: bool,
}

/// Object name of the segment starting at `position` of `generation`, captured at `captured`.
pub fn name(generation: &str, position: u64, captured: jiff::Timestamp) -> String {
    format!(
        "{generation}-{position:016x}-{:016x}",
        captured.as_microsecond().max(0)
    )
}

/// The parts of a segment name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentName {
    /// The full name.
    pub name: String,
    /// Generation.
    pub generation: String,
    /// Position of the first frame byte.
    pub position: u64,
    /// Capture time.
    pub captured: jiff::Timestamp,
}

/// Splits a segment name into generation, position and capture time.
pub fn parse_name(name: &str) -> Option<SegmentName> {
    let mut parts = name.split('-');
    let (generation, position, captured) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some()
        || [generation, position, captured]
            .iter()
            .any(|p| p.len() != 16)
    {
        return None;
    }
    u64::from_str_radix(generation, 16).ok()?;
    let micros = i64::from_str_radix(captured, 16).ok()?;
    Some(SegmentName {
        name: name.to_string(),
        generation: generation.to_string(),
        position: u64::from_str_radix(position, 16).ok()?,
        captured: jiff::Timestamp::from_microsecond(micros).ok()?,
    })
}

/// Encodes a segment.
pub fn encode(header: &SegmentHeader, frames: &[u8]) -> Vec<u8> {
    let json = serde_json::to_vec(header).expect("segment header serialises");
    let mut out = Vec::with_capacity(12 + json.len() + frames.len());
    out.extend_from_slice(MAGIC);
    let version = if header.part { VERSION_PART } else { VERSION };
    out.extend_from_slice(&[version, 0, 0, 0]);
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(frames);
    out
}

/// Decodes a segment into its header and frames.
pub fn decode(bytes: &[u8]) -> Result<(SegmentHeader, &[u8]), String> {
    if bytes.len() < 12 || &bytes[..4] != MAGIC {
        return Err("not a Lifeboat SQLite segment".to_string());
    }
    if bytes[4] != VERSION && bytes[4] != VERSION_PART {
        return Err(format!(
            "segment format version {} is not supported by this Lifeboat; upgrade Lifeboat",
            bytes[4]
        ));
    }
    let len = u32::from_be_bytes(bytes[8..12].try_into().expect("4")) as usize;
    let json = bytes
        .get(12..12 + len)
        .ok_or_else(|| "segment header is truncated".to_string())?;
    let header: SegmentHeader =
        serde_json::from_slice(json).map_err(|e| format!("segment header: {e}"))?;
    if header.part != (bytes[4] == VERSION_PART) {
        return Err("segment header and format version disagree about being a part".to_string());
    }
    let frames = &bytes[12 + len..];
    if header.end_position - header.position != frames.len() as u64 {
        return Err(format!(
            "segment holds {} frame bytes but its header says {}",
            frames.len(),
            header.end_position - header.position
        ));
    }
    Ok((header, frames))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_in_position_order_and_parse_back() {
        let t = jiff::Timestamp::from_microsecond(1_800_000_000_000_000).unwrap();
        let a = name("000614a1b2c3d4e5", 0x20, t);
        let b = name("000614a1b2c3d4e5", 0x1000, jiff::Timestamp::UNIX_EPOCH);
        let c = name("000614a1b2c3d4f0", 0, t);
        assert!(a < b && b < c);
        let parsed = parse_name(&a).unwrap();
        assert_eq!(
            (parsed.generation.as_str(), parsed.position, parsed.captured),
            ("000614a1b2c3d4e5", 0x20, t)
        );
        assert_eq!(parse_name("x-1"), None);
        assert_eq!(parse_name(&format!("{a}-0")), None);
    }

    #[test]
    fn round_trips_and_rejects_damage() {
        let cursor = WalCursor {
            salt: [1, 2],
            offset: 32,
            checksum: [3, 4],
        };
        let header = SegmentHeader {
            generation: "0000000000000001".into(),
            position: 10,
            end_position: 13,
            captured: jiff::Timestamp::UNIX_EPOCH,
            page_size: 512,
            big_endian: false,
            new_cycle: true,
            start: cursor,
            end: cursor,
            commits: 1,
            part: false,
        };
        let bytes = encode(&header, b"abc");
        // Whole transactions keep the first format: older segments read as before.
        assert_eq!(bytes[4], 1);
        assert!(!String::from_utf8_lossy(&bytes).contains("part"));
        let (back, frames) = decode(&bytes).unwrap();
        assert_eq!(back, header);
        assert_eq!(frames, b"abc");
        let part = SegmentHeader {
            part: true,
            commits: 0,
            ..header.clone()
        };
        let bytes = encode(&part, b"abc");
        assert_eq!(
            bytes[4], 2,
            "a part is refused by a Lifeboat that does not know parts"
        );
        assert_eq!(decode(&bytes).unwrap().0, part);
        let mut mislabelled = bytes.clone();
        mislabelled[4] = 1;
        assert!(decode(&mislabelled).is_err());
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(
            decode(b"LBSQ\x09\0\0\0\0\0\0\0")
                .unwrap_err()
                .contains("upgrade")
        );
    }
}
