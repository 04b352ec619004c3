//! The event log of storage format 2: append-only segment files owned by tidings (issue 15,
//! decision 54, docs/storage-format.md "The segment log").
//!
//! The log holds opaque record bodies at gap-free positions. One writer appends commit groups
//! (one `write` and one `fdatasync` per group); readers on other threads read records at exact
//! addresses ([`LogReader::read_at`]) or in order ([`Scan`]), never past the last synced group.
//! Opening the log cuts the torn tail a crash left and reports damage before acknowledged
//! records ([`Recovery`]).
//!
//! The sled store keeps its events here (storage formats 2 and 3): its stream index (in its own
//! files since format 3) maps stream and version to [`RecordAddr`]es and catches up from the
//! log's tail at open.

mod error;
mod frame;
mod reader;
mod recover;
mod scan;
mod segment;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard};

pub(crate) use self::error::{LogError, LogResult};
pub(crate) use self::frame::framed_len;
use self::frame::{RecordHeader, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};
pub(crate) use self::reader::LogReader;
pub(crate) use self::recover::Recovery;
pub(crate) use self::scan::Scan;
use self::segment::Segment;

/// Settings of a [`SegmentLog`].
#[derive(Clone, Debug)]
pub(crate) struct LogConfig {
    /// The size segment files are allocated to. A commit group never spans two segments, so it
    /// is also the largest group (less 64 bytes of segment header and 32 per record). Default
    /// 64 MiB; at least 4 KiB, at most 1 GiB, a multiple of 8. Segments keep the size they were
    /// created with.
    pub segment_bytes: u64,
    /// The buffer of a scan and of the recovery at open: reading the log holds this much (and
    /// one record, when a record is larger), whatever the size of the log. Default 1 MiB; at
    /// least 4 KiB.
    pub read_buffer_bytes: usize,
    /// The last position the caller knows was acknowledged (0 if it knows none): opening never
    /// cuts it as a torn tail (see [`SegmentLog::open`]).
    pub acknowledged: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 64 << 20,
            read_buffer_bytes: 1 << 20,
            acknowledged: 0,
        }
    }
}

impl LogConfig {
    fn check(&self) -> LogResult<()> {
        if !(4096..=1 << 30).contains(&self.segment_bytes) || !self.segment_bytes.is_multiple_of(8)
        {
            return Err(LogError::Invalid(format!(
                "segment size {} is not a multiple of 8 between 4 KiB and 1 GiB",
                self.segment_bytes
            )));
        }
        if self.read_buffer_bytes < 4096 {
            return Err(LogError::Invalid(
                "the read buffer must be at least 4 KiB".into(),
            ));
        }
        Ok(())
    }
}

/// The file name of the segment whose first position is `id` (for tests that damage it).
#[cfg(test)]
pub(crate) fn segment_file_name(id: u64) -> String {
    segment::file_name(id)
}

/// Where a record is: what the store's index keeps, so that reading one event is one `pread`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct RecordAddr {
    /// The segment (its first position, which is its file's name).
    pub segment: u64,
    /// The record's byte offset in the segment file.
    pub offset: u32,
    /// The record's length: its 32-byte header and its body (without the padding that follows).
    pub len: u32,
}

impl RecordAddr {
    /// The address where the next record of the same segment would begin.
    pub fn next_offset(&self) -> u64 {
        u64::from(self.offset) + framed_len(u64::from(self.len) - RECORD_HEADER_LEN as u64)
    }
}

/// A record read from the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Record {
    /// Its position.
    pub position: u64,
    /// Where it is.
    pub addr: RecordAddr,
    /// Its body, as appended.
    pub body: Vec<u8>,
}

/// What the writer and the readers share.
#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    config: LogConfig,
    /// Every segment, by first position. The writer adds one (under the write lock) before it
    /// writes to it.
    segments: RwLock<BTreeMap<u64, Arc<Segment>>>,
    /// The last acknowledged (synced) position; 0 when the log is empty. Raised after the
    /// segment's end.
    last_position: AtomicU64,
    /// Buffers of finished scans, for the next ones: at most [`KEPT_BUFFERS`], each at most
    /// `read_buffer_bytes`.
    buffers: Mutex<Vec<Vec<u8>>>,
}

/// How many scan buffers the log keeps for reuse.
const KEPT_BUFFERS: usize = 4;

impl Shared {
    fn segments(&self) -> RwLockReadGuard<'_, BTreeMap<u64, Arc<Segment>>> {
        self.segments.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// A buffer for a scan's window: one a finished scan gave back, or a new (empty) one.
    fn take_buffer(&self) -> Vec<u8> {
        self.buffers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
            .unwrap_or_default()
    }

    /// Keeps a finished scan's buffer for the next scan (up to [`KEPT_BUFFERS`]).
    fn give_buffer(&self, buf: Vec<u8>) {
        if buf.capacity() == 0 {
            return;
        }
        let mut kept = self.buffers.lock().unwrap_or_else(PoisonError::into_inner);
        if kept.len() < KEPT_BUFFERS {
            kept.push(buf);
        }
    }
}

/// The log's writer: one per log (the store's writer thread). Readers are [`LogReader`]s.
#[derive(Debug)]
pub(crate) struct SegmentLog {
    shared: Arc<Shared>,
    /// The segment being written.
    active: Option<Arc<Segment>>,
    /// The offset where the next group goes in it.
    tail_offset: u64,
    /// The buffer a group is framed in (kept between groups).
    buf: Vec<u8>,
    /// Why an earlier write failed.
    failed: Option<String>,
    /// The active segment holds data or zeros written by this log up to here (see
    /// [`ZERO_AHEAD`]).
    zeroed_to: u64,
}

/// How far ahead of its tail the active segment is written with zeros. A segment is allocated
/// with `fallocate`, whose extents are "unwritten": the first `fdatasync` of data in one must
/// also write the file's extent map, a second device write per commit. Zeros written ahead of
/// the tail (in the same write and sync as a group, once per half of this) make later commits
/// overwrite blocks that are already written, so their `fdatasync` writes only the data. (A
/// pre-sized file written with zeros took 111 µs per 4 KiB sync on this machine, a growing
/// one 222 µs: issue 15.)
const ZERO_AHEAD: u64 = 1 << 20;

impl SegmentLog {
    /// Opens the log in `dir` (created 0700 if missing, with its parent synced), recovering the
    /// last segment: a torn tail is cut, damage before acknowledged records is reported.
    ///
    /// A torn tail that would take a position at or below `config.acknowledged` is not cut:
    /// the open fails with [`LogError::Damaged`] and changes nothing.
    ///
    /// Errors: [`LogError::BadPath`] for a symbolic link or a file the log does not own in the
    /// directory, [`LogError::BadSegment`] for a segment that cannot be one (wrong magic, size or
    /// name, a gap in the sequence of segments), [`LogError::Invalid`] for bad settings.
    pub fn open(dir: impl Into<PathBuf>, config: LogConfig) -> LogResult<(SegmentLog, Recovery)> {
        config.check()?;
        let dir = dir.into();
        prepare_dir(&dir)?;
        let mut recovery = Recovery::default();
        let listing = segment::list(&dir)?;
        for path in listing.incomplete {
            std::fs::remove_file(&path).map_err(|e| LogError::io("remove", &path, e))?;
            recovery.removed.push(path);
        }
        if !recovery.removed.is_empty() {
            segment::sync_dir(&dir)?;
        }
        let count = listing.segments.len();
        let mut segments = BTreeMap::new();
        let mut last = None;
        for (i, (id, path)) in listing.segments.iter().enumerate() {
            let (seg, header, len) = segment::open(path, *id)?;
            let bad = |reason: String| LogError::BadSegment {
                path: path.clone(),
                reason,
            };
            if header.sequence != i as u64 + 1 {
                return Err(bad(format!(
                    "its sequence number is {}, and {} segment(s) come before it: a segment is \
                     missing before it",
                    header.sequence, i
                )));
            }
            let is_last = i + 1 == count;
            if len > header.size || (!is_last && len != header.size) {
                return Err(bad(format!(
                    "it is {len} bytes long, and its header says {}",
                    header.size
                )));
            }
            if len < SEGMENT_HEADER_LEN {
                return Err(bad("it is shorter than a segment header".into()));
            }
            let seg = Arc::new(seg);
            if is_last {
                last = Some((Arc::clone(&seg), len));
            }
            segments.insert(*id, seg);
        }
        let (active, tail_offset, last_position) = match last {
            None => (None, SEGMENT_HEADER_LEN, 0),
            Some((seg, len)) => {
                let found = recover::recover_last(
                    &seg,
                    len,
                    config.read_buffer_bytes,
                    config.acknowledged,
                    &mut recovery,
                )?;
                if len < seg.size {
                    seg.reallocate()?;
                }
                seg.set_end(found.end);
                (Some(seg), found.end, found.last_position)
            }
        };
        let shared = Arc::new(Shared {
            dir,
            config,
            segments: RwLock::new(segments),
            last_position: AtomicU64::new(last_position),
            buffers: Mutex::new(Vec::new()),
        });
        let log = SegmentLog {
            shared,
            active,
            tail_offset,
            buf: Vec::new(),
            failed: None,
            zeroed_to: tail_offset,
        };
        Ok((log, recovery))
    }

    /// A reader for other threads.
    pub fn reader(&self) -> LogReader {
        LogReader {
            shared: Arc::clone(&self.shared),
        }
    }

    /// The last acknowledged position (0 for an empty log).
    pub fn tail(&self) -> u64 {
        self.shared.last_position.load(Ordering::Acquire)
    }

    /// Where the next record will be written: the segment being written and the offset after
    /// its last record (`None` before the first record). When the next group does not fit
    /// there, it begins the next segment instead, which a scan from this address finds.
    pub fn end(&self) -> Option<(u64, u64)> {
        self.active.as_ref().map(|s| (s.id, self.tail_offset))
    }

    /// The most framed bytes one [`append_group`](Self::append_group) can take (a group never
    /// spans two segments).
    pub fn capacity(&self) -> u64 {
        self.shared.config.segment_bytes - SEGMENT_HEADER_LEN
    }

    /// The directory of the log.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Appends one commit group, durably: its records framed into one buffer, written with one
    /// `write` at the tail (in a new segment if the group does not fit in the current one), and
    /// one `fdatasync`. When it returns `Ok`, readers see the records and a crash keeps them.
    ///
    /// `records` are (position, body) and must continue the log: the first at
    /// [`tail`](Self::tail) + 1, then one more each. Returns each record's address.
    ///
    /// After a failed write or sync the log refuses further appends ([`LogError::Failed`]): what
    /// reached the disk is unknown until the log is opened again.
    pub fn append_group(&mut self, records: &[(u64, &[u8])]) -> LogResult<Vec<RecordAddr>> {
        if let Some(why) = &self.failed {
            return Err(LogError::Failed(why.clone()));
        }
        let first = self.tail() + 1;
        if records.is_empty() {
            return Err(LogError::Invalid("an empty commit group".into()));
        }
        let capacity = self.shared.config.segment_bytes - SEGMENT_HEADER_LEN;
        let mut total = 0u64;
        for (i, (position, body)) in records.iter().enumerate() {
            if *position != first + i as u64 {
                return Err(LogError::Invalid(format!(
                    "record {i} of the group has position {position}; the log expects {}",
                    first + i as u64
                )));
            }
            total += framed_len(body.len() as u64);
        }
        if total > capacity {
            return Err(LogError::Invalid(format!(
                "a commit group of {total} bytes does not fit in a segment of {} bytes",
                self.shared.config.segment_bytes
            )));
        }
        let segment = match &self.active {
            Some(s) if self.tail_offset + total <= s.size => Arc::clone(s),
            Some(s) if self.tail_offset == SEGMENT_HEADER_LEN => {
                // An empty segment created with a smaller segment size (a crash right after a
                // rollover, then a larger setting): it holds no record, so it is replaced by
                // one of the current size under the same name.
                let (old, sequence) = (s.path.clone(), s.sequence);
                let replaced = std::fs::remove_file(&old)
                    .map_err(|e| LogError::io("remove the empty segment", &old, e))
                    .and_then(|()| segment::sync_dir(&self.shared.dir))
                    .and_then(|()| {
                        segment::create(
                            &self.shared.dir,
                            sequence,
                            first,
                            self.shared.config.segment_bytes,
                        )
                    });
                match replaced {
                    Ok(created) => self.install(created),
                    Err(e) => return Err(self.fail(e)),
                }
            }
            active => {
                let sequence = active.as_ref().map_or(1, |s| s.sequence + 1);
                let created = segment::create(
                    &self.shared.dir,
                    sequence,
                    first,
                    self.shared.config.segment_bytes,
                );
                match created {
                    Ok(created) => self.install(created),
                    Err(e) => return Err(self.fail(e)),
                }
            }
        };
        self.buf.clear();
        let mut addrs = Vec::with_capacity(records.len());
        for (i, (position, body)) in records.iter().enumerate() {
            let offset = self.tail_offset + self.buf.len() as u64;
            addrs.push(RecordAddr {
                segment: segment.id,
                offset: offset as u32,
                len: (RECORD_HEADER_LEN + body.len()) as u32,
            });
            RecordHeader {
                last_of_group: i + 1 == records.len(),
                body_len: body.len() as u32,
                position: *position,
                group_first: first,
                body_crc: crc32fast::hash(body),
            }
            .encode_record(body, &mut self.buf);
        }
        let end = self.tail_offset + total;
        if end + ZERO_AHEAD / 2 > self.zeroed_to && self.zeroed_to < segment.size {
            // Zeros after the group (never over it): synced with it below.
            let from = self.zeroed_to.max(end);
            let to = (end + ZERO_AHEAD).min(segment.size);
            if to > from {
                let zeros = vec![0u8; (to - from) as usize];
                if let Err(e) = segment.write_at(&zeros, from) {
                    return Err(self.fail(LogError::io("write to", &segment.path, e)));
                }
            }
            self.zeroed_to = to;
        }
        if let Err(e) = segment.write_at(&self.buf, self.tail_offset) {
            return Err(self.fail(LogError::io("write to", &segment.path, e)));
        }
        if let Err(e) = segment.sync_data() {
            return Err(self.fail(LogError::io("fsync", &segment.path, e)));
        }
        self.tail_offset += total;
        segment.set_end(self.tail_offset);
        self.shared
            .last_position
            .store(first + records.len() as u64 - 1, Ordering::Release);
        Ok(addrs)
    }

    /// Makes `created` the segment being written (and readable).
    fn install(&mut self, created: Segment) -> Arc<Segment> {
        let created = Arc::new(created);
        self.shared
            .segments
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(created.id, Arc::clone(&created));
        self.active = Some(Arc::clone(&created));
        self.tail_offset = SEGMENT_HEADER_LEN;
        self.zeroed_to = SEGMENT_HEADER_LEN;
        created
    }

    fn fail(&mut self, e: LogError) -> LogError {
        self.failed = Some(e.to_string());
        e
    }

    /// Reads the record at `position`, which the index says is at `addr`
    /// (see [`LogReader::read_at`]).
    #[cfg(test)]
    pub fn read_at(&self, position: u64, addr: RecordAddr) -> LogResult<Record> {
        self.reader().read_at(position, addr)
    }
}

/// Makes sure `dir` is a directory the log may use: created 0700 (and its parent synced) if
/// missing; a symbolic link or a file there is [`LogError::BadPath`].
fn prepare_dir(dir: &Path) -> LogResult<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(meta) if meta.file_type().is_symlink() => Err(LogError::BadPath {
            path: dir.to_owned(),
            reason: "the log's directory is a symbolic link: the log never writes through a \
                     link (left alone)"
                .into(),
        }),
        Ok(meta) if !meta.is_dir() => Err(LogError::BadPath {
            path: dir.to_owned(),
            reason: "not a directory".into(),
        }),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .map_err(|e| LogError::io("create the directory", dir, e))?;
            match dir.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => segment::sync_dir(parent),
                _ => Ok(()),
            }
        }
        Err(e) => Err(LogError::io("stat", dir, e)),
    }
}

/// Compile-time check: readers go to other threads.
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<LogReader>();
    send_sync::<SegmentLog>();
    send_sync::<Scan>();
};
