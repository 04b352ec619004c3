//! The stream index of format 2 catches up with the log at open.
//!
//! The writer adds a group's index entries to sled after the log has synced the group, and sled
//! is flushed only now and then for them (decision 57): the index is derived from the log, so
//! after a crash it may lag behind it. Opening the store reads the records after the index's
//! mark (`I`) and indexes them before anything else runs.

use tracing::info;

use super::keys;
use super::read::damaged;
use super::writer::GROUP_START_EVERY;
use crate::store::codec::{self, RunEntry};
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

/// Indexes the records of `log` after the index's mark, in batches, and flushes sled.
pub fn catch_up(db: &sled::Db, log: &LogReader) -> Result<CaughtUp> {
    let mark = match db.get(keys::INDEXED_KEY)? {
        Some(value) => {
            codec::decode_position(&value).map_err(|reason| StoreError::DamagedMetadata {
                what: "the stream index's mark".into(),
                reason,
            })?
        }
        None => 0,
    };
    let tail = log.tail();
    if mark > tail {
        return Err(StoreError::Damaged {
            position: tail + 1,
            reason: format!(
                "the stream index covers the events up to position {mark}, but the event log \
                 ends at {tail}: the log lost acknowledged events (a segment file was truncated, \
                 replaced or deleted). Restore the store from a backup"
            ),
        });
    }
    // The last record's timestamp, read again even when there is nothing to index.
    let from = if mark == tail { tail } else { mark + 1 };
    let mut caught = CaughtUp {
        head: tail,
        last_timestamp: 0,
        indexed: 0,
    };
    if tail == 0 {
        return Ok(caught);
    }
    let mut scan = match group_start(db, from)? {
        Some((start, addr)) => log.scan_from(from, start, addr)?,
        None => log.scan(from),
    };
    let mut batch = sled::Batch::default();
    let mut in_batch = 0u64;
    let mut run: Option<(String, u64, RunEntry)> = None;
    let mut last_segment = None;
    while let Some(record) = scan.next_record() {
        let record = record?;
        let position = record.position;
        let raw = codec::parse_record(record.body, 0).map_err(|e| damaged(position, e))?;
        let header = raw.header().map_err(|e| damaged(position, e))?;
        if header.position != position {
            return Err(StoreError::Damaged {
                position,
                reason: format!("record says it is at position {}", header.position),
            });
        }
        caught.last_timestamp = header.timestamp_micros;
        if position <= mark {
            continue;
        }
        let addr = record.addr;
        let continues = matches!(&run, Some((stream, version, entry))
            if stream == header.stream_id
                && *version + u64::from(entry.count) == header.stream_version
                && entry.first_position + u64::from(entry.count) == position
                && entry.segment == addr.segment);
        if continues {
            let (_, _, entry) = run.as_mut().expect("a run continues");
            entry.count += 1;
            entry.bytes = addr.offset + addr.len - entry.offset;
        } else {
            if let Some(done) = run.take() {
                insert_run(&mut batch, done);
            }
            run = Some((
                header.stream_id.to_owned(),
                header.stream_version,
                RunEntry {
                    first_position: position,
                    count: 1,
                    segment: addr.segment,
                    offset: addr.offset,
                    bytes: addr.len,
                },
            ));
        }
        if in_batch == 0 || position % GROUP_START_EVERY == 0 || last_segment != Some(addr.segment)
        {
            batch.insert(
                &keys::group_key(position)[..],
                codec::encode_place(addr.segment, addr.offset),
            );
        }
        last_segment = Some(addr.segment);
        in_batch += 1;
        caught.indexed += 1;
        if in_batch >= BATCH_RECORDS {
            if let Some(done) = run.take() {
                insert_run(&mut batch, done);
            }
            batch.insert(keys::INDEXED_KEY, codec::encode_position(position));
            db.apply_batch(std::mem::take(&mut batch))?;
            in_batch = 0;
        }
        if position >= tail {
            break;
        }
    }
    if let Some(done) = run.take() {
        insert_run(&mut batch, done);
    }
    if caught.indexed > 0 {
        batch.insert(keys::INDEXED_KEY, codec::encode_position(tail));
        db.apply_batch(batch)?;
        db.flush()?;
        info!(
            events = caught.indexed,
            from = mark + 1,
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

fn insert_run(batch: &mut sled::Batch, (stream, version, entry): (String, u64, RunEntry)) {
    batch.insert(keys::run_key(&stream, version), codec::encode_run(entry));
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
