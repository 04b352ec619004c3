//! The bytes of the segment log: a segment's header and each record's frame
//! (docs/storage-format.md, "The segment log").
//!
//! Integers are little-endian. Checksums are CRC-32 (IEEE, `crc32fast`).

/// The first 8 bytes of every segment file.
pub(super) const SEGMENT_MAGIC: [u8; 8] = *b"TIDINGSL";
/// The segment format this build writes and reads.
pub(super) const SEGMENT_FORMAT: u32 = 1;
/// The length of a segment's header; records begin at this offset.
pub(super) const SEGMENT_HEADER_LEN: u64 = 64;

/// The first byte of every record header: the framing's magic and version in one byte. Never 0,
/// so that the zeros of a pre-allocated, never-written region are never taken for a record.
pub(super) const RECORD_MAGIC: u8 = 0xE7;
/// The length of a record's header.
pub(super) const RECORD_HEADER_LEN: usize = 32;
/// Records begin at offsets that are multiples of this (the frame is padded with zeros), so that
/// a search for the next record after damage looks at one offset in eight.
pub(super) const ALIGN: u64 = 8;
/// Flag: the record is the last one of its commit group.
pub(super) const FLAG_LAST_OF_GROUP: u8 = 1;

/// A segment's header, as written when the segment is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct SegmentHeader {
    /// 1 for the log's first segment, one more for each next one.
    pub sequence: u64,
    /// The position of the segment's first record (also the file's name).
    pub first_position: u64,
    /// The size the file was allocated to.
    pub size: u64,
}

impl SegmentHeader {
    /// The header's bytes.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN as usize] {
        let mut out = [0; SEGMENT_HEADER_LEN as usize];
        out[..8].copy_from_slice(&SEGMENT_MAGIC);
        out[8..12].copy_from_slice(&SEGMENT_FORMAT.to_le_bytes());
        out[16..24].copy_from_slice(&self.sequence.to_le_bytes());
        out[24..32].copy_from_slice(&self.first_position.to_le_bytes());
        out[32..40].copy_from_slice(&self.size.to_le_bytes());
        let crc = crc32fast::hash(&out[..60]);
        out[60..].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes a header, or says what is wrong with it.
    pub fn decode(bytes: &[u8]) -> Result<SegmentHeader, String> {
        let Some(b) = bytes.get(..SEGMENT_HEADER_LEN as usize) else {
            return Err(format!(
                "shorter ({} bytes) than a segment header ({SEGMENT_HEADER_LEN})",
                bytes.len()
            ));
        };
        if b[..8] != SEGMENT_MAGIC {
            return Err("not a segment of the tidings log (wrong magic)".into());
        }
        if crc32fast::hash(&b[..60]) != le32(b, 60) {
            return Err("its header fails its checksum".into());
        }
        let format = le32(b, 8);
        if format != SEGMENT_FORMAT {
            return Err(format!(
                "segment format {format}; this build reads format {SEGMENT_FORMAT}"
            ));
        }
        Ok(SegmentHeader {
            sequence: le64(b, 16),
            first_position: le64(b, 24),
            size: le64(b, 32),
        })
    }
}

/// A record's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct RecordHeader {
    /// The record is the last of its commit group.
    pub last_of_group: bool,
    /// The length of the body.
    pub body_len: u32,
    /// The event's global position.
    pub position: u64,
    /// The position of the first record of the record's commit group.
    pub group_first: u64,
    /// CRC-32 of the body.
    pub body_crc: u32,
}

/// What the 32 bytes at a record's offset hold.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum HeaderCheck {
    /// All zeros: nothing was written there (the pre-allocated rest of a segment).
    Zero,
    /// Not a valid header; the reason.
    Bad(&'static str),
    /// A header whose checksum holds.
    Ok(RecordHeader),
}

impl RecordHeader {
    /// Checks and decodes the 32 bytes at a record's offset.
    pub fn decode(b: &[u8; RECORD_HEADER_LEN]) -> HeaderCheck {
        if b.iter().all(|&x| x == 0) {
            return HeaderCheck::Zero;
        }
        if b[0] != RECORD_MAGIC {
            return HeaderCheck::Bad("no record header there (wrong magic byte)");
        }
        if crc32fast::hash(&b[..28]) != le32(b, 28) {
            return HeaderCheck::Bad("the record header fails its checksum");
        }
        if b[1] & !FLAG_LAST_OF_GROUP != 0 || b[2] != 0 || b[3] != 0 {
            return HeaderCheck::Bad("the record header has flags this build does not know");
        }
        let header = RecordHeader {
            last_of_group: b[1] & FLAG_LAST_OF_GROUP != 0,
            body_len: le32(b, 4),
            position: le64(b, 8),
            group_first: le64(b, 16),
            body_crc: le32(b, 24),
        };
        if header.group_first > header.position || header.position == 0 {
            return HeaderCheck::Bad("the record header's positions are inconsistent");
        }
        HeaderCheck::Ok(header)
    }

    /// Appends the header, `body` and the padding to `out`.
    pub fn encode_record(&self, body: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        let mut h = [0u8; RECORD_HEADER_LEN];
        h[0] = RECORD_MAGIC;
        h[1] = if self.last_of_group {
            FLAG_LAST_OF_GROUP
        } else {
            0
        };
        h[4..8].copy_from_slice(&self.body_len.to_le_bytes());
        h[8..16].copy_from_slice(&self.position.to_le_bytes());
        h[16..24].copy_from_slice(&self.group_first.to_le_bytes());
        h[24..28].copy_from_slice(&self.body_crc.to_le_bytes());
        let crc = crc32fast::hash(&h[..28]);
        h[28..].copy_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(body);
        out.resize(start + framed_len(body.len() as u64) as usize, 0);
    }
}

/// The bytes a record with a body of `body_len` bytes takes in a segment, padding included.
pub(crate) fn framed_len(body_len: u64) -> u64 {
    align_up(RECORD_HEADER_LEN as u64 + body_len)
}

/// `n` rounded up to a multiple of [`ALIGN`].
pub(super) fn align_up(n: u64) -> u64 {
    n.div_ceil(ALIGN) * ALIGN
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_every_flipped_bit_is_seen() {
        let header = RecordHeader {
            last_of_group: true,
            body_len: 5,
            position: 42,
            group_first: 40,
            body_crc: crc32fast::hash(b"hello"),
        };
        let mut bytes = Vec::new();
        header.encode_record(b"hello", &mut bytes);
        assert_eq!(bytes.len(), 40);
        let head: [u8; 32] = bytes[..32].try_into().unwrap();
        assert_eq!(RecordHeader::decode(&head), HeaderCheck::Ok(header));
        for bit in 0..RECORD_HEADER_LEN * 8 {
            let mut h = head;
            h[bit / 8] ^= 1 << (bit % 8);
            assert!(
                matches!(RecordHeader::decode(&h), HeaderCheck::Bad(_)),
                "bit {bit}"
            );
        }
        assert_eq!(RecordHeader::decode(&[0; 32]), HeaderCheck::Zero);

        let segment = SegmentHeader {
            sequence: 3,
            first_position: 1_000,
            size: 1 << 20,
        };
        let bytes = segment.encode();
        assert_eq!(SegmentHeader::decode(&bytes), Ok(segment));
        for bit in 0..SEGMENT_HEADER_LEN as usize * 8 {
            let mut b = bytes;
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(SegmentHeader::decode(&b).is_err(), "bit {bit}");
        }
        assert!(SegmentHeader::decode(&bytes[..10]).is_err());
    }
}
