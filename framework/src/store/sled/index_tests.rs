//! Tests of the stream index's files and its table in memory (`stream_index.rs`, `table.rs`)
//! against a model: every query after flushes, merges, reopens, and the leftovers of a crash.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::keys;
use super::stream_index::StreamIndex;
use super::table::{self, GroupStart, Table};
use crate::store::codec::{IndexMark, RunEntry};
use crate::store::StoreError;

/// The streams: ids of several lengths, some the prefix of another.
const STREAMS: [&str; 7] = ["a", "ab", "a-b", "b", "order-1", "order-10", "payment-7"];

/// A model of what the index holds, built with it.
#[derive(Default)]
struct Model {
    /// stream → (first version → run)
    runs: BTreeMap<String, BTreeMap<u64, RunEntry>>,
    groups: Vec<GroupStart>,
    position: u64,
}

impl Model {
    /// Appends runs to `index` and the model: `appends` appends of 1..=3 events, round robin
    /// over the streams with a stride, in groups of `per_group`.
    fn append(&mut self, index: &StreamIndex, appends: u64, per_group: u64) {
        let mut n = 0;
        while n < appends {
            let mut runs = Vec::new();
            let mut groups = Vec::new();
            for _ in 0..per_group.min(appends - n) {
                let stream = STREAMS[(n * 5 % STREAMS.len() as u64) as usize];
                let count = (n % 3 + 1) as u32;
                let versions = self.runs.entry(stream.to_owned()).or_default();
                let version = versions
                    .last_key_value()
                    .map_or(1, |(v, r)| v + u64::from(r.count));
                let run = RunEntry {
                    first_position: self.position + 1,
                    count,
                    segment: 1 + self.position / 1000,
                    offset: (self.position * 40) as u32,
                    bytes: count * 40,
                };
                for p in self.position + 1..=self.position + u64::from(count) {
                    if p == 1 || p % 256 == 0 {
                        groups.push(GroupStart {
                            position: p,
                            segment: 7,
                            offset: p as u32,
                        });
                    }
                }
                self.position += u64::from(count);
                versions.insert(version, run);
                runs.push((keys::run_key(stream, version), run));
                n += 1;
            }
            self.groups.extend(&groups);
            index.insert(runs, groups, self.mark());
            if index.flush_due() {
                index.flush().unwrap();
            }
        }
    }

    fn mark(&self) -> IndexMark {
        if self.position == 0 {
            return IndexMark::default();
        }
        IndexMark {
            position: self.position,
            segment: 9,
            offset: self.position * 40,
            timestamp_micros: self.position * 1000,
        }
    }

    /// Checks every query of `index` against the model.
    fn check(&self, index: &StreamIndex) {
        assert_eq!(index.mark(), self.mark());
        for (stream, runs) in &self.runs {
            let last_version = runs
                .last_key_value()
                .map_or(0, |(v, r)| v + u64::from(r.count) - 1);
            for from in [1, 2, 3, last_version / 2, last_version, last_version + 1] {
                let mut got = Vec::new();
                index
                    .runs(stream, from, |v, r| {
                        got.push((v, r));
                        Ok(true)
                    })
                    .unwrap();
                let expected: Vec<(u64, RunEntry)> = runs
                    .iter()
                    .filter(|(v, r)| *v + u64::from(r.count) > from)
                    .map(|(v, r)| (*v, *r))
                    .collect();
                assert_eq!(got, expected, "{stream} from {from}");
                // A caller that stops early gets no more.
                let mut calls = 0;
                index
                    .runs(stream, from, |_, _| {
                        calls += 1;
                        Ok(false)
                    })
                    .unwrap();
                assert_eq!(calls, expected.len().min(1));
            }
            let last = index.last(stream, u64::MAX).unwrap();
            assert_eq!(
                last,
                runs.last_key_value().map(|(v, r)| (*v, *r)),
                "{stream}"
            );
            // Capped at a head before its last run: the run before.
            let (_, last_run) = runs.last_key_value().unwrap();
            let capped = index.last(stream, last_run.first_position - 1).unwrap();
            assert_eq!(
                capped,
                runs.iter().rev().nth(1).map(|(v, r)| (*v, *r)),
                "{stream} capped"
            );
        }
        assert_eq!(index.last("nobody", u64::MAX).unwrap(), None);
        // Streams in key order: shorter ids first.
        let mut expected: Vec<&str> = self.runs.keys().map(String::as_str).collect();
        expected.sort_by_key(|s| keys::run_prefix(s));
        let mut got = Vec::new();
        let mut after = None;
        while let Some(stream) = index.next_stream(after.as_deref()).unwrap() {
            got.push(stream.clone());
            after = Some(stream);
        }
        assert_eq!(got, expected);
        // Every run, in key order.
        let mut all = Vec::new();
        index.for_each(|k, r| all.push((k.to_vec(), r))).unwrap();
        let mut model_all: Vec<(Vec<u8>, RunEntry)> = self
            .runs
            .iter()
            .flat_map(|(s, runs)| runs.iter().map(move |(v, r)| (keys::run_key(s, *v), *r)))
            .collect();
        model_all.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(all, model_all);
        // Group starts.
        // (Large tables keep every n-th group start in memory: any group start at or before
        // the position is a right answer, and there is always one from position 1.)
        for p in [1, 2, 255, 256, 257, 511, 512, 4000, self.position] {
            match index.group_start(p) {
                Some(g) => assert!(
                    g.position <= p && self.groups.contains(&g),
                    "group start {g:?} for {p}"
                ),
                None => assert!(
                    self.groups.iter().all(|g| g.position > p),
                    "no group start at or before {p}"
                ),
            }
            if let Some(g) = index.group_start_after(p) {
                assert!(
                    g.position > p && self.groups.contains(&g),
                    "{g:?} after {p}"
                );
            }
        }
    }
}

/// Waits (bounded) until the merging thread leaves at most `tables` table files.
fn wait_for_merges(index: &StreamIndex, tables: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (now, _) = index.shape();
        if now <= tables || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Opens the index at `path` with neither automatic flushes nor merges: files are written
/// only where a test flushes.
fn open_unmerged(path: &Path) -> Arc<StreamIndex> {
    StreamIndex::open_with(path.to_path_buf(), 1_000_000, false).unwrap()
}

/// Writes one table file for each of `batches` (appends, appends per group) to a new index
/// at `path`, closes it, and returns each file's mark.
fn write_tables(path: &Path, model: &mut Model, batches: &[(u64, u64)]) -> Vec<IndexMark> {
    let index = open_unmerged(path);
    let marks = batches
        .iter()
        .map(|&(appends, per_group)| {
            model.append(&index, appends, per_group);
            index.flush().unwrap();
            index.mark()
        })
        .collect();
    index.close();
    marks
}

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn the_index_answers_like_its_model_across_flushes_merges_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index");
    let mut model = Model::default();
    {
        let index = StreamIndex::open_with(path.clone(), 100, true).unwrap();
        model.check(&index);
        model.append(&index, 50, 7);
        // Nothing written yet: all in memory.
        assert_eq!(index.shape().0, 0);
        model.check(&index);
        model.append(&index, 2_000, 13);
        model.check(&index);
        // 20 flushes of ~100 runs; merged down to a handful (log2 of 20, and one more).
        let tables = wait_for_merges(&index, 6);
        assert!(tables <= 6, "{tables} tables left after merges");
        model.check(&index);
        index.flush().unwrap();
        index.close();
    }
    // Reopened: the same answers, from the files alone.
    let index = StreamIndex::open_with(path.clone(), 100, true).unwrap();
    assert_eq!(index.shape().1, 0);
    model.check(&index);
    model.append(&index, 300, 1);
    model.check(&index);
    assert!(
        files(&path).iter().all(|n| n.ends_with(".idx")),
        "{:?}",
        files(&path)
    );
}

#[test]
fn a_merge_interrupted_before_it_removed_its_inputs_leaves_the_merged_table_chosen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index");
    let mut model = Model::default();
    write_tables(&path, &mut model, &[(40, 5), (40, 5)]);
    // Merged, but the process died before it removed the inputs.
    let names = files(&path);
    assert_eq!(names.len(), 2);
    let tables: Vec<Arc<Table>> = names
        .iter()
        .map(|n| Arc::new(Table::open(&path.join(n)).unwrap()))
        .collect();
    let merged = table::merge(&path, &tables[0], &tables[1], &AtomicBool::new(false))
        .unwrap()
        .unwrap();
    assert_eq!((merged.from, merged.to), (tables[0].from, tables[1].to));
    assert_eq!(merged.entries, tables[0].entries + tables[1].entries);
    // Every group start of both is in the merged file (memory keeps only some of them).
    let mut groups = tables[0].read_groups().unwrap();
    groups.extend(tables[1].read_groups().unwrap());
    assert_eq!(merged.read_groups().unwrap(), groups);
    assert_eq!(groups, model.groups);
    // And a table being written when the process died.
    std::fs::write(path.join(format!("{:020}.idx.tmp", 5)), b"half a table").unwrap();
    assert_eq!(files(&path).len(), 4);
    let index = open_unmerged(&path);
    assert_eq!(index.shape().0, 1);
    assert_eq!(files(&path).len(), 1, "{:?}", files(&path));
    model.check(&index);
}

#[test]
fn a_damaged_table_is_removed_with_the_tables_after_it_and_the_index_covers_less() {
    for (what, damage) in [
        (
            "cut short",
            (|b: &mut Vec<u8>| b.truncate(b.len() - 3)) as fn(&mut Vec<u8>),
        ),
        ("trailer flipped", |b: &mut Vec<u8>| {
            let n = b.len();
            b[n - 20] ^= 1
        }),
        ("footer flipped", |b: &mut Vec<u8>| {
            let n = b.len();
            b[n - 90] ^= 0x10
        }),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index");
        let mut model = Model::default();
        let marks = write_tables(&path, &mut model, &[(30, 3); 3]);
        let names = files(&path);
        assert_eq!(names.len(), 3);
        // The middle table: it and the one after it go, the first stays.
        let victim = path.join(&names[1]);
        let mut bytes = std::fs::read(&victim).unwrap();
        damage(&mut bytes);
        std::fs::write(&victim, bytes).unwrap();
        let index = open_unmerged(&path);
        assert_eq!(
            index.mark(),
            marks[0],
            "{what}: the index covers the first table"
        );
        assert_eq!(files(&path), names[..1], "{what}");
    }
}

#[test]
fn a_damaged_block_is_a_typed_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index");
    let mut model = Model::default();
    write_tables(&path, &mut model, &[(200, 10)]);
    let name = files(&path).pop().unwrap();
    let mut bytes = std::fs::read(path.join(&name)).unwrap();
    bytes[8 + 8 + 40] ^= 0x04;
    std::fs::write(path.join(&name), bytes).unwrap();
    let index = open_unmerged(&path);
    let mut failures = 0;
    for stream in STREAMS {
        match index.runs(stream, 1, |_, _| Ok(true)) {
            Ok(()) => {}
            Err(StoreError::DamagedMetadata { what, reason }) => {
                assert!(what.contains(&name), "{what}");
                assert!(reason.contains("does not check"), "{reason}");
                failures += 1;
            }
            Err(other) => panic!("expected DamagedMetadata, got {other:?}"),
        }
    }
    assert!(failures > 0);
    assert!(matches!(
        index.for_each(|_, _| {}),
        Err(StoreError::DamagedMetadata { .. })
    ));
}

#[test]
fn an_error_opening_a_table_that_is_not_damage_fails_the_open_and_removes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index");
    let mut model = Model::default();
    write_tables(&path, &mut model, &[(30, 3)]);
    let before = files(&path);
    // Something that cannot be read as a file where the next table would be (EISDIR).
    let next = model.position + 1;
    std::fs::create_dir(path.join(table::file_name(next, next + 10))).unwrap();
    match StreamIndex::open_with(path.clone(), 1_000_000, false) {
        Err(StoreError::Io(_)) => {}
        Err(other) => panic!("expected an I/O error, got {other:?}"),
        Ok(_) => panic!("expected an I/O error, the index opened"),
    }
    let mut after = files(&path);
    after.retain(|n| !n.starts_with(&format!("{next:020}")));
    assert_eq!(after, before, "a table was removed");
}

#[test]
fn a_table_that_is_not_finished_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let run = RunEntry {
        first_position: 1,
        count: 1,
        segment: 1,
        offset: 64,
        bytes: 100,
    };
    {
        let mut w = table::TableWriter::new(dir.path(), 1).unwrap();
        w.push(&keys::run_key("a", 1), &run).unwrap();
        // A key out of order is refused (a damaged input of a merge), and the file goes.
        assert!(matches!(
            w.push(&keys::run_key("a", 1), &run),
            Err(StoreError::DamagedMetadata { .. })
        ));
        assert_eq!(files(dir.path()).len(), 1);
    }
    assert!(files(dir.path()).is_empty(), "{:?}", files(dir.path()));
}

/// Readers never see a run twice or miss one while the writer flushes tables and the merging
/// thread replaces them.
#[test]
fn reads_during_flushes_and_merges_see_every_run_once() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let index = StreamIndex::open_with(dir.path().join("index"), 40, true).unwrap();
    // The writer appends to "a" and "b" in turn; `published` is the last version of "a"
    // inserted before it was raised.
    let published = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (index, published, done) = (index.clone(), published.clone(), done.clone());
        std::thread::spawn(move || {
            let mut position = 0u64;
            for version in 1..=3_000u64 {
                let mut runs = Vec::new();
                for stream in ["a", "b"] {
                    position += 1;
                    let run = RunEntry {
                        first_position: position,
                        count: 1,
                        segment: 1,
                        offset: 64,
                        bytes: 40,
                    };
                    runs.push((keys::run_key(stream, version), run));
                }
                let mark = IndexMark {
                    position,
                    segment: 1,
                    offset: 64,
                    timestamp_micros: 0,
                };
                index.insert(runs, Vec::new(), mark);
                published.store(version, Ordering::Release);
                if index.flush_due() {
                    index.flush().unwrap();
                }
            }
            done.store(true, Ordering::Release);
        })
    };
    let (mut reads, mut during_flushes) = (0u64, 0u64);
    while !done.load(Ordering::Acquire) || reads == 0 {
        let at_least = published.load(Ordering::Acquire);
        during_flushes += u64::from(index.flushing());
        let mut next = 1u64;
        index
            .runs("a", 1, |version, run| {
                assert_eq!(version, next, "a run seen twice or missed");
                next = version + u64::from(run.count);
                Ok(true)
            })
            .unwrap();
        assert!(
            next > at_least,
            "read {} versions, {at_least} were in",
            next - 1
        );
        let last = index.last("a", u64::MAX).unwrap().map_or(0, |(v, _)| v);
        assert!(last >= at_least);
        reads += 1;
    }
    writer.join().unwrap();
    // 150 tables written; the merges catch up to a handful.
    let tables = wait_for_merges(&index, 12);
    assert!(tables <= 12, "{tables} tables left after merges");
    eprintln!(
        "{reads} reads during the appends ({during_flushes} began while a flush was writing a \
         file), {tables} tables at the end"
    );
}
