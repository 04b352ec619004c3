//! Reading the log from any thread: one record at an exact address, or in order.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::error::{LogError, LogResult};
use super::frame::{self, RecordHeader, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};
use super::segment;
use super::{Record, RecordAddr, Scan, Shared};

/// Reads the log from any thread, concurrently with the writer. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct LogReader {
    pub(super) shared: Arc<Shared>,
}

impl LogReader {
    /// The last acknowledged position (0 for an empty log).
    pub fn tail(&self) -> u64 {
        self.shared.last_position.load(Ordering::Acquire)
    }

    /// Reads the record at `position`, which the index says is at `addr`: one `pread`, then its
    /// checks. A record that fails them, or that holds another position, is
    /// [`LogError::Damaged`] naming `position`; an address outside the log's acknowledged
    /// records is [`LogError::Invalid`].
    pub fn read_at(&self, position: u64, addr: RecordAddr) -> LogResult<Record> {
        let segment = self.shared.segments().get(&addr.segment).cloned();
        let Some(segment) = segment else {
            return Err(LogError::Invalid(format!(
                "position {position}: the log has no segment {}",
                segment::file_name(addr.segment)
            )));
        };
        let offset = u64::from(addr.offset);
        let end = offset + u64::from(addr.len);
        let limit = segment.end().unwrap_or(segment.size);
        if offset < SEGMENT_HEADER_LEN
            || !offset.is_multiple_of(frame::ALIGN)
            || (addr.len as usize) < RECORD_HEADER_LEN
            || end > limit
            || position > self.tail()
        {
            return Err(LogError::Invalid(format!(
                "position {position}: {addr:?} is not the address of an acknowledged record"
            )));
        }
        let damaged = |reason: String| LogError::Damaged {
            position,
            file: segment.path.clone(),
            offset,
            reason,
        };
        let mut buf = vec![0u8; addr.len as usize];
        if segment.read_at(&mut buf, offset)? < buf.len() {
            return Err(damaged("the segment file ends inside the record".into()));
        }
        let head: [u8; RECORD_HEADER_LEN] = buf[..RECORD_HEADER_LEN].try_into().expect("32");
        let header = match RecordHeader::decode(&head) {
            frame::HeaderCheck::Ok(h) => h,
            frame::HeaderCheck::Zero => {
                return Err(damaged("zeros where the record should be".into()))
            }
            frame::HeaderCheck::Bad(why) => return Err(damaged(why.into())),
        };
        if header.position != position {
            return Err(damaged(format!(
                "the record there holds position {}",
                header.position
            )));
        }
        if header.body_len as usize != buf.len() - RECORD_HEADER_LEN {
            return Err(damaged(format!(
                "the record there is {} bytes long, the address says {}",
                header.body_len as usize + RECORD_HEADER_LEN,
                addr.len
            )));
        }
        if crc32fast::hash(&buf[RECORD_HEADER_LEN..]) != header.body_crc {
            return Err(damaged("the record's body fails its checksum".into()));
        }
        buf.copy_within(RECORD_HEADER_LEN.., 0);
        buf.truncate(header.body_len as usize);
        Ok(Record {
            position,
            addr,
            body: buf,
        })
    }

    /// Reads the log in order from `position` (from its first record if `position` is before
    /// it). Finding the start reads the headers of the records before it in its segment.
    pub fn scan(&self, position: u64) -> Scan {
        let segment = {
            let segments = self.shared.segments();
            segments
                .range(..=position)
                .next_back()
                .or_else(|| segments.iter().next())
                .map(|(_, s)| Arc::clone(s))
        };
        let expected = segment.as_ref().map_or(1, |s| s.id);
        Scan::new(
            Arc::clone(&self.shared),
            segment,
            SEGMENT_HEADER_LEN,
            expected,
            position,
        )
    }

    /// Reads the log in order from the record at `position`, which the index says is at `addr`:
    /// the way to read on after damage (the next record's address comes from the index).
    pub fn scan_at(&self, position: u64, addr: RecordAddr) -> LogResult<Scan> {
        let segment = self.shared.segments().get(&addr.segment).cloned();
        let Some(segment) = segment else {
            return Err(LogError::Invalid(format!(
                "position {position}: the log has no segment {}",
                segment::file_name(addr.segment)
            )));
        };
        Ok(Scan::new(
            Arc::clone(&self.shared),
            Some(segment),
            u64::from(addr.offset),
            position,
            0,
        ))
    }
}
