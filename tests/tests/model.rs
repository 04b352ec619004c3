//! Model-based property test of the embedded store: random sequences of appends (with every kind
//! of expected version), stream and global reads, checkpoints and reopens, each result checked
//! against a plain in-memory model of the log.

use std::collections::HashMap;

use proptest::prelude::*;
use tidings::store::{
    category_of, EventData, EventStore, ExpectedVersion, Filter, RecordedEvent, SledConfig,
    SledEventStore, StoreError,
};
use uuid::Uuid;

/// The streams appended to; the last one is only ever read (it stays unknown).
const STREAMS: [&str; 4] = ["alpha-1", "alpha-2", "beta-1", "gamma-1"];
/// How many of [`STREAMS`] are appended to.
const WRITTEN_STREAMS: usize = 3;
/// The checkpoint names; the last one is never saved.
const CHECKPOINTS: [&str; 3] = ["projector", "mailer", "never-saved"];

/// What an append expects, relative to the model's version of the stream.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// `ExpectedVersion::Any`.
    Any,
    /// `Exact` of the stream's current version.
    Correct,
    /// `Exact` of the current version plus 1 to 3.
    Above(u64),
    /// `Exact` of the current version minus 1 (plus 1 on an empty stream).
    Below,
    /// `ExpectedVersion::NoStream`.
    NoStream,
}

#[derive(Clone, Debug)]
enum Op {
    /// Append events (true: type `X`, false: type `Y`) to `STREAMS[stream]`.
    Append {
        stream: usize,
        expect: Expect,
        types: Vec<bool>,
    },
    ReadStream {
        stream: usize,
        from: u64,
        max: usize,
    },
    ReadAll {
        from: u64,
        filter: usize,
        max: usize,
    },
    SaveCheckpoint {
        name: usize,
        position: u64,
    },
    LoadCheckpoint {
        name: usize,
    },
    /// Close the store and open it again, with the settings of that index (see [`open`]).
    Reopen {
        settings: usize,
    },
}

fn expect_strategy() -> impl Strategy<Value = Expect> {
    prop_oneof![
        2 => Just(Expect::Any),
        3 => Just(Expect::Correct),
        1 => (1u64..=3).prop_map(Expect::Above),
        1 => Just(Expect::Below),
        1 => Just(Expect::NoStream),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..WRITTEN_STREAMS, expect_strategy(), prop::collection::vec(any::<bool>(), 1..=3))
            .prop_map(|(stream, expect, types)| Op::Append { stream, expect, types }),
        3 => (0..STREAMS.len(), 1u64..12, 0usize..6)
            .prop_map(|(stream, from, max)| Op::ReadStream { stream, from, max }),
        3 => (1u64..40, 0usize..5, 1usize..8)
            .prop_map(|(from, filter, max)| Op::ReadAll { from, filter, max }),
        1 => (0..CHECKPOINTS.len() - 1, 0u64..100)
            .prop_map(|(name, position)| Op::SaveCheckpoint { name, position }),
        1 => (0..CHECKPOINTS.len()).prop_map(|name| Op::LoadCheckpoint { name }),
        1 => (0usize..3).prop_map(|settings| Op::Reopen { settings }),
    ]
}

/// The filters `Op::ReadAll` picks from.
fn filter(index: usize) -> Filter {
    match index {
        0 => Filter::all(),
        1 => Filter::all().categories(["alpha"]),
        2 => Filter::all().event_types(["X"]),
        3 => Filter::all().categories(["beta"]).event_types(["Y"]),
        _ => Filter::all().categories(["gamma"]),
    }
}

/// An event as the model keeps it; its position is its index in the log plus one.
#[derive(Clone, Debug)]
struct ModelEvent {
    stream: String,
    version: u64,
    event_type: String,
    event_id: Uuid,
    payload: Vec<u8>,
}

/// The in-memory model: the log, each stream's version, the checkpoints.
#[derive(Default)]
struct Model {
    log: Vec<ModelEvent>,
    versions: HashMap<String, u64>,
    checkpoints: HashMap<String, u64>,
}

impl Model {
    fn version(&self, stream: &str) -> u64 {
        self.versions.get(stream).copied().unwrap_or(0)
    }

    fn head(&self) -> u64 {
        self.log.len() as u64
    }
}

/// Asserts that `got` is the model's event at `position`.
fn check_event(got: &RecordedEvent, model: &Model, position: u64, context: &str) {
    let want = &model.log[(position - 1) as usize];
    assert_eq!(got.position, position, "{context}: position");
    assert_eq!(
        got.stream_id, want.stream,
        "{context}: stream at {position}"
    );
    assert_eq!(
        got.stream_version, want.version,
        "{context}: version at {position}"
    );
    assert_eq!(
        got.category,
        category_of(&want.stream),
        "{context}: category"
    );
    assert_eq!(
        got.event_type, want.event_type,
        "{context}: type at {position}"
    );
    assert_eq!(
        got.event_id, want.event_id,
        "{context}: event id at {position}"
    );
    assert_eq!(
        got.payload, want.payload,
        "{context}: payload at {position}"
    );
    assert_eq!(got.schema_version, 1, "{context}: schema version");
    assert_eq!((got.correlation_id, got.causation_id), (None, None));
}

/// The store settings a case runs with: the defaults, the smallest log segments (4 KiB, a
/// rollover every few events) with every request committed alone and no stream-head cache, or
/// small segments and read buffers with a one-entry cache.
fn open(path: &std::path::Path, settings: usize) -> SledEventStore {
    let config = SledConfig::new(path);
    let config = match settings {
        0 => config,
        1 => config
            .segment_bytes(4096)
            .max_group(1)
            .stream_cache_capacity(0),
        _ => config
            .segment_bytes(64 * 1024)
            .read_buffer_bytes(4096)
            .stream_cache_capacity(1),
    };
    config
        .open()
        .unwrap_or_else(|e| panic!("open the store (settings {settings}): {e}"))
}

/// Runs `ops` against a fresh store first opened with `settings` (see [`open`]) and the model,
/// checking every result.
async fn run_ops(settings: usize, ops: &[Op]) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut store = open(dir.path(), settings);
    let mut model = Model::default();

    for (step, op) in ops.iter().enumerate() {
        let context = format!("step {step} ({op:?})");
        match op {
            Op::Append {
                stream,
                expect,
                types,
            } => {
                let stream = STREAMS[*stream];
                let current = model.version(stream);
                let expected = match expect {
                    Expect::Any => ExpectedVersion::Any,
                    Expect::Correct => ExpectedVersion::Exact(current),
                    Expect::Above(k) => ExpectedVersion::Exact(current + k),
                    Expect::Below if current > 0 => ExpectedVersion::Exact(current - 1),
                    Expect::Below => ExpectedVersion::Exact(1),
                    Expect::NoStream => ExpectedVersion::NoStream,
                };
                let events: Vec<EventData> = types
                    .iter()
                    .enumerate()
                    .map(|(i, x)| EventData::new(if *x { "X" } else { "Y" }, format!("{step}.{i}")))
                    .collect();
                let result = store.append(stream, expected, events.clone()).await;
                if expected.accepts(current) {
                    let r = result.unwrap_or_else(|e| panic!("{context}: append failed: {e}"));
                    let n = events.len() as u64;
                    assert_eq!(
                        r.first_position,
                        model.head() + 1,
                        "{context}: first position"
                    );
                    assert_eq!(
                        r.last_position,
                        model.head() + n,
                        "{context}: last position"
                    );
                    assert_eq!(r.stream_version, current + n, "{context}: stream version");
                    for (i, e) in events.into_iter().enumerate() {
                        model.log.push(ModelEvent {
                            stream: stream.to_owned(),
                            version: current + 1 + i as u64,
                            event_type: e.event_type,
                            event_id: e.event_id,
                            payload: e.payload,
                        });
                    }
                    model.versions.insert(stream.to_owned(), current + n);
                } else {
                    match result {
                        Err(StoreError::WrongExpectedVersion {
                            stream: s,
                            expected: e,
                            actual,
                        }) => assert_eq!(
                            (s.as_str(), e, actual),
                            (stream, expected, current),
                            "{context}: WrongExpectedVersion"
                        ),
                        other => panic!("{context}: expected WrongExpectedVersion, got {other:?}"),
                    }
                }
            }
            Op::ReadStream { stream, from, max } => {
                let stream = STREAMS[*stream];
                let got = store.read_stream(stream, *from, *max).await.unwrap();
                let want: Vec<u64> = model
                    .log
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| e.stream == stream && e.version >= *from)
                    .map(|(i, _)| i as u64 + 1)
                    .take(*max)
                    .collect();
                assert_eq!(got.len(), want.len(), "{context}: events read");
                for (e, position) in got.iter().zip(want) {
                    check_event(e, &model, position, &context);
                }
            }
            Op::ReadAll {
                from,
                filter: f,
                max,
            } => {
                let filter = filter(*f);
                let batch = store.read_all(*from, *max, &filter).await.unwrap();
                let want: Vec<u64> = model
                    .log
                    .iter()
                    .enumerate()
                    .map(|(i, e)| (i as u64 + 1, e))
                    .filter(|(p, e)| {
                        *p >= *from && filter.matches(category_of(&e.stream), &e.event_type)
                    })
                    .map(|(p, _)| p)
                    .take(*max)
                    .collect();
                assert_eq!(batch.head, model.head(), "{context}: head of the page");
                assert_eq!(batch.events.len(), want.len(), "{context}: events read");
                for (e, position) in batch.events.iter().zip(&want) {
                    check_event(e, &model, *position, &context);
                }
                // The log is far smaller than one bounded scan: a page ends at max matches or at
                // the head.
                let next = if want.len() == *max {
                    want.last().unwrap() + 1
                } else {
                    (*from).max(model.head() + 1)
                };
                assert_eq!(batch.next_position, next, "{context}: next_position");
                assert_eq!(batch.is_end(), next > model.head(), "{context}: is_end");
            }
            Op::SaveCheckpoint { name, position } => {
                let name = CHECKPOINTS[*name];
                let saved = store.save_checkpoint(name, *position).await;
                if *position > model.head() {
                    // A checkpoint past the head is refused (conformance
                    // `a_checkpoint_past_the_head_is_refused`).
                    assert!(
                        matches!(saved, Err(StoreError::InvalidInput(_))),
                        "{context}: checkpoint {position} past the head: {saved:?}"
                    );
                } else {
                    saved.unwrap();
                    model.checkpoints.insert(name.to_owned(), *position);
                }
            }
            Op::LoadCheckpoint { name } => {
                let name = CHECKPOINTS[*name];
                assert_eq!(
                    store.load_checkpoint(name).await.unwrap(),
                    model.checkpoints.get(name).copied(),
                    "{context}: checkpoint {name}"
                );
            }
            Op::Reopen { settings } => {
                drop(store);
                store = open(dir.path(), *settings);
                for name in CHECKPOINTS {
                    assert_eq!(
                        store.load_checkpoint(name).await.unwrap(),
                        model.checkpoints.get(name).copied(),
                        "{context}: checkpoint {name} after reopening"
                    );
                }
            }
        }
        assert_eq!(store.head(), model.head(), "{context}: head");
        assert_eq!(
            store.watch_head().current(),
            model.head(),
            "{context}: watched head"
        );
    }

    // The whole store against the model.
    for stream in STREAMS {
        assert_eq!(
            store.stream_version(stream).await.unwrap(),
            model.version(stream),
            "final version of {stream}"
        );
    }
    let all = store
        .read_all(1, model.log.len() + 1, &Filter::all())
        .await
        .unwrap();
    assert_eq!(all.events.len(), model.log.len(), "final log length");
    for (i, e) in all.events.iter().enumerate() {
        check_event(e, &model, i as u64 + 1, "final log");
    }
    let report = store.verify().await.unwrap();
    assert!(report.is_ok(), "verify: {:?}", report.problems);
    assert_eq!(report.events_checked, model.head());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn store_matches_the_model(
        settings in 0usize..3,
        ops in prop::collection::vec(op_strategy(), 1..100),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        runtime.block_on(run_ops(settings, &ops));
    }
}
