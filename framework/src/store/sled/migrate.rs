//! Converting a store of format 1 (events in sled, in log chunks) or format 2 (events in the
//! segment log, their index in sled) to format 3 (the index in its own files), at open.
//!
//! The conversion can be interrupted at any point and resumed by the next open:
//! 1. Format 1 only: the records of the format-1 chunks are copied to the segment log, from the
//!    position after the log's tail (a resumed conversion goes on where the last one stopped),
//!    in groups of up to [`COPY_GROUP_BYTES`], each synced. The chunks stay the store's events
//!    until one synced sled write marks the store as format 3.
//! 2. Every open lets the stream index catch up with the log (`index.rs`), which builds the
//!    whole index after a conversion, reading back and checking every record copied, and writes
//!    it to its files; a format-2 store is marked as format 3 after that.
//! 3. Then the keys of the old formats that are left (`L` chunks, `S` and `X` index entries, `G`
//!    group starts, the `I` mark) are removed, in batches.

use tracing::info;

use super::keys;
use super::read::damaged;
use super::writer::append_bodies;
use crate::store::codec::{self, ChunkIter, DecodeError};
use crate::store::log::{self, SegmentLog};
use crate::store::{Result, StoreError};

/// The most record bytes copied in one group (one write and one fdatasync).
const COPY_GROUP_BYTES: usize = 4 << 20;
/// How many format-1 keys one batch of the clean-up removes.
const REMOVE_BATCH: usize = 10_000;

/// The last position of a format-1 log (from the last chunk's checksummed header).
fn format_1_head(db: &sled::Db) -> Result<u64> {
    let Some(item) = db.scan_prefix([keys::LOG]).next_back() else {
        return Ok(0);
    };
    let (key, value) = item?;
    let first = keys::log_key_position(&key).ok_or_else(|| StoreError::DamagedMetadata {
        what: "log key".into(),
        reason: format!("malformed key {key:?}"),
    })?;
    let count = codec::chunk_count(&value).map_err(|e| damaged(first, e))?;
    if count == 0 {
        return Err(damaged(first, DecodeError::at(0, "empty log chunk")));
    }
    Ok(first + u64::from(count) - 1)
}

/// Copies the events of a format-1 store into `log` and marks the store as format 3 (step 1
/// above). A damaged chunk stops the conversion with [`StoreError::Damaged`] naming the
/// position, before the store is marked: the store stays format 1, and an older build still
/// opens it.
pub fn from_format_1(
    db: &sled::Db,
    log: &mut SegmentLog,
    sync: impl FnOnce() -> Result<()>,
) -> Result<()> {
    let head = format_1_head(db)?;
    let done = log.tail();
    if done > head {
        return Err(StoreError::DamagedMetadata {
            what: format!("the event log in {}", log.dir().display()),
            reason: format!(
                "it holds {done} events, and the store (format 1) only {head}: it is not this \
                 store's log. Move the directory away and open the store again"
            ),
        });
    }
    if done < head {
        info!(
            events = head - done,
            "converting the store from storage format 1 to format 3 (events move to the \
             segment log)"
        );
    }
    let mut next = done + 1;
    let mut bodies: Vec<u8> = Vec::new();
    let mut ends: Vec<(u64, usize)> = Vec::new();
    let start = db
        .range(keys::log_key(0)..=keys::log_key(next))
        .next_back()
        .transpose()?
        .map_or(keys::log_key(next), |(k, _)| {
            keys::log_key(keys::log_key_position(&k).unwrap_or(next))
        });
    for item in db.range(start..=keys::log_key(head)) {
        let (key, value) = item?;
        let first = keys::log_key_position(&key).ok_or_else(|| StoreError::Damaged {
            position: next,
            reason: format!("malformed log key {key:?}"),
        })?;
        if first > next {
            return Err(StoreError::Damaged {
                position: next,
                reason: format!("log chunk missing (the next chunk starts at {first})"),
            });
        }
        let mut iter = ChunkIter::new(&value).map_err(|e| damaged(first, e))?;
        iter.skip_records((next - first) as u32)
            .map_err(|e| damaged(first, e))?;
        for record in iter {
            let record = record.map_err(|e| damaged(first, e))?;
            let position = first + u64::from(record.index);
            let header = record.header().map_err(|e| damaged(first, e))?;
            if header.position != position {
                return Err(StoreError::Damaged {
                    position,
                    reason: format!("record says it is at position {}", header.position),
                });
            }
            // A group must fit in a segment with its framing: write the one gathered so far
            // when this record would take it past that (or past COPY_GROUP_BYTES).
            // (Each record's header and padding take at most 40 bytes besides its body.)
            let gathered = bodies.len() as u64 + ends.len() as u64 * 40;
            let adding = log::framed_len(record.body.len() as u64);
            let limit = (COPY_GROUP_BYTES as u64).min(log.capacity());
            if !ends.is_empty() && gathered + adding > limit {
                copy(log, &mut bodies, &mut ends)?;
            }
            bodies.extend_from_slice(record.body);
            ends.push((position, bodies.len()));
            next = position + 1;
        }
    }
    copy(log, &mut bodies, &mut ends)?;
    if log.tail() != head {
        return Err(StoreError::Damaged {
            position: log.tail() + 1,
            reason: format!(
                "the format-1 log ends at {} but its head is {head}",
                log.tail()
            ),
        });
    }
    db.insert(
        keys::FORMAT_KEY,
        codec::encode_format(super::STORAGE_FORMAT),
    )?;
    db.flush()?;
    sync()
}

/// Appends the records gathered in `bodies` to the log as one group.
fn copy(log: &mut SegmentLog, bodies: &mut Vec<u8>, ends: &mut Vec<(u64, usize)>) -> Result<()> {
    if ends.is_empty() {
        return Ok(());
    }
    append_bodies(log, bodies, ends, 0)?;
    bodies.clear();
    ends.clear();
    Ok(())
}

/// Removes the keys of formats 1 and 2 that a conversion left (step 3 above), in batches;
/// returns how many (the caller flushes sled).
pub fn remove_old_keys(db: &sled::Db) -> Result<u64> {
    let mut removed = 0u64;
    if db.remove(keys::INDEXED_KEY)?.is_some() {
        removed += 1;
    }
    for prefix in [keys::LOG, keys::INDEX, keys::RUNS, keys::GROUP] {
        loop {
            let mut batch = sled::Batch::default();
            let mut n = 0;
            for item in db.scan_prefix([prefix]).keys().take(REMOVE_BATCH) {
                batch.remove(item?);
                n += 1;
            }
            if n == 0 {
                break;
            }
            db.apply_batch(batch)?;
            removed += n as u64;
        }
    }
    if removed > 0 {
        info!(
            keys = removed,
            "removed the old format's log and index after the conversion"
        );
    }
    Ok(removed)
}
