//! The single writer thread: group commit of appends, checkpoints and snapshots.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{oneshot, watch};
use tracing::{debug, error};

use crate::store::spans;

use super::durable::{Durability, HeadFile};
use super::keys;
use super::stream_index::StreamIndex;
use super::table::GroupStart;
use super::Shared;
use crate::store::codec::{self, HeaderOut, IndexMark, RunEntry};
use crate::store::log::{self, LogError, RecordAddr, SegmentLog};
use crate::store::{
    category_of, AppendResult, EventData, ExpectedVersion, Metadata, RecordedEvent, Result,
    Snapshot, StateWrite, StoreError,
};

/// A request to the writer.
pub enum Request {
    /// Append events to a stream.
    Append {
        stream: String,
        expected: ExpectedVersion,
        events: Vec<EventData>,
        reply: oneshot::Sender<Result<AppendResult>>,
    },
    /// Save a checkpoint.
    Checkpoint {
        name: String,
        position: u64,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Commit a checkpoint with state writes, if the stored checkpoint is `expected`.
    Commit {
        name: String,
        expected: Option<u64>,
        position: u64,
        state: Vec<StateWrite>,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Save a snapshot.
    Snapshot {
        stream: String,
        snapshot: Snapshot,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Append events exactly as recorded elsewhere (already checked by `validate_import`).
    Import {
        events: Vec<RecordedEvent>,
        reply: oneshot::Sender<Result<u64>>,
    },
}

/// Settings the writer needs.
pub struct WriterSettings {
    pub max_group: usize,
    pub stream_cache_capacity: usize,
}

/// A group start is kept at position 1 and at each multiple of this, so that a sequential read
/// from any position passes over fewer than this many records to reach it.
pub const GROUP_START_EVERY: u64 = 256;

/// The writer's state; runs on its own thread.
pub struct Writer {
    shared: Arc<Shared>,
    /// The event log (format 2).
    log: SegmentLog,
    durability: Durability,
    head_file: HeadFile,
    head_tx: watch::Sender<u64>,
    settings: WriterSettings,
    /// Stream heads known to be committed. A cache: a miss reads the index.
    heads: HashMap<String, u64>,
    /// True while `heads` holds every stream of the store: the store was empty when it was
    /// opened and the cache was never cleared. A miss then means a new stream, with no lookup
    /// (the first append of each stream was ~28 % of the writer's instructions, callgrind W1).
    heads_complete: bool,
    next_position: u64,
    /// The timestamp given to the last commit; timestamps never go down with position.
    last_timestamp: u64,
    failed: Option<String>,
    /// When the head file was last synced, and whether it was written since.
    head_synced_at: Instant,
    head_unsynced: bool,
}

/// The head file is synced at most this long after a commit recorded in it: what it says was
/// acknowledged (which the log's open never cuts as a torn tail) then lags behind the log by at
/// most this much after a power loss, whatever the rate of appends. (The index's files, the
/// other record of it, are written only every `index_table_runs` runs.)
const HEAD_SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// The kinds of write a commit group holds, for the head file (`durable::Marks`).
#[derive(Default)]
struct Kinds {
    events: bool,
    checkpoints: bool,
    state: bool,
    snapshots: bool,
}

enum Reply {
    Append(oneshot::Sender<Result<AppendResult>>, Result<AppendResult>),
    Unit(oneshot::Sender<Result<()>>, Result<()>),
    Head(oneshot::Sender<Result<u64>>, Result<u64>),
}

impl Reply {
    /// Sends the result decided for the request (a caller that went away is fine).
    fn send(self) {
        match self {
            Reply::Append(tx, result) => {
                let _ = tx.send(result);
            }
            Reply::Unit(tx, result) => {
                let _ = tx.send(result);
            }
            Reply::Head(tx, result) => {
                let _ = tx.send(result);
            }
        }
    }

    /// Sends `err` instead of the result decided for the request.
    fn fail(self, err: StoreError) {
        match self {
            Reply::Append(tx, _) => Reply::Append(tx, Err(err)).send(),
            Reply::Unit(tx, _) => Reply::Unit(tx, Err(err)).send(),
            Reply::Head(tx, _) => Reply::Head(tx, Err(err)).send(),
        }
    }
}

impl Writer {
    pub fn new(
        shared: Arc<Shared>,
        log: SegmentLog,
        durability: Durability,
        head_file: HeadFile,
        head_tx: watch::Sender<u64>,
        settings: WriterSettings,
        (head, last_timestamp): (u64, u64),
    ) -> Self {
        Writer {
            shared,
            log,
            durability,
            head_file,
            head_tx,
            settings,
            heads: HashMap::new(),
            heads_complete: head == 0,
            next_position: head + 1,
            last_timestamp,
            failed: None,
            head_synced_at: Instant::now(),
            head_unsynced: false,
        }
    }

    /// Serves requests until every sender is gone.
    pub fn run(mut self, rx: mpsc::Receiver<Request>) {
        loop {
            // While the head file has a write not yet synced, wait at most until it is due.
            let first = if self.head_unsynced {
                let wait = HEAD_SYNC_INTERVAL.saturating_sub(self.head_synced_at.elapsed());
                match rx.recv_timeout(wait) {
                    Ok(first) => first,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        self.sync_head_file_if_due();
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match rx.recv() {
                    Ok(first) => first,
                    Err(_) => break,
                }
            };
            let mut group = Vec::with_capacity(64);
            group.push(first);
            while group.len() < self.settings.max_group {
                match rx.try_recv() {
                    Ok(r) => group.push(r),
                    Err(_) => break,
                }
            }
            self.commit(group);
            self.flush_index_if_due();
            self.sync_head_file_if_due();
        }
        if self.failed.is_none() {
            // A clean close leaves nothing for the next open to catch up.
            if let Err(e) = self.shared.index.flush() {
                error!(error = %e, "could not write the stream index at close");
            }
        }
        self.shared.index.close();
        if let Err(e) = self.head_file.sync() {
            error!(error = %e, "could not sync the head file at close");
        }
        debug!("event store writer stopped");
    }

    fn stream_head(&mut self, stream: &str) -> Result<u64> {
        if let Some(v) = self.heads.get(stream) {
            return Ok(*v);
        }
        if self.heads_complete {
            return Ok(0);
        }
        self.shared.last_index_entry(stream, u64::MAX)
    }

    fn commit(&mut self, group: Vec<Request>) {
        let span = spans::commit("sled", group.len());
        let _entered = span.enter();
        if let Some(reason) = &self.failed {
            let reason = reason.clone();
            for req in group {
                fail(req, StoreError::Failed(reason.clone()));
            }
            return;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let mut timestamp_micros = now.max(self.last_timestamp);
        // The timestamp of the last event placed in this group so far (imports keep their own).
        let mut group_ts = self.last_timestamp;
        let mut batch = sled::Batch::default();
        let mut writes = 0usize;
        let mut overlay: HashMap<String, u64> = HashMap::new();
        // Checkpoints written earlier in this group, for the checks of later commits.
        let mut checkpoints: HashMap<String, Option<u64>> = HashMap::new();
        let mut replies = Vec::with_capacity(group.len());
        let mut position = self.next_position;
        // The group's records for the log and its runs for the index.
        let mut pending = Pending::default();
        let capacity = self.log.capacity();
        let mut kinds = Kinds::default();
        // Appends accepted in this group, for the group size metrics.
        let (mut appends, mut appended) = (0usize, 0usize);

        for req in group {
            match req {
                Request::Append {
                    stream,
                    expected,
                    events,
                    reply,
                } => {
                    let current = match overlay.get(&stream) {
                        Some(v) => Ok(*v),
                        None => self.stream_head(&stream),
                    };
                    let current = match current {
                        Ok(v) => v,
                        Err(e) => {
                            replies.push(Reply::Append(reply, Err(e)));
                            continue;
                        }
                    };
                    if !expected.accepts(current) {
                        let err = StoreError::WrongExpectedVersion {
                            stream,
                            expected,
                            actual: current,
                        };
                        replies.push(Reply::Append(reply, Err(err)));
                        continue;
                    }
                    let first_position = position;
                    let category = category_of(&stream);
                    let mark = pending.mark();
                    for (i, event) in events.iter().enumerate() {
                        pending.run(&stream, current + 1 + i as u64);
                        pending.push(
                            &HeaderOut {
                                position,
                                stream_id: &stream,
                                stream_version: current + 1 + i as u64,
                                category,
                                event_type: &event.event_type,
                                schema_version: event.schema_version,
                                event_id: event.event_id,
                                correlation_id: event.correlation_id,
                                causation_id: event.causation_id,
                                timestamp_micros,
                            },
                            &event.metadata,
                            &event.payload,
                        );
                        position += 1;
                    }
                    if let Err(e) = pending.fit(mark, capacity) {
                        position = first_position;
                        replies.push(Reply::Append(reply, Err(e)));
                        continue;
                    }
                    let version = current + events.len() as u64;
                    appends += 1;
                    appended += events.len();
                    overlay.insert(stream, version);
                    group_ts = timestamp_micros;
                    replies.push(Reply::Append(
                        reply,
                        Ok(AppendResult {
                            first_position,
                            last_position: position - 1,
                            stream_version: version,
                        }),
                    ));
                }
                Request::Checkpoint {
                    name,
                    position: p,
                    reply,
                } => {
                    // The head includes the events placed earlier in this group: they are
                    // written to the log before the checkpoint reaches sled.
                    if let Err(e) = check_checkpoint(&name, p, position - 1) {
                        replies.push(Reply::Unit(reply, Err(e)));
                        continue;
                    }
                    batch.insert(keys::checkpoint_key(&name), codec::encode_checkpoint(p));
                    checkpoints.insert(name, Some(p));
                    writes += 1;
                    kinds.checkpoints = true;
                    replies.push(Reply::Unit(reply, Ok(())));
                }
                Request::Snapshot {
                    stream,
                    snapshot,
                    reply,
                } => {
                    batch.insert(
                        keys::snapshot_key(&stream),
                        codec::encode_snapshot(&snapshot),
                    );
                    writes += 1;
                    kinds.snapshots = true;
                    replies.push(Reply::Unit(reply, Ok(())));
                }
                Request::Import { events, reply } => {
                    let versions = match self.check_import(&events, position, group_ts, &overlay) {
                        Ok(v) => v,
                        Err(e) => {
                            replies.push(Reply::Head(reply, Err(e)));
                            continue;
                        }
                    };
                    let (mark, first_position) = (pending.mark(), position);
                    for e in &events {
                        pending.run(&e.stream_id, e.stream_version);
                        pending.push(
                            &HeaderOut {
                                position,
                                stream_id: &e.stream_id,
                                stream_version: e.stream_version,
                                category: &e.category,
                                event_type: &e.event_type,
                                schema_version: e.schema_version,
                                event_id: e.event_id,
                                correlation_id: e.correlation_id,
                                causation_id: e.causation_id,
                                timestamp_micros: e.timestamp_micros,
                            },
                            &e.metadata,
                            &e.payload,
                        );
                        position += 1;
                    }
                    if let Err(e) = pending.fit(mark, capacity) {
                        position = first_position;
                        replies.push(Reply::Head(reply, Err(e)));
                        continue;
                    }
                    overlay.extend(versions);
                    if let Some(last) = events.last() {
                        group_ts = last.timestamp_micros;
                        timestamp_micros = timestamp_micros.max(group_ts);
                    }
                    replies.push(Reply::Head(reply, Ok(position - 1)));
                }
                Request::Commit {
                    name,
                    expected,
                    position: p,
                    state,
                    reply,
                } => {
                    let actual = match checkpoints.get(&name) {
                        Some(v) => Ok(*v),
                        None => self.shared.load_checkpoint(&name),
                    };
                    // A commit that leaves the checkpoint where it is may record state even
                    // above the head (a checkpoint stored before this rule, or a log cut back
                    // after damage); one that moves it may not move it past the head.
                    let stays = expected == Some(p);
                    let checked = if stays {
                        actual
                    } else {
                        check_checkpoint(&name, p, position - 1).and(actual)
                    };
                    let result = match checked {
                        Err(e) => Err(e),
                        Ok(actual) if actual != expected => Err(StoreError::CheckpointConflict {
                            name,
                            expected,
                            actual,
                        }),
                        Ok(_) => {
                            batch.insert(keys::checkpoint_key(&name), codec::encode_checkpoint(p));
                            kinds.checkpoints = true;
                            kinds.state |= !state.is_empty();
                            for w in state {
                                let key = keys::state_key(&name, &w.key);
                                match w.value {
                                    Some(v) => batch.insert(key, codec::encode_state(&v)),
                                    None => batch.remove(key),
                                }
                            }
                            checkpoints.insert(name, Some(p));
                            writes += 1;
                            Ok(())
                        }
                    };
                    replies.push(Reply::Unit(reply, result));
                }
            }
        }

        kinds.events = !pending.records.is_empty();
        let started = Instant::now();
        // 1. The events, to the log: one write and one fdatasync (one per segment's worth, for
        // a group larger than what a segment holds).
        if kinds.events {
            match pending.write(&mut self.log) {
                Ok(addrs) => {
                    let mark = self.mark(position - 1, group_ts.max(self.last_timestamp));
                    index_group(&self.shared.index, &pending, &addrs, mark);
                }
                Err(e) => return self.fail_group(StoreError::from(e), replies),
            }
        }
        // 2. What only sled holds: checkpoints, state and snapshots, synced.
        if writes > 0 {
            // Every synced commit raises the counter, in its own batch: a commit that sled
            // drops later takes its increment with it (see `check_marks`).
            let commit = self.head_file.marks().commits.unwrap_or(0) + 1;
            batch.insert(keys::COMMITS_KEY, codec::encode_commits(commit));
            if let Err(e) = self.write_durably(batch) {
                return self.fail_group(e, replies);
            }
        }

        if writes > 0 || kinds.events {
            let took = started.elapsed();
            self.shared.metrics.committed(took);
            span.record("fsync_micros", took.as_micros() as u64);
        }

        let head = position - 1;
        if position != self.next_position {
            self.next_position = position;
            if self.heads.len() + overlay.len() > self.settings.stream_cache_capacity {
                self.heads.clear();
                self.heads_complete = false;
            }
            self.heads.extend(overlay);
            self.shared.durable_head.store(head, Ordering::Release);
            self.last_timestamp = group_ts;
            self.head_tx.send_replace(head);
        }
        if writes > 0 || kinds.events {
            self.record(head, &kinds, writes > 0);
        }
        if appends > 0 {
            self.shared.metrics.group(appends, appended);
        }
        span.record("appends", appends);
        span.record("events", appended);
        for reply in replies {
            reply.send();
        }
    }

    /// After a write that failed: refuses every later write, and answers the group's requests
    /// with the reason.
    fn fail_group(&mut self, e: StoreError, replies: Vec<Reply>) {
        let reason = match &e {
            StoreError::Io(io) if is_full(io) => format!(
                "{e} (the disk is full, or a file size limit or quota is reached): free \
                 space, then open the store again in a new process"
            ),
            _ => e.to_string(),
        };
        error!(error = %reason, "event store commit failed; refusing further writes");
        self.failed = Some(reason.clone());
        self.shared.never_flush_on_drop();
        for reply in replies {
            reply.fail(StoreError::Failed(reason.clone()));
        }
    }

    /// Writes the index's table in memory to a file once it is large enough: not for
    /// durability (the log is synced, and the index is derived from it) but to bound memory
    /// and the catch-up at the next open.
    fn flush_index_if_due(&mut self) {
        if self.failed.is_some() || !self.shared.index.flush_due() {
            return;
        }
        if let Err(e) = self.shared.index.flush() {
            self.fail_group(e, Vec::new());
        }
    }

    /// Syncs the head file once [`HEAD_SYNC_INTERVAL`] has passed since it was last synced and
    /// it was written since (a failure is logged: the file only detects losses).
    fn sync_head_file_if_due(&mut self) {
        if !self.head_unsynced || self.head_synced_at.elapsed() < HEAD_SYNC_INTERVAL {
            return;
        }
        if let Err(e) = self.head_file.sync() {
            error!(error = %e, "could not sync the head file");
        }
        self.head_synced_at = Instant::now();
        self.head_unsynced = false;
    }

    /// What the index covers once it holds the records up to `position`, the last one the log
    /// took (whose timestamp is `timestamp_micros`): with where the next record begins.
    fn mark(&self, position: u64, timestamp_micros: u64) -> codec::IndexMark {
        let (segment, offset) = self.log.end().unwrap_or((0, 0));
        codec::IndexMark {
            position,
            segment,
            offset,
            timestamp_micros,
        }
    }

    /// Checks that an import continues the log at `position` (after events of this group whose
    /// last timestamp is `floor`) and each stream's version; returns the streams' new versions.
    fn check_import(
        &mut self,
        events: &[RecordedEvent],
        position: u64,
        floor: u64,
        overlay: &HashMap<String, u64>,
    ) -> Result<HashMap<String, u64>> {
        let mut versions: HashMap<String, u64> = HashMap::new();
        let Some(first) = events.first() else {
            return Ok(versions);
        };
        if first.position != position {
            return Err(StoreError::ImportRejected {
                position: first.position,
                reason: format!("the store's next position is {position}"),
            });
        }
        if first.timestamp_micros < floor {
            return Err(StoreError::ImportRejected {
                position: first.position,
                reason: format!(
                    "timestamp {} is before the store's last event's {floor}",
                    first.timestamp_micros
                ),
            });
        }
        for e in events {
            let current = match versions
                .get(e.stream_id.as_str())
                .or(overlay.get(e.stream_id.as_str()))
            {
                Some(v) => *v,
                None => self.stream_head(&e.stream_id)?,
            };
            if e.stream_version != current + 1 {
                return Err(StoreError::ImportRejected {
                    position: e.position,
                    reason: format!(
                        "stream {:?} is at version {current}, the event has version {}",
                        e.stream_id, e.stream_version
                    ),
                });
            }
            versions.insert(e.stream_id.to_string(), e.stream_version);
        }
        Ok(versions)
    }

    fn write_durably(&mut self, batch: sled::Batch) -> Result<()> {
        let _gate = self.shared.committing();
        self.shared.db.apply_batch(batch)?;
        self.shared.db.flush()?;
        self.durability.sync()?;
        Ok(())
    }

    /// Records a durable commit holding `kinds` in the head file: called only after the log's
    /// fdatasync and (when `synced`, a commit that counts) `write_durably` returned, so that the
    /// file is never ahead of what the log and sled hold on disk.
    fn record(&mut self, head: u64, kinds: &Kinds, synced: bool) {
        let mut marks = self.head_file.marks();
        let commit = marks.commits.unwrap_or(0) + u64::from(synced);
        marks.head = head;
        marks.commits = Some(commit);
        for (written, last) in [
            // Events are checked through the log and the head, not the counter: a commit
            // "holds events" for the counter only when it was synced in sled.
            (kinds.events && synced, &mut marks.last_events),
            (kinds.checkpoints, &mut marks.last_checkpoints),
            (kinds.state, &mut marks.last_state),
            (kinds.snapshots, &mut marks.last_snapshots),
        ] {
            if written {
                *last = commit;
            }
        }
        // Only a detector of lost data (see HeadFile): a failure to write it is logged, not
        // fatal. The counter in memory moves on all the same (the next commit must not reuse
        // this one's number).
        if let Err(e) = self.head_file.write(marks) {
            error!(error = %e, "could not record the commit in the head file");
        }
        self.head_unsynced = true;
    }
}

/// Refuses a checkpoint past the head: a checkpoint is a position its consumer has processed,
/// and one past the head would make a consumer skip events appended later (and an export of
/// the store could not be imported again).
fn check_checkpoint(name: &str, position: u64, head: u64) -> Result<()> {
    if position > head {
        return Err(StoreError::InvalidInput(format!(
            "checkpoint {position} of {name:?} is past the head {head}: a checkpoint is a \
             position that its consumer has processed"
        )));
    }
    Ok(())
}

/// Adds the runs of a group the log took at `addrs` to the index (see [`RunEntry`]), with a
/// group start at position 1 and each multiple of [`GROUP_START_EVERY`].
fn index_group(index: &StreamIndex, pending: &Pending, addrs: &[RecordAddr], mark: IndexMark) {
    let records = &pending.records;
    let runs = pending.runs.iter().map(|(stream, version, first, count)| {
        let (start, last) = (addrs[*first], addrs[first + *count as usize - 1]);
        (
            keys::run_key(stream, *version),
            RunEntry {
                first_position: records[*first].0,
                count: *count,
                segment: start.segment,
                offset: start.offset,
                bytes: last.offset + last.len - start.offset,
            },
        )
    });
    let groups = records
        .iter()
        .zip(addrs)
        .filter(|((position, _), _)| *position == 1 || position % GROUP_START_EVERY == 0)
        .map(|((position, _), addr)| GroupStart {
            position: *position,
            segment: addr.segment,
            offset: addr.offset,
        });
    index.insert(runs, groups, mark);
}

/// Whether `e` says that the disk (or a file size limit, or a quota) is full.
fn is_full(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        e.kind(),
        K::StorageFull | K::FileTooLarge | K::QuotaExceeded
    )
}

fn fail(req: Request, err: StoreError) {
    match req {
        Request::Append { reply, .. } => Reply::Append(reply, Err(err)).send(),
        Request::Import { reply, .. } => Reply::Head(reply, Err(err)).send(),
        Request::Checkpoint { reply, .. }
        | Request::Snapshot { reply, .. }
        | Request::Commit { reply, .. } => Reply::Unit(reply, Err(err)).send(),
    }
}

/// A group's records for the log (their bodies one after another) and its runs for the index.
#[derive(Default)]
struct Pending {
    bodies: Vec<u8>,
    /// Each record's position and the end of its body in `bodies`.
    records: Vec<(u64, usize)>,
    /// Runs of one stream at consecutive versions: (stream, first version, first record, count).
    runs: Vec<(String, u64, usize, u32)>,
    /// The records where a log write other than the first begins: a write never spans two
    /// segments, so a group larger than a segment holds is written in parts.
    cuts: Vec<usize>,
    /// The framed bytes of the current part.
    part_bytes: u64,
}

/// Where a [`Pending`] stood before a request's records (to take them back).
#[derive(Clone, Copy)]
struct Mark {
    bodies: usize,
    records: usize,
    runs: usize,
    /// The count of the last run then: a request's first record may continue it.
    last_run_count: Option<u32>,
}

impl Pending {
    fn mark(&self) -> Mark {
        Mark {
            bodies: self.bodies.len(),
            records: self.records.len(),
            runs: self.runs.len(),
            last_run_count: self.runs.last().map(|r| r.3),
        }
    }

    /// Adds the next record to the run of `stream`, or begins a run.
    fn run(&mut self, stream: &str, version: u64) {
        let next = self.records.len();
        match self.runs.last_mut() {
            Some((s, first_version, first, count))
                if s == stream
                    && *first + *count as usize == next
                    && *first_version + u64::from(*count) == version =>
            {
                *count += 1;
            }
            _ => self.runs.push((stream.to_owned(), version, next, 1)),
        }
    }

    /// Encodes one record.
    fn push(&mut self, header: &HeaderOut<'_>, metadata: &Metadata, payload: &[u8]) {
        codec::encode_record(header, metadata, payload, &mut self.bodies);
        self.records.push((header.position, self.bodies.len()));
    }

    /// Places the records added since `mark` (one request's, written all or nothing) in the
    /// current part, or begins a new part; refuses them (and takes them back) when they do not
    /// fit in one segment of `capacity` bytes.
    fn fit(&mut self, mark: Mark, capacity: u64) -> Result<()> {
        let mut start = mark.bodies;
        let mut bytes = 0u64;
        for &(_, end) in &self.records[mark.records..] {
            bytes += log::framed_len((end - start) as u64);
            start = end;
        }
        if bytes > capacity {
            let count = self.records.len() - mark.records;
            self.bodies.truncate(mark.bodies);
            self.records.truncate(mark.records);
            self.runs.truncate(mark.runs);
            if let (Some(run), Some(count)) = (self.runs.last_mut(), mark.last_run_count) {
                run.3 = count;
            }
            return Err(StoreError::InvalidInput(format!(
                "{count} events take {bytes} bytes in the log, more than one log segment holds \
                 ({capacity} bytes): append them in several calls, or raise \
                 SledConfig::segment_bytes"
            )));
        }
        if self.part_bytes + bytes > capacity {
            // A run never spans two parts (they may be in two segments): split the one that
            // these records continued.
            if let Some(k) = self.runs[..mark.runs.min(self.runs.len())]
                .len()
                .checked_sub(1)
            {
                let (stream, version, first, count) = self.runs[k].clone();
                let before = mark.records.saturating_sub(first) as u32;
                if first < mark.records && before < count {
                    self.runs[k].3 = before;
                    let rest = (
                        stream,
                        version + u64::from(before),
                        mark.records,
                        count - before,
                    );
                    self.runs.insert(k + 1, rest);
                }
            }
            self.cuts.push(mark.records);
            self.part_bytes = 0;
        }
        self.part_bytes += bytes;
        Ok(())
    }

    /// Writes the records to `log`, part by part; returns each record's address.
    fn write(&self, log: &mut SegmentLog) -> std::result::Result<Vec<RecordAddr>, LogError> {
        let mut addrs = Vec::with_capacity(self.records.len());
        let mut bounds = self.cuts.clone();
        bounds.push(self.records.len());
        let mut from = 0usize;
        for to in bounds {
            let start = from.checked_sub(1).map_or(0, |last| self.records[last].1);
            let part = &self.records[from..to];
            addrs.extend(append_bodies(log, &self.bodies, part, start)?);
            from = to;
        }
        Ok(addrs)
    }
}

/// Appends `records` to `log` as one group: each is a position and the end of its body in
/// `bodies`, the first body beginning at `start` and each next one where the one before ends.
/// Returns each record's address.
pub(super) fn append_bodies(
    log: &mut SegmentLog,
    bodies: &[u8],
    records: &[(u64, usize)],
    mut start: usize,
) -> std::result::Result<Vec<RecordAddr>, LogError> {
    let group: Vec<(u64, &[u8])> = records
        .iter()
        .map(|&(position, end)| {
            let body = &bodies[start..end];
            start = end;
            (position, body)
        })
        .collect();
    log.append_group(&group)
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn push(p: &mut Pending, position: u64, stream: &str, version: u64, payload: usize) -> Mark {
        let mark = p.mark();
        p.run(stream, version);
        p.push(
            &HeaderOut {
                position,
                stream_id: stream,
                stream_version: version,
                category: category_of(stream),
                event_type: "E",
                schema_version: 1,
                event_id: Uuid::nil(),
                correlation_id: None,
                causation_id: None,
                timestamp_micros: 1,
            },
            &Metadata::new(),
            &vec![7; payload],
        );
        mark
    }

    #[test]
    fn a_refused_append_takes_back_what_it_added_to_the_run_it_continued() {
        let mut p = Pending::default();
        let mark = push(&mut p, 1, "s", 1, 10);
        p.fit(mark, 4096).unwrap();
        // The same stream again, too large for a segment: refused, and the run of the first
        // append keeps its count (it was 2 for a moment).
        let mark = push(&mut p, 2, "s", 2, 5000);
        assert!(matches!(
            p.fit(mark, 4096),
            Err(StoreError::InvalidInput(_))
        ));
        assert_eq!(p.runs, [("s".to_owned(), 1, 0, 1)]);
        assert_eq!(p.records.len(), 1);
        assert_eq!(p.bodies.len(), p.records[0].1);
        // And the next append continues it.
        let mark = push(&mut p, 2, "s", 2, 10);
        p.fit(mark, 4096).unwrap();
        assert_eq!(p.runs, [("s".to_owned(), 1, 0, 2)]);
    }

    #[test]
    fn a_run_is_split_where_a_group_is_cut_into_parts() {
        let mut p = Pending::default();
        for (position, stream) in [(1, "s"), (2, "s"), (3, "s"), (4, "t")] {
            let mark = push(&mut p, position, stream, position.min(3), 1000);
            p.fit(mark, 2500).unwrap();
        }
        // Two records of ~1.1 KB fit in 2 500 bytes, a third does not: a cut before it, and
        // the run of "s" split there, so that no run spans two parts.
        assert_eq!(p.cuts, [2]);
        assert_eq!(
            p.runs,
            [
                ("s".to_owned(), 1, 0, 2),
                ("s".to_owned(), 3, 2, 1),
                ("t".to_owned(), 3, 3, 1)
            ]
        );
    }
}
