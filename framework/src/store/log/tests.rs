//! Tests of the segment log: round trips, concurrent reads, torn tails, damage, hostile files, a
//! SIGKILL crash loop and a property test of the framing.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::recover::Damage;
use super::scan::RecordRef;
use super::*;
use crate::store::StoreError;

/// A small configuration, so that tests cross segments.
fn config(segment_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        read_buffer_bytes: 4096,
        acknowledged: 0,
    }
}

/// The body the tests give the record at `position`: 1 to 61 bytes that depend on it.
fn body(position: u64) -> Vec<u8> {
    let len = (position.wrapping_mul(7919) % 61) as usize + 1;
    (0..len)
        .map(|i| (position as u8).wrapping_mul(31).wrapping_add(i as u8))
        .collect()
}

/// A body whose length is a multiple of 8 (no padding after it), so every byte of its frame is
/// under a checksum.
fn aligned_body(position: u64) -> Vec<u8> {
    let mut b = body(position);
    b.resize(b.len().div_ceil(8) * 8, 0xA5);
    b
}

/// Appends a group of `n` records made by `make`; returns their (position, address).
fn append(log: &mut SegmentLog, n: u64, make: fn(u64) -> Vec<u8>) -> Vec<(u64, RecordAddr)> {
    let first = log.tail() + 1;
    let bodies: Vec<(u64, Vec<u8>)> = (first..first + n).map(|p| (p, make(p))).collect();
    let records: Vec<(u64, &[u8])> = bodies.iter().map(|(p, b)| (*p, b.as_slice())).collect();
    let addrs = log.append_group(&records).unwrap();
    (first..).zip(addrs).collect()
}

/// Every record of the log, read with a scan from position 1.
fn scan_all(reader: &LogReader) -> Vec<Record> {
    reader.scan(1).map(|r| r.unwrap()).collect()
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for f in segment_files(from) {
        fs::copy(&f, to.join(f.file_name().unwrap())).unwrap();
    }
}

#[test]
fn records_round_trip_over_several_segments_and_reopens() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let (mut log, recovery) = SegmentLog::open(&dir, config(4096)).unwrap();
    assert_eq!(recovery, Recovery::default());
    assert_eq!(log.tail(), 0);
    assert_eq!(log.dir(), dir);
    assert_eq!(log.reader().scan(1).count(), 0);
    let mut addrs = Vec::new();
    let mut n = 0;
    while log.tail() < 400 {
        addrs.extend(append(&mut log, n % 9 + 1, body));
        n += 1;
    }
    let files = segment_files(&dir);
    assert!(files.len() >= 4, "{files:?}");
    for f in &files {
        assert_eq!(fs::metadata(f).unwrap().len(), 4096, "pre-allocated: {f:?}");
    }
    assert_eq!(
        files[0].file_name().unwrap().to_str().unwrap(),
        "00000000000000000001.seg"
    );
    let check = |log: &SegmentLog| {
        for (p, addr) in &addrs {
            let record = log.read_at(*p, *addr).unwrap();
            assert_eq!((record.position, record.body), (*p, body(*p)));
        }
        let all = scan_all(&log.reader());
        assert_eq!(all.len(), addrs.len());
        for (record, (p, addr)) in all.iter().zip(&addrs) {
            assert_eq!((record.position, record.addr), (*p, *addr));
            assert_eq!(record.body, body(*p));
        }
        let tail = log.tail();
        for from in [2, 57, 200, 399, tail] {
            let first = log.reader().scan(from).next().unwrap().unwrap();
            assert_eq!(first.position, from);
        }
        assert!(log.reader().scan(tail + 1).next().is_none());
    };
    check(&log);
    let tail = log.tail();
    drop(log);
    let (mut log, recovery) = SegmentLog::open(&dir, config(4096)).unwrap();
    assert_eq!(recovery, Recovery::default());
    assert_eq!(log.tail(), tail);
    check(&log);
    // Appends go on after a reopen, into the same segment while they fit.
    let more = append(&mut log, 3, body);
    assert_eq!(more[0].0, tail + 1);
    assert_eq!(more[0].1.segment, addrs.last().unwrap().1.segment);
    // A scan resumes at an address.
    let (p, addr) = addrs[100];
    let resumed: Vec<u64> = log
        .reader()
        .scan_at(p, addr)
        .unwrap()
        .map(|r| r.unwrap().position)
        .collect();
    assert_eq!(resumed, (p..=tail + 3).collect::<Vec<_>>());
}

#[test]
fn requests_that_do_not_continue_the_log_are_refused_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = SegmentLog::open(tmp.path().join("log"), config(4096)).unwrap();
    assert!(matches!(log.append_group(&[]), Err(LogError::Invalid(_))));
    assert!(matches!(
        log.append_group(&[(2, b"x")]),
        Err(LogError::Invalid(_))
    ));
    assert!(matches!(
        log.append_group(&[(1, b"x"), (3, b"y")]),
        Err(LogError::Invalid(_))
    ));
    let big = vec![0u8; 4096];
    assert!(matches!(
        log.append_group(&[(1, &big)]),
        Err(LogError::Invalid(_))
    ));
    assert_eq!(log.tail(), 0);
    let addrs = append(&mut log, 2, body);
    let (p, addr) = addrs[0];
    // An address that is not a record's, or past the log's end, or another position's.
    let wrong = RecordAddr {
        offset: addr.offset + 8,
        ..addr
    };
    assert!(log.read_at(p, wrong).is_err());
    let beyond = RecordAddr {
        offset: 2048,
        ..addr
    };
    assert!(matches!(log.read_at(p, beyond), Err(LogError::Invalid(_))));
    match log.read_at(2, addr) {
        Err(LogError::Damaged { position: 2, .. }) => {}
        other => panic!("{other:?}"),
    }
    let e: StoreError = LogError::Invalid("x".into()).into();
    assert!(matches!(e, StoreError::InvalidInput(_)));
}

#[test]
fn a_reader_on_another_thread_sees_every_group_once_it_is_synced() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = SegmentLog::open(tmp.path().join("log"), config(8192)).unwrap();
    let reader = log.reader();
    const LAST: u64 = 1_500;
    let (tx, rx) = mpsc::channel::<(u64, RecordAddr)>();
    let reading = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut next = 1;
        let mut scan = reader.scan(1);
        let mut exact = 0;
        while next <= LAST {
            assert!(
                Instant::now() < deadline,
                "the reader saw only {}",
                next - 1
            );
            // A scan at its end returns None, then more once the writer appended.
            match scan.next_record() {
                Some(record) => {
                    let record: RecordRef<'_> = record.unwrap();
                    assert_eq!(record.position, next);
                    assert_eq!(record.body, body(next).as_slice());
                    assert!(record.position <= reader.tail());
                    next += 1;
                }
                None => std::thread::yield_now(),
            }
            while let Ok((p, addr)) = rx.try_recv() {
                assert_eq!(reader.read_at(p, addr).unwrap().body, body(p));
                exact += 1;
            }
        }
        exact
    });
    let mut n = 0;
    while log.tail() < LAST {
        let size = (n % 16 + 1).min(LAST - log.tail());
        for (p, addr) in append(&mut log, size, body) {
            tx.send((p, addr)).unwrap();
        }
        n += 1;
    }
    drop(tx);
    let exact = reading.join().unwrap();
    assert!(exact > 0);
}

/// A log of groups of 1, 2, 3, ... records (aligned bodies) in one segment of 64 KiB; returns
/// the directory and the addresses of each group.
fn build_groups(dir: &Path, groups: u64) -> Vec<Vec<(u64, RecordAddr)>> {
    let (mut log, _) = SegmentLog::open(dir, config(65536)).unwrap();
    (0..groups)
        .map(|g| append(&mut log, g % 3 + 1, aligned_body))
        .collect()
}

fn segment_bytes(dir: &Path) -> (PathBuf, Vec<u8>) {
    let files = segment_files(dir);
    assert_eq!(files.len(), 1);
    let bytes = fs::read(&files[0]).unwrap();
    (files[0].clone(), bytes)
}

/// Opens `dir` and checks it holds exactly `groups` (the others were cut), that nothing but
/// zeros follows them, and that appends go on.
fn check_recovered(dir: &Path, groups: &[Vec<(u64, RecordAddr)>]) -> Recovery {
    let (mut log, recovery) = SegmentLog::open(dir, config(65536)).unwrap();
    let last = groups.last().map_or(0, |g| g.last().unwrap().0);
    assert_eq!(log.tail(), last);
    let all = scan_all(&log.reader());
    assert_eq!(all.len() as u64, last);
    for group in groups {
        for (p, addr) in group {
            assert_eq!(log.read_at(*p, *addr).unwrap().body, aligned_body(*p));
        }
    }
    let (path, bytes) = segment_bytes(dir);
    assert_eq!(bytes.len(), 65536, "{path:?} is allocated again");
    let end = groups
        .last()
        .map_or(64, |g| g.last().unwrap().1.next_offset()) as usize;
    if let Some(i) = bytes[end..].iter().position(|&b| b != 0) {
        panic!("garbage after the tail at {}: {recovery:?}", end + i);
    }
    let more = append(&mut log, 2, aligned_body);
    assert_eq!(more[0].0, last + 1);
    drop(log);
    let (log, again) = SegmentLog::open(dir, config(65536)).unwrap();
    assert_eq!(again, Recovery::default());
    assert_eq!(log.tail(), last + 2);
    recovery
}

#[test]
fn a_torn_last_group_is_cut_at_every_length_and_earlier_groups_stay() {
    let tmp = tempfile::tempdir().unwrap();
    let pristine = tmp.path().join("pristine");
    let groups = build_groups(&pristine, 6);
    let (name, bytes) = segment_bytes(&pristine);
    let name = name.file_name().unwrap().to_owned();
    let last = groups.last().unwrap();
    let start = last[0].1.offset as usize;
    let end = last.last().unwrap().1.next_offset() as usize;
    let kept = &groups[..groups.len() - 1];
    let mut case = 0;
    let mut run = |damage: &dyn Fn(&mut Vec<u8>), expect_cut: bool| {
        case += 1;
        let dir = tmp.path().join(format!("case{case}"));
        fs::create_dir(&dir).unwrap();
        let mut b = bytes.clone();
        damage(&mut b);
        fs::write(dir.join(&name), &b).unwrap();
        let recovery = check_recovered(&dir, kept);
        if expect_cut {
            assert_eq!(recovery.cut_from_position, Some(last[0].0), "case {case}");
            assert!(recovery.cut_bytes > 0);
        }
        assert!(recovery.damaged.is_empty(), "case {case}: {recovery:?}");
        fs::remove_dir_all(&dir).unwrap();
    };
    for cut in start..end {
        // A short write: the file ends at `cut` (as after `truncate`)...
        run(&|b: &mut Vec<u8>| b.truncate(cut), cut > start);
        // ... or the pre-allocated zeros were never overwritten from `cut` on.
        run(&|b: &mut Vec<u8>| b[cut..end].fill(0), cut > start);
        // A bad checksum in the last group.
        run(&|b: &mut Vec<u8>| b[cut] ^= 0x10, true);
    }
    // Pages that reached the disk out of order: the group's end is there, a record before it
    // is not.
    for record in &last[..last.len() - 1] {
        let (from, to) = (record.1.offset as usize, record.1.next_offset() as usize);
        run(&|b: &mut Vec<u8>| b[from..to].fill(0), true);
    }
    // The whole group never written: nothing to cut, nothing reported.
    run(&|b: &mut Vec<u8>| b[start..end].fill(0), false);
}

#[test]
fn a_torn_group_that_began_a_segment_leaves_it_empty_and_appends_go_on() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let (mut log, _) = SegmentLog::open(&dir, config(4096)).unwrap();
    let mut all = Vec::new();
    let torn = loop {
        let group = append(&mut log, 4, aligned_body);
        let starts_segment = group[0].1.offset == 64 && group[0].1.segment > 1;
        all.extend(group.iter().copied());
        if starts_segment {
            break group;
        }
    };
    drop(log);
    // The group's last record reached the disk, its first did not.
    let path = dir.join(segment::file_name(torn[0].1.segment));
    let mut bytes = fs::read(&path).unwrap();
    let first = torn[0].1;
    bytes[first.offset as usize..first.next_offset() as usize].fill(0);
    fs::write(&path, &bytes).unwrap();
    let kept = all.len() - torn.len();
    let (mut log, recovery) = SegmentLog::open(&dir, config(4096)).unwrap();
    assert_eq!(recovery.cut_from_position, Some(torn[0].0));
    assert_eq!(log.tail(), kept as u64);
    assert_eq!(scan_all(&log.reader()).len(), kept);
    // The empty segment takes the next group.
    let next = append(&mut log, 2, aligned_body);
    assert_eq!(next[0].1.segment, torn[0].1.segment);
    drop(log);
    // Cut again, then opened with a larger segment size than the empty segment has: the empty
    // segment is replaced by one of the new size (a reader already at it reads on).
    let mut bytes = fs::read(&path).unwrap();
    bytes[64..].fill(0);
    fs::write(&path, &bytes).unwrap();
    let (mut log, _) = SegmentLog::open(&dir, config(8192)).unwrap();
    let reader = log.reader();
    let mut scan = reader.scan(kept as u64);
    assert_eq!(scan.next().unwrap().unwrap().position, kept as u64);
    assert!(scan.next().is_none());
    let big = vec![9u8; 5000];
    let addrs = log.append_group(&[(kept as u64 + 1, &big)]).unwrap();
    assert_eq!(addrs[0].segment, torn[0].1.segment);
    assert_eq!(fs::metadata(&path).unwrap().len(), 8192);
    assert_eq!(scan.next().unwrap().unwrap().body, big);
    drop(log);
    let (log, recovery) = SegmentLog::open(&dir, config(8192)).unwrap();
    assert_eq!(recovery, Recovery::default());
    assert_eq!(log.tail(), kept as u64 + 1);
    assert_eq!(scan_all(&log.reader()).len(), kept + 1);
}

#[test]
fn a_page_of_the_torn_group_far_after_the_tail_in_the_allocated_rest_is_found_and_cut() {
    use std::os::unix::fs::FileExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let (mut log, _) = SegmentLog::open(&dir, config(1 << 20)).unwrap();
    for _ in 0..3 {
        append(&mut log, 2, aligned_body);
    }
    let tail = log.tail();
    drop(log);
    // The in-flight group was long: its first pages never landed, one far into the segment's
    // never-written (allocated) rest did, holding a whole record of that group.
    let mut record = Vec::new();
    let b = aligned_body(tail + 900);
    frame::RecordHeader {
        last_of_group: false,
        body_len: b.len() as u32,
        position: tail + 900,
        group_first: tail + 1,
        body_crc: crc32fast::hash(&b),
    }
    .encode_record(&b, &mut record);
    let path = dir.join(segment::file_name(1));
    let file = fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(&record, 700_000).unwrap();
    drop(file);
    let (log, recovery) = SegmentLog::open(&dir, config(1 << 20)).unwrap();
    assert_eq!(log.tail(), tail);
    assert_eq!(recovery.cut_from_position, Some(tail + 1));
    assert!(recovery.cut_bytes >= 700_000 - 1_000, "{recovery:?}");
    assert!(recovery.damaged.is_empty());
    let bytes = fs::read(&path).unwrap();
    assert!(bytes[600_000..].iter().all(|&b| b == 0));
}

#[test]
fn records_missing_at_the_end_of_an_earlier_segment_are_damage_at_their_position() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let mut all = Vec::new();
    {
        let (mut log, _) = SegmentLog::open(&dir, config(4096)).unwrap();
        while all
            .last()
            .is_none_or(|(_, a): &(u64, RecordAddr)| a.segment < 100)
        {
            all.extend(append(&mut log, 2, aligned_body));
        }
    }
    // The last record of the first segment is zeros (a lost page).
    let (position, addr) = *all.iter().rfind(|(_, a)| a.segment == 1).unwrap();
    let path = dir.join(segment::file_name(1));
    let mut bytes = fs::read(&path).unwrap();
    bytes[addr.offset as usize..addr.next_offset() as usize].fill(0);
    fs::write(&path, &bytes).unwrap();
    let (log, recovery) = SegmentLog::open(&dir, config(4096)).unwrap();
    assert_eq!(
        recovery,
        Recovery::default(),
        "only the last segment is read at open"
    );
    let mut scan = log.reader().scan(1);
    for p in 1..position {
        assert_eq!(scan.next().unwrap().unwrap().position, p);
    }
    match scan.next() {
        Some(Err(LogError::Damaged { position: p, .. })) if p == position => {}
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        log.read_at(position, addr),
        Err(LogError::Damaged { position: p, .. }) if p == position
    ));
    let (next, next_addr) = all[position as usize];
    assert_eq!(
        log.reader().scan_at(next, next_addr).unwrap().count(),
        all.len() - position as usize
    );
}

#[test]
fn a_flipped_byte_in_a_middle_record_is_damage_at_its_position_and_the_rest_stays_readable() {
    let tmp = tempfile::tempdir().unwrap();
    let pristine = tmp.path().join("pristine");
    // Several segments of 4 KiB; groups of 3.
    let mut all = Vec::new();
    {
        let (mut log, _) = SegmentLog::open(&pristine, config(4096)).unwrap();
        while log.tail() < 240 {
            all.extend(append(&mut log, 3, aligned_body));
        }
    }
    let last_segment = all.last().unwrap().1.segment;
    // The middle record of a group: one in an earlier segment, one in the last segment with
    // groups after it (the part of the log that the open scans).
    let in_sealed = all[31];
    let in_last = *all
        .iter()
        .filter(|(p, a)| a.segment == last_segment && p % 3 == 2)
        .nth(1)
        .unwrap();
    assert_ne!(in_sealed.1.segment, last_segment);
    assert!(all.last().unwrap().0 > in_last.0 + 3);
    for (position, addr) in [in_sealed, in_last] {
        let file = segment::file_name(addr.segment);
        for byte in 0..addr.len as usize {
            let dir = tmp.path().join(format!("flip-{position}-{byte}"));
            copy_dir(&pristine, &dir);
            let mut bytes = fs::read(dir.join(&file)).unwrap();
            bytes[addr.offset as usize + byte] ^= 0x04;
            fs::write(dir.join(&file), &bytes).unwrap();

            let (log, recovery) = SegmentLog::open(&dir, config(4096)).unwrap();
            assert_eq!(
                log.tail(),
                all.last().unwrap().0,
                "nothing cut (byte {byte})"
            );
            assert_eq!(recovery.cut_bytes, 0);
            if addr.segment == last_segment {
                assert_eq!(recovery.damaged.len(), 1, "{recovery:?}");
                let d: &Damage = &recovery.damaged[0];
                assert_eq!(
                    (d.first_position, d.offset),
                    (position, u64::from(addr.offset))
                );
                assert_eq!(d.resumes_position, position + 1);
            } else {
                assert!(recovery.damaged.is_empty());
            }
            match log.read_at(position, addr) {
                Err(e @ LogError::Damaged { position: p, .. }) if p == position => {
                    let store: StoreError = e.into();
                    assert!(
                        matches!(store, StoreError::Damaged { position: p, .. } if p == position)
                    );
                }
                other => panic!("byte {byte}: {other:?}"),
            }
            for (p, a) in all.iter().filter(|(p, _)| *p != position) {
                assert_eq!(log.read_at(*p, *a).unwrap().body, aligned_body(*p));
            }
            let reader = log.reader();
            let mut scan = reader.scan(1);
            for p in 1..position {
                assert_eq!(scan.next().unwrap().unwrap().position, p);
            }
            match scan.next() {
                Some(Err(LogError::Damaged { position: p, .. })) if p == position => {}
                other => panic!("byte {byte}: {other:?}"),
            }
            assert!(scan.next().is_none(), "a scan stops after damage");
            assert_eq!(scan.next_position(), position);
            let (next, next_addr) = all[position as usize];
            let rest: Vec<u64> = reader
                .scan_at(next, next_addr)
                .unwrap()
                .map(|r| r.unwrap().position)
                .collect();
            assert_eq!(rest, (next..=all.last().unwrap().0).collect::<Vec<_>>());
            drop(log);
            fs::remove_dir_all(&dir).unwrap();
        }
    }
}

#[test]
fn files_the_log_does_not_own_are_errors_naming_them_and_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let pristine = tmp.path().join("pristine");
    {
        let (mut log, _) = SegmentLog::open(&pristine, config(4096)).unwrap();
        while log.tail() < 200 {
            append(&mut log, 5, body);
        }
    }
    let files = segment_files(&pristine);
    assert!(files.len() >= 3);
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_str().unwrap().to_owned())
        .collect();
    let outside = tmp.path().join("outside");
    fs::write(&outside, b"not the log's").unwrap();
    let mut case = 0;
    let mut expect = |change: &dyn Fn(&Path), check: &dyn Fn(LogError, &Path)| {
        case += 1;
        let dir = tmp.path().join(format!("case{case}"));
        copy_dir(&pristine, &dir);
        change(&dir);
        match SegmentLog::open(&dir, config(4096)) {
            Ok(_) => panic!("case {case} opened"),
            Err(e) => check(e, &dir),
        }
        assert_eq!(fs::read(&outside).unwrap(), b"not the log's");
    };
    let bad_path = |file: &'static str| {
        move |e: LogError, dir: &Path| match e {
            LogError::BadPath { ref path, .. } if path == &dir.join(file) => {
                assert!(matches!(StoreError::from(e), StoreError::BadPath { .. }));
                assert!(
                    fs::symlink_metadata(dir.join(file)).is_ok(),
                    "{file} left alone"
                );
            }
            other => panic!("{file}: {other:?}"),
        }
    };
    let bad_segment = |file: String| {
        move |e: LogError, dir: &Path| match e {
            LogError::BadSegment { ref path, .. } if path == &dir.join(&file) => {
                assert!(matches!(
                    StoreError::from(e),
                    StoreError::DamagedMetadata { .. }
                ));
            }
            other => panic!("{file}: {other:?}"),
        }
    };
    // A symbolic link as a segment, later or in place of one.
    let link = "00000000000000099999.seg";
    expect(
        &|d: &Path| std::os::unix::fs::symlink(&outside, d.join(link)).unwrap(),
        &bad_path(link),
    );
    let first: &'static str = Box::leak(names[0].clone().into_boxed_str());
    expect(
        &|d: &Path| {
            fs::remove_file(d.join(first)).unwrap();
            std::os::unix::fs::symlink(&outside, d.join(first)).unwrap();
        },
        &bad_path(first),
    );
    // Names that do not parse, and files that are not segments.
    for name in [
        "12.seg",
        "notes.txt",
        "0000000000000000000x.seg",
        "00000000000000000000.seg",
    ] {
        expect(
            &|d: &Path| fs::write(d.join(name), b"x").unwrap(),
            &bad_path(name),
        );
    }
    expect(
        &|d: &Path| fs::create_dir(d.join("00000000000000099999.seg")).unwrap(),
        &bad_path("00000000000000099999.seg"),
    );
    // Wrong magic, wrong size, a name that is not the header's, a gap in the sequence.
    let later = "00000000000000099999.seg".to_owned();
    expect(
        &|d: &Path| fs::write(d.join("00000000000000099999.seg"), vec![7u8; 4096]).unwrap(),
        &bad_segment(later.clone()),
    );
    expect(
        &|d: &Path| fs::write(d.join("00000000000000099999.seg"), b"short").unwrap(),
        &bad_segment(later),
    );
    let n0 = names[0].clone();
    expect(
        &|d: &Path| {
            let f = fs::OpenOptions::new()
                .write(true)
                .open(d.join(&n0))
                .unwrap();
            f.set_len(2048).unwrap();
        },
        &bad_segment(names[0].clone()),
    );
    let n_last = names.last().unwrap().clone();
    expect(
        &|d: &Path| {
            let f = fs::OpenOptions::new()
                .write(true)
                .open(d.join(&n_last))
                .unwrap();
            f.set_len(8192).unwrap();
        },
        &bad_segment(names.last().unwrap().clone()),
    );
    let n_last = names.last().unwrap().clone();
    expect(
        &|d: &Path| fs::rename(d.join(&n_last), d.join("00000000000000099999.seg")).unwrap(),
        &bad_segment("00000000000000099999.seg".into()),
    );
    let n1 = names[1].clone();
    expect(
        &|d: &Path| fs::remove_file(d.join(&n1)).unwrap(),
        &bad_segment(names[2].clone()),
    );
    // A half-created segment (a crash during a rollover) is removed; a link by that name is not.
    let dir = tmp.path().join("new");
    copy_dir(&pristine, &dir);
    let new = dir.join("00000000000000099999.seg.new");
    fs::write(&new, vec![0u8; 100]).unwrap();
    let (log, recovery) = SegmentLog::open(&dir, config(4096)).unwrap();
    assert_eq!(recovery.removed, vec![new.clone()]);
    assert_eq!(log.tail(), 200);
    drop(log);
    std::os::unix::fs::symlink(&outside, &new).unwrap();
    assert!(matches!(
        SegmentLog::open(&dir, config(4096)),
        Err(LogError::BadPath { path, .. }) if path == new
    ));
    // The log's directory itself as a link, or a file.
    let link_dir = tmp.path().join("linked");
    std::os::unix::fs::symlink(&pristine, &link_dir).unwrap();
    assert!(matches!(
        SegmentLog::open(&link_dir, config(4096)),
        Err(LogError::BadPath { .. })
    ));
    assert!(matches!(
        SegmentLog::open(&outside, config(4096)),
        Err(LogError::BadPath { .. })
    ));
    assert_eq!(segment_files(&pristine).len(), files.len());
}

/// The segment size of the crash test.
const CRASH_SEGMENT: u64 = 256 << 10;

/// The environment variable that makes the crash test's binary the child.
const CRASH_CHILD: &str = "TIDINGS_LOG_CRASH_CHILD";

/// The group sizes the crash child appends: a function of the group's first position, so that
/// the parent knows every group boundary.
fn crash_group_size(first: u64) -> u64 {
    first.wrapping_mul(2654435761) % 23 + 1
}

/// The body of the crash child's record at `position`: up to ~4 KB, so that groups reach ~90 KB
/// and a kill can land inside a `write` (Linux stops a write between pages for SIGKILL).
fn crash_body(position: u64) -> Vec<u8> {
    body(position).repeat((position % 64) as usize + 1)
}

/// The child: appends groups until killed (or 60 s pass), printing `ack <last position>` after
/// each group is synced.
fn crash_child(dir: &Path) {
    use std::io::Write;
    let (mut log, _) = SegmentLog::open(dir, config(CRASH_SEGMENT)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let stdout = std::io::stdout();
    while Instant::now() < deadline {
        let first = log.tail() + 1;
        let size = crash_group_size(first);
        append(&mut log, size, crash_body);
        let mut out = stdout.lock();
        writeln!(out, "ack {}", log.tail()).unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn sigkill_during_appends_keeps_every_acknowledged_group_and_no_garbage() {
    if let Some(dir) = std::env::var_os(CRASH_CHILD) {
        crash_child(Path::new(&dir));
        return;
    }
    let cycles: usize = std::env::var("TIDINGS_LOG_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let exe = std::env::current_exe().unwrap();
    let name =
        "store::log::tests::sigkill_during_appends_keeps_every_acknowledged_group_and_no_garbage";
    let mut seed = Instant::now().elapsed().subsec_nanos() as u64 | 1;
    let mut random = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let started = Instant::now();
    let (mut acked_max, mut cuts, mut half_created) = (0u64, 0u64, 0usize);
    for cycle in 0..cycles {
        let mut child = Command::new(&exe)
            .args(["--exact", name, "--nocapture", "--test-threads=1"])
            .env(CRASH_CHILD, &dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let lines = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(p) = line.strip_prefix("ack ") {
                    let _ = tx.send(p.parse::<u64>().unwrap());
                }
            }
        });
        // Kill after a random number of acknowledged groups (0: maybe during the open), plus a
        // random few hundred microseconds, so kills land anywhere in the write path.
        let wait_for = random(40);
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = 0;
        while seen < wait_for {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(_) => seen += 1,
                Err(e) => panic!("cycle {cycle}: the child stopped acknowledging: {e}"),
            }
        }
        std::thread::sleep(Duration::from_micros(random(800)));
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        lines.join().unwrap();
        let acked: Vec<u64> = rx.try_iter().collect();
        if let Some(&last) = acked.last() {
            acked_max = acked_max.max(last);
        }
        assert!(
            std::os::unix::process::ExitStatusExt::signal(&status) == Some(9) || status.success(),
            "{status:?}"
        );

        let (log, recovery) = SegmentLog::open(&dir, config(CRASH_SEGMENT))
            .unwrap_or_else(|e| panic!("cycle {cycle}: {e}"));
        assert!(recovery.damaged.is_empty(), "cycle {cycle}: {recovery:?}");
        cuts += u64::from(recovery.cut_bytes > 0);
        half_created += recovery.removed.len();
        let tail = log.tail();
        assert!(
            tail >= acked_max,
            "cycle {cycle}: tail {tail} < acknowledged {acked_max}"
        );
        // Every record intact and in order, and whole groups only.
        let mut position = 1;
        for record in log.reader().scan(1) {
            let record = record.unwrap_or_else(|e| panic!("cycle {cycle}: {e}"));
            assert_eq!(
                (record.position, &record.body),
                (position, &crash_body(position))
            );
            position += 1;
        }
        assert_eq!(position - 1, tail);
        let mut group_first = 1;
        while group_first <= tail {
            group_first += crash_group_size(group_first);
        }
        assert_eq!(group_first, tail + 1, "cycle {cycle}: a partial group");
        // Nothing but zeros after the tail. (No segment at all: killed while creating the
        // first one, which the open removed; nothing was acknowledged then.)
        let Some(last) = segment_files(&dir).pop() else {
            assert_eq!((tail, acked_max), (0, 0), "cycle {cycle}: no segment left");
            continue;
        };
        let bytes = fs::read(&last).unwrap();
        let end = {
            let segments = log.shared.segments();
            let described: Vec<String> = segments
                .iter()
                .map(|(first, seg)| format!("{first}: end {:?}", seg.end()))
                .collect();
            segments
                .values()
                .last()
                .and_then(|seg| seg.end())
                .unwrap_or_else(|| {
                    panic!(
                        "cycle {cycle}: the last segment's end is unknown after the open; \
                         segments {described:?}, files {:?}, recovery {recovery:?}, tail {tail}",
                        segment_files(&dir)
                    )
                }) as usize
        };
        assert!(
            bytes[end..].iter().all(|&b| b == 0),
            "cycle {cycle}: garbage after the tail"
        );
    }
    eprintln!(
        "{cycles} kills in {:.1?}: {acked_max} positions acknowledged, {cuts} torn tails cut, \
         {half_created} half-created segments removed, {} segments",
        started.elapsed(),
        segment_files(&dir).len()
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn any_sequence_of_groups_round_trips(
        groups in proptest::collection::vec(
            proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..12),
            1..25,
        )
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("log");
        let (mut log, _) = SegmentLog::open(&dir, config(4096)).unwrap();
        let mut expected = Vec::new();
        for group in &groups {
            let first = log.tail() + 1;
            let records: Vec<(u64, &[u8])> =
                (first..).zip(group.iter().map(Vec::as_slice)).collect();
            let addrs = log.append_group(&records).unwrap();
            for ((p, b), a) in records.iter().zip(addrs) {
                expected.push((*p, b.to_vec(), a));
            }
        }
        for reopen in [false, true] {
            if reopen {
                drop(log);
                let (reopened, recovery) = SegmentLog::open(&dir, config(4096)).unwrap();
                prop_assert_eq!(recovery, Recovery::default());
                log = reopened;
            }
            let scanned: Vec<Record> = log.reader().scan(1).map(|r| r.unwrap()).collect();
            prop_assert_eq!(scanned.len(), expected.len());
            for (record, (p, b, a)) in scanned.iter().zip(&expected) {
                prop_assert_eq!((record.position, &record.body, record.addr), (*p, b, *a));
                prop_assert_eq!(&log.read_at(*p, *a).unwrap().body, b);
            }
        }
    }
}

/// Appends per second of the segment log against a plain `write` + `fdatasync` loop on the same
/// disk. Run: `cargo test --release -p tidings --lib store::log::tests::append_rate --
/// --ignored --nocapture` (`TIDINGS_LOG_BENCH_DIR` for another disk than the temporary one).
#[test]
#[ignore]
fn append_rate() {
    use std::io::Write;
    let base =
        std::env::var_os("TIDINGS_LOG_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let secs = 3.0;
    let body = vec![0x5Au8; 200];
    for group in [1usize, 256] {
        // The segment log.
        let tmp = tempfile::tempdir_in(&base).unwrap();
        let (mut log, _) = SegmentLog::open(tmp.path().join("log"), LogConfig::default()).unwrap();
        let started = Instant::now();
        let mut events = 0u64;
        while started.elapsed().as_secs_f64() < secs {
            let first = log.tail() + 1;
            let records: Vec<(u64, &[u8])> = (first..first + group as u64)
                .map(|p| (p, body.as_slice()))
                .collect();
            log.append_group(&records).unwrap();
            events += group as u64;
        }
        let log_rate = events as f64 / started.elapsed().as_secs_f64();
        drop(log);
        // The open's cost: it reads the last segment whole.
        let opening = Instant::now();
        let (log, _) = SegmentLog::open(tmp.path().join("log"), LogConfig::default()).unwrap();
        let open_time = opening.elapsed();
        let tail = log.tail();
        let segments = segment_files(&tmp.path().join("log")).len();
        drop(log);
        drop(tmp);
        println!(
            "open after {tail} events in {segments} segment(s): {open_time:.1?} (the last \
             segment read whole, page cache warm)"
        );
        // A plain loop: the same bytes (framed size) appended to a growing file, fdatasync each.
        let tmp = tempfile::tempdir_in(&base).unwrap();
        let mut file = fs::File::create(tmp.path().join("plain")).unwrap();
        let bytes = vec![0x5Au8; group * framed_len(200) as usize];
        let started = Instant::now();
        let mut plain_events = 0u64;
        while started.elapsed().as_secs_f64() < secs {
            file.write_all(&bytes).unwrap();
            file.sync_data().unwrap();
            plain_events += group as u64;
        }
        let plain_rate = plain_events as f64 / started.elapsed().as_secs_f64();
        println!(
            "groups of {group:>3} events of 200 bytes: segment log {:>9.0} events/s ({:>7.0} \
             groups/s), plain write+fdatasync {:>9.0} events/s ({:>7.0} groups/s), ratio {:.2}",
            log_rate,
            log_rate / group as f64,
            plain_rate,
            plain_rate / group as f64,
            log_rate / plain_rate
        );
    }
}
