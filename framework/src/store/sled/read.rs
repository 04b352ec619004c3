//! Reading the sled layout: the log, the stream index, checkpoints, snapshots, and `verify`.

use std::ops::Bound;
use std::sync::atomic::Ordering;

use sled::IVec;

use super::keys;
use super::Shared;
use crate::store::codec::{self, ChunkIter, DecodeError, IndexEntry};
use crate::store::{
    category_of, state_entry_bytes, CheckpointInfo, Filter, ReadBatch, RecordedEvent, Result,
    Snapshot, StoreError, StreamInfo, VerifyReport, READ_PAGE_BYTES,
};

/// At most this many events are examined by one filtered `read_all` page.
const SCAN_LIMIT: u64 = 16 * 1024;
/// `verify` lists at most this many problems (then counts the rest).
const MAX_PROBLEMS: usize = 1000;

fn damaged(first: u64, e: DecodeError) -> StoreError {
    StoreError::Damaged {
        position: first + u64::from(e.index),
        reason: e.reason,
    }
}

/// The last position in the log (from the last chunk's checksummed header, so that a damaged
/// record cannot make the store unopenable) and the timestamp of the last record that still
/// decodes (0 if none does; it only keeps timestamps from going down).
pub fn recover_tail(db: &sled::Db) -> Result<(u64, u64)> {
    let Some(item) = db.scan_prefix([keys::LOG]).next_back() else {
        return Ok((0, 0));
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
    let timestamp = ChunkIter::new(&value)
        .map_err(|e| damaged(first, e))?
        .map_while(|r| r.ok().and_then(|r| r.header().ok()))
        .last()
        .map_or(0, |h| h.timestamp_micros);
    Ok((first + u64::from(count) - 1, timestamp))
}

/// The store's commit counter (0 in a store written before commits were counted).
pub fn recover_commits(db: &sled::Db) -> Result<u64> {
    match db.get(keys::COMMITS_KEY)? {
        Some(value) => {
            codec::decode_commits(&value).map_err(|reason| StoreError::DamagedMetadata {
                what: "commit counter".into(),
                reason,
            })
        }
        None => Ok(0),
    }
}

/// A chunk held by a [`LogCursor`], with where its iterator stands.
struct Loaded {
    first: u64,
    count: u32,
    value: IVec,
    state: (usize, u32),
}

/// Random access to events by position, cheap for consecutive positions.
pub struct LogCursor<'a> {
    db: &'a sled::Db,
    chunk: Option<Loaded>,
}

impl<'a> LogCursor<'a> {
    /// A cursor over the log of `db`.
    pub fn new(db: &'a sled::Db) -> Self {
        LogCursor { db, chunk: None }
    }

    fn load(&mut self, position: u64) -> Result<&mut Loaded> {
        let found = self
            .db
            .range(keys::log_key(0)..=keys::log_key(position))
            .next_back()
            .transpose()?;
        let missing = || StoreError::Damaged {
            position,
            reason: "no log chunk holds this position".into(),
        };
        let (key, value) = found.ok_or_else(missing)?;
        let first = keys::log_key_position(&key).ok_or_else(missing)?;
        let count = codec::chunk_count(&value).map_err(|e| damaged(first, e))?;
        if position >= first + u64::from(count) {
            return Err(missing());
        }
        let state = ChunkIter::new(&value)
            .map_err(|e| damaged(first, e))?
            .state();
        Ok(self.chunk.insert(Loaded {
            first,
            count,
            value,
            state,
        }))
    }

    /// The event at `position`, header and payload decoded.
    pub fn get(&mut self, position: u64) -> Result<RecordedEvent> {
        let reusable = matches!(&self.chunk, Some(c)
            if position >= c.first + u64::from(c.state.1) && position < c.first + u64::from(c.count));
        let chunk = match self.chunk.as_mut() {
            Some(c) if reusable => c,
            _ => self.load(position)?,
        };
        let first = chunk.first;
        let mut iter = ChunkIter::resume(&chunk.value, chunk.count, chunk.state);
        let skip = (position - first) as u32 - chunk.state.1;
        iter.skip_records(skip).map_err(|e| damaged(first, e))?;
        let record = match iter.next() {
            Some(r) => r.map_err(|e| damaged(first, e))?,
            None => return Err(damaged(first, DecodeError::at(skip, "record missing"))),
        };
        let header = record.header().map_err(|e| damaged(first, e))?;
        if header.position != position {
            return Err(StoreError::Damaged {
                position,
                reason: format!("record says it is at position {}", header.position),
            });
        }
        let event = record.event(header).map_err(|e| damaged(first, e))?;
        chunk.state = iter.state();
        Ok(event)
    }
}

impl Shared {
    /// The version of `stream` counting only appends whose events are at or below `max_position`.
    pub fn last_index_entry(&self, stream: &str, max_position: u64) -> Result<u64> {
        for item in self.db.scan_prefix(keys::stream_prefix(stream)).rev() {
            let (key, value) = item?;
            let (first_version, entry) = decode_index_item(&key, &value)?;
            if entry.first_position <= max_position {
                return Ok(first_version + u64::from(entry.count) - 1);
            }
        }
        Ok(0)
    }

    /// See [`EventStore::read_stream`](crate::store::EventStore::read_stream).
    pub fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>> {
        let head = self.durable_head.load(Ordering::Acquire);
        let from = from_version.max(1);
        let prefix = keys::stream_prefix(stream);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        if max_count == 0 {
            return Ok(out);
        }
        // The entry holding `from`: the last one at or below it. From version 1 that is the
        // stream's first entry, so the reverse lookup (a third of a short stream's read, by
        // callgrind) is skipped.
        let start = if from == 1 {
            prefix.clone()
        } else {
            match self
                .db
                .range(prefix.clone()..=keys::index_key(stream, from))
                .next_back()
                .transpose()?
            {
                Some((key, _)) => key.to_vec(),
                None => prefix.clone(),
            }
        };
        let mut cursor = LogCursor::new(&self.db);
        for item in self.db.range(start..) {
            let (key, value) = item?;
            if !key.starts_with(&prefix) {
                break;
            }
            let (first_version, entry) = decode_index_item(&key, &value)?;
            if entry.first_position > head {
                break;
            }
            for i in 0..entry.count {
                let version = first_version + u64::from(i);
                if version < from {
                    continue;
                }
                let position = entry.first_position + u64::from(i);
                let event = cursor.get(position)?;
                if event.stream_id != stream || event.stream_version != version {
                    return Err(StoreError::Damaged {
                        position,
                        reason: format!(
                            "index says {stream:?} version {version}, record says {:?} version {}",
                            event.stream_id, event.stream_version
                        ),
                    });
                }
                bytes += event.page_bytes();
                out.push(event);
                if out.len() >= max_count || bytes >= READ_PAGE_BYTES {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    /// See [`EventStore::read_all`](crate::store::EventStore::read_all).
    pub fn read_all(&self, from: u64, max_count: usize, filter: &Filter) -> Result<ReadBatch> {
        let head = self.durable_head.load(Ordering::Acquire);
        let mut next = from.max(1);
        let mut events = Vec::with_capacity(max_count.min(1024));
        if next > head || max_count == 0 {
            return Ok(ReadBatch {
                events,
                next_position: next,
                head,
            });
        }
        let scan_limit = SCAN_LIMIT.max(max_count as u64);
        let mut examined = 0u64;
        let mut bytes = 0usize;
        let start = self
            .db
            .range(keys::log_key(0)..=keys::log_key(next))
            .next_back()
            .transpose()?
            .map_or(keys::log_key(next), |(k, _)| {
                keys::log_key(keys::log_key_position(&k).unwrap_or(next))
            });
        'chunks: for item in self.db.range(start..=keys::log_key(head)) {
            let (key, value) = item?;
            let first = keys::log_key_position(&key).ok_or_else(|| StoreError::Damaged {
                position: next,
                reason: format!("malformed log key {key:?}"),
            })?;
            let mut iter = ChunkIter::new(&value).map_err(|e| damaged(first, e))?;
            if first > next {
                return Err(StoreError::Damaged {
                    position: next,
                    reason: format!("log chunk missing (next chunk starts at {first})"),
                });
            }
            iter.skip_records((next - first) as u32)
                .map_err(|e| damaged(first, e))?;
            for record in iter {
                let record = record.map_err(|e| damaged(first, e))?;
                let position = first + u64::from(record.index);
                if position > head {
                    break 'chunks;
                }
                let header = record.header().map_err(|e| damaged(first, e))?;
                if header.position != position {
                    return Err(StoreError::Damaged {
                        position,
                        reason: format!("record says it is at position {}", header.position),
                    });
                }
                next = position + 1;
                examined += 1;
                if filter.matches(header.category, header.event_type) {
                    let event = record.event(header).map_err(|e| damaged(first, e))?;
                    bytes += event.page_bytes();
                    events.push(event);
                }
                if events.len() >= max_count || examined >= scan_limit || bytes >= READ_PAGE_BYTES {
                    break 'chunks;
                }
            }
        }
        Ok(ReadBatch {
            events,
            next_position: next,
            head,
        })
    }

    /// See [`EventStore::list_streams`](crate::store::EventStore::list_streams): streams in the
    /// index's key order (shorter ids first, then bytewise), one seek per stream.
    pub fn list_streams(&self, after: Option<&str>, limit: usize) -> Result<Vec<StreamInfo>> {
        let head = self.durable_head.load(Ordering::Acquire);
        let mut out = Vec::new();
        let mut from = match after {
            Some(stream) => Bound::Excluded(keys::index_key(stream, u64::MAX)),
            None => Bound::Included(vec![keys::INDEX]),
        };
        while out.len() < limit {
            let Some(item) = self.db.range((from, Bound::Unbounded)).next() else {
                break;
            };
            let (key, _) = item?;
            if key.first() != Some(&keys::INDEX) {
                break;
            }
            let (stream, _) =
                keys::parse_index_key(&key).ok_or_else(|| StoreError::DamagedMetadata {
                    what: "stream index key".into(),
                    reason: format!("malformed key {key:?}"),
                })?;
            if let Some((version, last_position)) = self.last_visible(stream, head)? {
                out.push(StreamInfo {
                    stream_id: stream.to_owned(),
                    category: category_of(stream).to_owned(),
                    version,
                    last_position,
                });
            }
            from = Bound::Excluded(keys::index_key(stream, u64::MAX));
        }
        Ok(out)
    }

    /// The version and last position of `stream` counting only events at or below `head`.
    fn last_visible(&self, stream: &str, head: u64) -> Result<Option<(u64, u64)>> {
        for item in self.db.scan_prefix(keys::stream_prefix(stream)).rev() {
            let (key, value) = item?;
            let (first_version, entry) = decode_index_item(&key, &value)?;
            if entry.first_position <= head {
                let last = u64::from(entry.count) - 1;
                return Ok(Some((first_version + last, entry.first_position + last)));
            }
        }
        Ok(None)
    }

    /// See [`EventStore::list_checkpoints`](crate::store::EventStore::list_checkpoints).
    pub fn list_checkpoints(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<CheckpointInfo>> {
        let _durable = self.durable_view();
        let from = match after {
            Some(name) => Bound::Excluded(keys::checkpoint_key(name)),
            None => Bound::Included(vec![keys::CHECKPOINT]),
        };
        let mut out = Vec::new();
        for item in self.db.range((from, Bound::Unbounded)) {
            if out.len() >= limit {
                break;
            }
            let (key, value) = item?;
            if key.first() != Some(&keys::CHECKPOINT) {
                break;
            }
            let name = lossy(&key[1..]);
            let position =
                codec::decode_checkpoint(&value).map_err(|reason| StoreError::DamagedMetadata {
                    what: format!("checkpoint {name:?}"),
                    reason,
                })?;
            out.push(CheckpointInfo { name, position });
        }
        Ok(out)
    }

    /// See [`EventStore::load_checkpoint`](crate::store::EventStore::load_checkpoint).
    pub fn load_checkpoint(&self, name: &str) -> Result<Option<u64>> {
        let _durable = self.durable_view();
        let Some(value) = self.db.get(keys::checkpoint_key(name))? else {
            return Ok(None);
        };
        codec::decode_checkpoint(&value)
            .map(Some)
            .map_err(|reason| StoreError::DamagedMetadata {
                what: format!("checkpoint {name:?}"),
                reason,
            })
    }

    /// See [`EventStore::load_state`](crate::store::EventStore::load_state).
    pub fn load_state(&self, name: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let _durable = self.durable_view();
        let Some(value) = self.db.get(keys::state_key(name, key))? else {
            return Ok(None);
        };
        codec::decode_state(&value)
            .map(Some)
            .map_err(|reason| StoreError::DamagedMetadata {
                what: format!("state {:?} of {name:?}", lossy(key)),
                reason,
            })
    }

    /// See [`EventStore::scan_state`](crate::store::EventStore::scan_state).
    pub fn scan_state(
        &self,
        name: &str,
        prefix: &[u8],
        from_key: &[u8],
        max_count: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let _durable = self.durable_view();
        let namespace = keys::state_prefix(name).len();
        let full_prefix = keys::state_key(name, prefix);
        let start = keys::state_key(name, from_key).max(full_prefix.clone());
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for item in self.db.range(start..) {
            if out.len() >= max_count || bytes >= READ_PAGE_BYTES {
                break;
            }
            let (key, value) = item?;
            if !key.starts_with(&full_prefix) {
                break;
            }
            let user_key = key[namespace..].to_vec();
            let value =
                codec::decode_state(&value).map_err(|reason| StoreError::DamagedMetadata {
                    what: format!("state {:?} of {name:?}", lossy(&user_key)),
                    reason,
                })?;
            bytes += state_entry_bytes(&user_key, &value);
            out.push((user_key, value));
        }
        Ok(out)
    }

    /// See [`EventStore::load_snapshot`](crate::store::EventStore::load_snapshot).
    pub fn load_snapshot(&self, stream: &str) -> Result<Option<Snapshot>> {
        let _durable = self.durable_view();
        let Some(value) = self.db.get(keys::snapshot_key(stream))? else {
            return Ok(None);
        };
        codec::decode_snapshot(&value)
            .map(Some)
            .map_err(|reason| StoreError::DamagedMetadata {
                what: format!("snapshot of {stream:?}"),
                reason,
            })
    }

    /// See [`EventStore::verify`](crate::store::EventStore::verify).
    pub fn verify(&self) -> Result<VerifyReport> {
        let head = self.durable_head.load(Ordering::Acquire);
        let mut report = VerifyReport {
            head,
            ..VerifyReport::default()
        };
        let mut problems = Problems::default();

        // 1. The log: contiguous chunks, every record intact and where it says it is.
        let mut expected = 1u64;
        for item in self.db.range(keys::log_key(0)..=keys::log_key(head)) {
            let (key, value) = item?;
            let Some(first) = keys::log_key_position(&key) else {
                problems.push(format!("malformed log key {key:?}"));
                continue;
            };
            if first != expected {
                problems.push(format!(
                    "positions {expected}..{} are missing from the log",
                    first.saturating_sub(1)
                ));
            }
            let iter = match ChunkIter::new(&value) {
                Ok(iter) => iter,
                Err(e) => {
                    problems.push(damaged(first, e).to_string());
                    expected = first + 1;
                    continue;
                }
            };
            expected = first + u64::from(iter.state_count());
            for record in iter {
                let checked = record.and_then(|r| {
                    let header = r.header()?;
                    r.metadata()?;
                    Ok((r.index, header))
                });
                match checked {
                    Ok((index, header)) => {
                        report.events_checked += 1;
                        let position = first + u64::from(index);
                        if header.position != position {
                            problems.push(format!(
                                "record at position {position} says it is at {}",
                                header.position
                            ));
                        }
                    }
                    Err(e) => problems.push(damaged(first, e).to_string()),
                }
            }
        }
        if expected != head + 1 {
            problems.push(format!(
                "the log ends at position {} but the head is {head}",
                expected - 1
            ));
        }

        // 2. The stream index: contiguous versions per stream, each entry pointing at its events.
        let mut cursor = LogCursor::new(&self.db);
        let mut previous: Option<(String, u64)> = None;
        let mut indexed = 0u64;
        for item in self.db.scan_prefix([keys::INDEX]) {
            let (key, value) = item?;
            let (stream, first_version, entry) = match keys::parse_index_key(&key)
                .ok_or_else(|| "malformed index key".to_string())
                .and_then(|(s, v)| codec::decode_index(&value).map(|e| (s, v, e)))
            {
                Ok(x) => x,
                Err(reason) => {
                    problems.push(format!("index entry {key:?}: {reason}"));
                    continue;
                }
            };
            if entry.first_position > head {
                continue;
            }
            report.index_entries_checked += 1;
            indexed += u64::from(entry.count);
            let expected_version = match &previous {
                Some((s, last)) if s == stream => last + 1,
                _ => 1,
            };
            if first_version != expected_version {
                problems.push(format!(
                    "stream {stream:?}: versions {expected_version}..{} are missing from the index",
                    first_version.saturating_sub(1)
                ));
            }
            for i in 0..entry.count {
                let position = entry.first_position + u64::from(i);
                let version = first_version + u64::from(i);
                match cursor.get(position) {
                    Ok(e) if e.stream_id == stream && e.stream_version == version => {}
                    Ok(e) => problems.push(format!(
                        "index says {stream:?} version {version} is at {position}, \
                         which holds {:?} version {}",
                        e.stream_id, e.stream_version
                    )),
                    Err(e) => problems.push(format!("index of {stream:?} version {version}: {e}")),
                }
            }
            previous = Some((
                stream.to_owned(),
                first_version + u64::from(entry.count) - 1,
            ));
        }
        if indexed != head {
            problems.push(format!(
                "the stream index covers {indexed} events but the log holds {head}"
            ));
        }

        // 3. The commit counter, checkpoints, snapshots and consumer state decode.
        if let Some(value) = self.db.get(keys::COMMITS_KEY)? {
            if let Err(reason) = codec::decode_commits(&value) {
                problems.push(format!("commit counter: {reason}"));
            }
        }
        for item in self.db.scan_prefix([keys::STATE]) {
            let (key, value) = item?;
            if let Err(reason) = codec::decode_state(&value) {
                problems.push(format!("state {:?}: {reason}", lossy(&key[1..])));
            }
        }
        for item in self.db.scan_prefix([keys::CHECKPOINT]) {
            let (key, value) = item?;
            if let Err(reason) = codec::decode_checkpoint(&value) {
                problems.push(format!("checkpoint {:?}: {reason}", lossy(&key[1..])));
            }
        }
        for item in self.db.scan_prefix([keys::SNAPSHOT]) {
            let (key, value) = item?;
            if let Err(reason) = codec::decode_snapshot(&value) {
                problems.push(format!("snapshot of {:?}: {reason}", lossy(&key[1..])));
            }
        }
        report.problems = problems.finish();
        Ok(report)
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn decode_index_item(key: &[u8], value: &[u8]) -> Result<(u64, IndexEntry)> {
    let (_, first_version) =
        keys::parse_index_key(key).ok_or_else(|| StoreError::DamagedMetadata {
            what: "stream index key".into(),
            reason: format!("malformed key {key:?}"),
        })?;
    let entry = codec::decode_index(value).map_err(|reason| StoreError::DamagedMetadata {
        what: format!("stream index entry {:?}", lossy(key)),
        reason,
    })?;
    if entry.count == 0 {
        return Err(StoreError::DamagedMetadata {
            what: format!("stream index entry {:?}", lossy(key)),
            reason: "entry holds no events".into(),
        });
    }
    Ok((first_version, entry))
}

/// A bounded list of problems.
#[derive(Default)]
struct Problems {
    list: Vec<String>,
    more: u64,
}

impl Problems {
    fn push(&mut self, problem: String) {
        if self.list.len() < MAX_PROBLEMS {
            self.list.push(problem);
        } else {
            self.more += 1;
        }
    }

    fn finish(mut self) -> Vec<String> {
        if self.more > 0 {
            self.list
                .push(format!("... and {} more problems", self.more));
        }
        self.list
    }
}
