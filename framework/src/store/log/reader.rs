//! Reading the log from any thread: one record at an exact address, or in order.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::error::{LogError, LogResult};
use super::frame::{self, RecordHeader, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};
use super::segment;
#[cfg(test)]
use super::Record;
use super::{RecordAddr, Scan, Shared};

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
    #[cfg(test)]
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

    /// Reads the log in order from `position`, starting at the record at `start` (at or before
    /// `position`), which the index says is at `addr`: the records between are read past (only
    /// their headers are checked).
    pub fn scan_from(&self, position: u64, start: u64, addr: RecordAddr) -> LogResult<Scan> {
        let mut scan = self.scan_at(start, addr)?;
        scan.skip_below(position);
        Ok(scan)
    }

    /// Reads a run of `count` records at consecutive positions from `position`, which the index
    /// says begins at `addr` (whose `len` is the run's length, from its first record's header
    /// to the end of its last record's body), calling `each` with each record's position and
    /// body; `each` returns `false` to stop. `buf` is the buffer the run is read into (kept by
    /// the caller between calls): a run of at most `max_buffer` bytes is read with one `pread`,
    /// a longer one record by record.
    ///
    /// Errors as [`read_at`](Self::read_at): a record that fails its checks is
    /// [`LogError::Damaged`] naming its position, an address outside the acknowledged records
    /// [`LogError::Invalid`].
    pub fn read_run(
        &self,
        position: u64,
        addr: RecordAddr,
        count: u32,
        buf: &mut Vec<u8>,
        max_buffer: usize,
        mut each: impl FnMut(u64, &[u8]) -> bool,
    ) -> LogResult<()> {
        let segment = self.shared.segments().get(&addr.segment).cloned();
        let Some(segment) = segment else {
            return Err(LogError::Invalid(format!(
                "position {position}: the log has no segment {}",
                segment::file_name(addr.segment)
            )));
        };
        let start = u64::from(addr.offset);
        let end = start + u64::from(addr.len);
        let limit = segment.end().unwrap_or(segment.size);
        let last = position + u64::from(count.max(1)) - 1;
        if start < SEGMENT_HEADER_LEN
            || !start.is_multiple_of(frame::ALIGN)
            || (addr.len as usize) < RECORD_HEADER_LEN
            || end > limit
            || count == 0
            || last > self.tail()
        {
            return Err(LogError::Invalid(format!(
                "positions {position}..={last}: {addr:?} is not the address of acknowledged records"
            )));
        }
        let whole = addr.len as usize <= max_buffer;
        if whole {
            buf.resize(addr.len as usize, 0);
            if segment.read_at(buf, start)? < buf.len() {
                return Err(LogError::Damaged {
                    position,
                    file: segment.path.clone(),
                    offset: start,
                    reason: "the segment file ends inside the run of records".into(),
                });
            }
        }
        let mut offset = start;
        for i in 0..u64::from(count) {
            let expected = position + i;
            let damaged = |reason: String| LogError::Damaged {
                position: expected,
                file: segment.path.clone(),
                offset,
                reason,
            };
            if offset + RECORD_HEADER_LEN as u64 > end {
                return Err(damaged("the run ends before this record".into()));
            }
            let mut head = [0u8; RECORD_HEADER_LEN];
            if whole {
                let at = (offset - start) as usize;
                head.copy_from_slice(&buf[at..at + RECORD_HEADER_LEN]);
            } else if segment.read_at(&mut head, offset)? < RECORD_HEADER_LEN {
                return Err(damaged("the segment file ends inside the record".into()));
            }
            let header = match RecordHeader::decode(&head) {
                frame::HeaderCheck::Ok(h) => h,
                frame::HeaderCheck::Zero => {
                    return Err(damaged("zeros where the record should be".into()))
                }
                frame::HeaderCheck::Bad(why) => return Err(damaged(why.into())),
            };
            if header.position != expected {
                return Err(damaged(format!(
                    "the record there holds position {}",
                    header.position
                )));
            }
            let body_at = offset + RECORD_HEADER_LEN as u64;
            let body_end = body_at + u64::from(header.body_len);
            if body_end > end {
                return Err(damaged("the record runs past the end of its run".into()));
            }
            let body: &[u8] = if whole {
                &buf[(body_at - start) as usize..(body_end - start) as usize]
            } else {
                buf.resize(header.body_len as usize, 0);
                if segment.read_at(buf, body_at)? < buf.len() {
                    return Err(damaged("the segment file ends inside the record".into()));
                }
                buf
            };
            if crc32fast::hash(body) != header.body_crc {
                return Err(damaged("the record's body fails its checksum".into()));
            }
            if !each(expected, body) {
                return Ok(());
            }
            offset += frame::framed_len(u64::from(header.body_len));
        }
        Ok(())
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
