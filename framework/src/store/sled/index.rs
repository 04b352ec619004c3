//! The stream index catches up with the log at open.
//!
//! The writer adds a group's runs to the index in memory after the log has synced the group,
//! and the index writes them to a table file only now and then (decisions 58, 59): the index is
//! derived from the log, so after a crash it lags behind it. Opening the store reads the
//! records after what the table files cover and indexes them before anything else runs.

use tracing::info;

use super::keys;
use super::read::{index_error, record_at};
use super::stream_index::StreamIndex;
use super::table::GroupStart;
use super::writer::GROUP_START_EVERY;
use crate::store::codec::{self, IndexMark, RunEntry};
use crate::store::log::{LogReader, RecordAddr};
use crate::store::{Result, StoreError};

/// How many records one batch of the catch-up indexes.
const BATCH_RECORDS: usize = 4 * 1024;

/// What the catch-up found: the log's head and the timestamp of its last record.
pub struct CaughtUp {
    /// The last position in the log.
    pub head: u64,
    /// The timestamp of the last record (0 for an empty log, or one whose last record does not
    /// decode: it only keeps timestamps from going down).
    pub last_timestamp: u64,
    /// How many records were indexed.
    pub indexed: u64,
}

/// The format-2 index's mark in sled (`IndexMark::default()` when there is none), which says
/// what the log held when a format-2 store was last flushed: part of what was acknowledged.
pub fn read_format_2_mark(db: &sled::Db) -> Result<IndexMark> {
    match db.get(keys::INDEXED_KEY)? {
        Some(value) => codec::decode_mark(&value).map_err(|reason| StoreError::DamagedMetadata {
            what: "the stream index's mark".into(),
            reason,
        }),
        None => Ok(IndexMark::default()),
    }
}

/// Indexes the records of `log` after what `index` covers, writing a table file for each
/// `SledConfig::index_table_runs` records (see [`StreamIndex::flush_due`]).
pub fn catch_up(index: &StreamIndex, log: &LogReader) -> Result<CaughtUp> {
    let mark = index.mark();
    let tail = log.tail();
    if mark.position > tail {
        return Err(StoreError::Damaged {
            position: tail + 1,
            reason: format!(
                "the stream index covers the events up to position {}, but the event log \
                 ends at {tail}: the log lost acknowledged events (a segment file was truncated, \
                 replaced or deleted). Restore the store from a backup",
                mark.position
            ),
        });
    }
    let mut caught = CaughtUp {
        head: tail,
        last_timestamp: mark.timestamp_micros,
        indexed: 0,
    };
    if mark.position == tail {
        return Ok(caught);
    }
    // From the record after the mark, whose address the mark holds: the records before it are
    // not read again (damage there is reported by the reads that meet it, not here).
    let mut scan = if mark.position == 0 {
        log.scan(1)
    } else {
        let addr = RecordAddr {
            segment: mark.segment,
            offset: u32::try_from(mark.offset).map_err(|_| StoreError::DamagedMetadata {
                what: "the stream index's mark".into(),
                reason: format!("offset {} is beyond any segment", mark.offset),
            })?,
            len: 0,
        };
        log.scan_at(mark.position + 1, addr)
            .map_err(|e| index_error(e, || "the stream index's mark".into()))?
    };
    let mut runs = Vec::with_capacity(BATCH_RECORDS);
    let mut groups = Vec::new();
    while let Some(record) = scan.next_record() {
        let record = record?;
        let position = record.position;
        let (_, header) = record_at(position, record.body)?;
        caught.last_timestamp = header.timestamp_micros;
        // One run per record: what the writer had in memory after the mark was lost with the
        // process, so nothing overlaps.
        let addr = record.addr;
        runs.push((
            keys::run_key(header.stream_id, header.stream_version),
            RunEntry {
                first_position: position,
                count: 1,
                segment: addr.segment,
                offset: addr.offset,
                bytes: addr.len,
            },
        ));
        if position == 1 || position % GROUP_START_EVERY == 0 {
            groups.push(GroupStart {
                position,
                segment: addr.segment,
                offset: addr.offset,
            });
        }
        caught.indexed += 1;
        if runs.len() >= BATCH_RECORDS || position >= tail {
            let mark = IndexMark {
                position,
                segment: addr.segment,
                offset: addr.next_offset(),
                timestamp_micros: header.timestamp_micros,
            };
            index.insert(runs.drain(..), groups.drain(..), mark);
            if index.flush_due() {
                index.flush()?;
            }
        }
        if position >= tail {
            break;
        }
    }
    if caught.indexed > 0 {
        info!(
            events = caught.indexed,
            from = mark.position + 1,
            to = tail,
            "the stream index caught up with the event log"
        );
    }
    if scan.next_position() <= tail {
        return Err(StoreError::Damaged {
            position: scan.next_position(),
            reason: "the event log ends before its last acknowledged position".into(),
        });
    }
    Ok(caught)
}
