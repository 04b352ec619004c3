//! Damage and recovery tests that need to reach under the store, into sled's keys.

use std::path::{Path, PathBuf};

use super::keys;
use super::stream_index::StreamIndex;
use super::table::{Table, TableWriter};
use crate::store::codec::{self, RunEntry};
use crate::store::{EventData, EventStore, ExpectedVersion, Filter, SledEventStore, StoreError};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A store with `streams` streams of `per_stream` events each, appended one event at a time and
/// round robin (one commit group each), so that the log interleaves the streams. Returns the
/// store dropped (files closed).
fn prepare(dir: &Path, streams: u64, per_stream: u64) {
    rt().block_on(async {
        let store = SledEventStore::open(dir).unwrap();
        for v in 0..per_stream {
            for s in 0..streams {
                let event = EventData::new("Tick", format!("s{s} v{}", v + 1).into_bytes());
                store
                    .append(&format!("tick-{s}"), ExpectedVersion::Exact(v), vec![event])
                    .await
                    .unwrap();
            }
        }
    });
}

/// Opens the closed store at `dir` with raw sled, as the store opens it: sled's own threads can
/// hold its lock for a moment after a store closed, which `open_sled` waits out.
fn raw(dir: &Path) -> sled::Db {
    super::open_sled(&sled::Config::new().path(dir), dir).unwrap()
}

/// The index entry of the run of `stream` that begins at `version`, in the closed store at `dir`.
fn run_of(dir: &Path, stream: &str, version: u64) -> RunEntry {
    let index = StreamIndex::open(dir.join(super::INDEX_DIR)).unwrap();
    let mut found = None;
    index
        .runs(stream, version, |first, run| {
            if first == version {
                found = Some(run);
            }
            Ok(false)
        })
        .unwrap();
    found.unwrap_or_else(|| panic!("no run of {stream} at {version}"))
}

/// The stream index's table files of the closed store at `dir`, by position.
fn index_tables(dir: &Path) -> Vec<PathBuf> {
    let mut tables: Vec<PathBuf> = std::fs::read_dir(dir.join(super::INDEX_DIR))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "idx"))
        .collect();
    tables.sort();
    tables
}

/// Rewrites the stream index of the closed store at `dir` as one table, each run passed through
/// `f` (key, run) first: a forged index whose checksums are right.
fn rewrite_index(dir: &Path, mut f: impl FnMut(&[u8], &mut RunEntry)) {
    let index_dir = dir.join(super::INDEX_DIR);
    let tables = index_tables(dir);
    let (groups, from, mark) = {
        let opened: Vec<Table> = tables.iter().map(|p| Table::open(p).unwrap()).collect();
        let groups: Vec<_> = opened.iter().flat_map(|t| t.groups.clone()).collect();
        (groups, opened[0].from, opened.last().unwrap().mark)
    };
    let mut runs = Vec::new();
    {
        let index = StreamIndex::open(index_dir.clone()).unwrap();
        index
            .for_each(|key, run| runs.push((key.to_vec(), run)))
            .unwrap();
    }
    for t in &tables {
        std::fs::remove_file(t).unwrap();
    }
    let mut w = TableWriter::new(&index_dir, from).unwrap();
    for (key, run) in &mut runs {
        f(key, run);
        w.push(key, run).unwrap();
    }
    w.finish(from, mark, groups).unwrap();
}

/// The segment file of the event log that holds `run`, and the run's byte range in it.
fn run_bytes(dir: &Path, run: &RunEntry) -> (PathBuf, std::ops::Range<usize>) {
    let file = dir
        .join(super::LOG_DIR)
        .join(crate::store::log::segment_file_name(run.segment));
    let start = run.offset as usize;
    (file, start..start + run.bytes as usize)
}

/// Changes the bytes of `file` with `f`.
fn damage_file(file: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = std::fs::read(file).unwrap();
    f(&mut bytes);
    std::fs::write(file, bytes).unwrap();
}

async fn read_everything(store: &SledEventStore) -> Result<u64, StoreError> {
    let mut from = 1;
    let mut seen = 0;
    loop {
        let page = store.read_all(from, 100, &Filter::all()).await?;
        seen += page.events.len() as u64;
        from = page.next_position;
        if page.is_end() {
            return Ok(seen);
        }
    }
}

/// Whether each event's payload begins where the one before it ends: the events were handed out
/// as slices of one page buffer, not each allocated.
fn payloads_adjacent(events: &[crate::store::RecordedEvent]) -> bool {
    events
        .windows(2)
        .all(|w| w[1].payload.as_ptr() == w[0].payload.as_ptr().wrapping_add(w[0].payload.len()))
}

#[test]
fn reads_hand_out_the_events_of_a_page_as_slices_of_one_buffer() {
    let dir = tempfile::tempdir().unwrap();
    prepare(dir.path(), 3, 4);
    rt().block_on(async {
        let store = SledEventStore::open(dir.path()).unwrap();
        let page = store.read_all(1, 100, &Filter::all()).await.unwrap();
        assert_eq!(page.events.len(), 12);
        assert!(payloads_adjacent(&page.events));
        assert_eq!(page.events[4].payload, &b"s1 v2"[..]);
        assert_eq!(page.events[4].stream_id, "tick-1");
        assert_eq!(
            page.events[4].category.as_ptr(),
            page.events[4].stream_id.as_ptr()
        );
        let filtered = store
            .read_all(1, 100, &Filter::all().categories(["tick"]))
            .await
            .unwrap();
        assert_eq!(filtered.events, page.events);
        assert!(payloads_adjacent(&filtered.events));
        let stream = store.read_stream("tick-2", 2, 100).await.unwrap();
        let payloads: Vec<_> = stream.iter().map(|e| &e.payload[..]).collect();
        assert_eq!(payloads, [&b"s2 v2"[..], b"s2 v3", b"s2 v4"]);
        assert!(payloads_adjacent(&stream));
    });
}

#[test]
fn a_flipped_byte_in_a_record_is_reported_at_its_position_and_nothing_before_it_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    prepare(dir.path(), 4, 1);
    // One group per append. Damage position 3's payload (the last byte of its record).
    let (file, range) = run_bytes(dir.path(), &run_of(dir.path(), "tick-2", 1));
    damage_file(&file, |b| b[range.end - 1] ^= 0x40);
    rt().block_on(async {
        let store = SledEventStore::open(dir.path()).unwrap();
        match store.read_all(1, 100, &Filter::all()).await {
            Err(StoreError::Damaged {
                position: 3,
                reason,
            }) => {
                assert!(reason.contains("checksum"), "{reason}")
            }
            other => panic!("expected damage at 3, got {other:?}"),
        }
        // The events before the damage still read; a read that starts after it works too.
        let before = store.read_all(1, 2, &Filter::all()).await.unwrap();
        assert_eq!(before.events.len(), 2);
        let after = store.read_all(4, 100, &Filter::all()).await.unwrap();
        assert_eq!(after.events[0].position, 4);
        // The stream that owns it reports the same damage; other streams are unaffected.
        assert!(matches!(
            store.read_stream("tick-2", 1, 10).await,
            Err(StoreError::Damaged { position: 3, .. })
        ));
        assert_eq!(store.read_stream("tick-1", 1, 10).await.unwrap().len(), 1);
        let report = store.verify().await.unwrap();
        assert!(!report.is_ok());
        assert!(
            report.problems.iter().any(|p| p.contains("position 3")),
            "{:?}",
            report.problems
        );
    });
}

/// A segment file cut short in the middle of the log (acknowledged records gone): the open is
/// refused with the position where the loss begins, not a panic, and the file is left as it was.
#[test]
fn a_segment_cut_short_in_the_middle_of_the_log_is_refused_at_open_naming_the_position() {
    let dir = tempfile::tempdir().unwrap();
    prepare(dir.path(), 2, 2);
    let (file, range) = run_bytes(dir.path(), &run_of(dir.path(), "tick-1", 1));
    let cut = range.start as u64 + 7;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(cut)
        .unwrap();
    match SledEventStore::open(dir.path()) {
        Err(StoreError::Damaged { position, reason }) => {
            assert_eq!(position, 2, "{reason}");
        }
        other => panic!("expected damage at 2, got {other:?}"),
    }
    assert_eq!(
        std::fs::metadata(&file).unwrap().len(),
        cut,
        "the file was changed"
    );
}

#[test]
fn a_damaged_record_header_and_a_damaged_index_entry_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    prepare(dir.path(), 2, 2);
    // The header of position 1's record (its position field), and the index's table (a byte
    // of its first block's entries).
    let (file, range) = run_bytes(dir.path(), &run_of(dir.path(), "tick-0", 1));
    damage_file(&file, |b| b[range.start + 9] ^= 1);
    let tables = index_tables(dir.path());
    assert_eq!(tables.len(), 1, "{tables:?}");
    damage_file(&tables[0], |b| b[8 + 8 + 3] ^= 1);
    rt().block_on(async {
        let store = SledEventStore::open(dir.path()).unwrap();
        assert!(matches!(
            store.read_all(1, 10, &Filter::all()).await,
            Err(StoreError::Damaged { position: 1, .. })
        ));
        assert!(matches!(
            store.read_stream("tick-1", 2, 10).await,
            Err(StoreError::DamagedMetadata { .. })
        ));
        let report = store.verify().await.unwrap();
        assert!(report.problems.len() >= 2, "{:?}", report.problems);
    });
}

#[test]
fn an_index_entry_pointing_at_another_streams_event_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    prepare(dir.path(), 2, 1);
    // Point tick-0's first entry at position 2, which holds tick-1.
    let tick_1 = run_of(dir.path(), "tick-1", 1);
    rewrite_index(dir.path(), |key, run| {
        if key == keys::run_key("tick-0", 1) {
            *run = tick_1;
        }
    });
    rt().block_on(async {
        let store = SledEventStore::open(dir.path()).unwrap();
        assert!(matches!(
            store.read_stream("tick-0", 1, 10).await,
            Err(StoreError::Damaged { position: 2, .. })
        ));
        assert!(!store.verify().await.unwrap().is_ok());
    });
}

/// Flips one bit of the event log's segment file, then of sled's data file, inside a stored
/// payload or anywhere written, then opens and reads everything. Whatever the checks make of it,
/// the store must not panic and must never hand out an event whose payload differs from what
/// was appended.
#[test]
fn flipped_bits_in_the_log_and_the_data_file_never_panic_and_never_return_wrong_data() {
    let pristine = tempfile::tempdir().unwrap();
    prepare(pristine.path(), 8, 8);
    let segment = {
        let run = run_of(pristine.path(), "tick-0", 1);
        let (file, _) = run_bytes(pristine.path(), &run);
        file.strip_prefix(pristine.path()).unwrap().to_owned()
    };
    let table = index_tables(pristine.path())[0]
        .strip_prefix(pristine.path())
        .unwrap()
        .to_owned();
    for target in [segment, PathBuf::from("db"), table] {
        flip_bits_in(pristine.path(), &target);
    }
}

/// Flips bits of the file `target` of copies of the store in `pristine` (8 streams of 8 events)
/// and checks each copy as the test above says.
fn flip_bits_in(pristine: &Path, target: &Path) {
    let image = std::fs::read(pristine.join(target)).unwrap();
    let written = data_end(&image);
    // Every place where a payload ("s<stream> v<version>") sits in the file.
    let spots: Vec<usize> = (0..written.saturating_sub(5))
        .filter(|&i| image[i] == b's' && image[i + 1].is_ascii_digit() && image[i + 2] == b' ')
        .collect();
    eprintln!("{}: {} payload copies", target.display(), spots.len());
    let rounds: usize = std::env::var("TIDINGS_DAMAGE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    let (mut refused, mut reported, mut clean) = (0, 0, 0);
    let mut refusals = std::collections::BTreeSet::new();
    for round in 0..rounds {
        // With `blobs/` too: without it every copy was refused for the missing directory
        // (S18) before sled ever read the damaged file.
        let dir = copy_store(pristine);
        let mut damaged = image.clone();
        // Even rounds hit a payload (where there are any); odd rounds any written byte.
        let at = if round % 2 == 0 && !spots.is_empty() {
            spots[(round * 7919) % spots.len()] + 1 + round % 4
        } else {
            (round * 104_729) % written
        };
        damaged[at] ^= 1 << (round % 8);
        std::fs::write(dir.path().join(target), &damaged).unwrap();

        let store = match SledEventStore::open(dir.path()) {
            Ok(store) => store,
            Err(e) => {
                refused += 1;
                refusals.insert(match e {
                    StoreError::Damaged { .. } => "damaged",
                    StoreError::DamagedMetadata { .. } => "damaged metadata",
                    StoreError::Engine { .. } => "engine",
                    StoreError::Io(_) => "io",
                    other => panic!("unexpected error for a damaged file: {other}"),
                });
                continue;
            }
        };
        rt().block_on(async {
            let mut from = 1;
            let mut seen = 0;
            let mut failed = false;
            loop {
                match store.read_all(from, 100, &Filter::all()).await {
                    Ok(page) => {
                        for e in &page.events {
                            let expected = format!(
                                "s{} v{}",
                                e.stream_id.trim_start_matches("tick-"),
                                e.stream_version
                            );
                            assert_eq!(
                                e.payload,
                                expected.as_bytes(),
                                "wrong data at {}",
                                e.position
                            );
                        }
                        seen += page.events.len();
                        from = page.next_position;
                        if page.is_end() {
                            break;
                        }
                    }
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            }
            let verified = store.verify().await.map(|r| r.is_ok()).unwrap_or(false);
            if failed || !verified {
                reported += 1;
            } else {
                assert_eq!(seen, 64, "events silently lost");
                clean += 1;
            }
        });
    }
    eprintln!(
        "{}: {rounds} damaged copies: {refused} refused at open, {reported} opened with the \
         damage reported, {clean} opened and read clean (the flipped byte was not live data); \
         refusals: {refusals:?}",
        target.display()
    );
}

#[test]
fn a_second_open_of_the_same_directory_is_refused_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let _store = SledEventStore::open(dir.path()).unwrap();
    match SledEventStore::open(dir.path()) {
        Err(StoreError::InUse { path }) => assert_eq!(path, dir.path()),
        other => panic!("expected InUse, got {other:?}"),
    }
}

#[test]
fn a_directory_of_some_other_sled_database_is_not_taken_for_a_store() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = raw(dir.path());
        db.insert("hello", "world").unwrap();
        db.flush().unwrap();
    }
    assert!(matches!(
        SledEventStore::open(dir.path()),
        Err(StoreError::DamagedMetadata { .. })
    ));
}

/// Damage in the log's last commit group cannot be told from a torn write by the log alone; the
/// store knows the group was acknowledged (its head file and index say so), so the open refuses
/// with the position instead of cutting it, and changes nothing.
#[test]
fn damage_in_the_last_acknowledged_group_is_refused_at_open_and_nothing_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    prepare(dir.path(), 4, 1);
    let (file, range) = run_bytes(dir.path(), &run_of(dir.path(), "tick-3", 1));
    damage_file(&file, |b| b[range.end - 1] ^= 0x01);
    let before = std::fs::read(&file).unwrap();
    match SledEventStore::open(dir.path()) {
        Err(StoreError::Damaged {
            position: 4,
            reason,
        }) => {
            assert!(reason.contains("acknowledged"), "{reason}")
        }
        other => panic!("expected damage at 4, got {other:?}"),
    }
    assert!(
        std::fs::read(&file).unwrap() == before,
        "the segment was changed"
    );
}

/// Damage in a group that a later group follows is reported by position when read, and every
/// other event stays readable, before and after it.
#[test]
fn damage_before_the_last_group_leaves_the_store_openable_and_the_other_events_readable() {
    let dir = tempfile::tempdir().unwrap();
    prepare(dir.path(), 4, 1);
    let (file, range) = run_bytes(dir.path(), &run_of(dir.path(), "tick-2", 1));
    damage_file(&file, |b| b[range.end - 1] ^= 0x01);
    rt().block_on(async {
        let store = SledEventStore::open(dir.path()).expect("damage before the last group opens");
        assert_eq!(store.head(), 4);
        let page = store.read_all(1, 2, &Filter::all()).await.unwrap();
        assert_eq!(page.events.len(), 2);
        assert!(matches!(
            store.read_all(3, 10, &Filter::all()).await,
            Err(StoreError::Damaged { position: 3, .. })
        ));
        assert_eq!(
            store
                .read_all(4, 10, &Filter::all())
                .await
                .unwrap()
                .events
                .len(),
            1
        );
        assert_eq!(store.read_stream("tick-3", 1, 10).await.unwrap().len(), 1);
        assert!(!store.verify().await.unwrap().is_ok());
    });
}

/// A store in `dir` with one event, closed.
fn one_event_store(dir: &Path) {
    prepare(dir, 1, 1);
}

#[test]
fn files_of_the_store_that_are_symbolic_links_are_refused_and_their_targets_left_alone() {
    let outside = tempfile::tempdir().unwrap();
    for name in [super::durable::HEAD_FILE, super::LOCK_FILE, "db"] {
        let dir = tempfile::tempdir().unwrap();
        one_event_store(dir.path());
        let target = outside.path().join(format!("target-of-{name}"));
        let file = dir.path().join(name);
        std::fs::rename(&file, &target).unwrap();
        let before = std::fs::read(&target).unwrap();
        std::os::unix::fs::symlink(&target, &file).unwrap();
        match SledEventStore::open(dir.path()) {
            Err(StoreError::BadPath { path, reason }) => {
                assert_eq!(path, file, "{name}");
                assert!(reason.contains("symbolic link"), "{name}: {reason}");
            }
            other => panic!("{name}: expected BadPath, got {other:?}"),
        }
        assert_eq!(
            std::fs::read(&target).unwrap(),
            before,
            "{name} was written"
        );
    }
    // The index's directory as a link to a directory outside the store: refused, untouched.
    let dir = tempfile::tempdir().unwrap();
    one_event_store(dir.path());
    let index = dir.path().join(super::INDEX_DIR);
    let elsewhere = outside.path().join("index-elsewhere");
    std::fs::rename(&index, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &index).unwrap();
    let listing = |d: &Path| {
        let mut names: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        names
    };
    let files_before = listing(&elsewhere);
    assert!(matches!(
        SledEventStore::open(dir.path()),
        Err(StoreError::BadPath { path, .. }) if path == index
    ));
    assert_eq!(listing(&elsewhere), files_before);
    // A table file inside `index/` that is a link to a file outside: refused, never followed,
    // its target left alone; once the link is gone the index is rebuilt from the log.
    std::fs::remove_file(&index).unwrap();
    std::fs::create_dir(&index).unwrap();
    let table = std::fs::read_dir(&elsewhere)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let precious = outside.path().join("precious-table");
    std::fs::copy(table.path(), &precious).unwrap();
    let content = std::fs::read(&precious).unwrap();
    let link = index.join(table.file_name());
    std::os::unix::fs::symlink(&precious, &link).unwrap();
    match SledEventStore::open(dir.path()) {
        Err(StoreError::BadPath { path, reason }) => {
            assert_eq!(path, link);
            assert!(reason.contains("symbolic link"), "{reason}");
        }
        other => panic!("expected BadPath for the linked table, got {other:?}"),
    }
    assert_eq!(std::fs::read(&precious).unwrap(), content);
    std::fs::remove_file(&link).unwrap();
    rt().block_on(async {
        let store = SledEventStore::open(dir.path()).unwrap();
        assert_eq!(store.read_stream("tick-0", 1, 10).await.unwrap().len(), 1);
        assert!(store.verify().await.unwrap().is_ok());
    });
    assert_eq!(std::fs::read(&precious).unwrap(), content);
    // A new store whose head file is already a link to someone else's file.
    let dir = tempfile::tempdir().unwrap();
    let target = outside.path().join("precious");
    std::fs::write(&target, b"precious").unwrap();
    std::os::unix::fs::symlink(&target, dir.path().join(super::durable::HEAD_FILE)).unwrap();
    assert!(matches!(
        SledEventStore::open(dir.path()),
        Err(StoreError::BadPath { .. })
    ));
    assert_eq!(std::fs::read(&target).unwrap(), b"precious");
}

#[test]
fn a_new_store_directory_is_private_and_an_existing_one_keeps_its_mode() {
    use std::os::unix::fs::PermissionsExt;
    let parent = tempfile::tempdir().unwrap();
    let new = parent.path().join("a/b/store");
    drop(SledEventStore::open(&new).unwrap());
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&new), 0o700, "a new store directory");
    assert_eq!(mode(&parent.path().join("a")), 0o700, "a new parent");

    let existing = parent.path().join("shared");
    std::fs::create_dir(&existing).unwrap();
    std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o750)).unwrap();
    drop(SledEventStore::open(&existing).unwrap());
    assert_eq!(
        mode(&existing),
        0o750,
        "an existing directory keeps its mode"
    );
}

#[test]
fn a_store_path_that_is_a_file_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    match SledEventStore::open(&file) {
        Err(StoreError::BadPath { path, reason }) => {
            assert_eq!(path, file);
            assert!(reason.contains("not a directory"), "{reason}");
        }
        other => panic!("expected BadPath, got {other:?}"),
    }
    let under = file.join("store");
    match SledEventStore::open(&under) {
        Err(e @ StoreError::BadPath { .. }) => {
            let text = e.to_string();
            assert!(text.contains(&*under.to_string_lossy()), "{text}");
            assert!(text.contains("not a directory"), "{text}");
        }
        other => panic!("expected BadPath, got {other:?}"),
    }
}

/// Writes sled's configuration file `conf` as sled does: the text, then its crc32 (big-endian
/// is not needed: sled only warns about a bad crc).
fn write_conf(dir: &Path, text: &[u8]) {
    let mut bytes = text.to_vec();
    bytes.extend_from_slice(&[0, 0, 0, 0]);
    std::fs::write(dir.join("conf"), bytes).unwrap();
}

#[test]
fn damage_that_sled_finds_in_its_own_files_is_a_damage_error_saying_where() {
    for (what, text) in [
        (
            "not UTF-8",
            &b"segment_size: \xff\xfe\xfd\nversion: 0.34\n"[..],
        ),
        (
            "a line sled cannot parse",
            b"segment_size 524288\nuse_compression: false\n",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        one_event_store(dir.path());
        write_conf(dir.path(), text);
        match SledEventStore::open(dir.path()) {
            Err(e @ StoreError::DamagedMetadata { .. }) => {
                let text = e.to_string();
                assert!(text.contains("conf"), "{what}: {text}");
                assert!(
                    text.contains(&*dir.path().to_string_lossy()),
                    "{what}: {text}"
                );
                assert!(!text.contains("backtrace"), "{what}: {text}");
            }
            other => panic!("{what}: expected DamagedMetadata, got {other:?}"),
        }
    }
}

#[test]
fn a_missing_blobs_directory_is_reported_as_damage_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let store = SledEventStore::open(dir.path()).unwrap();
        // A value larger than a quarter of sled's segment goes to a blob file: here the
        // snapshots (the events are in the log). With this many, sled 0.34.7 panics at open
        // once they are gone.
        for i in 0..20 {
            let big = crate::store::Snapshot {
                stream_version: 1,
                schema_version: 1,
                payload: vec![7u8; 300 * 1024],
            };
            store.save_snapshot(&format!("big-{i}"), big).await.unwrap();
            let small = EventData::new("Small", vec![1u8; 100]);
            store
                .append(
                    &format!("small-{i}"),
                    ExpectedVersion::NoStream,
                    vec![small],
                )
                .await
                .unwrap();
        }
        store.close().await;
    });
    drop(rt());
    let blobs = dir.path().join("blobs");
    assert!(
        std::fs::read_dir(&blobs).unwrap().next().is_some(),
        "the fixture needs a blob file"
    );
    std::fs::remove_dir_all(&blobs).unwrap();
    match SledEventStore::open(dir.path()) {
        Err(e @ StoreError::DamagedMetadata { .. }) => {
            let text = e.to_string();
            assert!(text.contains("blobs"), "{text}");
            assert!(text.contains("missing"), "{text}");
        }
        other => panic!("expected DamagedMetadata, got {other:?}"),
    }
}

/// What a store built by [`prepare_mixed`] acknowledged last.
#[derive(Debug, PartialEq)]
struct Acknowledged {
    head: u64,
    checkpoints: Vec<(String, Option<u64>)>,
    state: Vec<(String, Option<Vec<u8>>)>,
    snapshot: Option<crate::store::Snapshot>,
}

/// The consumers of [`prepare_mixed`].
const CONSUMERS: [&str; 3] = ["billing", "shipping", "view"];

/// A store whose last writes mix appends, checkpoint commits with exactly-once state and
/// snapshots, and end with `trailing` commits that hold only checkpoints and state: what a
/// subscription writes while the log stands still. Returns what it acknowledged.
fn prepare_mixed(dir: &Path, trailing: u64) -> Acknowledged {
    use crate::store::Snapshot;
    rt().block_on(async {
        let store = SledEventStore::open(dir).unwrap();
        let mut checkpoints = [None::<u64>; 3];
        let mut round = 0;
        for v in 0..40u64 {
            let event = EventData::new("Tick", format!("s0 v{}", v + 1).into_bytes());
            store
                .append("tick-0", ExpectedVersion::Exact(v), vec![event])
                .await
                .unwrap();
            round += 1;
            commit_all(&store, &mut checkpoints, round).await;
            if v % 8 == 0 {
                let snapshot = Snapshot {
                    stream_version: v + 1,
                    schema_version: 1,
                    payload: format!("snapshot {}", v + 1).into_bytes(),
                };
                store.save_snapshot("tick-0", snapshot).await.unwrap();
            }
        }
        for _ in 0..trailing {
            round += 1;
            commit_all(&store, &mut checkpoints, round).await;
        }
        let acknowledged = acknowledged(&store).await.unwrap();
        store.close().await;
        acknowledged
    })
}

/// Commits a checkpoint at the head with state for each of [`CONSUMERS`]; each state is a
/// counter of its consumer's commits, so a state that went back with its checkpoint is seen.
async fn commit_all(store: &SledEventStore, checkpoints: &mut [Option<u64>; 3], round: u64) {
    let head = store.head();
    for (i, name) in CONSUMERS.iter().enumerate() {
        let state = vec![crate::store::StateWrite {
            key: b"count".to_vec(),
            value: Some(format!("{name} {round}").into_bytes()),
        }];
        store
            .commit_checkpoint(name, checkpoints[i], head, state)
            .await
            .unwrap();
        checkpoints[i] = Some(head);
    }
}

/// What `store` holds of what [`prepare_mixed`] writes; an error if a read meets damage.
async fn acknowledged(store: &SledEventStore) -> Result<Acknowledged, StoreError> {
    let mut checkpoints = Vec::new();
    let mut state = Vec::new();
    for name in CONSUMERS {
        checkpoints.push((name.to_owned(), store.load_checkpoint(name).await?));
        state.push((name.to_owned(), store.load_state(name, b"count").await?));
    }
    Ok(Acknowledged {
        head: store.head(),
        checkpoints,
        state,
        snapshot: store.load_snapshot("tick-0").await?,
    })
}

/// Copies the store in `from` (files, `blobs/` and the event log) to a new directory.
fn copy_store(from: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
    }
    for sub in ["blobs", super::LOG_DIR, super::INDEX_DIR] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        if !from.join(sub).exists() {
            continue;
        }
        for entry in std::fs::read_dir(from.join(sub)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.path().join(sub).join(entry.file_name())).unwrap();
        }
    }
    dir
}

/// Where the data in sled's file `image` ends: sled may grow its file to the end of a segment
/// with zeros, and damage there changes nothing.
fn data_end(image: &[u8]) -> usize {
    image.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1)
}

/// How a damaged copy of a store came out.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    /// Open refused it with a damage error.
    Refused,
    /// It opened, and a read or `verify` reported the damage.
    Reported,
    /// It opened with everything that was acknowledged intact.
    Intact,
}

/// Opens a damaged copy and checks that it either refuses with a damage error, reports the
/// damage, or holds everything acknowledged: never a silent step back of the log, a
/// checkpoint, a consumer's state or a snapshot.
fn check_damaged_copy(dir: &Path, expected: &Acknowledged, what: &str) -> Outcome {
    let store = match SledEventStore::open(dir) {
        Ok(store) => store,
        Err(StoreError::Damaged { .. } | StoreError::DamagedMetadata { .. }) => {
            return Outcome::Refused
        }
        Err(other) => panic!("{what}: unexpected error for a damaged store: {other}"),
    };
    rt().block_on(async {
        let found = match acknowledged(&store).await {
            Ok(found) => found,
            Err(StoreError::Damaged { .. } | StoreError::DamagedMetadata { .. }) => {
                return Outcome::Reported
            }
            Err(other) => panic!("{what}: unexpected error reading a damaged store: {other}"),
        };
        let events = read_everything(&store).await;
        let verified = store.verify().await.map(|r| r.is_ok()).unwrap_or(false);
        if events.is_err() || !verified {
            return Outcome::Reported;
        }
        assert_eq!(
            &found, expected,
            "{what}: the store opened clean but went back"
        );
        assert_eq!(events.unwrap(), expected.head, "{what}: events lost");
        Outcome::Intact
    })
}

/// The red team's reproduction: the last 4 KiB of sled's data file cut off, where only
/// checkpoint and state commits were written (the log's head is intact), must not open as if
/// nothing happened.
#[test]
fn a_cut_tail_that_held_only_checkpoint_and_state_commits_is_refused_at_open() {
    let pristine = tempfile::tempdir().unwrap();
    let expected = prepare_mixed(pristine.path(), 60);
    let dir = copy_store(pristine.path());
    let db = dir.path().join("db");
    let image = std::fs::read(&db).unwrap();
    std::fs::write(&db, &image[..data_end(&image) - 4096]).unwrap();
    match SledEventStore::open(dir.path()) {
        Err(e @ StoreError::DamagedMetadata { .. }) => {
            let text = e.to_string();
            assert!(text.contains("checkpoints"), "{text}");
            assert!(text.contains("consumer state"), "{text}");
            assert!(text.contains(super::durable::HEAD_FILE), "{text}");
        }
        Err(other) => panic!("expected a damage error naming checkpoints, got {other}"),
        Ok(store) => {
            let found = rt().block_on(acknowledged(&store));
            panic!("opened without a word: {found:?}, acknowledged {expected:?}")
        }
    }
}

/// Truncations and flipped bytes in the last 16 KiB of sled's data file (where a crash or a bad
/// sector hits: the newest commits), over a store whose last commits mix events, checkpoints
/// with state, and snapshots. `TIDINGS_DAMAGE_ROUNDS` (default 16) damaged copies of each kind.
#[test]
fn damage_in_the_tail_of_the_data_file_never_rolls_back_events_checkpoints_or_state_silently() {
    let pristine = tempfile::tempdir().unwrap();
    let expected = prepare_mixed(pristine.path(), 10);
    let image = std::fs::read(pristine.path().join("db")).unwrap();
    // sled may have grown its file to the end of a segment with zeros: the tail is the end of
    // what it wrote.
    let image = &image[..data_end(&image)];
    let tail = image.len().min(16 * 1024);
    let rounds: usize = std::env::var("TIDINGS_DAMAGE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    let mut outcomes = std::collections::BTreeMap::new();
    for round in 0..rounds {
        // Spread over the tail: a fixed stride, different for the two kinds of damage.
        let cut = 1 + (round * 7919 + 13) % tail;
        let dir = copy_store(pristine.path());
        std::fs::write(dir.path().join("db"), &image[..image.len() - cut]).unwrap();
        let what = format!("round {round}: last {cut} bytes cut");
        let outcome = check_damaged_copy(dir.path(), &expected, &what);
        *outcomes.entry(("truncated", outcome)).or_insert(0) += 1;

        let at = image.len() - 1 - (round * 104_729 + 7) % tail;
        let mut damaged = image.to_vec();
        damaged[at] ^= 1 << (round % 8);
        let dir = copy_store(pristine.path());
        std::fs::write(dir.path().join("db"), &damaged).unwrap();
        let what = format!("round {round}: bit {} of byte {at} flipped", round % 8);
        let outcome = check_damaged_copy(dir.path(), &expected, &what);
        *outcomes.entry(("flipped", outcome)).or_insert(0) += 1;
    }
    eprintln!("{rounds} rounds of tail damage: {outcomes:?}");
}

/// The ordering the check rests on: the head file is written after sled's fsync, so a kill
/// between the two (or a power loss before the page cache wrote the file back) leaves it
/// *behind* sled, never ahead. A head file behind opens without complaint; one ahead of what
/// sled holds, whatever kind of commit it counts, is refused.
#[test]
fn a_head_file_behind_the_store_opens_and_one_ahead_of_it_is_refused() {
    use crate::store::StateWrite;
    let dir = tempfile::tempdir().unwrap();
    let head_file = dir.path().join(super::durable::HEAD_FILE);
    let older = rt().block_on(async {
        let store = SledEventStore::open(dir.path()).unwrap();
        let event = EventData::new("Tick", b"s0 v1".to_vec());
        store
            .append("tick-0", ExpectedVersion::NoStream, vec![event])
            .await
            .unwrap();
        let older = std::fs::read(&head_file).unwrap();
        let state = vec![StateWrite {
            key: b"count".to_vec(),
            value: Some(b"1".to_vec()),
        }];
        store
            .commit_checkpoint("view", None, 1, state)
            .await
            .unwrap();
        store.close().await;
        older
    });
    // Behind: what a kill between the fsync and the head file's write leaves.
    std::fs::write(&head_file, &older).unwrap();
    drop(SledEventStore::open(dir.path()).expect("a head file behind the store opens"));
    // Ahead by one checkpoint commit, as if sled had dropped it: refused, naming its kind.
    let mut marks = super::durable::HeadFile::read(dir.path()).unwrap().unwrap();
    marks.commits = marks.commits.map(|c| c + 1);
    marks.last_checkpoints = marks.commits.unwrap();
    drop(super::durable::HeadFile::open(dir.path(), marks).unwrap());
    match SledEventStore::open(dir.path()) {
        Err(e @ StoreError::DamagedMetadata { .. }) => {
            let text = e.to_string();
            // Appends are not counted (the log is checked on its own): the checkpoint commit
            // was the first, so the forged one is the second.
            assert!(text.contains("commits 2 to 2 are lost"), "{text}");
            assert!(text.contains("held checkpoints"), "{text}");
            assert!(!text.contains("snapshots"), "{text}");
        }
        other => panic!("expected a damage error, got {other:?}"),
    }
    // The documented way to accept the loss: delete the head file.
    std::fs::remove_file(&head_file).unwrap();
    drop(SledEventStore::open(dir.path()).expect("opens once the loss is accepted"));
    // A store from before the commit counter: its head file holds the head alone (format 1).
    let mut old = 1u64.to_be_bytes().to_vec();
    old.extend_from_slice(&crc32fast::hash(&old).to_be_bytes());
    std::fs::write(&head_file, &old).unwrap();
    drop(SledEventStore::open(dir.path()).expect("a format-1 head file opens"));
    let marks = super::durable::HeadFile::read(dir.path()).unwrap().unwrap();
    assert_eq!(
        (marks.head, marks.commits),
        (1, Some(1)),
        "counted from now on"
    );
}

#[test]
fn a_store_with_and_without_metadata_reopens_and_reads_both() {
    let dir = tempfile::tempdir().unwrap();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let written = rt().block_on(async {
        let store = SledEventStore::open(dir.path()).unwrap();
        for i in 0..20u64 {
            let mut event = EventData::new("Tick", format!("{i}").into_bytes());
            if i % 3 == 0 {
                event = event
                    .with_trace_context(traceparent, Some("v=1"))
                    .unwrap()
                    .with_metadata("n", i.to_string());
            }
            store
                .append("tick-1", ExpectedVersion::Exact(i), vec![event])
                .await
                .unwrap();
        }
        store.read_stream("tick-1", 1, 100).await.unwrap()
    });
    // Every append is its own run in the index, with the record's exact length.
    let first = run_of(dir.path(), "tick-1", 1);
    assert_eq!((first.first_position, first.count), (1, 1));
    rt().block_on(async {
        let store = SledEventStore::open(dir.path()).unwrap();
        let read = store.read_stream("tick-1", 1, 100).await.unwrap();
        assert_eq!(read, written, "the events after a reopen");
        for (i, e) in read.iter().enumerate() {
            if i % 3 == 0 {
                assert_eq!(e.traceparent(), Some(traceparent));
                assert_eq!(e.metadata.len(), 3);
            } else {
                assert!(e.metadata.is_empty());
            }
        }
        assert_eq!(
            store.read_all(1, 100, &Filter::all()).await.unwrap().events,
            read
        );
        let report = store.verify().await.unwrap();
        assert!(report.is_ok(), "{:?}", report.problems);
        assert_eq!(report.events_checked, 20);
    });
}

/// The store of format 1 in `framework/tests/fixtures/format1-store`, written by the build
/// before format 2 (commit ffa5b06): 12 events over order-0..2 (the 2nd, 6th and 10th carry a
/// `tenant` metadata entry), 2 events of payment-1 in one append, checkpoint `shipping` at 9,
/// checkpoint `billing` at 11 with state `count` = "11", and a snapshot of order-0 at version 4.
fn format_1_fixture() -> tempfile::TempDir {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format1-store");
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&fixture).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    // sled's (empty) directory of large pages, which git does not keep.
    std::fs::create_dir(dir.path().join("blobs")).unwrap();
    dir
}

/// Checks what the fixtures hold in sled: checkpoint `shipping` at `shipping`, `billing` at 11
/// with its state, and the snapshot of order-0.
async fn check_fixture_state(store: &SledEventStore, shipping: u64) {
    assert_eq!(
        store.load_checkpoint("shipping").await.unwrap(),
        Some(shipping)
    );
    assert_eq!(store.load_checkpoint("billing").await.unwrap(), Some(11));
    assert_eq!(
        store.load_state("billing", b"count").await.unwrap(),
        Some(b"11".to_vec())
    );
    let snapshot = store.load_snapshot("order-0").await.unwrap().unwrap();
    assert_eq!(snapshot.stream_version, 4);
}

/// Checks that the store at `dir` holds the fixture's data, as format 2, and takes appends.
fn check_converted(dir: &Path) {
    rt().block_on(async {
        let store = SledEventStore::open(dir).unwrap();
        assert_eq!(store.head(), 14);
        let all = store.read_all(1, 100, &Filter::all()).await.unwrap().events;
        assert_eq!(all.len(), 14);
        for (i, e) in all.iter().take(12).enumerate() {
            assert_eq!(e.position, i as u64 + 1);
            assert_eq!(e.stream_id, format!("order-{}", i % 3));
            assert_eq!(e.stream_version, i as u64 / 3 + 1);
            assert_eq!(e.payload, format!("{{\"n\":{i}}}").into_bytes());
            let tenant = e.metadata.get("tenant").cloned();
            assert_eq!(tenant, (i % 4 == 1).then(|| format!("t{i}")), "event {i}");
        }
        let payments = store.read_stream("payment-1", 1, 10).await.unwrap();
        assert_eq!(payments, all[12..].to_vec());
        assert_eq!(store.read_stream("order-1", 2, 10).await.unwrap().len(), 3);
        check_fixture_state(&store, 9).await;
        let report = store.verify().await.unwrap();
        assert!(report.is_ok(), "{:?}", report.problems);
        assert_eq!((report.events_checked, report.head), (14, 14));
        let next = EventData::new("OrderPlaced", b"{}".to_vec());
        let appended = store
            .append("order-0", ExpectedVersion::Exact(4), vec![next])
            .await
            .unwrap();
        assert_eq!((appended.first_position, appended.stream_version), (15, 5));
        store.close().await;
    });
    let db = raw(dir);
    let format = codec::decode_format(&db.get(keys::FORMAT_KEY).unwrap().unwrap()).unwrap();
    assert_eq!(format, super::STORAGE_FORMAT);
    assert!(
        db.scan_prefix([keys::LOG]).next().is_none(),
        "format-1 chunks left"
    );
    assert!(
        db.scan_prefix([keys::INDEX]).next().is_none(),
        "format-1 index left"
    );
    for prefix in [keys::RUNS, keys::GROUP] {
        assert!(
            db.scan_prefix([prefix]).next().is_none(),
            "format-2 index left"
        );
    }
    assert!(db.get(keys::INDEXED_KEY).unwrap().is_none());
}

#[test]
fn a_store_written_by_format_1_is_converted_at_open_with_everything_in_it() {
    let dir = format_1_fixture();
    check_converted(dir.path());
    // And opens again as format 2, nothing to convert.
    rt().block_on(async {
        let store = SledEventStore::open(dir.path()).unwrap();
        assert_eq!(store.head(), 15);
        assert!(store.verify().await.unwrap().is_ok());
    });
}

/// A conversion stopped after it copied part of the log (a kill, a full disk) goes on from
/// where the log ends at the next open: each event once, in order.
#[test]
fn an_interrupted_conversion_goes_on_at_the_next_open() {
    use crate::store::log::{LogConfig, SegmentLog};
    let dir = format_1_fixture();
    {
        let db = raw(dir.path());
        let (mut log, _) =
            SegmentLog::open(dir.path().join(super::LOG_DIR), LogConfig::default()).unwrap();
        let mut bodies = Vec::new();
        for item in db.scan_prefix([keys::LOG]) {
            let (key, value) = item.unwrap();
            let first = keys::log_key_position(&key).unwrap();
            for record in codec::ChunkIter::new(&value).unwrap() {
                let record = record.unwrap();
                let position = first + u64::from(record.index);
                if position <= 5 {
                    bodies.push((position, record.body.to_vec()));
                }
            }
        }
        let group: Vec<(u64, &[u8])> = bodies.iter().map(|(p, b)| (*p, &b[..])).collect();
        log.append_group(&group).unwrap();
        assert_eq!(log.tail(), 5);
    }
    check_converted(dir.path());
}

/// The store of format 2 in `framework/tests/fixtures/format2-store`, written by the build
/// before format 3 (commit b93c328) from the format-1 fixture, with 16 KiB segments: its 14
/// events, then order-0 version 5 (position 15), payment-1 versions 3 and 4 (16, 17) in one
/// append, and checkpoint `shipping` moved to 15. (sled's file is cut after its last non-zero
/// byte; the rest of its segment was zeros.)
fn format_2_fixture() -> tempfile::TempDir {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format2-store");
    copy_store(&fixture)
}

#[test]
fn a_store_written_by_format_2_is_converted_at_open_with_everything_in_it() {
    let dir = format_2_fixture();
    for round in 0..2 {
        rt().block_on(async {
            let store = SledEventStore::open(dir.path()).unwrap();
            assert_eq!(store.head(), 17 + round);
            let all = store.read_all(1, 100, &Filter::all()).await.unwrap().events;
            assert_eq!(all.len() as u64, 17 + round);
            for (i, e) in all.iter().take(12).enumerate() {
                assert_eq!(e.position, i as u64 + 1);
                assert_eq!(e.stream_id, format!("order-{}", i % 3));
                assert_eq!(e.payload, format!("{{\"n\":{i}}}").into_bytes());
                let tenant = e.metadata.get("tenant").cloned();
                assert_eq!(tenant, (i % 4 == 1).then(|| format!("t{i}")), "event {i}");
            }
            let order_0 = store.read_stream("order-0", 1, 100).await.unwrap();
            assert_eq!(order_0.len() as u64, 5 + round);
            assert_eq!(order_0[4].position, 15);
            let payments = store.read_stream("payment-1", 2, 10).await.unwrap();
            let versions: Vec<(u64, u64)> = payments
                .iter()
                .map(|e| (e.stream_version, e.position))
                .collect();
            assert_eq!(versions, [(2, 14), (3, 16), (4, 17)]);
            assert_eq!(store.stream_version("payment-1").await.unwrap(), 4);
            check_fixture_state(&store, 15).await;
            let streams = store.list_streams(None, 10).await.unwrap();
            let names: Vec<&str> = streams.iter().map(|s| s.stream_id.as_str()).collect();
            assert_eq!(names, ["order-0", "order-1", "order-2", "payment-1"]);
            let report = store.verify().await.unwrap();
            assert!(report.is_ok(), "{:?}", report.problems);
            assert_eq!(report.events_checked, 17 + round);
            if round == 0 {
                let next = EventData::new("OrderPlaced", b"{}".to_vec());
                let appended = store
                    .append("order-0", ExpectedVersion::Exact(5), vec![next])
                    .await
                    .unwrap();
                assert_eq!((appended.first_position, appended.stream_version), (18, 6));
            }
            store.close().await;
        });
        let db = raw(dir.path());
        let format = codec::decode_format(&db.get(keys::FORMAT_KEY).unwrap().unwrap()).unwrap();
        assert_eq!(format, super::STORAGE_FORMAT);
        for prefix in [keys::RUNS, keys::GROUP] {
            assert!(
                db.scan_prefix([prefix]).next().is_none(),
                "format-2 index left"
            );
        }
        assert!(db.get(keys::INDEXED_KEY).unwrap().is_none());
        drop(db);
        assert!(!index_tables(dir.path()).is_empty());
    }
}

/// A conversion from format 2 killed after the index's files were written but before the store
/// was marked as format 3 (and its old keys removed) is done again by the next open.
#[test]
fn an_interrupted_conversion_from_format_2_is_done_again_at_the_next_open() {
    let dir = format_2_fixture();
    let expected = rt().block_on(async {
        let store = SledEventStore::open(dir.path()).unwrap();
        let all = store.read_all(1, 100, &Filter::all()).await.unwrap().events;
        store.close().await;
        all
    });
    assert_eq!(expected.len(), 17);
    {
        // Back to format 2, with the keys the conversion had not removed yet: a mark that
        // covers the log, and a stray run of the old index.
        let db = raw(dir.path());
        db.insert(keys::FORMAT_KEY, codec::encode_format(2))
            .unwrap();
        let mark = codec::IndexMark {
            position: 17,
            segment: 1,
            offset: 0,
            timestamp_micros: 0,
        };
        db.insert(keys::INDEXED_KEY, codec::encode_mark(mark))
            .unwrap();
        db.insert(keys::run_key("order-0", 1), b"stale".to_vec())
            .unwrap();
        db.flush().unwrap();
    }
    // And the last index file had not been written.
    let tables = index_tables(dir.path());
    std::fs::remove_file(tables.last().unwrap()).unwrap();
    rt().block_on(async {
        let store = SledEventStore::open(dir.path()).unwrap();
        let all = store.read_all(1, 100, &Filter::all()).await.unwrap().events;
        assert_eq!(all, expected);
        assert_eq!(store.read_stream("order-0", 1, 10).await.unwrap().len(), 5);
        let report = store.verify().await.unwrap();
        assert!(report.is_ok(), "{:?}", report.problems);
        store.close().await;
    });
    let db = raw(dir.path());
    let format = codec::decode_format(&db.get(keys::FORMAT_KEY).unwrap().unwrap()).unwrap();
    assert_eq!(format, super::STORAGE_FORMAT);
    assert!(db.scan_prefix([keys::RUNS]).next().is_none());
    assert!(db.get(keys::INDEXED_KEY).unwrap().is_none());
}
