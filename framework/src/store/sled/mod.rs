//! The embedded event store on sled.

mod durable;
mod index;
mod keys;
mod migrate;
mod read;
mod stream_index;
mod table;
mod writer;

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::{oneshot, watch};
use tracing::{info, warn, Instrument};

use self::durable::{Durability, HeadFile, Marks};
use self::stream_index::{CloseGuard, StreamIndex};
use self::writer::{Request, Writer, WriterSettings};
use super::codec;
use super::log::{LogConfig, LogReader, SegmentLog};
use super::spans;
use super::{
    validate_append, validate_commit, validate_import, validate_name, AppendResult, CheckpointInfo,
    EventData, EventStore, ExpectedVersion, Filter, HeadWatch, ReadBatch, RecordedEvent, Result,
    Snapshot, StateWrite, StoreError, StreamInfo, VerifyReport,
};

/// The storage format this build writes. It also opens stores of formats 1 and 2, which it
/// converts (docs/storage-format.md, "Converting older stores").
pub const STORAGE_FORMAT: u32 = 3;

/// The directory of the event log (formats 2 and 3) inside the store's directory.
const LOG_DIR: &str = "log";

/// The directory of the stream index's files (format 3) inside the store's directory.
const INDEX_DIR: &str = "index";

/// The name of the lock file that keeps a second process out.
const LOCK_FILE: &str = "tidings.lock";

/// Settings of a [`SledEventStore`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SledConfig {
    /// The store's directory (created if missing).
    pub path: PathBuf,
    /// sled's page cache, in bytes. Default 64 MiB (sled's own default of 1 GiB let RSS reach
    /// 380 MB for 1 M small events).
    pub cache_capacity_bytes: u64,
    /// The most requests (appends, checkpoints, snapshots) committed together. Default 1024.
    pub max_group: usize,
    /// The size of the event log's segment files, allocated when a segment is created. Default
    /// 64 MiB; at least 4 KiB, at most 1 GiB, a multiple of 8. One append must fit in a segment
    /// (a larger one is refused with [`StoreError::InvalidInput`]); with the default every
    /// append within [`MAX_APPEND_BYTES`](crate::store::MAX_APPEND_BYTES) does, unless it holds
    /// tens of thousands of tiny events (each record repeats the stream id and category: with
    /// ids of 512 bytes, some 60 000 empty events fill 64 MiB). Segments keep the size they were
    /// created with.
    pub segment_bytes: u64,
    /// The buffer of a sequential read of the event log (`read_all`, the catch-up at open,
    /// `verify`), and the largest run of one stream's events read with one `pread`: reads hold
    /// this much (and one event, when an event is larger), whatever the size of the log.
    /// Default 1 MiB; at least 4 KiB.
    pub read_buffer_bytes: usize,
    /// How many stream heads the writer keeps in memory. Default 100 000; a miss costs one index
    /// lookup.
    pub stream_cache_capacity: usize,
    /// How many runs (one per append, or per stream of an import) the stream index holds in
    /// memory before it writes them to a file of its own under `index/`. Default 65 536 (a few
    /// MB); at least 1. Smaller means less memory and more, smaller files (which are merged in
    /// the background); it also bounds what the index reads back from the log at the next open
    /// after a crash.
    pub index_table_runs: usize,
}

impl SledConfig {
    /// The default settings for a store in `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SledConfig {
            path: path.into(),
            cache_capacity_bytes: 64 * 1024 * 1024,
            max_group: 1024,
            segment_bytes: 64 << 20,
            read_buffer_bytes: 1 << 20,
            stream_cache_capacity: 100_000,
            index_table_runs: stream_index::FLUSH_RUNS,
        }
    }

    /// Sets the page cache size in bytes.
    #[must_use]
    pub fn cache_capacity_bytes(mut self, bytes: u64) -> Self {
        self.cache_capacity_bytes = bytes;
        self
    }

    /// Sets the largest commit group.
    #[must_use]
    pub fn max_group(mut self, requests: usize) -> Self {
        self.max_group = requests.max(1);
        self
    }

    /// Sets the size of new segment files of the event log (see
    /// [`segment_bytes`](Self::segment_bytes)).
    #[must_use]
    pub fn segment_bytes(mut self, bytes: u64) -> Self {
        self.segment_bytes = bytes;
        self
    }

    /// Sets the buffer of sequential reads of the event log (see
    /// [`read_buffer_bytes`](Self::read_buffer_bytes)).
    #[must_use]
    pub fn read_buffer_bytes(mut self, bytes: usize) -> Self {
        self.read_buffer_bytes = bytes;
        self
    }

    /// Sets how many stream heads the writer caches.
    #[must_use]
    pub fn stream_cache_capacity(mut self, streams: usize) -> Self {
        self.stream_cache_capacity = streams;
        self
    }

    /// Sets how many runs the stream index holds in memory (see
    /// [`index_table_runs`](Self::index_table_runs)).
    #[must_use]
    pub fn index_table_runs(mut self, runs: usize) -> Self {
        self.index_table_runs = runs.max(1);
        self
    }

    /// Opens (or creates) the store.
    pub fn open(self) -> Result<SledEventStore> {
        SledEventStore::open_with(self)
    }
}

/// State shared by the writer thread and readers.
pub(crate) struct Shared {
    db: sled::Db,
    /// The event log, for reads.
    log: LogReader,
    /// The stream index (runs of each stream's events, group starts).
    index: Arc<StreamIndex>,
    /// See [`SledConfig::read_buffer_bytes`].
    read_buffer_bytes: usize,
    path: PathBuf,
    /// The position of the last durable event. Readers never go past it.
    durable_head: AtomicU64,
    /// Set once a write failed and a handle to sled was leaked ([`Shared::never_flush_on_drop`]).
    engine_leaked: AtomicBool,
    /// Held for writing by the writer from `apply_batch` until the fsync, so that reads of
    /// checkpoints, state and snapshots (which have no position to cap) never see a value a crash
    /// could take back.
    commit_gate: RwLock<()>,
    /// A receiver to clone for each [`HeadWatch`]; the sender belongs to the writer thread, so
    /// that watches see `Closed` as soon as the writer stops.
    head_rx: watch::Receiver<u64>,
    /// Held for as long as the store is open; the OS releases the lock when it closes.
    _lock: File,
    /// The store's metric handles (taken at open).
    metrics: crate::metrics::StoreMetrics,
}

impl Shared {
    /// Waits until no commit is between `apply_batch` and its fsync; hold the guard while reading
    /// values that are not capped by the durable head.
    fn durable_view(&self) -> RwLockReadGuard<'_, ()> {
        self.commit_gate.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes sure sled's handle is never dropped, so that its flush on drop never runs: called
    /// after a write failed.
    ///
    /// sled 0.34.7 flushes in a loop when its last handle is dropped (`TreeInner::drop`), and
    /// after a failed write (seen with pages written as blob files, events over ~128 KiB, on a
    /// full disk or past a file size limit) that flush blocks forever: the process hung at exit
    /// after `close` had returned (issue 16). A leaked clone keeps the count of handles above
    /// zero, so the drop never happens; the operating system closes the files and releases
    /// sled's lock when the process ends. Nothing is lost by not flushing: every acknowledged
    /// commit was fsynced before it was acknowledged, and the outcome of the failed one is
    /// unknown in any case. The price: this process cannot open the store again (sled's lock on
    /// `db` stays held by the leaked handle, so an open here gets `InUse` after its retries);
    /// another process can, once this one has ended.
    fn never_flush_on_drop(&self) {
        if !self.engine_leaked.swap(true, Ordering::AcqRel) {
            std::mem::forget(self.db.clone());
        }
    }

    /// Keeps readers of uncapped values out while a commit is not yet durable.
    fn committing(&self) -> RwLockWriteGuard<'_, ()> {
        self.commit_gate.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// The embedded event store: a durable log of segment files with an index on sled, with group
/// commit.
///
/// Cheap to clone: clones share one store. The store closes when the last clone is dropped (or on
/// [`close`](SledEventStore::close)). See the [`EventStore`] trait for the operations, and
/// `docs/guarantees.md` for what is promised when.
#[derive(Clone)]
pub struct SledEventStore {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    tx: Mutex<Option<mpsc::Sender<Request>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        stop_writer(&self.tx, &self.writer);
    }
}

fn stop_writer(tx: &Mutex<Option<mpsc::Sender<Request>>>, writer: &Mutex<Option<JoinHandle<()>>>) {
    drop(tx.lock().unwrap_or_else(|p| p.into_inner()).take());
    if let Some(handle) = writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
        let _ = handle.join();
    }
}

impl SledEventStore {
    /// Opens (or creates) a store in `path` with the default settings.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        SledConfig::new(path.as_ref()).open()
    }

    /// Opens (or creates) a store with `config`.
    ///
    /// A missing directory is created with mode 0700 (and so are missing parents); an existing
    /// one keeps its mode. A path that cannot be used (a file, no permission to write there, a
    /// symbolic link where the store writes a file) is [`StoreError::BadPath`] naming it.
    pub fn open_with(config: SledConfig) -> Result<Self> {
        let path = config.path.clone();
        prepare_dir(&path)?;
        refuse_links(&path)?;
        let lock = lock_dir(&path)?;
        remove_torn_snapshots(&path).map_err(|e| path_error(&path, e))?;

        let sled_config = sled::Config::new()
            .path(&path)
            .cache_capacity(config.cache_capacity_bytes)
            .mode(sled::Mode::HighThroughput)
            // Every commit flushes and fsyncs by itself; sled's timer would only add fsyncs.
            .flush_every_ms(None);
        check_blobs(&path)?;
        let db = open_sled(&sled_config, &path)?;
        let format = check_format(&db, &path)?;
        let mut durability = Durability::open(&path).map_err(|e| path_error(&path, e))?;
        db.flush().map_err(|e| engine_error(e, &path))?;
        durability.sync().map_err(|e| path_error(&path, e))?;

        // What the store knows was acknowledged, so that opening the log never cuts it as a
        // torn tail: the head file's head, what the index's files cover (only records the log
        // had synced), and a format-2 store's mark in sled.
        let head_path = path.join(durable::HEAD_FILE);
        let recorded = HeadFile::read(&path).map_err(|e| path_error(&head_path, e))?;
        let stream_index =
            StreamIndex::open_with(path.join(INDEX_DIR), config.index_table_runs.max(1), true)
                .map_err(|e| e.naming(&path))?;
        let index_guard = CloseGuard::new(&stream_index);
        let old_mark = index::read_format_2_mark(&db)?;
        let log_config = LogConfig {
            segment_bytes: config.segment_bytes,
            read_buffer_bytes: config.read_buffer_bytes,
            // (A format-1 store's head file counts the events in sled, not in the log.)
            acknowledged: if format == 1 {
                stream_index.mark().position
            } else {
                recorded
                    .as_ref()
                    .map_or(0, |m| m.head)
                    .max(stream_index.mark().position)
                    .max(old_mark.position)
            },
        };
        let (mut log, recovery) = SegmentLog::open(path.join(LOG_DIR), log_config)?;
        report_recovery(&recovery, &path);
        if format == 2 {
            info!(
                path = %path.display(),
                "converting the store from storage format 2 to format 3 (the stream index \
                 moves from sled to its own files; it is rebuilt from the event log)"
            );
        }
        if format == 1 {
            migrate::from_format_1(&db, &mut log, || {
                durability.sync().map_err(|e| path_error(&path, e))
            })?;
        }
        // The index catches up first: it reads back (and checks) every record a conversion
        // copied, before the old copy of the events and the old index are removed.
        let caught = index::catch_up(&stream_index, &log.reader())?;
        stream_index.flush()?;
        if format == 2 {
            db.insert(keys::FORMAT_KEY, codec::encode_format(STORAGE_FORMAT))?;
        }
        migrate::remove_old_keys(&db)?;
        db.flush().map_err(|e| engine_error(e, &path))?;
        durability.sync().map_err(|e| path_error(&path, e))?;
        let (head, last_timestamp) = (caught.head, caught.last_timestamp);
        let commits = read::recover_commits(&db)?;
        if let Some(recorded) = &recorded {
            check_marks(recorded, head, commits, &head_path)?;
        }
        // Carry the last commit of each kind over (a later loss may reach back past this
        // open); a head file written before commits were counted starts counting here.
        let marks = match recorded {
            Some(
                recorded @ Marks {
                    commits: Some(_), ..
                },
            ) => Marks {
                head,
                commits: Some(commits),
                ..recorded
            },
            _ => {
                if recorded.is_some() || head > 0 {
                    warn!(
                        path = %path.display(),
                        "this store's head file predates the commit counter (or is missing): \
                         only the log's head was checked at this open; commits of checkpoints, \
                         state and snapshots are checked from now on"
                    );
                }
                Marks {
                    head,
                    commits: Some(commits),
                    ..Marks::default()
                }
            }
        };
        let head_file = HeadFile::open(&path, marks).map_err(|e| path_error(&head_path, e))?;
        let (head_tx, head_rx) = watch::channel(head);
        let shared = Arc::new(Shared {
            db,
            log: log.reader(),
            index: stream_index,
            read_buffer_bytes: config.read_buffer_bytes,
            path,
            durable_head: AtomicU64::new(head),
            engine_leaked: AtomicBool::new(false),
            commit_gate: RwLock::new(()),
            head_rx,
            _lock: lock,
            metrics: crate::metrics::StoreMetrics::new("sled"),
        });
        let settings = WriterSettings {
            max_group: config.max_group.max(1),
            stream_cache_capacity: config.stream_cache_capacity,
        };
        let writer = Writer::new(
            shared.clone(),
            log,
            durability,
            head_file,
            head_tx,
            settings,
            (head, last_timestamp),
        );
        let (tx, rx) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("tidings-writer".into())
            .spawn(move || writer.run(rx))?;
        index_guard.disarm();
        info!(path = %shared.path.display(), head, "event store opened");
        Ok(SledEventStore {
            inner: Arc::new(Inner {
                shared,
                tx: Mutex::new(Some(tx)),
                writer: Mutex::new(Some(handle)),
            }),
        })
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.inner.shared.path
    }

    /// Stops the writer after the requests already sent, waiting for it. Later writes fail with
    /// [`StoreError::Closed`]; reads keep working until the last clone is dropped, which releases
    /// the files.
    pub async fn close(&self) {
        let inner = self.inner.clone();
        let _ = tokio::task::spawn_blocking(move || stop_writer(&inner.tx, &inner.writer)).await;
    }

    fn send(&self, request: Request) -> Result<()> {
        let tx = self.inner.tx.lock().unwrap_or_else(|p| p.into_inner());
        match tx.as_ref() {
            Some(tx) => tx.send(request).map_err(|_| StoreError::Closed),
            None => Err(StoreError::Closed),
        }
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Shared) -> Result<T> + Send + 'static,
    {
        let shared = self.inner.shared.clone();
        match tokio::task::spawn_blocking(move || f(&shared)).await {
            Ok(result) => result,
            Err(e) => Err(StoreError::engine("a store read failed", e)),
        }
    }
}

/// Compares what was recovered (the event log's `head`, sled's commit counter `commits`) with
/// what the head file at `head_path` says was acknowledged. The file is written only after the
/// log's fdatasync (and sled's, for a commit that counts), so it is never ahead of them unless
/// acknowledged data was lost.
fn check_marks(recorded: &Marks, head: u64, commits: u64, head_path: &Path) -> Result<()> {
    let lost = match recorded.commits {
        Some(acknowledged) if acknowledged > commits => {
            let kinds = recorded.kinds_after(commits);
            let kinds = if kinds.is_empty() {
                "unknown writes".to_owned()
            } else {
                kinds.join(", ")
            };
            Some(format!(
                "the storage engine recovered {commits} commits, but {acknowledged} were \
                 acknowledged: commits {} to {acknowledged} are lost, and they held {kinds}",
                commits + 1
            ))
        }
        _ => None,
    };
    let accept = format!(
        "Restore the store from a backup; or, to accept the loss and go on from what was \
         recovered, delete {}",
        head_path.display()
    );
    if recorded.head > head {
        let also = lost.map(|l| format!(" ({l})")).unwrap_or_default();
        return Err(StoreError::Damaged {
            position: head + 1,
            reason: format!(
                "the log ends at position {head}, but {} events were acknowledged: a damaged \
                 or missing part of the event log was lost{also}. {accept}",
                recorded.head
            ),
        });
    }
    if let Some(lost) = lost {
        return Err(StoreError::DamagedMetadata {
            what: format!(
                "recent commits of the store at {}",
                head_path.parent().unwrap_or(head_path).display()
            ),
            reason: format!(
                "{lost}. The log's events are all there (up to position {head}), but what the \
                 lost commits wrote went back to an older value: subscriptions would handle \
                 events again from older checkpoints, and repeat their effects, with their \
                 exactly-once state gone back too. {accept}"
            ),
        });
    }
    Ok(())
}

/// Opens sled, turning a panic into an error.
///
/// We hold `tidings.lock`, so a held lock on sled's `db` file can only be our own process's
/// previous handle: sled 0.34.7 writes log buffers on its own thread pool, and a job there can
/// keep the file (and its lock) open for a moment after the `Db` is dropped. So a lock failure is
/// retried for up to two seconds before it is reported as `InUse`.
fn open_sled(config: &sled::Config, path: &Path) -> Result<sled::Db> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match std::panic::catch_unwind(AssertUnwindSafe(|| config.open())) {
            Ok(Ok(db)) => return Ok(db),
            Ok(Err(sled::Error::Io(e))) if e.to_string().contains("could not acquire lock") => {
                if Instant::now() >= deadline {
                    return Err(StoreError::InUse {
                        path: path.to_path_buf(),
                    });
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(Err(e)) => return Err(engine_error(e, path)),
            Err(_) => {
                return Err(StoreError::engine_message(format!(
                    "the storage engine panicked while opening {}",
                    path.display()
                )))
            }
        }
    }
}

/// Refuses a store whose `blobs/` directory is gone. sled creates it before its data file and
/// keeps large pages there; without them it panics at open or silently drops part of its log.
fn check_blobs(path: &Path) -> Result<()> {
    let blobs = path.join("blobs");
    if path.join("db").exists() && !blobs.exists() {
        return Err(StoreError::DamagedMetadata {
            what: format!("storage engine files of the store at {}", path.display()),
            reason: format!(
                "the directory {} is missing: the storage engine keeps large pages of the log \
                 there, and cannot read the store without them. Restore it (or the store) from a \
                 backup",
                blobs.display()
            ),
        });
    }
    Ok(())
}

/// Takes the store's lock file, or reports that another process holds it.
fn lock_dir(path: &Path) -> Result<File> {
    let lock_path = path.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&lock_path)
        .map_err(|e| path_error(&lock_path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::InUse {
            path: path.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(path_error(&lock_path, e)),
    }
}

/// Makes sure `path` is a directory: creates it (mode 0700, missing parents too) if it is
/// missing; an existing directory keeps its mode.
fn prepare_dir(path: &Path) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(StoreError::BadPath {
            path: path.to_path_buf(),
            reason: "it is a file, not a directory: a store is a directory".into(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(|e| path_error(path, e)),
        Err(e) => Err(path_error(path, e)),
    }
}

/// The names of the files and directories that the store or sled write in the store's
/// directory (sled's `snap.*` files are written under a temporary name and renamed over).
const WRITTEN_NAMES: [&str; 7] = [
    LOCK_FILE,
    durable::HEAD_FILE,
    "db",
    "conf",
    "blobs",
    LOG_DIR,
    INDEX_DIR,
];

/// Refuses a store whose files are symbolic links: writing through one would write outside the
/// store (the files the store opens itself are also opened with `O_NOFOLLOW`, for a link made
/// after this check).
fn refuse_links(path: &Path) -> Result<()> {
    for name in WRITTEN_NAMES {
        let file = path.join(name);
        match std::fs::symlink_metadata(&file) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let target = std::fs::read_link(&file)
                    .map(|t| format!(" (to {})", t.display()))
                    .unwrap_or_default();
                return Err(StoreError::BadPath {
                    path: file,
                    reason: format!("it is a symbolic link{target}; {LINK_ADVICE}"),
                });
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(path_error(&file, e)),
        }
    }
    Ok(())
}

/// What to say when the disk is full (or a file size limit or quota is reached) while the
/// store opens or writes.
const FULL_DISK_ADVICE: &str = "the disk is full (or a file size limit or quota is reached). \
     The storage engine (sled 0.34.7) has no read-only mode and writes when it opens a store, \
     also to read it: after a write that failed it fills the rest of its last log segment (up \
     to 512 KiB) with zeros, and it may write a snapshot file. Free some space (at least \
     512 KiB) or raise the limit, or copy the store's directory to a disk with room and open \
     the copy";

/// What to do about a symbolic link where the store writes a file.
const LINK_ADVICE: &str = "the store writes this file and never follows a link out of its \
                           directory: replace the link with the file it points to (or delete it)";

/// An I/O error met while opening the store at `path`, as an error that names the path and,
/// for the usual causes (no permission, a read-only file system, a file in the way, a symbolic
/// link), says what is wrong.
fn path_error(path: &Path, e: io::Error) -> StoreError {
    use io::ErrorKind as K;
    let reason = match e.kind() {
        K::PermissionDenied | K::ReadOnlyFilesystem => format!(
            "{e}: the store creates and writes files in its directory, also when it is only \
             read (its lock file, the storage engine's files); open it as the user that owns \
             it, or work on a writable copy"
        ),
        K::NotADirectory => format!("{e}: a part of the path is a file, not a directory"),
        K::StorageFull | K::FileTooLarge | K::QuotaExceeded => {
            return StoreError::Io(io::Error::new(
                e.kind(),
                format!("{}: {e}: {FULL_DISK_ADVICE}", path.display()),
            ))
        }
        K::AlreadyExists => format!("{e}: a file is in the way of the directory"),
        _ if e.raw_os_error() == Some(libc::ELOOP) => {
            format!("it is a symbolic link; {LINK_ADVICE}")
        }
        _ => return StoreError::Io(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    };
    StoreError::BadPath {
        path: path.to_path_buf(),
        reason,
    }
}

/// An error of sled while opening or flushing the store at `path`, naming the path: I/O as
/// [`path_error`], damage that sled detected as [`StoreError::DamagedMetadata`].
fn engine_error(e: sled::Error, path: &Path) -> StoreError {
    match e {
        sled::Error::Io(e) => path_error(path, e),
        other => StoreError::from(other).naming(path),
    }
}

/// Deletes snapshot files that sled was still writing when its process died.
///
/// sled 0.34.7 writes `snap.<lsn>.generating`, syncs it and renames it; a kill in between leaves
/// a truncated file that sled then picks as its snapshot and refuses to open with. The snapshot
/// is only an optimisation of recovery (sled rebuilds it from the log), so deleting it loses
/// nothing. Runs only while holding the store's lock.
fn remove_torn_snapshots(path: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            warn!(file = %name, "removing a snapshot file left by an interrupted open");
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// The store's format: 1 or 2 (converted at this open) or 3. An empty store is marked as
/// format 3.
fn check_format(db: &sled::Db, path: &Path) -> Result<u32> {
    match db.get(keys::FORMAT_KEY)? {
        Some(value) => {
            let found =
                codec::decode_format(&value).map_err(|reason| StoreError::DamagedMetadata {
                    what: "storage format".into(),
                    reason,
                })?;
            if !(1..=STORAGE_FORMAT).contains(&found) {
                return Err(StoreError::UnsupportedFormat {
                    path: path.to_path_buf(),
                    found,
                    supported: STORAGE_FORMAT,
                });
            }
            Ok(found)
        }
        None if db.is_empty() => {
            db.insert(keys::FORMAT_KEY, codec::encode_format(STORAGE_FORMAT))?;
            Ok(STORAGE_FORMAT)
        }
        None => Err(StoreError::DamagedMetadata {
            what: "storage format".into(),
            reason: format!(
                "{} holds data but no format marker: not a tidings store",
                path.display()
            ),
        }),
    }
}

/// Logs what opening the event log found: a torn tail cut, damage before acknowledged records.
fn report_recovery(recovery: &super::log::Recovery, path: &Path) {
    if recovery.cut_bytes > 0 {
        warn!(
            path = %path.display(),
            bytes = recovery.cut_bytes,
            records = recovery.cut_records,
            from_position = ?recovery.cut_from_position,
            "cut the torn tail of the event log (a commit group that was never acknowledged)"
        );
    }
    for damage in &recovery.damaged {
        warn!(
            path = %path.display(),
            first_position = damage.first_position,
            resumes_position = damage.resumes_position,
            "the event log is damaged before acknowledged records: reads of these positions \
             fail with Damaged; restore the store from a backup"
        );
    }
}

#[async_trait]
impl EventStore for SledEventStore {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult> {
        // The span exists for every append, refused ones included, and records how it ended.
        let span = spans::append("sled", stream, events.len());
        let started = Instant::now();
        let answered = async {
            validate_append(stream, &events)?;
            let (reply, rx) = oneshot::channel();
            self.send(Request::Append {
                stream: stream.to_owned(),
                expected,
                events,
                reply,
            })?;
            rx.await.map_err(|_| StoreError::Closed)
        }
        .instrument(span.clone())
        .await;
        let result = match answered {
            // The metrics count the writer's answers, as before.
            Ok(result) => {
                self.inner
                    .shared
                    .metrics
                    .appended(started.elapsed(), &result);
                result
            }
            Err(refused) => Err(refused),
        };
        spans::appended(&span, &result);
        result
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>> {
        let span = spans::read_stream("sled", stream, from_version);
        let stream = stream.to_owned();
        let events = self
            .blocking(move |s| s.read_stream(&stream, from_version, max_count))
            .instrument(span.clone())
            .await?;
        spans::returned(&span, events.len());
        self.inner.shared.metrics.stream_read(events.len());
        Ok(events)
    }

    async fn stream_version(&self, stream: &str) -> Result<u64> {
        let stream = stream.to_owned();
        self.blocking(move |s| {
            let head = s.durable_head.load(Ordering::Acquire);
            s.last_index_entry(&stream, head)
        })
        .await
    }

    async fn read_all(
        &self,
        from_position: u64,
        max_count: usize,
        filter: &Filter,
    ) -> Result<ReadBatch> {
        let span = spans::read_all("sled", from_position);
        let filter = filter.clone();
        let page = self
            .blocking(move |s| s.read_all(from_position, max_count, &filter))
            .instrument(span.clone())
            .await?;
        spans::returned(&span, page.events.len());
        self.inner.shared.metrics.read_all_page();
        Ok(page)
    }

    fn head(&self) -> u64 {
        self.inner.shared.durable_head.load(Ordering::Acquire)
    }

    fn watch_head(&self) -> HeadWatch {
        let mut rx = self.inner.shared.head_rx.clone();
        rx.mark_unchanged();
        HeadWatch::new(rx)
    }

    async fn save_checkpoint(&self, name: &str, position: u64) -> Result<()> {
        validate_name("consumer name", name)?;
        let (reply, rx) = oneshot::channel();
        self.send(Request::Checkpoint {
            name: name.to_owned(),
            position,
            reply,
        })?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn load_checkpoint(&self, name: &str) -> Result<Option<u64>> {
        let name = name.to_owned();
        self.blocking(move |s| s.load_checkpoint(&name)).await
    }

    async fn commit_checkpoint(
        &self,
        name: &str,
        expected: Option<u64>,
        position: u64,
        state: Vec<StateWrite>,
    ) -> Result<()> {
        validate_commit(name, &state)?;
        let (reply, rx) = oneshot::channel();
        self.send(Request::Commit {
            name: name.to_owned(),
            expected,
            position,
            state,
            reply,
        })?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn load_state(&self, name: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let (name, key) = (name.to_owned(), key.to_vec());
        self.blocking(move |s| s.load_state(&name, &key)).await
    }

    async fn scan_state(
        &self,
        name: &str,
        prefix: &[u8],
        from_key: &[u8],
        max_count: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let (name, prefix, from) = (name.to_owned(), prefix.to_vec(), from_key.to_vec());
        self.blocking(move |s| s.scan_state(&name, &prefix, &from, max_count))
            .await
    }

    async fn save_snapshot(&self, stream: &str, snapshot: Snapshot) -> Result<()> {
        validate_name("stream id", stream)?;
        super::validate_snapshot(&snapshot)?;
        let (reply, rx) = oneshot::channel();
        self.send(Request::Snapshot {
            stream: stream.to_owned(),
            snapshot,
            reply,
        })?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn load_snapshot(&self, stream: &str) -> Result<Option<Snapshot>> {
        let stream = stream.to_owned();
        self.blocking(move |s| s.load_snapshot(&stream)).await
    }

    async fn verify(&self) -> Result<VerifyReport> {
        self.blocking(|s| s.verify()).await
    }

    async fn list_streams(&self, after: Option<&str>, limit: usize) -> Result<Vec<StreamInfo>> {
        let after = after.map(str::to_owned);
        self.blocking(move |s| s.list_streams(after.as_deref(), limit))
            .await
    }

    async fn list_checkpoints(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<CheckpointInfo>> {
        let after = after.map(str::to_owned);
        self.blocking(move |s| s.list_checkpoints(after.as_deref(), limit))
            .await
    }

    async fn import(&self, events: Vec<RecordedEvent>) -> Result<u64> {
        validate_import(&events)?;
        let (reply, rx) = oneshot::channel();
        self.send(Request::Import { events, reply })?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

impl std::fmt::Debug for SledEventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledEventStore")
            .field("path", &self.inner.shared.path)
            .field("head", &self.head())
            .finish()
    }
}

#[cfg(test)]
mod index_tests;
#[cfg(test)]
mod tests;
