//! Concurrency tests of the embedded store: optimistic concurrency under heavy contention on one
//! stream, many writers over many streams, and closing and reopening.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tidings::store::{
    AppendResult, EventData, EventStore, ExpectedVersion, Filter, RecordedEvent, SledEventStore,
    Snapshot, StoreError,
};

/// Every event of the log, in pages, checking that each page makes progress.
async fn read_log(store: &SledEventStore) -> Vec<RecordedEvent> {
    let mut out = Vec::new();
    let mut from = 1;
    loop {
        let batch = store.read_all(from, 1000, &Filter::all()).await.unwrap();
        out.extend(batch.events.iter().cloned());
        if batch.is_end() {
            return out;
        }
        assert!(batch.next_position > from, "read_all made no progress");
        from = batch.next_position;
    }
}

/// Parses a payload `"<task>:<seq>"`.
fn parse(payload: &[u8]) -> (u64, u64) {
    let text = std::str::from_utf8(payload).expect("utf-8 payload");
    let (t, s) = text.split_once(':').expect("task:seq payload");
    (t.parse().unwrap(), s.parse().unwrap())
}

/// 64 tasks append to one stream with `Exact`, retrying on conflict from a fresh
/// `stream_version`: every version is written once, every acknowledged event is the one at its
/// version, no update is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_appends_to_one_stream_lose_no_update() {
    const TASKS: u64 = 64;
    const EACH: u64 = 20;
    const STREAM: &str = "counter-1";
    let dir = tempfile::tempdir().unwrap();
    let store = SledEventStore::open(dir.path()).unwrap();

    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut acked: Vec<(u64, u64)> = Vec::new();
                let mut conflicts = 0u64;
                for seq in 0..EACH {
                    loop {
                        let v = store.stream_version(STREAM).await.unwrap();
                        let event = EventData::new("Incremented", format!("{task}:{seq}"));
                        match store
                            .append(STREAM, ExpectedVersion::Exact(v), vec![event])
                            .await
                        {
                            Ok(r) => {
                                assert_eq!(r.stream_version, v + 1, "version after Exact({v})");
                                assert_eq!(r.first_position, r.last_position);
                                acked.push((r.stream_version, seq));
                                break;
                            }
                            Err(StoreError::WrongExpectedVersion {
                                stream,
                                expected,
                                actual,
                            }) => {
                                assert_eq!(stream, STREAM);
                                assert_eq!(expected, ExpectedVersion::Exact(v));
                                assert!(actual > v, "the stream went from {v} back to {actual}");
                                conflicts += 1;
                            }
                            Err(e) => panic!("task {task}: append failed: {e}"),
                        }
                    }
                }
                (task, acked, conflicts)
            })
        })
        .collect();

    let mut acked_by_version: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    let mut conflicts = 0;
    for t in tasks {
        let (task, acked, c) = t.await.expect("writer task");
        conflicts += c;
        assert_eq!(acked.len() as u64, EACH, "task {task} acknowledged appends");
        assert!(
            acked.windows(2).all(|w| w[0].0 < w[1].0),
            "task {task}: its later appends got lower versions: {acked:?}"
        );
        for (version, seq) in acked {
            let previous = acked_by_version.insert(version, (task, seq));
            assert!(
                previous.is_none(),
                "version {version} acknowledged to {previous:?} and to ({task}, {seq})"
            );
        }
    }
    assert!(
        conflicts > 0,
        "64 writers on one stream should have conflicted"
    );

    let total = TASKS * EACH;
    assert_eq!(store.stream_version(STREAM).await.unwrap(), total);
    assert_eq!(store.head(), total);
    let events = store
        .read_stream(STREAM, 1, total as usize + 10)
        .await
        .unwrap();
    let versions: Vec<u64> = events.iter().map(|e| e.stream_version).collect();
    assert_eq!(
        versions,
        (1..=total).collect::<Vec<_>>(),
        "versions 1..={total}"
    );
    let positions: Vec<u64> = events.iter().map(|e| e.position).collect();
    assert_eq!(positions, (1..=total).collect::<Vec<_>>(), "positions");

    let mut next_seq: HashMap<u64, u64> = HashMap::new();
    for e in &events {
        let (task, seq) = parse(&e.payload);
        assert_eq!(
            acked_by_version.get(&e.stream_version),
            Some(&(task, seq)),
            "version {} holds {task}:{seq}, not what was acknowledged",
            e.stream_version
        );
        let expected_seq = next_seq.entry(task).or_default();
        assert_eq!(
            seq, *expected_seq,
            "task {task}'s events out of order or missing"
        );
        *expected_seq += 1;
    }
    assert_eq!(next_seq.len() as u64, TASKS);
    assert!(
        next_seq.values().all(|&n| n == EACH),
        "every task's events present"
    );
    let report = store.verify().await.unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
}

/// 32 tasks × 200 appends of 1–3 events over 500 streams with `Any`: positions are gap-free,
/// each stream's versions are gap-free and in position order, and each task's acknowledged
/// appends are in the log in the order they were acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_writers_over_many_streams() {
    const TASKS: u64 = 32;
    const APPENDS: u64 = 200;
    const STREAMS: u64 = 500;
    let dir = tempfile::tempdir().unwrap();
    let store = SledEventStore::open(dir.path()).unwrap();

    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut acked: Vec<(String, u64, AppendResult)> = Vec::new();
                for seq in 0..APPENDS {
                    let stream = format!(
                        "s{}-{}",
                        (task + seq) % 7,
                        (task * 131 + seq * 17) % STREAMS
                    );
                    let n = 1 + (task + seq) % 3;
                    let events = (0..n)
                        .map(|i| EventData::new("Wrote", format!("{task}:{}", seq * 3 + i)))
                        .collect();
                    let r = store
                        .append(&stream, ExpectedVersion::Any, events)
                        .await
                        .unwrap_or_else(|e| panic!("task {task}: append failed: {e}"));
                    assert_eq!(r.last_position - r.first_position + 1, n);
                    acked.push((stream, n, r));
                }
                (task, acked)
            })
        })
        .collect();
    let mut acks = Vec::new();
    for t in tasks {
        acks.push(t.await.expect("writer task"));
    }

    let log = read_log(&store).await;
    let head = store.head();
    assert_eq!(log.len() as u64, head);
    let expected_total: u64 = acks
        .iter()
        .flat_map(|(_, a)| a.iter().map(|(_, n, _)| n))
        .sum();
    assert_eq!(head, expected_total, "events in the log");
    for (i, e) in log.iter().enumerate() {
        assert_eq!(e.position, i as u64 + 1, "positions gap-free from 1");
    }

    // Per stream: versions 1, 2, 3, ... in position order; read_stream agrees with the log.
    let mut by_stream: HashMap<&str, Vec<&RecordedEvent>> = HashMap::new();
    for e in &log {
        by_stream.entry(&e.stream_id).or_default().push(e);
    }
    assert!(by_stream.len() > 400, "appends spread over many streams");
    for (stream, events) in &by_stream {
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e.stream_version, i as u64 + 1, "versions of {stream}");
        }
        let read = store.read_stream(stream, 1, 10_000).await.unwrap();
        let from_log: Vec<RecordedEvent> = events.iter().map(|e| (*e).clone()).collect();
        assert_eq!(read, from_log, "read_stream({stream}) against the log");
        assert_eq!(
            store.stream_version(stream).await.unwrap(),
            events.len() as u64
        );
    }

    // Per task: acknowledged appends are in the log, in acknowledgement order, holding that
    // task's events at the versions acknowledged.
    for (task, acked) in &acks {
        let mut last_position = 0;
        for (seq, (stream, n, r)) in acked.iter().enumerate() {
            assert!(
                r.first_position > last_position,
                "task {task}: append {seq} acknowledged at {} after one at {last_position}",
                r.first_position
            );
            last_position = r.last_position;
            for i in 0..*n {
                let e = &log[(r.first_position + i - 1) as usize];
                assert_eq!(&e.stream_id, stream);
                assert_eq!(e.stream_version, r.stream_version - n + 1 + i);
                assert_eq!(
                    parse(&e.payload),
                    (*task, seq as u64 * 3 + i),
                    "payload at position {}",
                    e.position
                );
            }
        }
    }
    let report = store.verify().await.unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
}

/// After every handle is dropped, the store reopens from its directory with everything in it,
/// and appends go on at head + 1 with the right stream versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_keeps_everything_and_continues() {
    let dir = tempfile::tempdir().unwrap();
    let snapshot = Snapshot {
        stream_version: 4,
        schema_version: 2,
        payload: b"state".to_vec(),
    };
    let (before, versions) = {
        let store = SledEventStore::open(dir.path()).unwrap();
        let tasks: Vec<_> = (0..8u64)
            .map(|task| {
                let store = store.clone();
                tokio::spawn(async move {
                    for seq in 0..25u64 {
                        let stream = format!("keep-{}", (task + seq) % 5);
                        let events = (0..1 + seq % 2)
                            .map(|i| EventData::new("Kept", format!("{task}:{}", seq * 2 + i)))
                            .collect();
                        store
                            .append(&stream, ExpectedVersion::Any, events)
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        store.save_checkpoint("projector", 17).await.unwrap();
        store
            .save_snapshot("keep-1", snapshot.clone())
            .await
            .unwrap();
        let log = read_log(&store).await;
        let mut versions = BTreeMap::new();
        for s in 0..5 {
            let stream = format!("keep-{s}");
            versions.insert(stream.clone(), store.stream_version(&stream).await.unwrap());
        }
        // Every handle goes here: the clones in the tasks are already gone.
        drop(store);
        (log, versions)
    };
    let head = before.len() as u64;
    assert_eq!(head, 8 * (13 + 12 * 2));

    for round in 0..2u64 {
        let store = SledEventStore::open(dir.path()).unwrap();
        assert_eq!(store.head(), head + 2 * round, "head after reopening");
        assert_eq!(store.watch_head().current(), head + 2 * round);
        let log = read_log(&store).await;
        assert_eq!(log[..before.len()], before[..], "the log after reopening");
        for (stream, v) in &versions {
            let v = v + u64::from(round == 1 && stream == "keep-3");
            assert_eq!(store.stream_version(stream).await.unwrap(), v, "{stream}");
        }
        assert_eq!(
            store.load_checkpoint("projector").await.unwrap(),
            Some(17 + round)
        );
        assert_eq!(
            store.load_snapshot("keep-1").await.unwrap(),
            Some(snapshot.clone())
        );
        if round == 0 {
            let v3 = versions["keep-3"];
            match store
                .append(
                    "keep-3",
                    ExpectedVersion::NoStream,
                    vec![EventData::new("X", "")],
                )
                .await
            {
                Err(StoreError::WrongExpectedVersion { actual, .. }) => assert_eq!(actual, v3),
                other => panic!("NoStream on a reopened stream: {other:?}"),
            }
            let r = store
                .append(
                    "keep-3",
                    ExpectedVersion::Exact(v3),
                    vec![EventData::new("AfterReopen", "x")],
                )
                .await
                .unwrap();
            assert_eq!(
                r.first_position,
                head + 1,
                "the first position after reopening"
            );
            assert_eq!(
                r.stream_version,
                v3 + 1,
                "the stream version after reopening"
            );
            store.save_checkpoint("projector", 18).await.unwrap();
            let r = store
                .append(
                    "fresh-1",
                    ExpectedVersion::NoStream,
                    vec![EventData::new("New", "")],
                )
                .await
                .unwrap();
            assert_eq!((r.first_position, r.stream_version), (head + 2, 1));
        } else {
            let tail = store.read_all(head + 1, 10, &Filter::all()).await.unwrap();
            let got: Vec<(&str, u64, &str)> = tail
                .events
                .iter()
                .map(|e| {
                    (
                        e.stream_id.as_str(),
                        e.stream_version,
                        e.event_type.as_str(),
                    )
                })
                .collect();
            assert_eq!(
                got,
                [
                    ("keep-3", versions["keep-3"] + 1, "AfterReopen"),
                    ("fresh-1", 1, "New")
                ]
            );
            assert_eq!(store.head(), head + 2);
            let report = store.verify().await.unwrap();
            assert!(report.is_ok(), "{:?}", report.problems);
            assert_eq!(report.events_checked, head + 2);
        }
        // A watch outlives the store and learns that it closed.
        let mut watch = store.watch_head();
        drop(store);
        let closed = tokio::time::timeout(Duration::from_secs(10), watch.changed()).await;
        assert!(
            matches!(closed, Ok(Err(StoreError::Closed))),
            "a watch on a dropped store: {closed:?}"
        );
    }
}

/// A store that is open cannot be opened a second time; once closed it can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_open_while_open_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledEventStore::open(dir.path()).unwrap();
    store
        .append("one-1", ExpectedVersion::Any, vec![EventData::new("A", "")])
        .await
        .unwrap();
    match SledEventStore::open(dir.path()) {
        Err(StoreError::InUse { path }) => assert_eq!(path, dir.path()),
        other => panic!("a second open of an open store must fail with InUse, got {other:?}"),
    }
    // The refused open disturbed nothing.
    let r = store
        .append(
            "one-1",
            ExpectedVersion::Exact(1),
            vec![EventData::new("B", "")],
        )
        .await
        .unwrap();
    assert_eq!(r.first_position, 2);
    store.close().await;
    match store
        .append("one-1", ExpectedVersion::Any, vec![EventData::new("C", "")])
        .await
    {
        Err(StoreError::Closed) => {}
        other => panic!("an append after close must fail with Closed, got {other:?}"),
    }
    assert_eq!(store.read_stream("one-1", 1, 10).await.unwrap().len(), 2);
    drop(store);
    let store = SledEventStore::open(dir.path()).unwrap();
    assert_eq!(store.head(), 2);
}

/// `close()` ends the store for everyone: a task that follows the head (holding its own clone of
/// the store, as a projection does) learns that the store closed instead of waiting forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_wakes_head_watchers_with_closed() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledEventStore::open(dir.path()).unwrap();
    store
        .append("c-1", ExpectedVersion::Any, vec![EventData::new("A", "")])
        .await
        .unwrap();
    let seen_by_follower = Arc::new(AtomicU64::new(0));
    let follower = {
        let store = store.clone();
        let mut watch = store.watch_head();
        let seen_by_follower = seen_by_follower.clone();
        tokio::spawn(async move {
            let mut seen = 0;
            loop {
                match watch.changed().await {
                    Ok(head) => {
                        seen = store
                            .read_all(1, 100, &Filter::all())
                            .await
                            .unwrap()
                            .head
                            .max(head);
                        seen_by_follower.store(seen, Ordering::SeqCst);
                    }
                    Err(e) => return (seen, e),
                }
            }
        })
    };
    store
        .append("c-1", ExpectedVersion::Any, vec![EventData::new("B", "")])
        .await
        .unwrap();
    // Close once the follower has seen the second append, however loaded the machine.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while seen_by_follower.load(Ordering::SeqCst) < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    store.close().await;
    // Generous: a follower that is never woken fails here however long the bound.
    match tokio::time::timeout(Duration::from_secs(60), follower).await {
        Ok(Ok((seen, StoreError::Closed))) => assert_eq!(seen, 2, "the follower saw the head"),
        Ok(Ok((_, e))) => panic!("the follower ended with {e}, not Closed"),
        Ok(Err(e)) => panic!("the follower task failed: {e}"),
        Err(_) => panic!(
            "after close(), HeadWatch::changed() still waits: a follower holding a clone of the \
             store never learns that it closed"
        ),
    }
}
