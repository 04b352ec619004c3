//! The stream index of format 3: runs of each stream's events (stream, first version → where
//! they are in the log), in tidings' own files (decision 59).
//!
//! New runs go to a table in memory (a `BTreeMap`), inserted by the writer after the log synced
//! them and before the append is answered; once it holds `SledConfig::index_table_runs` runs
//! (default [`FLUSH_RUNS`]) it is written to a table file (`table.rs`) under `<store>/index/`.
//! Tables cover consecutive ranges of positions from 1; a thread merges adjacent tables of
//! similar size in the background, so a store holds about log2(runs / that setting) of them. Memory is the table in memory (bounded by
//! `SledConfig::index_table_runs`), plus for each table file at most 32 Ki block keys and 64 Ki
//! group starts (`table.rs`), whatever the size of the log.
//!
//! The index is derived from the log: what the table files cover is synced in the log before
//! they are written, and after a crash the index catches up from the end of the last table
//! (`index.rs`). A table that is damaged or cut short is removed at open, with every table
//! after it, and rebuilt from the log.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;

use tracing::{debug, error, warn};

use super::keys;
use super::table::{self, GroupStart, Table, TableWriter};
use crate::store::codec::{IndexMark, RunEntry};
use crate::store::{Result, StoreError};

/// The table in memory is written to a file once it holds this many runs.
pub(super) const FLUSH_RUNS: usize = 64 * 1024;
/// ... or this many bytes of keys.
const FLUSH_KEY_BYTES: usize = 8 << 20;
/// Two adjacent tables are merged when the older holds at most this many times the runs of the
/// newer.
const MERGE_RATIO: u64 = 2;
/// More tables than this are merged whatever their sizes.
const MAX_TABLES: usize = 24;

/// The stream index: table files and the table in memory.
pub(crate) struct StreamIndex {
    dir: PathBuf,
    /// See [`FLUSH_RUNS`] (smaller in tests).
    flush_runs: usize,
    state: RwLock<State>,
    merger: Mutex<Option<(mpsc::Sender<()>, JoinHandle<()>)>>,
    stop: Arc<AtomicBool>,
}

#[derive(Default)]
struct State {
    /// Table files, by position, covering 1..=their last `to` without gaps.
    tables: Vec<Arc<Table>>,
    /// Runs not yet in a file, by key.
    mem: BTreeMap<Vec<u8>, RunEntry>,
    mem_key_bytes: usize,
    /// Group starts of the positions after the last table (and the frozen runs).
    mem_groups: Vec<GroupStart>,
    /// Runs being written to a file: taken out of `mem` by a flush, read like it until the file
    /// is in `tables` (so that the file is written without holding the lock).
    frozen: Option<Arc<Frozen>>,
    /// What the tables and the table in memory cover.
    mark: IndexMark,
}

/// The runs and group starts a flush is writing to a file, and what they cover.
struct Frozen {
    runs: BTreeMap<Vec<u8>, RunEntry>,
    groups: Vec<GroupStart>,
    mark: IndexMark,
}

impl State {
    /// The table in memory and the frozen one, oldest first.
    fn memories(&self) -> impl Iterator<Item = &BTreeMap<Vec<u8>, RunEntry>> {
        self.frozen.iter().map(|f| &f.runs).chain([&self.mem])
    }

    fn table_mark(&self) -> IndexMark {
        self.tables.last().map_or(IndexMark::default(), |t| t.mark)
    }
}

impl StreamIndex {
    /// Opens the index in `dir` (created if missing): chooses the tables that cover positions
    /// from 1 without a gap, and removes the rest (inputs of a merge that ended, files being
    /// written, a damaged table and those after it).
    #[cfg(test)]
    pub(crate) fn open(dir: PathBuf) -> Result<Arc<StreamIndex>> {
        Self::open_with(dir, FLUSH_RUNS, true)
    }

    /// [`open`](Self::open), writing a table file for each `flush_runs` runs, and merging
    /// tables in the background if `merge`.
    pub(crate) fn open_with(
        dir: PathBuf,
        flush_runs: usize,
        merge: bool,
    ) -> Result<Arc<StreamIndex>> {
        use std::os::unix::fs::DirBuilderExt;
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(StoreError::BadPath {
                    path: dir,
                    reason: "the store's index directory is not a directory (a file or a \
                             symbolic link is in its place)"
                        .into(),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&dir)
                    .map_err(StoreError::Io)?;
                table::sync_dir(dir.parent().unwrap_or(&dir))?;
            }
            Err(e) => return Err(StoreError::Io(e)),
        }
        let mut found: Vec<(u64, u64, PathBuf)> = Vec::new();
        let mut removed = false;
        for entry in std::fs::read_dir(&dir).map_err(StoreError::Io)? {
            let entry = entry.map_err(StoreError::Io)?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(table::TEMP_SUFFIX) {
                std::fs::remove_file(entry.path()).map_err(StoreError::Io)?;
                removed = true;
            } else if let Some((from, to)) = table::parse_name(&name) {
                if entry.file_type().map_err(StoreError::Io)?.is_symlink() {
                    return Err(StoreError::BadPath {
                        path: entry.path(),
                        reason: "a stream index file that is a symbolic link: the store never \
                                 follows a link out of its directory; delete the link (the \
                                 index is rebuilt from the event log)"
                            .into(),
                    });
                }
                found.push((from, to, entry.path()));
            }
        }
        // By first position, the widest first: a merge's output before its inputs.
        found.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        let mut tables: Vec<Arc<Table>> = Vec::new();
        let mut next = 1u64;
        let mut broken = false;
        for (from, to, path) in found {
            if !broken && from == next {
                match Table::open(&path) {
                    Ok(t) => {
                        next = to + 1;
                        tables.push(Arc::new(t));
                        continue;
                    }
                    Err(e @ StoreError::DamagedMetadata { .. }) => {
                        warn!(file = %path.display(), error = %e, "a stream index file is damaged: it is removed, with the files after it, and rebuilt from the event log");
                        broken = true;
                    }
                    // Anything else (no permission, too many open files, an I/O error) is not
                    // the file's fault: the open fails and nothing is removed.
                    Err(e) => return Err(e),
                }
            } else if !broken && to < next {
                debug!(file = %path.display(), "removing a stream index file that a merge replaced");
            } else if !broken {
                warn!(file = %path.display(), "removing a stream index file after a gap in the index; it is rebuilt from the event log");
                broken = true;
            }
            std::fs::remove_file(&path).map_err(StoreError::Io)?;
            removed = true;
        }
        if removed {
            table::sync_dir(&dir)?;
        }
        let mark = tables.last().map_or(IndexMark::default(), |t| t.mark);
        let index = Arc::new(StreamIndex {
            dir,
            flush_runs: flush_runs.max(1),
            state: RwLock::new(State {
                tables,
                mark,
                ..State::default()
            }),
            merger: Mutex::new(None),
            stop: Arc::new(AtomicBool::new(false)),
        });
        if !merge {
            return Ok(index);
        }
        let weak = Arc::downgrade(&index);
        let (tx, rx) = mpsc::channel::<()>();
        let stop = index.stop.clone();
        let handle = std::thread::Builder::new()
            .name("tidings-index".into())
            .spawn(move || {
                while rx.recv().is_ok() {
                    let Some(index) = weak.upgrade() else { break };
                    if let Err(e) = index.merge_due(&stop) {
                        error!(error = %e, "merging stream index files failed; the index stays as it is (reads are not affected)");
                    }
                }
            })
            .map_err(StoreError::Io)?;
        *index.merger.lock().unwrap_or_else(|p| p.into_inner()) = Some((tx, handle));
        index.wake_merger();
        Ok(index)
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// What the index covers: the last position indexed, where the next record begins in the
    /// log, and the last record's timestamp.
    pub(crate) fn mark(&self) -> IndexMark {
        self.read().mark
    }

    /// Adds the runs and group starts of records the log synced, up to `mark`.
    pub(crate) fn insert(
        &self,
        runs: impl IntoIterator<Item = (Vec<u8>, RunEntry)>,
        groups: impl IntoIterator<Item = GroupStart>,
        mark: IndexMark,
    ) {
        let mut s = self.write();
        for (key, run) in runs {
            s.mem_key_bytes += key.len();
            s.mem.insert(key, run);
        }
        s.mem_groups.extend(groups);
        s.mark = mark;
    }

    /// Whether the table in memory is due to be written to a file.
    pub(crate) fn flush_due(&self) -> bool {
        let s = self.read();
        s.mem.len() >= self.flush_runs || s.mem_key_bytes >= FLUSH_KEY_BYTES
    }

    /// Writes the table in memory to a file (synced), then drops it from memory. Called by the
    /// one thread that inserts.
    pub(crate) fn flush(&self) -> Result<()> {
        // The runs are frozen under the lock (a move), written without it, and the file put in
        // their place under it again: readers and a merge never wait for the file's I/O. (A
        // frozen table left by a flush that failed is written first.)
        let (frozen, from) = {
            let mut s = self.write();
            if s.frozen.is_none() {
                if s.mem.is_empty() && s.mark.position == s.table_mark().position {
                    return Ok(());
                }
                let frozen = Frozen {
                    runs: std::mem::take(&mut s.mem),
                    groups: std::mem::take(&mut s.mem_groups),
                    mark: s.mark,
                };
                s.mem_key_bytes = 0;
                s.frozen = Some(Arc::new(frozen));
            }
            let frozen = Arc::clone(s.frozen.as_ref().expect("set above"));
            (frozen, s.table_mark().position + 1)
        };
        let mut w = TableWriter::new(&self.dir, from)?;
        for (key, run) in &frozen.runs {
            w.push(key, run)?;
        }
        let table = w.finish(from, frozen.mark, frozen.groups.clone())?;
        let mut s = self.write();
        s.tables.push(Arc::new(table));
        s.frozen = None;
        drop(s);
        self.wake_merger();
        Ok(())
    }

    fn wake_merger(&self) {
        if let Some((tx, _)) = &*self.merger.lock().unwrap_or_else(|p| p.into_inner()) {
            let _ = tx.send(());
        }
    }

    /// Stops the merging thread (a merge under way is given up, its file removed).
    pub(crate) fn close(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let merger = self.merger.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((tx, handle)) = merger {
            drop(tx);
            if handle.thread().id() != std::thread::current().id() {
                let _ = handle.join();
            }
        }
    }

    /// Merges adjacent tables while a pair is due (see [`MERGE_RATIO`]).
    fn merge_due(&self, stop: &AtomicBool) -> Result<()> {
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let pair = {
                let s = self.read();
                let t = &s.tables;
                let due = (1..t.len()).rev().find(|&i| {
                    t[i - 1].entries <= MERGE_RATIO * t[i].entries || t.len() > MAX_TABLES
                });
                due.map(|i| (t[i - 1].clone(), t[i].clone()))
            };
            let Some((a, b)) = pair else {
                return Ok(());
            };
            let Some(merged) = table::merge(&self.dir, &a, &b, stop)? else {
                return Ok(());
            };
            let merged = Arc::new(merged);
            {
                let mut s = self.write();
                let at = s.tables.iter().position(|t| Arc::ptr_eq(t, &a));
                match at {
                    Some(i) if s.tables.get(i + 1).is_some_and(|t| Arc::ptr_eq(t, &b)) => {
                        s.tables.splice(i..i + 2, [merged]);
                    }
                    _ => {
                        // (Cannot happen: only this thread replaces tables.)
                        let _ = std::fs::remove_file(merged.path());
                        return Ok(());
                    }
                }
            }
            for t in [&a, &b] {
                std::fs::remove_file(t.path()).map_err(StoreError::Io)?;
            }
            table::sync_dir(&self.dir)?;
        }
    }

    /// The tables and what the table in memory holds for `stream` from `from_version`, taken
    /// together (so that a flush in between neither hides nor repeats a run).
    fn stream_view(
        &self,
        stream: &str,
        from_version: u64,
    ) -> (Vec<Arc<Table>>, Vec<(u64, RunEntry)>) {
        let s = self.read();
        let prefix = keys::run_prefix(stream);
        let mut mem = Vec::new();
        for runs in s.memories() {
            for (key, run) in runs.range(prefix.clone()..) {
                if !key.starts_with(&prefix) {
                    break;
                }
                let version = version_of(key, prefix.len());
                if version + u64::from(run.count) > from_version {
                    mem.push((version, *run));
                }
            }
        }
        (s.tables.clone(), mem)
    }

    /// Calls `each` with the runs of `stream` (first version, run) holding versions from
    /// `from_version` on, in version order, while it returns true.
    pub(crate) fn runs(
        &self,
        stream: &str,
        from_version: u64,
        mut each: impl FnMut(u64, RunEntry) -> Result<bool>,
    ) -> Result<()> {
        let (tables, mem) = self.stream_view(stream, from_version);
        let prefix = keys::run_prefix(stream);
        let start = keys::run_key(stream, from_version);
        let mut buf = Vec::new();
        for t in &tables {
            // The run holding `from_version` begins at or before its key, in the span where
            // that key would be or a later one (every key between the run's and `start` is the
            // stream's, so none of them can begin a later span).
            let mut go_on = true;
            t.scan(Some(&start), true, &mut buf, |key, run| {
                if key < &prefix[..] {
                    return Ok(true);
                }
                if !key.starts_with(&prefix) {
                    return Ok(false);
                }
                let version = version_of(key, prefix.len());
                if version + u64::from(run.count) <= from_version {
                    return Ok(true);
                }
                go_on = each(version, run)?;
                Ok(go_on)
            })?;
            if !go_on {
                return Ok(());
            }
        }
        for (version, run) in mem {
            if !each(version, run)? {
                break;
            }
        }
        Ok(())
    }

    /// The last run of `stream` whose first event is at or below `head`: (first version, run).
    pub(crate) fn last(&self, stream: &str, head: u64) -> Result<Option<(u64, RunEntry)>> {
        let prefix = keys::run_prefix(stream);
        let tables = {
            let s = self.read();
            // Newest first: the table in memory, then the frozen one.
            let memories: Vec<_> = s.memories().collect();
            for runs in memories.into_iter().rev() {
                let found = runs
                    .range(prefix.clone()..=keys::run_key(stream, u64::MAX))
                    .rev()
                    .find(|(_, run)| run.first_position <= head);
                if let Some((key, run)) = found {
                    return Ok(Some((version_of(key, prefix.len()), *run)));
                }
            }
            s.tables.clone()
        };
        let mut buf = Vec::new();
        for t in tables.iter().rev() {
            // (Files hold only what the log synced, so a run above `head` is found only by a
            // caller whose head is older than the file: then the runs before it.)
            let mut key = keys::run_key(stream, u64::MAX);
            while let Some((k, run)) = t.last_at_or_before(&key, &mut buf)? {
                if !k.starts_with(&prefix) {
                    break;
                }
                let version = version_of(&k, prefix.len());
                if run.first_position <= head {
                    return Ok(Some((version, run)));
                }
                match version.checked_sub(1) {
                    Some(v) if v > 0 => key = keys::run_key(stream, v),
                    _ => break,
                }
            }
        }
        Ok(None)
    }

    /// The first stream (in key order) after `after` (from the first when `None`).
    pub(crate) fn next_stream(&self, after: Option<&str>) -> Result<Option<String>> {
        let seek = after.map_or(vec![keys::RUNS], |s| keys::run_key(s, u64::MAX));
        let (tables, mut best) = {
            let s = self.read();
            let mem = s
                .memories()
                .filter_map(|runs| {
                    runs.range::<Vec<u8>, _>((Bound::Excluded(&seek), Bound::Unbounded))
                        .next()
                        .map(|(k, _)| k.clone())
                })
                .min();
            (s.tables.clone(), mem)
        };
        let mut buf = Vec::new();
        for t in &tables {
            let mut first = None;
            t.scan(Some(&seek), false, &mut buf, |key, _| {
                if key > &seek[..] {
                    first = Some(key.to_vec());
                    return Ok(false);
                }
                Ok(true)
            })?;
            if let Some(k) = first {
                if best.as_ref().is_none_or(|b| &k < b) {
                    best = Some(k);
                }
            }
        }
        match best {
            None => Ok(None),
            Some(key) => match keys::parse_run_key(&key) {
                Some((stream, _)) => Ok(Some(stream.to_owned())),
                None => Err(StoreError::DamagedMetadata {
                    what: "the stream index".into(),
                    reason: format!("malformed key {key:?}"),
                }),
            },
        }
    }

    /// The group start at or before `position`.
    pub(crate) fn group_start(&self, position: u64) -> Option<GroupStart> {
        let s = self.read();
        let before = |g: &[GroupStart]| {
            let i = g.partition_point(|g| g.position <= position);
            i.checked_sub(1).map(|i| g[i])
        };
        if let Some(g) = before(&s.mem_groups) {
            return Some(g);
        }
        if let Some(g) = s.frozen.as_ref().and_then(|f| before(&f.groups)) {
            return Some(g);
        }
        s.tables.iter().rev().find_map(|t| {
            if t.from > position {
                None
            } else {
                before(&t.groups)
            }
        })
    }

    /// The first group start after `position` that the index keeps in memory.
    pub(crate) fn group_start_after(&self, position: u64) -> Option<GroupStart> {
        let s = self.read();
        let after = |g: &[GroupStart]| {
            let i = g.partition_point(|g| g.position <= position);
            g.get(i).copied()
        };
        s.tables
            .iter()
            .filter(|t| t.to > position)
            .find_map(|t| after(&t.groups))
            .or_else(|| s.frozen.as_ref().and_then(|f| after(&f.groups)))
            .or_else(|| after(&s.mem_groups))
    }

    /// Calls `each` with every run (key, run) in key order, tables and memory merged.
    pub(crate) fn for_each(&self, mut each: impl FnMut(&[u8], RunEntry)) -> Result<()> {
        let (tables, mem) = {
            let s = self.read();
            let mut mem: Vec<(Vec<u8>, RunEntry)> = s
                .memories()
                .flat_map(|runs| runs.iter().map(|(k, r)| (k.clone(), *r)))
                .collect();
            mem.sort_by(|a, b| a.0.cmp(&b.0));
            (s.tables.clone(), mem)
        };
        let mut cursors: Vec<table::Cursor> = tables.into_iter().map(table::Cursor::new).collect();
        let mut heads: Vec<Option<(Vec<u8>, RunEntry)>> = Vec::with_capacity(cursors.len() + 1);
        for c in &mut cursors {
            heads.push(c.next()?);
        }
        let mut mem = mem.into_iter();
        heads.push(mem.next());
        loop {
            let mut min: Option<usize> = None;
            for (i, h) in heads.iter().enumerate() {
                if let Some((k, _)) = h {
                    if min.is_none_or(|m| heads[m].as_ref().is_some_and(|(mk, _)| k < mk)) {
                        min = Some(i);
                    }
                }
            }
            let Some(i) = min else { return Ok(()) };
            let (key, run) = heads[i].take().expect("chosen");
            each(&key, run);
            heads[i] = if i < cursors.len() {
                cursors[i].next()?
            } else {
                mem.next()
            };
        }
    }

    /// Whether a flush is writing a file now (its runs frozen).
    #[cfg(test)]
    pub(crate) fn flushing(&self) -> bool {
        self.read().frozen.is_some()
    }

    /// How many table files the index has, and how many runs are in memory.
    #[cfg(test)]
    pub(crate) fn shape(&self) -> (usize, usize) {
        let s = self.read();
        (s.tables.len(), s.memories().map(BTreeMap::len).sum())
    }
}

/// Stops an index's merging thread when dropped, unless disarmed: held by an open of the store
/// that may still fail, so that no merge goes on after the store's lock is released.
pub(crate) struct CloseGuard(Option<Arc<StreamIndex>>);

impl CloseGuard {
    pub(crate) fn new(index: &Arc<StreamIndex>) -> Self {
        CloseGuard(Some(Arc::clone(index)))
    }

    /// The open succeeded: the index stays open.
    pub(crate) fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CloseGuard {
    fn drop(&mut self) {
        if let Some(index) = self.0.take() {
            index.close();
        }
    }
}

impl Drop for StreamIndex {
    fn drop(&mut self) {
        self.close();
    }
}

/// The version at the end of a run key whose stream prefix is `prefix_len` bytes.
fn version_of(key: &[u8], prefix_len: usize) -> u64 {
    key.get(prefix_len..prefix_len + 8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}
