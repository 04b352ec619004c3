//! Sequential reads of the log in a bounded window.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::error::{LogError, LogResult};
use super::frame::{RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};
use super::segment::{probe, Probe, Segment, Window};
use super::{Record, RecordAddr, Shared};

/// A record read by a [`Scan`], borrowed from its buffer until the next call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RecordRef<'a> {
    /// The record's position.
    pub position: u64,
    /// Where it is.
    pub addr: RecordAddr,
    /// Its body.
    pub body: &'a [u8],
}

impl RecordRef<'_> {
    /// The record, with its body copied.
    pub fn to_record(self) -> Record {
        Record {
            position: self.position,
            addr: self.addr,
            body: self.body.to_vec(),
        }
    }
}

/// Reads records in position order, through a window of `LogConfig::read_buffer_bytes` (a record
/// larger than that is read on its own), up to the log's acknowledged end as it is at each call:
/// after `None`, a later call returns records appended since.
///
/// After damage it returns the error (naming the position) once and then `None`: to read on
/// past it, start a new scan with [`LogReader::scan_at`](super::LogReader::scan_at) at the
/// address of the next record (the store's index has it).
#[derive(Debug)]
pub(crate) struct Scan {
    shared: Arc<Shared>,
    segment: Option<Arc<Segment>>,
    offset: u64,
    expected: u64,
    /// Records below this position are passed over (a scan from a position).
    skip_below: u64,
    window: Window,
    big: Vec<u8>,
    stopped: bool,
}

impl Scan {
    pub(super) fn new(
        shared: Arc<Shared>,
        segment: Option<Arc<Segment>>,
        offset: u64,
        expected: u64,
        skip_below: u64,
    ) -> Self {
        let window = Window::with_buffer(shared.take_buffer(), shared.config.read_buffer_bytes);
        Scan {
            shared,
            segment,
            offset,
            expected,
            skip_below,
            window,
            big: Vec::new(),
            stopped: false,
        }
    }

    /// Passes over the records below `position` (their headers are still checked).
    pub fn skip_below(&mut self, position: u64) {
        self.skip_below = position;
    }

    /// The position the next record will have.
    pub fn next_position(&self) -> u64 {
        self.expected
    }

    fn damaged(&mut self, segment: &Segment, reason: impl Into<String>) -> LogError {
        self.stopped = true;
        LogError::Damaged {
            position: self.expected,
            file: segment.path.clone(),
            offset: self.offset,
            reason: reason.into(),
        }
    }

    /// The next record, borrowed from the scan's buffer; `None` at the log's end (for now).
    pub fn next_record(&mut self) -> Option<LogResult<RecordRef<'_>>> {
        loop {
            if self.stopped || self.expected > self.shared.last_position.load(Ordering::Acquire) {
                return None;
            }
            let segment = match &self.segment {
                Some(s) => Arc::clone(s),
                None => {
                    let first = self.shared.segments().values().next().cloned()?;
                    self.offset = SEGMENT_HEADER_LEN;
                    self.expected = first.id;
                    self.segment = Some(first);
                    continue;
                }
            };
            let limit = segment.end().unwrap_or(segment.size);
            let found = match probe(&mut self.window, &segment, self.offset, limit, false) {
                Ok(found) => found,
                Err(e) => {
                    self.stopped = true;
                    return Some(Err(e));
                }
            };
            let header = match found {
                Probe::End => None,
                Probe::Zero if segment.end().is_none() => None,
                Probe::Zero => {
                    return Some(Err(self.damaged(&segment, "zeros where a record should be")))
                }
                Probe::Bad(why) => return Some(Err(self.damaged(&segment, why))),
                Probe::Record(h, next) => Some((h, next)),
            };
            let Some((header, next)) = header else {
                // The segment's records end here: on to the next segment, which must begin
                // where this one ends.
                // (An empty segment may have been replaced by one of the same name.)
                let next = self
                    .shared
                    .segments()
                    .range(segment.id..)
                    .map(|(_, s)| s)
                    .find(|s| !Arc::ptr_eq(s, &segment))
                    .cloned();
                match next {
                    Some(n) if n.id == self.expected => {
                        self.segment = Some(n);
                        self.offset = SEGMENT_HEADER_LEN;
                        continue;
                    }
                    Some(n) => {
                        let why = format!(
                            "the segment's records end before this position, and the next \
                             segment begins at position {}",
                            n.id
                        );
                        return Some(Err(self.damaged(&segment, why)));
                    }
                    None => {
                        let why = "the log's last segment ends before this position, which was \
                                   acknowledged";
                        return Some(Err(self.damaged(&segment, why)));
                    }
                }
            };
            if header.position != self.expected {
                let why = format!("the record there holds position {}", header.position);
                return Some(Err(self.damaged(&segment, why)));
            }
            let addr = RecordAddr {
                segment: segment.id,
                offset: self.offset as u32,
                len: RECORD_HEADER_LEN as u32 + header.body_len,
            };
            let at = self.offset;
            if header.position < self.skip_below {
                self.offset = next;
                self.expected += 1;
                continue;
            }
            let body_at = at + RECORD_HEADER_LEN as u64;
            let len = header.body_len as usize;
            let read = if len <= self.window.capacity() {
                self.window
                    .get(&segment, body_at, len, limit)
                    .map(|b| b.len())
            } else {
                self.big.resize(len, 0);
                segment.read_at(&mut self.big, body_at)
            };
            match read {
                Ok(n) if n == len => {}
                Ok(_) => {
                    return Some(Err(
                        self.damaged(&segment, "the segment ends inside the record")
                    ))
                }
                Err(e) => {
                    self.stopped = true;
                    return Some(Err(e));
                }
            }
            let body: &[u8] = if len <= self.window.capacity() {
                // The bytes are in the window since the read just above.
                match self.window.get(&segment, body_at, len, limit) {
                    Ok(b) => b,
                    Err(e) => return Some(Err(e)),
                }
            } else {
                &self.big
            };
            if crc32fast::hash(body) != header.body_crc {
                self.stopped = true;
                return Some(Err(LogError::Damaged {
                    position: self.expected,
                    file: segment.path.clone(),
                    offset: at,
                    reason: "the record's body fails its checksum".into(),
                }));
            }
            self.offset = next;
            self.expected += 1;
            return Some(Ok(RecordRef {
                position: header.position,
                addr,
                body,
            }));
        }
    }
}

impl Drop for Scan {
    fn drop(&mut self) {
        let window = std::mem::replace(&mut self.window, Window::new(0));
        self.shared.give_buffer(window.into_buffer());
    }
}

impl Iterator for Scan {
    type Item = LogResult<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_record().map(|r| r.map(|r| r.to_record()))
    }
}
