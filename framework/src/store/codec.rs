//! Byte layouts of everything the store writes. The only module that uses bincode.
//!
//! Each value begins with a format byte, so that the codec can change by a migration. The layouts
//! are documented in `docs/storage-format.md`; keep the two in step.

use std::ops::Range;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Metadata, RecordedEvent, Snapshot, Text};

/// The format byte of a log chunk.
pub const CHUNK_FORMAT: u8 = 1;
/// The format byte of one event record inside a chunk, for an event without metadata: the
/// record as every build has written it.
pub const RECORD_FORMAT: u8 = 1;
/// The format byte of a record whose event carries metadata: a metadata section (its length,
/// then bincode of the map) between the header and the payload.
pub const RECORD_FORMAT_METADATA: u8 = 2;
/// The format byte of index entries, checkpoints and snapshots.
pub const VALUE_FORMAT: u8 = 1;

/// Bytes before the first record of a chunk: format, count, crc of both.
pub const CHUNK_HEADER_LEN: usize = 1 + 4 + 4;
/// Bytes before a record's body: length and crc.
pub const FRAME_HEADER_LEN: usize = 4 + 4;

/// The metadata of an event, as written (borrowed, so encoding copies nothing twice).
#[derive(Serialize)]
pub struct HeaderOut<'a> {
    pub position: u64,
    pub stream_id: &'a str,
    pub stream_version: u64,
    pub category: &'a str,
    pub event_type: &'a str,
    pub schema_version: u32,
    pub event_id: Uuid,
    pub correlation_id: Option<Uuid>,
    pub causation_id: Option<Uuid>,
    pub timestamp_micros: u64,
}

/// The metadata of an event, as read, borrowing its strings from the chunk: decoding it
/// allocates nothing, so a reader can check a filter before it copies anything.
#[derive(Deserialize, Debug)]
pub struct Header<'a> {
    pub position: u64,
    #[serde(borrow)]
    pub stream_id: &'a str,
    pub stream_version: u64,
    #[serde(borrow)]
    pub category: &'a str,
    #[serde(borrow)]
    pub event_type: &'a str,
    pub schema_version: u32,
    pub event_id: Uuid,
    pub correlation_id: Option<Uuid>,
    pub causation_id: Option<Uuid>,
    pub timestamp_micros: u64,
}

/// Builds the events of one page: their strings are copied into one string and their payloads
/// into one buffer, and each event gets slices of both, so a page costs a few allocations
/// whatever its number of events (decision 63). A category that is its stream id's prefix (as
/// stores record it) and an event type seen just before in the page are not copied again.
#[derive(Default)]
pub struct PageBuilder {
    text: String,
    payloads: Vec<u8>,
    pending: Vec<Pending>,
    bytes: usize,
}

/// An event of a [`PageBuilder`] before its buffers are shared: its fields, and where its
/// strings and payload are in them.
struct Pending {
    position: u64,
    stream_version: u64,
    schema_version: u32,
    event_id: Uuid,
    correlation_id: Option<Uuid>,
    causation_id: Option<Uuid>,
    timestamp_micros: u64,
    stream_id: Range<usize>,
    category: Range<usize>,
    event_type: Range<usize>,
    payload: Range<usize>,
    metadata: Metadata,
}

/// An event's type is looked up among the types of this many events pushed before it, and copied
/// only when none has it.
const PAGE_TYPES: usize = 16;

impl PageBuilder {
    /// An empty page, with room for about `events` small events before it grows (at most
    /// 16 KiB of strings and 64 KiB of payloads: a page that ends up small, as live pages do,
    /// does not reserve much, and none reserves what the allocator would map on its own).
    pub fn with_capacity(events: usize) -> Self {
        PageBuilder {
            text: String::with_capacity((events * 32).min(16 * 1024)),
            payloads: Vec::with_capacity((events * 128).min(64 * 1024)),
            pending: Vec::with_capacity(events),
            bytes: 0,
        }
    }

    /// How many events it holds.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// What its events count for in a page's byte budget
    /// ([`RecordedEvent::page_bytes`] added up).
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether the page is full for a read of `max_count` (in count or in bytes, as every read
    /// decides).
    pub fn is_full(&self, max_count: usize) -> bool {
        super::types::page_is_full(self.len(), self.bytes, max_count)
    }

    /// Adds the event of `header`, `payload` and `metadata`.
    pub fn push(&mut self, header: &Header<'_>, payload: &[u8], metadata: Metadata) {
        let stream_id = self.copy_text(header.stream_id);
        let category = if header.stream_id.starts_with(header.category) {
            stream_id.start..stream_id.start + header.category.len()
        } else {
            self.copy_text(header.category)
        };
        let known = self
            .pending
            .iter()
            .rev()
            .take(PAGE_TYPES)
            .map(|p| p.event_type.clone())
            .find(|r| self.text[r.clone()] == *header.event_type);
        let event_type = match known {
            Some(r) => r,
            None => self.copy_text(header.event_type),
        };
        let at = self.payloads.len();
        self.payloads.extend_from_slice(payload);
        self.bytes += super::types::event_page_bytes(
            header.stream_id,
            header.category,
            header.event_type,
            payload,
            &metadata,
        );
        self.pending.push(Pending {
            position: header.position,
            stream_version: header.stream_version,
            schema_version: header.schema_version,
            event_id: header.event_id,
            correlation_id: header.correlation_id,
            causation_id: header.causation_id,
            timestamp_micros: header.timestamp_micros,
            stream_id,
            category,
            event_type,
            payload: at..self.payloads.len(),
            metadata,
        });
    }

    fn copy_text(&mut self, text: &str) -> Range<usize> {
        let at = self.text.len();
        self.text.push_str(text);
        at..self.text.len()
    }

    /// The page's events, in the order they were pushed. The buffers are first shrunk to
    /// their contents, so that an event kept after its page keeps the page's bytes and no
    /// spare room.
    pub fn finish(mut self) -> Vec<RecordedEvent> {
        self.text.shrink_to_fit();
        self.payloads.shrink_to_fit();
        let text = Text::from(self.text);
        let payloads = Bytes::from(self.payloads);
        self.pending
            .into_iter()
            .map(|p| RecordedEvent {
                position: p.position,
                stream_id: text.slice(p.stream_id),
                stream_version: p.stream_version,
                category: text.slice(p.category),
                event_type: text.slice(p.event_type),
                schema_version: p.schema_version,
                event_id: p.event_id,
                correlation_id: p.correlation_id,
                causation_id: p.causation_id,
                timestamp_micros: p.timestamp_micros,
                payload: payloads.slice(p.payload),
                metadata: p.metadata,
            })
            .collect()
    }
}

/// Builds one chunk value: a header followed by framed records (format 1: only tests write
/// chunks now, to build stores of format 1 for the conversion).
#[cfg(test)]
pub struct ChunkBuilder {
    buf: Vec<u8>,
    count: u32,
}

#[cfg(test)]
impl ChunkBuilder {
    /// An empty chunk.
    pub fn new() -> Self {
        let mut buf = Vec::with_capacity(8 * 1024);
        buf.extend_from_slice(&[0; CHUNK_HEADER_LEN]);
        ChunkBuilder { buf, count: 0 }
    }

    /// Appends one record: format 1 when `metadata` is empty (the bytes every build has
    /// written, so that a store whose events carry no metadata stays readable by older builds),
    /// format 2 with a metadata section otherwise.
    pub fn push(&mut self, header: &HeaderOut<'_>, metadata: &Metadata, payload: &[u8]) {
        let frame_start = self.buf.len();
        self.buf.extend_from_slice(&[0; FRAME_HEADER_LEN]);
        let body_start = self.buf.len();
        encode_record(header, metadata, payload, &mut self.buf);
        let body_len = (self.buf.len() - body_start) as u32;
        let crc = crc32fast::hash(&self.buf[body_start..]);
        self.buf[frame_start..frame_start + 4].copy_from_slice(&body_len.to_le_bytes());
        self.buf[frame_start + 4..body_start].copy_from_slice(&crc.to_le_bytes());
        self.count += 1;
    }

    /// The finished value.
    pub fn finish(mut self) -> Vec<u8> {
        self.buf[0] = CHUNK_FORMAT;
        self.buf[1..5].copy_from_slice(&self.count.to_le_bytes());
        let crc = crc32fast::hash(&self.buf[0..5]);
        self.buf[5..9].copy_from_slice(&crc.to_le_bytes());
        self.buf
    }
}

/// Appends the body of one event record to `out`: format 1 when `metadata` is empty (the bytes
/// every build has written, so that a store whose events carry no metadata stays readable by
/// older builds), format 2 with a metadata section otherwise. The same bytes are a record of a
/// format-1 log chunk (inside a frame) and a record of the format-2 segment log.
pub fn encode_record(
    header: &HeaderOut<'_>,
    metadata: &Metadata,
    payload: &[u8],
    out: &mut Vec<u8>,
) {
    out.push(if metadata.is_empty() {
        RECORD_FORMAT
    } else {
        RECORD_FORMAT_METADATA
    });
    // Serializing plain integers, strings and uuids into a Vec cannot fail.
    push_section(out, |buf| {
        bincode::serialize_into(buf, header).expect("encode header")
    });
    if !metadata.is_empty() {
        push_section(out, |buf| {
            bincode::serialize_into(buf, metadata).expect("encode event metadata")
        });
    }
    out.extend_from_slice(payload);
}

/// Appends a length (u32 LE) and the bytes `write` adds after it.
fn push_section(out: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) {
    let len_at = out.len();
    out.extend_from_slice(&[0; 4]);
    write(out);
    let len = (out.len() - len_at - 4) as u32;
    out[len_at..len_at + 4].copy_from_slice(&len.to_le_bytes());
}

/// Splits the body of one event record (see [`encode_record`]) into its sections, without
/// copying; `index` is what errors name (the record's index in its chunk, or 0).
pub fn parse_record<'a>(body: &'a [u8], index: u32) -> Result<RawRecord<'a>, DecodeError> {
    if body.len() < 5 {
        return Err(damaged(index, "record shorter than its header"));
    }
    let sections = match body[0] {
        RECORD_FORMAT => 1,
        RECORD_FORMAT_METADATA => 2,
        other => return Err(damaged(index, format!("unknown record format {other}"))),
    };
    let mut rest = &body[1..];
    let mut section = |what: &str| -> Result<&'a [u8], DecodeError> {
        let Some((len, after)) = rest.split_first_chunk::<4>() else {
            return Err(damaged(
                index,
                format!("record cut short before its {what}"),
            ));
        };
        let len = u32::from_le_bytes(*len) as usize;
        if after.len() < len {
            return Err(damaged(
                index,
                format!("event {what} longer than its record"),
            ));
        }
        let (bytes, after) = after.split_at(len);
        rest = after;
        Ok(bytes)
    };
    let header = section("header")?;
    let metadata = if sections == 2 {
        section("metadata")?
    } else {
        &[]
    };
    Ok(RawRecord {
        index,
        body,
        header,
        metadata,
        payload: rest,
    })
}

/// A problem found while decoding: what it is, and at which record of the chunk (0-based).
#[derive(Debug)]
pub struct DecodeError {
    /// Index of the record within its chunk (0 when the chunk header itself is bad).
    pub index: u32,
    /// What is wrong.
    pub reason: String,
}

impl DecodeError {
    /// A problem at record `index` of a chunk.
    pub fn at(index: u32, reason: impl Into<String>) -> Self {
        damaged(index, reason)
    }
}

fn damaged(index: u32, reason: impl Into<String>) -> DecodeError {
    DecodeError {
        index,
        reason: reason.into(),
    }
}

/// Reads a chunk's header: the number of records it holds.
pub fn chunk_count(value: &[u8]) -> Result<u32, DecodeError> {
    if value.len() < CHUNK_HEADER_LEN {
        return Err(damaged(0, "chunk shorter than its header"));
    }
    if value[0] != CHUNK_FORMAT {
        return Err(damaged(0, format!("unknown chunk format {}", value[0])));
    }
    let crc = u32::from_le_bytes(value[5..9].try_into().expect("4 bytes"));
    if crc32fast::hash(&value[0..5]) != crc {
        return Err(damaged(0, "chunk header checksum mismatch"));
    }
    Ok(u32::from_le_bytes(value[1..5].try_into().expect("4 bytes")))
}

/// One record inside a chunk whose checksum has been verified.
pub struct RawRecord<'a> {
    /// Index of the record within its chunk.
    pub index: u32,
    /// The whole body (what [`encode_record`] wrote).
    pub body: &'a [u8],
    header: &'a [u8],
    /// The metadata section (empty in a format-1 record).
    metadata: &'a [u8],
    /// The payload bytes.
    pub payload: &'a [u8],
}

impl<'a> RawRecord<'a> {
    /// Decodes the record's header without copying its strings.
    pub fn header(&self) -> Result<Header<'a>, DecodeError> {
        bincode::deserialize(self.header)
            .map_err(|e| damaged(self.index, format!("event header does not decode: {e}")))
    }

    /// Decodes the event's metadata (empty for a format-1 record).
    pub fn metadata(&self) -> Result<Metadata, DecodeError> {
        if self.metadata.is_empty() {
            return Ok(Metadata::new());
        }
        bincode::deserialize(self.metadata)
            .map_err(|e| damaged(self.index, format!("event metadata does not decode: {e}")))
    }

    /// The whole event: `header` (this record's, decoded) with the payload and the metadata, in
    /// a page of its own (readers push many events to one page instead).
    #[cfg(test)]
    pub fn event(&self, header: Header<'_>) -> Result<RecordedEvent, DecodeError> {
        let mut page = PageBuilder::default();
        self.push_to(&header, &mut page)?;
        Ok(page.finish().pop().expect("one event"))
    }

    /// Adds the whole event to `page`: `header` (this record's, decoded) with the payload and
    /// the metadata.
    pub fn push_to(&self, header: &Header<'_>, page: &mut PageBuilder) -> Result<(), DecodeError> {
        page.push(header, self.payload, self.metadata()?);
        Ok(())
    }
}

/// Iterates over the records of a chunk, checking each frame's checksum.
///
/// After the first error it stops: a damaged frame length means the rest cannot be located.
pub struct ChunkIter<'a> {
    value: &'a [u8],
    offset: usize,
    index: u32,
    count: u32,
    failed: bool,
}

impl<'a> ChunkIter<'a> {
    /// Starts reading `value`; fails if the chunk header is damaged.
    pub fn new(value: &'a [u8]) -> Result<Self, DecodeError> {
        let count = chunk_count(value)?;
        Ok(ChunkIter {
            value,
            offset: CHUNK_HEADER_LEN,
            index: 0,
            count,
            failed: false,
        })
    }

    /// Skips `n` records without checking their checksums (their frames are still bounds-checked).
    pub fn skip_records(&mut self, n: u32) -> Result<(), DecodeError> {
        for _ in 0..n.min(self.count - self.index) {
            let (len, _) = self.frame_header()?;
            self.offset += FRAME_HEADER_LEN + len;
            self.index += 1;
        }
        Ok(())
    }

    fn frame_header(&self) -> Result<(usize, u32), DecodeError> {
        let rest = &self.value[self.offset..];
        if rest.len() < FRAME_HEADER_LEN {
            return Err(damaged(self.index, "chunk cut short before a record"));
        }
        let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        if rest.len() - FRAME_HEADER_LEN < len {
            return Err(damaged(self.index, "record cut short"));
        }
        Ok((len, crc))
    }

    fn next_record(&mut self) -> Result<RawRecord<'a>, DecodeError> {
        let (len, crc) = self.frame_header()?;
        let start = self.offset + FRAME_HEADER_LEN;
        let body = &self.value[start..start + len];
        if crc32fast::hash(body) != crc {
            return Err(damaged(self.index, "record checksum mismatch"));
        }
        let record = parse_record(body, self.index)?;
        self.offset = start + len;
        self.index += 1;
        Ok(record)
    }
}

impl<'a> Iterator for ChunkIter<'a> {
    type Item = Result<RawRecord<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if self.index >= self.count {
            if self.offset != self.value.len() {
                self.failed = true;
                return Some(Err(damaged(
                    self.index.saturating_sub(1),
                    "trailing bytes after the last record",
                )));
            }
            return None;
        }
        let item = self.next_record();
        self.failed = item.is_err();
        Some(item)
    }
}

/// Encodes a small value (index entry, checkpoint, snapshot) with format byte and checksum.
fn seal(body: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(VALUE_FORMAT);
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Checks and strips what [`seal`] added.
fn unseal(value: &[u8]) -> Result<&[u8], String> {
    if value.len() < 5 {
        return Err("value shorter than its header".into());
    }
    if value[0] != VALUE_FORMAT {
        return Err(format!("unknown value format {}", value[0]));
    }
    let crc = u32::from_le_bytes(value[1..5].try_into().expect("4 bytes"));
    let body = &value[5..];
    if crc32fast::hash(body) != crc {
        return Err("checksum mismatch".into());
    }
    Ok(body)
}

/// A run of the stream index: one stream's events at consecutive positions and versions (an
/// append, appends of one stream that follow each other in a commit group, a stream's share of
/// an import, or one record when the catch-up at open wrote it; never across two segments), and
/// where the run is in the segment log. Format 3 keeps runs in the index's table files and its
/// table in memory (`store::sled::table`, 28 bytes after the key); format 2 kept them sealed
/// under sled's `X` keys (docs/storage-format.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunEntry {
    /// The position of the run's first event.
    pub first_position: u64,
    /// How many events the run holds.
    pub count: u32,
    /// The segment holding the run (its first position).
    pub segment: u64,
    /// The byte offset of the run's first record in the segment file.
    pub offset: u32,
    /// The run's length in bytes, from its first record's header to the end of its last
    /// record's body.
    pub bytes: u32,
}

/// What the stream index covers (its mark): the last position the index covers, where the record
/// after it begins in the log, and the timestamp of the record at the mark. In format 3 each
/// table file's trailer holds the mark of its last position, and the last table's mark is what
/// the catch-up at open starts from and part of what the log's open counts as acknowledged;
/// format 2 kept it in sled under the key `I` (read only to convert such a store).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IndexMark {
    /// The last position whose record is indexed (0: none).
    pub position: u64,
    /// The segment where the record after it begins (0 when `position` is 0).
    pub segment: u64,
    /// Its offset in that segment (the segment's end when the next record begins the next
    /// segment).
    pub offset: u64,
    /// The timestamp of the record at `position` (0 when `position` is 0).
    pub timestamp_micros: u64,
}

/// Encodes the index's mark (as format 2 wrote it; kept for the tests of [`decode_mark`]).
#[cfg(test)]
pub fn encode_mark(mark: IndexMark) -> Vec<u8> {
    let mut body = Vec::with_capacity(32);
    for n in [
        mark.position,
        mark.segment,
        mark.offset,
        mark.timestamp_micros,
    ] {
        body.extend_from_slice(&n.to_be_bytes());
    }
    seal(body)
}

/// Decodes the index's mark that format 2 wrote in sled (read only to convert such a store).
pub fn decode_mark(value: &[u8]) -> Result<IndexMark, String> {
    let body = unseal(value)?;
    if body.len() != 32 {
        return Err(format!("index mark of {} bytes, expected 32", body.len()));
    }
    let at = |i: usize| u64::from_be_bytes(body[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    Ok(IndexMark {
        position: at(0),
        segment: at(1),
        offset: at(2),
        timestamp_micros: at(3),
    })
}

/// Encodes a checkpoint.
pub fn encode_checkpoint(position: u64) -> Vec<u8> {
    seal(position.to_be_bytes().to_vec())
}

/// Decodes a checkpoint.
pub fn decode_checkpoint(value: &[u8]) -> Result<u64, String> {
    let body = unseal(value)?;
    Ok(u64::from_be_bytes(body.try_into().map_err(|_| {
        format!("checkpoint of {} bytes, expected 8", body.len())
    })?))
}

/// Encodes the store's commit counter.
pub fn encode_commits(commits: u64) -> Vec<u8> {
    seal(commits.to_be_bytes().to_vec())
}

/// Decodes the store's commit counter.
pub fn decode_commits(value: &[u8]) -> Result<u64, String> {
    let body = unseal(value)?;
    Ok(u64::from_be_bytes(body.try_into().map_err(|_| {
        format!("commit counter of {} bytes, expected 8", body.len())
    })?))
}

/// Encodes a state value.
pub fn encode_state(value: &[u8]) -> Vec<u8> {
    seal(value.to_vec())
}

/// Decodes a state value.
pub fn decode_state(value: &[u8]) -> Result<Vec<u8>, String> {
    unseal(value).map(<[u8]>::to_vec)
}

/// Encodes a snapshot.
pub fn encode_snapshot(snapshot: &Snapshot) -> Vec<u8> {
    seal(bincode::serialize(snapshot).expect("encode snapshot"))
}

/// Decodes a snapshot.
pub fn decode_snapshot(value: &[u8]) -> Result<Snapshot, String> {
    let body = unseal(value)?;
    bincode::deserialize(body).map_err(|e| format!("snapshot does not decode: {e}"))
}

/// Encodes the store's format number.
pub fn encode_format(format: u32) -> Vec<u8> {
    seal(format.to_be_bytes().to_vec())
}

/// Decodes the store's format number.
pub fn decode_format(value: &[u8]) -> Result<u32, String> {
    let body = unseal(value)?;
    Ok(u32::from_be_bytes(body.try_into().map_err(|_| {
        format!("format value of {} bytes, expected 4", body.len())
    })?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Metadata for record `i`: none for even records, one header for odd ones, so that a chunk
    /// mixes both record formats.
    fn meta(i: u64) -> Metadata {
        let mut m = Metadata::new();
        if i % 2 == 1 {
            m.insert(
                "traceparent".into(),
                format!("00-{:032x}-{:016x}-01", i + 1, i + 1),
            );
        }
        m
    }

    /// A chunk of one record written by the code before metadata existed (record format 1),
    /// its bytes built from docs/storage-format.md: position 7 of `order-42`, version 3,
    /// `OrderPlaced` schema 2, event id 00..0f, correlation id 10..1f, no causation id,
    /// timestamp 1_700_000_000_000_000, payload `{}`.
    const FORMAT_1_CHUNK: &str = "0101000000c8b9fe4385000000e2ab2e50017e00000007000000000000000800\
        0000000000006f726465722d3432030000000000000005000000000000006f726465720b000000000000004f72\
        646572506c61636564020000001000000000000000000102030405060708090a0b0c0d0e0f0110000000000000\
        00101112131415161718191a1b1c1d1e1f0000401e18240a06007b7d";

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn a_format_1_record_decodes_with_empty_metadata() {
        let value = unhex(FORMAT_1_CHUNK);
        let records: Vec<_> = ChunkIter::new(&value)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(records.len(), 1);
        let event = records[0].event(records[0].header().unwrap()).unwrap();
        assert_eq!(event.position, 7);
        assert_eq!(event.stream_id, "order-42");
        assert_eq!(event.stream_version, 3);
        assert_eq!(event.category, "order");
        assert_eq!(event.event_type, "OrderPlaced");
        assert_eq!(event.schema_version, 2);
        assert_eq!(
            event.event_id,
            Uuid::from_bytes(core::array::from_fn(|i| i as u8))
        );
        assert_eq!(
            event.correlation_id,
            Some(Uuid::from_bytes(core::array::from_fn(|i| 16 + i as u8)))
        );
        assert_eq!(event.causation_id, None);
        assert_eq!(event.timestamp_micros, 1_700_000_000_000_000);
        assert_eq!(event.payload, &b"{}"[..]);
        assert!(event.metadata.is_empty());
    }

    #[test]
    fn an_event_without_metadata_is_written_as_format_1_byte_for_byte() {
        let mut chunk = ChunkBuilder::new();
        let event_id = Uuid::from_bytes(core::array::from_fn(|i| i as u8));
        let correlation = Uuid::from_bytes(core::array::from_fn(|i| 16 + i as u8));
        chunk.push(
            &HeaderOut {
                position: 7,
                stream_id: "order-42",
                stream_version: 3,
                category: "order",
                event_type: "OrderPlaced",
                schema_version: 2,
                event_id,
                correlation_id: Some(correlation),
                causation_id: None,
                timestamp_micros: 1_700_000_000_000_000,
            },
            &Metadata::new(),
            b"{}",
        );
        assert_eq!(chunk.finish(), unhex(FORMAT_1_CHUNK));
    }

    #[test]
    fn metadata_round_trips_in_a_format_2_record() {
        let mut metadata = Metadata::new();
        metadata.insert("tenant".into(), "acme".into());
        metadata.insert(
            "traceparent".into(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        );
        metadata.insert("empty".into(), String::new());
        let mut chunk = ChunkBuilder::new();
        chunk.push(
            &HeaderOut {
                position: 1,
                stream_id: "s-1",
                stream_version: 1,
                category: "s",
                event_type: "E",
                schema_version: 1,
                event_id: Uuid::nil(),
                correlation_id: None,
                causation_id: None,
                timestamp_micros: 7,
            },
            &metadata,
            b"payload",
        );
        let value = chunk.finish();
        let records: Vec<_> = ChunkIter::new(&value)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            value[CHUNK_HEADER_LEN + FRAME_HEADER_LEN],
            RECORD_FORMAT_METADATA
        );
        let event = records[0].event(records[0].header().unwrap()).unwrap();
        assert_eq!(event.metadata, metadata);
        assert_eq!(event.payload, &b"payload"[..]);
    }

    /// The header of an event of `stream` with type `event_type` at `position` (category: the
    /// stream's prefix unless `category` says otherwise).
    fn header<'a>(
        position: u64,
        stream: &'a str,
        category: &'a str,
        event_type: &'a str,
    ) -> Header<'a> {
        Header {
            position,
            stream_id: stream,
            stream_version: position,
            category,
            event_type,
            schema_version: 1,
            event_id: Uuid::from_u128(u128::from(position)),
            correlation_id: None,
            causation_id: Some(Uuid::nil()),
            timestamp_micros: position * 10,
        }
    }

    #[test]
    fn a_page_shares_two_buffers_among_its_events_and_copies_repeated_strings_once() {
        let mut page = PageBuilder::with_capacity(4);
        let mut tenant = Metadata::new();
        tenant.insert("tenant".into(), "acme".into());
        page.push(
            &header(1, "order-1", "order", "Placed"),
            b"one",
            Metadata::new(),
        );
        page.push(&header(2, "order-2", "order", "Paid"), b"", tenant.clone());
        page.push(
            &header(3, "order-1", "order", "Placed"),
            b"three",
            Metadata::new(),
        );
        // A category that is not the stream's prefix (an import may record one).
        page.push(
            &header(4, "x-4", "imported", "Paid"),
            b"four",
            Metadata::new(),
        );
        assert_eq!(page.len(), 4);
        assert_eq!(
            page.bytes(),
            (3 + 7 + 5 + 6) + (7 + 5 + 4 + 10) + (5 + 7 + 5 + 6) + (4 + 3 + 8 + 4)
        );
        let events = page.finish();
        let got: Vec<_> = events
            .iter()
            .map(|e| {
                (
                    e.position,
                    e.stream_id.as_str(),
                    e.category.as_str(),
                    e.event_type.as_str(),
                    &e.payload[..],
                    e.stream_version,
                    e.timestamp_micros,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (1, "order-1", "order", "Placed", &b"one"[..], 1, 10),
                (2, "order-2", "order", "Paid", &b""[..], 2, 20),
                (3, "order-1", "order", "Placed", &b"three"[..], 3, 30),
                (4, "x-4", "imported", "Paid", &b"four"[..], 4, 40),
            ]
        );
        assert_eq!(events[1].metadata, tenant);
        assert_eq!(events[3].event_id, Uuid::from_u128(4));
        assert_eq!(events[0].causation_id, Some(Uuid::nil()));
        for (a, b) in events.iter().zip(&events[1..]) {
            // Strings follow each other in one buffer, and so do payloads.
            assert!(b.stream_id.as_ptr() > a.stream_id.as_ptr());
            assert!(
                b.payload.is_empty()
                    || a.payload.is_empty()
                    || b.payload.as_ptr() > a.payload.as_ptr()
            );
        }
        // The category is the stream id's prefix, not a copy; a type seen before is not copied.
        assert_eq!(events[0].category.as_ptr(), events[0].stream_id.as_ptr());
        assert_eq!(events[2].event_type.as_ptr(), events[0].event_type.as_ptr());
        assert_eq!(events[3].event_type.as_ptr(), events[1].event_type.as_ptr());
        // A detached copy shares nothing and is equal.
        let copy = events[2].detached();
        assert_eq!(copy, events[2]);
        assert_ne!(copy.payload.as_ptr(), events[2].payload.as_ptr());
        assert_ne!(copy.stream_id.as_ptr(), events[2].stream_id.as_ptr());
    }

    #[test]
    fn an_empty_page_has_no_events() {
        assert!(PageBuilder::default().finish().is_empty());
    }

    fn header_strategy() -> impl Strategy<Value = (u64, String, u64, String, u32, u64, Vec<u8>)> {
        (
            any::<u64>(),
            ".{0,40}",
            any::<u64>(),
            ".{0,20}",
            any::<u32>(),
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..300),
        )
    }

    proptest! {
        #[test]
        fn chunk_round_trip(records in proptest::collection::vec(header_strategy(), 1..20)) {
            let ids: Vec<Uuid> = records.iter().map(|_| Uuid::new_v4()).collect();
            let mut chunk = ChunkBuilder::new();
            for ((pos, stream, version, ty, schema, ts, payload), id) in records.iter().zip(&ids) {
                chunk.push(&HeaderOut {
                    position: *pos,
                    stream_id: stream,
                    stream_version: *version,
                    category: super::super::category_of(stream),
                    event_type: ty,
                    schema_version: *schema,
                    event_id: *id,
                    correlation_id: Some(*id),
                    causation_id: None,
                    timestamp_micros: *ts,
                }, &meta(*pos), payload);
            }
            let value = chunk.finish();
            let decoded: Vec<_> = ChunkIter::new(&value).unwrap().collect::<Result<_, _>>().unwrap();
            prop_assert_eq!(decoded.len(), records.len());
            for (raw, (pos, stream, version, ty, schema, ts, payload)) in decoded.iter().zip(&records) {
                let h = raw.header().unwrap();
                prop_assert_eq!(h.position, *pos);
                prop_assert_eq!(h.stream_id, stream.as_str());
                prop_assert_eq!(h.stream_version, *version);
                prop_assert_eq!(h.event_type, ty.as_str());
                prop_assert_eq!(h.schema_version, *schema);
                prop_assert_eq!(h.timestamp_micros, *ts);
                prop_assert_eq!(raw.payload, &payload[..]);
                prop_assert_eq!(raw.metadata().unwrap(), meta(*pos));
            }
        }

        #[test]
        fn any_flipped_byte_is_detected(payload in proptest::collection::vec(any::<u8>(), 0..200), flip in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut chunk = ChunkBuilder::new();
            for i in 0..3u64 {
                chunk.push(&HeaderOut {
                    position: i + 1, stream_id: "s-1", stream_version: i + 1, category: "s",
                    event_type: "E", schema_version: 1, event_id: Uuid::nil(),
                    correlation_id: None, causation_id: None, timestamp_micros: 7,
                }, &meta(i), &payload);
            }
            let mut value = chunk.finish();
            let at = flip.index(value.len());
            value[at] ^= 1 << bit;
            let result: Result<Vec<_>, _> = ChunkIter::new(&value).and_then(|it| it.collect());
            prop_assert!(result.is_err());
        }

        #[test]
        fn any_truncation_is_detected(cut in 1usize..100) {
            let mut chunk = ChunkBuilder::new();
            chunk.push(&HeaderOut {
                position: 1, stream_id: "s-1", stream_version: 1, category: "s",
                event_type: "E", schema_version: 1, event_id: Uuid::nil(),
                correlation_id: None, causation_id: None, timestamp_micros: 7,
            }, &meta(1), &[9; 64]);
            let value = chunk.finish();
            let cut = cut.min(value.len());
            let short = &value[..value.len() - cut];
            let result: Result<Vec<_>, _> = ChunkIter::new(short).and_then(|it| it.collect());
            prop_assert!(result.is_err());
        }

        #[test]
        fn small_values_round_trip(pos in any::<u64>(), count in any::<u32>(), version in any::<u64>(), payload in proptest::collection::vec(any::<u8>(), 0..100)) {
            let mark = IndexMark { position: pos, segment: version, offset: u64::from(count), timestamp_micros: pos ^ version };
            prop_assert_eq!(decode_mark(&encode_mark(mark)).unwrap(), mark);
            prop_assert_eq!(decode_checkpoint(&encode_checkpoint(pos)).unwrap(), pos);
            let snap = Snapshot { stream_version: version, schema_version: count, payload };
            prop_assert_eq!(decode_snapshot(&encode_snapshot(&snap)).unwrap(), snap);
        }
    }
}
