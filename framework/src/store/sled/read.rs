//! Reading the store: events from the segment log through the sled index (format 2),
//! checkpoints, state and snapshots from sled, and `verify`.

use std::ops::Bound;
use std::sync::atomic::Ordering;

use super::keys;
use super::Shared;
use crate::store::codec::{self, DecodeError, Header, PageBuilder, RawRecord, RunEntry};
use crate::store::log::{LogError, RecordAddr};
use crate::store::{
    category_of, state_entry_bytes, CheckpointInfo, Filter, ReadBatch, RecordedEvent, Result,
    Snapshot, StoreError, StreamInfo, VerifyReport, READ_PAGE_BYTES,
};

/// At most this many events are examined by one filtered `read_all` page.
const SCAN_LIMIT: u64 = 16 * 1024;
/// `verify` lists at most this many problems (then counts the rest).
const MAX_PROBLEMS: usize = 1000;

/// A record that does not decode, as the store's error naming its position.
pub(super) fn damaged(position: u64, e: DecodeError) -> StoreError {
    StoreError::Damaged {
        position: position + u64::from(e.index),
        reason: e.reason,
    }
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

/// Splits the body of the log record at `position` and decodes its header (borrowing its
/// strings), checking that the record says it is at `position`.
pub(super) fn record_at(position: u64, body: &[u8]) -> Result<(RawRecord<'_>, Header<'_>)> {
    let record = codec::parse_record(body, 0).map_err(|e| damaged(position, e))?;
    let header = record.header().map_err(|e| damaged(position, e))?;
    if header.position != position {
        return Err(StoreError::Damaged {
            position,
            reason: format!("record says it is at position {}", header.position),
        });
    }
    Ok((record, header))
}

/// The address in the log of a run's first record, with the run's length.
pub(super) fn run_addr(run: &RunEntry) -> RecordAddr {
    RecordAddr {
        segment: run.segment,
        offset: run.offset,
        len: run.bytes,
    }
}

impl Shared {
    /// The version of `stream` counting only appends whose events are at or below `max_position`.
    pub fn last_index_entry(&self, stream: &str, max_position: u64) -> Result<u64> {
        Ok(self
            .last_visible(stream, max_position)?
            .map_or(0, |(version, _)| version))
    }

    /// The version and last position of `stream` counting only events at or below `head`.
    fn last_visible(&self, stream: &str, head: u64) -> Result<Option<(u64, u64)>> {
        Ok(self.index.last(stream, head)?.map(|(first_version, run)| {
            let last = u64::from(run.count) - 1;
            (first_version + last, run.first_position + last)
        }))
    }

    /// Where a sequential read of the log that begins at `position` starts: the group start at
    /// or before it, and its address.
    pub(super) fn group_start(&self, position: u64) -> Option<(u64, RecordAddr)> {
        self.index
            .group_start(position)
            .map(|g| (g.position, g.addr()))
    }

    /// Reads the records of `run` from the log into `buf` (see `LogReader::read_run`).
    fn read_run(
        &self,
        run: &RunEntry,
        buf: &mut Vec<u8>,
        each: impl FnMut(u64, &[u8]) -> bool,
    ) -> std::result::Result<(), LogError> {
        let addr = run_addr(run);
        let max = self.read_buffer_bytes;
        self.log
            .read_run(run.first_position, addr, run.count, buf, max, each)
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
        if max_count == 0 {
            return Ok(Vec::new());
        }
        let mut buf = Vec::new();
        let mut failed = None;
        let mut page = PageBuilder::with_capacity(max_count.min(64));
        self.index.runs(stream, from, |first_version, run| {
            if run.first_position > head {
                return Ok(false);
            }
            let skip = from.saturating_sub(first_version);
            let mut full = false;
            self.read_run(&run, &mut buf, |position, body| {
                let i = position - run.first_position;
                if i < skip {
                    return true;
                }
                let version = first_version + i;
                let pushed = record_at(position, body).and_then(|(raw, header)| {
                    if header.stream_id != stream || header.stream_version != version {
                        return Err(StoreError::Damaged {
                            position,
                            reason: format!(
                                "index says {stream:?} version {version}, record says \
                                 {:?} version {}",
                                header.stream_id, header.stream_version
                            ),
                        });
                    }
                    raw.push_to(&header, &mut page)
                        .map_err(|e| damaged(position, e))
                });
                match pushed {
                    Ok(()) => {
                        full = page.is_full(max_count);
                        !full
                    }
                    Err(e) => {
                        failed = Some(e);
                        false
                    }
                }
            })
            .map_err(|e| index_error(e, || run_name(stream, first_version)))?;
            Ok(failed.is_none() && !full)
        })?;
        match failed {
            Some(e) => Err(e),
            None => Ok(page.finish()),
        }
    }

    /// See [`EventStore::read_all`](crate::store::EventStore::read_all).
    pub fn read_all(&self, from: u64, max_count: usize, filter: &Filter) -> Result<ReadBatch> {
        let head = self.durable_head.load(Ordering::Acquire);
        let mut next = from.max(1);
        if next > head || max_count == 0 {
            return Ok(ReadBatch {
                events: Vec::new(),
                next_position: next,
                head,
            });
        }
        let scan_limit = SCAN_LIMIT.max(max_count as u64);
        let mut examined = 0u64;
        let mut page = PageBuilder::with_capacity(max_count.min(1024));
        let Some((start, addr)) = self.group_start(next) else {
            return Err(StoreError::DamagedMetadata {
                what: "the stream index's group starts".into(),
                reason: format!(
                    "none at or before position {next}: a read of the log cannot begin there"
                ),
            });
        };
        let mut scan = self.log.scan_from(next, start, addr).map_err(|e| {
            index_error(e, || {
                format!("the stream index's group start at position {start}")
            })
        })?;
        while let Some(record) = scan.next_record() {
            let record = record?;
            let position = record.position;
            if position > head {
                break;
            }
            let (raw, header) = record_at(position, record.body)?;
            next = position + 1;
            examined += 1;
            if filter.matches(header.category, header.event_type) {
                raw.push_to(&header, &mut page)
                    .map_err(|e| damaged(position, e))?;
            }
            if page.is_full(max_count) || examined >= scan_limit {
                break;
            }
        }
        if next <= head && examined == 0 {
            // The scan ended before the head without an error: the log holds less than the
            // index and the head say.
            return Err(StoreError::Damaged {
                position: next,
                reason: "the log ends before this acknowledged position".into(),
            });
        }
        Ok(ReadBatch {
            events: page.finish(),
            next_position: next,
            head,
        })
    }

    /// See [`EventStore::list_streams`](crate::store::EventStore::list_streams): streams in the
    /// index's key order (shorter ids first, then bytewise), one seek per stream.
    pub fn list_streams(&self, after: Option<&str>, limit: usize) -> Result<Vec<StreamInfo>> {
        let head = self.durable_head.load(Ordering::Acquire);
        let mut out = Vec::new();
        let mut after = after.map(str::to_owned);
        while out.len() < limit {
            let Some(stream) = self.index.next_stream(after.as_deref())? else {
                break;
            };
            if let Some((version, last_position)) = self.last_visible(&stream, head)? {
                out.push(StreamInfo {
                    category: category_of(&stream).to_owned(),
                    stream_id: stream.clone(),
                    version,
                    last_position,
                });
            }
            after = Some(stream);
        }
        Ok(out)
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

        // 1. The log: every record intact and where it says it is, from 1 to the head. Past a
        // damaged record the check goes on at the next group start the index knows.
        let mut scan = self.log.scan(1);
        let mut expected = 1u64;
        while expected <= head {
            match scan.next_record() {
                Some(Ok(record)) => {
                    let position = record.position;
                    if position > head {
                        break;
                    }
                    expected = position + 1;
                    let checked = codec::parse_record(record.body, 0).and_then(|r| {
                        let header = r.header()?;
                        r.metadata()?;
                        Ok(header.position)
                    });
                    match checked {
                        Ok(at) if at == position => report.events_checked += 1,
                        Ok(at) => problems
                            .push(format!("record at position {position} says it is at {at}")),
                        Err(e) => problems.push(damaged(position, e).to_string()),
                    }
                }
                Some(Err(e)) => {
                    let at = match &e {
                        LogError::Damaged { position, .. } => *position,
                        _ => expected,
                    };
                    problems.push(StoreError::from(e).to_string());
                    // On at the next group start after the damage.
                    let next = self
                        .index
                        .group_start_after(at)
                        .filter(|g| g.position <= head);
                    let Some(next) = next else {
                        if at < head {
                            problems.push(format!(
                                "positions {}..={head} were not checked (no index entry to read \
                                 on from after the damage)",
                                at + 1
                            ));
                        }
                        break;
                    };
                    let start = next.position;
                    if start > at + 1 {
                        problems.push(format!(
                            "positions {}..={} were not checked (after the damage, the check \
                             goes on at the next group start)",
                            at + 1,
                            start - 1
                        ));
                    }
                    match self.log.scan_at(start, next.addr()) {
                        Ok(s) => scan = s,
                        Err(e) => {
                            problems.push(StoreError::from(e).to_string());
                            break;
                        }
                    }
                    expected = start;
                }
                None => {
                    problems.push(format!(
                        "the log ends at position {} but the head is {head}",
                        expected - 1
                    ));
                    break;
                }
            }
        }

        // 2. The stream index: contiguous versions per stream, each run pointing at its events.
        let mut previous: Option<(String, u64)> = None;
        let mut indexed = 0u64;
        let mut buf = Vec::new();
        let walked = self.index.for_each(|key, run| {
            let Some((stream, first_version)) = keys::parse_run_key(key) else {
                problems.push(format!("index entry {key:?}: malformed key"));
                return;
            };
            if run.first_position > head {
                return;
            }
            report.index_entries_checked += 1;
            indexed += u64::from(run.count);
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
            let read = self.read_run(&run, &mut buf, |position, body| {
                let version = first_version + (position - run.first_position);
                // The header and the metadata decode (no event is built).
                let checked = record_at(position, body).and_then(|(raw, header)| {
                    raw.metadata().map_err(|e| damaged(position, e))?;
                    Ok(header)
                });
                match checked {
                    Ok(h) if h.stream_id == stream && h.stream_version == version => {}
                    Ok(h) => problems.push(format!(
                        "index says {stream:?} version {version} is at {position}, \
                         which holds {:?} version {}",
                        h.stream_id, h.stream_version
                    )),
                    Err(e) => problems.push(format!("index of {stream:?} version {version}: {e}")),
                }
                true
            });
            if let Err(e) = read {
                problems.push(index_error(e, || run_name(stream, first_version)).to_string());
            }
            previous = Some((stream.to_owned(), first_version + u64::from(run.count) - 1));
        });
        if let Err(e) = walked {
            problems.push(format!(
                "the stream index could not be read to its end: {e}"
            ));
        }
        if indexed != head {
            problems.push(format!(
                "the stream index covers {indexed} events but the log holds {head}"
            ));
        }
        let mark = self.index.mark();
        if mark.position > self.log.tail() {
            problems.push(format!(
                "the stream index says it covers positions up to {}, but the log ends at {}",
                mark.position,
                self.log.tail()
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

/// An error of the log met at an address that the index entry `what` gave: an address outside
/// the log is damage to the index ([`StoreError::DamagedMetadata`] naming the entry), not a
/// caller's mistake; damage to a record stays [`StoreError::Damaged`].
pub(super) fn index_error(e: LogError, what: impl FnOnce() -> String) -> StoreError {
    match e {
        LogError::Invalid(why) => StoreError::DamagedMetadata {
            what: what(),
            reason: why,
        },
        other => other.into(),
    }
}

/// The name of `stream`'s run from `version`, for [`index_error`].
fn run_name(stream: &str, version: u64) -> String {
    format!("the stream index entry of {stream:?} from version {version}")
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
