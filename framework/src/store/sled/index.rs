//! The stream index of format 2 catches up with the log at open.
//!
//! The writer adds a group's index entries to sled after the log has synced the group, and sled
//! is flushed only now and then for them (decision 58): the index is derived from the log, so
//! after a crash it may lag behind it. Opening the store reads the records after the index's
//! mark (`I`) and indexes them before anything else runs.

use tracing::info;

use super::keys;
use super::read::{index_error, record_at};
use super::writer::GROUP_START_EVERY;
use crate::store::codec::{self, IndexMark, RunEntry};
use crate::store::log::{LogReader, RecordAddr};
use crate::store::{Result, StoreError};

/// How many records one batch of the catch-up indexes.
const BATCH_RECORDS: u64 = 16 * 1024;

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

/// The index's mark (`IndexMark::default()` when there is none: a new store, or one of
/// format 1).
pub fn read_mark(db: &sled::Db) -> Result<IndexMark> {
    match db.get(keys::INDEXED_KEY)? {
        Some(value) => codec::decode_mark(&value).map_err(|reason| StoreError::DamagedMetadata {
            what: "the stream index's mark".into(),
            reason,
        }),
        None => Ok(IndexMark::default()),
    }
}

/// Indexes the records of `log` after the index's `mark`, in batches (the caller flushes sled).
pub fn catch_up(db: &sled::Db, log: &LogReader, mark: IndexMark) -> Result<CaughtUp> {
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
    let mut batch = sled::Batch::default();
    let mut in_batch = 0u64;
    while let Some(record) = scan.next_record() {
        let record = record?;
        let position = record.position;
        let (_, header) = record_at(position, record.body)?;
        caught.last_timestamp = header.timestamp_micros;
        // One entry per record, not merged into runs: entries of the writer after the mark
        // may be in sled already (applied, not flushed), and one per record overwrites a run
        // the writer began at the same version and adds the rest, never overlapping it (the
        // mark is always at the end of a commit group, so no run of the writer straddles it).
        let addr = record.addr;
        batch.insert(
            keys::run_key(header.stream_id, header.stream_version),
            codec::encode_run(RunEntry {
                first_position: position,
                count: 1,
                segment: addr.segment,
                offset: addr.offset,
                bytes: addr.len,
            }),
        );
        if position == 1 || position % GROUP_START_EVERY == 0 {
            batch.insert(
                &keys::group_key(position)[..],
                codec::encode_place(addr.segment, addr.offset),
            );
        }
        in_batch += 1;
        caught.indexed += 1;
        if in_batch >= BATCH_RECORDS || position >= tail {
            let mark = IndexMark {
                position,
                segment: addr.segment,
                offset: addr.next_offset(),
                timestamp_micros: header.timestamp_micros,
            };
            batch.insert(keys::INDEXED_KEY, codec::encode_mark(mark));
            db.apply_batch(std::mem::take(&mut batch))?;
            in_batch = 0;
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

/// The group start at or before `position`: where a sequential read of the log that begins at
/// `position` starts, and its address.
pub fn group_start(db: &sled::Db, position: u64) -> Result<Option<(u64, RecordAddr)>> {
    let Some((key, value)) = db
        .range(keys::group_key(0)..=keys::group_key(position))
        .next_back()
        .transpose()?
    else {
        return Ok(None);
    };
    let start = keys::group_key_position(&key).ok_or_else(|| StoreError::DamagedMetadata {
        what: "log group start".into(),
        reason: format!("malformed key {key:?}"),
    })?;
    let (segment, offset) =
        codec::decode_place(&value).map_err(|reason| StoreError::DamagedMetadata {
            what: format!("log group start at position {start}"),
            reason,
        })?;
    Ok(Some((
        start,
        RecordAddr {
            segment,
            offset,
            len: 0,
        },
    )))
}
