//! WAL file names and log sequence numbers, as PostgreSQL writes them.
//!
//! A segment is named `TTTTTTTTXXXXXXXXYYYYYYYY` (timeline, then the segment number split into
//! a high and a low part, upper-case hex), so names sort in timeline, then position order.
//! Besides segments PostgreSQL archives timeline history files (`TTTTTTTT.history`), backup
//! history files (`<segment>.XXXXXXXX.backup`) and, at a promotion, the partial last segment of
//! the old timeline (`<segment>.partial`).

use std::fmt;

/// The default WAL segment size (16 MiB); `initdb --wal-segsize` can change it.
pub const DEFAULT_SEGMENT_SIZE: u64 = 16 * 1024 * 1024;

/// A log sequence number: a byte position in the WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Parses PostgreSQL's `X/Y` form (two hex numbers, the high and low 32 bits).
    pub fn parse(text: &str) -> Option<Lsn> {
        let (high, low) = text.trim().split_once('/')?;
        let high = u32::from_str_radix(high, 16).ok()?;
        let low = u32::from_str_radix(low, 16).ok()?;
        Some(Lsn((u64::from(high) << 32) | u64::from(low)))
    }

    /// The number of the segment holding this position.
    pub fn segment(self, segment_size: u64) -> u64 {
        self.0 / segment_size
    }

    /// The number of the segment holding the byte before this position: where WAL that ends
    /// here ends. A standby's minimum recovery point, for one, often falls exactly on a segment
    /// boundary, and the segment it starts is not needed.
    pub fn end_segment(self, segment_size: u64) -> u64 {
        self.0.saturating_sub(1) / segment_size
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl serde::Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Lsn, D::Error> {
        let text = String::deserialize(d)?;
        Lsn::parse(&text).ok_or_else(|| serde::de::Error::custom(format!("bad LSN {text:?}")))
    }
}

/// The kinds of file PostgreSQL hands to `archive_command`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WalFile {
    /// A complete segment.
    Segment {
        /// Timeline.
        timeline: u32,
        /// High 32 bits of the segment's name (the "log" number).
        log: u32,
        /// Low part of the name (the segment within the log).
        seg: u32,
    },
    /// The last, incomplete segment of a timeline that was left at a promotion.
    Partial {
        /// Timeline.
        timeline: u32,
        /// Log number.
        log: u32,
        /// Segment within the log.
        seg: u32,
    },
    /// `TTTTTTTT.history`: where a timeline branched off its parent.
    History {
        /// The new timeline.
        timeline: u32,
    },
    /// `<segment>.XXXXXXXX.backup`: start and stop of a base backup.
    BackupHistory {
        /// Timeline.
        timeline: u32,
        /// Log number.
        log: u32,
        /// Segment within the log.
        seg: u32,
        /// Offset of the backup start within the segment.
        offset: u32,
    },
}

fn hex8(text: &str) -> Option<u32> {
    (text.len() == 8 && text.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u32::from_str_radix(text, 16).ok())
        .flatten()
}

fn segment_parts(text: &str) -> Option<(u32, u32, u32)> {
    if text.len() != 24 {
        return None;
    }
    Some((hex8(&text[..8])?, hex8(&text[8..16])?, hex8(&text[16..])?))
}

impl WalFile {
    /// Parses a file name (no directory). Returns `None` for anything PostgreSQL does not
    /// archive, so a wrong `%p` or `%f` is refused before it reaches the repository.
    pub fn parse(name: &str) -> Option<WalFile> {
        if let Some(timeline) = name.strip_suffix(".history") {
            return Some(WalFile::History {
                timeline: hex8(timeline)?,
            });
        }
        if let Some(segment) = name.strip_suffix(".partial") {
            let (timeline, log, seg) = segment_parts(segment)?;
            return Some(WalFile::Partial { timeline, log, seg });
        }
        if let Some(rest) = name.strip_suffix(".backup") {
            let (segment, offset) = rest.split_once('.')?;
            let (timeline, log, seg) = segment_parts(segment)?;
            return Some(WalFile::BackupHistory {
                timeline,
                log,
                seg,
                offset: hex8(offset)?,
            });
        }
        let (timeline, log, seg) = segment_parts(name)?;
        Some(WalFile::Segment { timeline, log, seg })
    }

    /// The name of the complete segment `segno` of `timeline`.
    pub fn segment(timeline: u32, segno: u64, segment_size: u64) -> WalFile {
        let per_log = segments_per_log(segment_size);
        WalFile::Segment {
            timeline,
            log: (segno / per_log) as u32,
            seg: (segno % per_log) as u32,
        }
    }

    /// The timeline the file belongs to.
    pub fn timeline(&self) -> u32 {
        match *self {
            WalFile::Segment { timeline, .. }
            | WalFile::Partial { timeline, .. }
            | WalFile::History { timeline }
            | WalFile::BackupHistory { timeline, .. } => timeline,
        }
    }

    /// The segment number (position in the WAL / segment size); `None` for history files.
    pub fn segno(&self, segment_size: u64) -> Option<u64> {
        match *self {
            WalFile::Segment { log, seg, .. }
            | WalFile::Partial { log, seg, .. }
            | WalFile::BackupHistory { log, seg, .. } => {
                Some(u64::from(log) * segments_per_log(segment_size) + u64::from(seg))
            }
            WalFile::History { .. } => None,
        }
    }

    /// Whether this is a complete segment.
    pub fn is_segment(&self) -> bool {
        matches!(self, WalFile::Segment { .. })
    }
}

impl fmt::Display for WalFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            WalFile::Segment { timeline, log, seg } => {
                write!(f, "{timeline:08X}{log:08X}{seg:08X}")
            }
            WalFile::Partial { timeline, log, seg } => {
                write!(f, "{timeline:08X}{log:08X}{seg:08X}.partial")
            }
            WalFile::History { timeline } => write!(f, "{timeline:08X}.history"),
            WalFile::BackupHistory {
                timeline,
                log,
                seg,
                offset,
            } => write!(f, "{timeline:08X}{log:08X}{seg:08X}.{offset:08X}.backup"),
        }
    }
}

/// How many segments one "log" number (4 GiB of WAL) holds.
pub fn segments_per_log(segment_size: u64) -> u64 {
    0x1_0000_0000 / segment_size.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for name in [
            "000000010000000000000001",
            "0000000200000001000000FF",
            "000000010000000000000003.partial",
            "00000002.history",
            "000000010000000000000002.00000028.backup",
        ] {
            assert_eq!(WalFile::parse(name).unwrap().to_string(), name);
        }
        for bad in [
            "00000001000000000000001",
            "pg_wal/000000010000000000000001",
            "00000001000000000000000G",
            "RECOVERYXLOG",
            "00000001.history.tmp",
            "",
        ] {
            assert_eq!(WalFile::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn segment_numbers_follow_the_segment_size() {
        let file = WalFile::parse("000000010000000100000002").unwrap();
        assert_eq!(file.segno(DEFAULT_SEGMENT_SIZE), Some(256 + 2));
        assert_eq!(
            WalFile::segment(1, 258, DEFAULT_SEGMENT_SIZE).to_string(),
            "000000010000000100000002"
        );
        // 1 GiB segments: four per log.
        assert_eq!(file.segno(1 << 30), Some(4 + 2));
        let boundary = Lsn(4 * DEFAULT_SEGMENT_SIZE);
        assert_eq!(boundary.segment(DEFAULT_SEGMENT_SIZE), 4);
        assert_eq!(boundary.end_segment(DEFAULT_SEGMENT_SIZE), 3);
        assert_eq!(Lsn(boundary.0 + 1).end_segment(DEFAULT_SEGMENT_SIZE), 4);
        assert_eq!(Lsn(0).end_segment(DEFAULT_SEGMENT_SIZE), 0);
    }

    #[test]
    fn lsn_parses_and_prints_like_postgres() {
        let lsn = Lsn::parse("16/B374D848").unwrap();
        assert_eq!(lsn.0, 0x16_B374_D848);
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert_eq!(
            lsn.segment(DEFAULT_SEGMENT_SIZE),
            0x16_B374_D848 / DEFAULT_SEGMENT_SIZE
        );
        assert_eq!(Lsn::parse("0/0"), Some(Lsn(0)));
        assert_eq!(Lsn::parse("x/1"), None);
    }
}
