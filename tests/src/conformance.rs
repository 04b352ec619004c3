//! The backend conformance suite: what every [`EventStore`](tidings::store::EventStore) must do,
//! written once.
//!
//! Each case is a `pub async fn case<S: EventStore>(store: S)` that gets a fresh, empty store and
//! panics (with a message naming the broken promise) when the store breaks the contract
//! documented on [`EventStore`](tidings::store::EventStore). Nothing here names a backend type.
//!
//! A backend runs the whole suite with [`conformance_suite!`](crate::conformance_suite), which
//! generates one `#[test]` per case from a factory that returns a fresh empty store together with
//! a guard (for example the [`tempfile::TempDir`] that holds its files) that must outlive it:
//!
//! ```no_run
//! use tidings::store::SledEventStore;
//!
//! fn fresh_store() -> (SledEventStore, tempfile::TempDir) {
//!     let dir = tempfile::tempdir().expect("temp dir");
//!     let store = SledEventStore::open(dir.path()).expect("open store");
//!     (store, dir)
//! }
//!
//! tidings_tests::conformance_suite!(fresh_store);
//! # fn main() {}
//! ```
//!
//! Each generated test goes through [`run`](crate::conformance::run): its own multi-thread tokio
//! runtime (the cases spawn tasks), a time limit of
//! [`CASE_TIMEOUT`](crate::conformance::CASE_TIMEOUT), and the store dropped before its guard. A
//! backend whose factory is async can call the case functions directly from its own tests instead.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tidings::store::{
    category_of, state_page_is_full, stream_page_is_full, AppendResult, CheckpointInfo, EventData,
    EventStore, ExpectedVersion, Filter, LeaseAttempt, LeaseHolder, Metadata, ReadBatch,
    RecordedEvent, Result, Snapshot, StateWrite, StoreError, StreamInfo, MAX_APPEND_BYTES,
    MAX_EVENT_TYPE_LEN, MAX_METADATA_KEY_LEN, MAX_METADATA_LEN, MAX_PAYLOAD_LEN, MAX_STREAM_ID_LEN,
    READ_PAGE_BYTES,
};
use uuid::Uuid;

/// How long one case may take before it fails as hung.
pub const CASE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a case waits for a notification that must come.
const WAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How many events the large-log cases write: more than one bounded `read_all` scan of the
/// embedded backend (16 Ki events), so that paging and filtered progress are really exercised.
pub const LARGE_LOG_EVENTS: u64 = 20_000;

/// Runs one conformance `case` on a store made by `factory`.
///
/// Builds a multi-thread tokio runtime (2 workers) and calls `factory` inside its context, runs
/// the case under [`CASE_TIMEOUT`], shuts the runtime down, and only then drops the guard, so that
/// a store's files outlive every task that could still touch them.
pub fn run<S, G, F, C, Fut>(factory: F, case: C)
where
    S: EventStore,
    F: FnOnce() -> (S, G),
    C: FnOnce(S) -> Fut,
    Fut: Future<Output = ()>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build a tokio runtime");
    let (store, guard) = {
        let _context = runtime.enter();
        factory()
    };
    runtime.block_on(async {
        if tokio::time::timeout(CASE_TIMEOUT, case(store))
            .await
            .is_err()
        {
            panic!("conformance case did not finish within {CASE_TIMEOUT:?}");
        }
    });
    drop(runtime);
    drop(guard);
}

/// [`run`] for a backend that needs a service: `factory` (called outside any runtime) returns
/// `None`, after saying loudly why, when the service is not there, and the case is skipped.
/// Used by `conformance_suite!(if_available factory)`.
pub fn run_if_available<S, G, F, C, Fut>(factory: F, case: C)
where
    S: EventStore,
    F: FnOnce() -> Option<(S, G)>,
    C: FnOnce(S) -> Fut,
    Fut: Future<Output = ()>,
{
    if let Some((store, guard)) = factory() {
        run(move || (store, guard), case);
    }
}

/// Generates one `#[test]` per conformance case, each on a fresh store from `$factory`.
///
/// `$factory` is anything callable as `FnOnce() -> (S, G)` where `S:`
/// [`EventStore`](tidings::store::EventStore): `S` is a fresh, empty store and `G` a guard
/// dropped after it (a temp dir, a container handle, `()`). The tests are named after the case
/// functions of [`conformance`](crate::conformance), at the place of the macro call; put the call
/// in a module of its own to keep the names apart.
#[macro_export]
macro_rules! conformance_suite {
    (if_available $factory:expr) => {
        $crate::conformance_suite!(@list run_if_available $factory);
    };
    (@list $runner:ident $factory:expr) => {
        $crate::conformance_suite!(@cases $runner $factory;
            expected_version_any,
            expected_version_no_stream,
            expected_version_exact,
            wrong_expected_version_writes_nothing,
            empty_append_is_invalid,
            invalid_stream_ids_are_rejected,
            invalid_event_types_and_payloads_are_rejected,
            largest_payloads_round_trip,
            an_append_beyond_the_byte_limit_is_refused,
            reads_are_paged_by_bytes,
            append_result_positions_and_versions,
            global_positions_are_gap_free_across_streams,
            concurrent_appends_in_one_commit_get_distinct_versions,
            concurrent_no_stream_appends_have_one_winner,
            optimistic_concurrency_under_contention,
            read_stream_from_version,
            read_stream_with_max_count,
            read_stream_of_unknown_stream_is_empty,
            recorded_events_carry_every_field,
            category_is_the_stream_id_before_the_first_dash,
            stream_version_follows_appends,
            read_all_from_position,
            read_all_pages,
            read_all_filters_by_category,
            read_all_filters_by_event_type,
            read_all_filters_by_category_and_event_type,
            read_all_filter_matching_nothing_makes_progress,
            streamed_read_of_a_large_log,
            checkpoints,
            a_checkpoint_past_the_head_is_refused,
            checkpoint_commits_carry_state_atomically,
            checkpoint_commit_with_a_wrong_expectation_writes_nothing,
            state_scans_page_by_prefix,
            snapshots,
            a_snapshot_beyond_the_limit_is_refused,
            watch_head_current_value,
            watch_head_changed_wakes_after_append_in_another_task,
            watch_head_wait_for,
            watch_head_reports_closed_after_the_store_is_dropped,
            head_is_the_last_appended_position,
            events_above_head_are_never_returned,
            timestamps_are_monotone_with_position,
            verify_reports_a_healthy_store,
            list_streams_pages_through_every_stream_once_with_its_version,
            list_checkpoints_pages_through_every_checkpoint_in_name_order,
            leases_are_listed_by_prefix_in_name_order,
            import_reproduces_recorded_events_exactly_and_appends_continue_after_it,
            import_that_does_not_continue_the_log_writes_nothing,
            metadata_round_trips_through_append_import_and_every_read,
        );
    };
    (@cases $runner:ident $factory:expr; $($case:ident),+ $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::conformance::$runner($factory, $crate::conformance::$case);
            }
        )+
    };
    ($factory:expr) => {
        $crate::conformance_suite!(@list run $factory);
    };
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// An event of `event_type` with `payload`.
fn ev(event_type: &str, payload: impl Into<Vec<u8>>) -> EventData {
    EventData::new(event_type, payload)
}

/// `n` events of type `"Happened"` whose payloads say `tag` and their index.
fn evs(tag: &str, n: usize) -> Vec<EventData> {
    (0..n)
        .map(|i| ev("Happened", format!("{tag}#{i}")))
        .collect()
}

/// Appends and panics with context on failure.
async fn ok_append<S: EventStore>(
    store: &S,
    stream: &str,
    expected: ExpectedVersion,
    events: Vec<EventData>,
) -> AppendResult {
    store
        .append(stream, expected, events)
        .await
        .unwrap_or_else(|e| panic!("append to {stream:?} with expected {expected} failed: {e}"))
}

/// Asserts that `result` is a `WrongExpectedVersion` for `stream` with `expected` and `actual`.
fn assert_wrong_version<T: Debug>(
    result: Result<T>,
    stream: &str,
    expected: ExpectedVersion,
    actual: u64,
) {
    match result {
        Err(StoreError::WrongExpectedVersion {
            stream: s,
            expected: e,
            actual: a,
        }) => assert_eq!(
            (s.as_str(), e, a),
            (stream, expected, actual),
            "WrongExpectedVersion carries (stream, expected, actual)"
        ),
        other => panic!(
            "append to {stream:?} expecting {expected} (actual {actual}) must fail with \
             WrongExpectedVersion, got {other:?}"
        ),
    }
}

/// Asserts that `result` is an `InvalidInput` error.
fn assert_invalid<T: Debug>(result: Result<T>, what: &str) {
    match result {
        Err(StoreError::InvalidInput(_)) => {}
        other => panic!("{what} must fail with InvalidInput, got {other:?}"),
    }
}

/// Reads the whole log through `filter` in pages of `page`, checking on the way that every page
/// respects `max_count`, stays in position order, and makes progress until its end.
async fn read_everything<S: EventStore>(
    store: &S,
    filter: &Filter,
    page: usize,
) -> Vec<RecordedEvent> {
    let mut out: Vec<RecordedEvent> = Vec::new();
    let mut from = 1;
    let mut pages = 0u64;
    loop {
        let batch = store
            .read_all(from, page, filter)
            .await
            .unwrap_or_else(|e| panic!("read_all({from}, {page}) failed: {e}"));
        pages += 1;
        assert!(
            batch.events.len() <= page,
            "read_all returned {} events for max_count {page}",
            batch.events.len()
        );
        let mut previous = out.last().map_or(from.saturating_sub(1), |e| e.position);
        for e in &batch.events {
            assert!(
                e.position >= from && e.position > previous && e.position < batch.next_position,
                "read_all({from}) returned position {} out of order (previous {previous}, \
                 next_position {})",
                e.position,
                batch.next_position
            );
            assert!(
                e.position <= batch.head,
                "read_all returned position {} above the head {}",
                e.position,
                batch.head
            );
            assert!(
                filter.matches(&e.category, &e.event_type),
                "read_all returned an event the filter leaves out: {e:?}"
            );
            previous = e.position;
        }
        out.extend(batch.events.iter().cloned());
        if batch.is_end() {
            return out;
        }
        assert!(
            batch.next_position > from,
            "read_all({from}) made no progress: next_position {} with head {}",
            batch.next_position,
            batch.head
        );
        assert!(
            pages <= batch.head + 2,
            "read_all took more pages than there are events"
        );
        from = batch.next_position;
    }
}

/// Every event of the log, in position order.
async fn all_events<S: EventStore>(store: &S) -> Vec<RecordedEvent> {
    read_everything(store, &Filter::all(), 1000).await
}

/// Asserts that `positions` is exactly `1..=n`.
fn assert_gap_free(positions: impl IntoIterator<Item = u64>, n: u64, what: &str) {
    let positions: Vec<u64> = positions.into_iter().collect();
    let expected: Vec<u64> = (1..=n).collect();
    if positions != expected {
        let first_bad = positions
            .iter()
            .zip(&expected)
            .position(|(a, b)| a != b)
            .unwrap_or(positions.len().min(expected.len()));
        panic!(
            "{what}: expected 1..={n} without gaps, got {} values, first difference at index \
             {first_bad} (got {:?}, expected {:?})",
            positions.len(),
            positions.get(first_bad),
            expected.get(first_bad)
        );
    }
}

/// Writes `total` events in appends of up to 500, round-robin over ten streams of category
/// `bulk`, all of type `"Filled"`, each payload its position (as the store should assign it,
/// given the store starts empty).
async fn fill_log<S: EventStore>(store: &S, total: u64) {
    let mut written = 0u64;
    let mut round = 0u64;
    while written < total {
        let n = (total - written).min(500);
        let stream = format!("bulk-{}", round % 10);
        let events = (0..n)
            .map(|i| ev("Filled", (written + 1 + i).to_be_bytes().to_vec()))
            .collect();
        let r = ok_append(store, &stream, ExpectedVersion::Any, events).await;
        assert_eq!(r.first_position, written + 1, "bulk append first position");
        written += n;
        round += 1;
    }
    assert_eq!(store.head(), total, "head after filling the log");
}

/// The wall clock now, in microseconds since the Unix epoch.
fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

// ---------------------------------------------------------------------------------------------
// Expected versions and invalid input
// ---------------------------------------------------------------------------------------------

/// `Any` creates a stream and appends to an existing one, whatever its version.
pub async fn expected_version_any<S: EventStore>(store: S) {
    let r = ok_append(&store, "any-1", ExpectedVersion::Any, evs("a", 2)).await;
    assert_eq!(r.stream_version, 2, "Any on a new stream");
    let r = ok_append(&store, "any-1", ExpectedVersion::Any, evs("b", 1)).await;
    assert_eq!(r.stream_version, 3, "Any on an existing stream");
    assert_eq!(store.stream_version("any-1").await.unwrap(), 3);
}

/// `NoStream` succeeds only on a stream with no events; otherwise it fails with the actual
/// version and writes nothing.
pub async fn expected_version_no_stream<S: EventStore>(store: S) {
    let r = ok_append(&store, "nostream-1", ExpectedVersion::NoStream, evs("a", 3)).await;
    assert_eq!(
        (r.first_position, r.last_position, r.stream_version),
        (1, 3, 3)
    );
    assert_wrong_version(
        store
            .append("nostream-1", ExpectedVersion::NoStream, evs("b", 1))
            .await,
        "nostream-1",
        ExpectedVersion::NoStream,
        3,
    );
    // Another stream is still new.
    let r = ok_append(&store, "nostream-2", ExpectedVersion::NoStream, evs("c", 1)).await;
    assert_eq!((r.first_position, r.stream_version), (4, 1));
    assert_eq!(store.stream_version("nostream-1").await.unwrap(), 3);
    assert_eq!(store.head(), 4);
}

/// `Exact(n)` succeeds only at version `n` (`Exact(0)` on a new stream); wrong versions fail with
/// the right `expected` and `actual`.
pub async fn expected_version_exact<S: EventStore>(store: S) {
    assert_wrong_version(
        store
            .append("exact-1", ExpectedVersion::Exact(5), evs("x", 1))
            .await,
        "exact-1",
        ExpectedVersion::Exact(5),
        0,
    );
    let r = ok_append(&store, "exact-1", ExpectedVersion::Exact(0), evs("a", 2)).await;
    assert_eq!(r.stream_version, 2, "Exact(0) on a new stream");
    let r = ok_append(&store, "exact-1", ExpectedVersion::Exact(2), evs("b", 1)).await;
    assert_eq!(r.stream_version, 3);
    for wrong in [0, 1, 2, 4, 100] {
        assert_wrong_version(
            store
                .append("exact-1", ExpectedVersion::Exact(wrong), evs("x", 1))
                .await,
            "exact-1",
            ExpectedVersion::Exact(wrong),
            3,
        );
    }
    let r = ok_append(&store, "exact-1", ExpectedVersion::Exact(3), evs("c", 2)).await;
    assert_eq!(
        (r.first_position, r.last_position, r.stream_version),
        (4, 5, 5)
    );
}

/// A refused append writes nothing: no events, no positions used, no version change.
pub async fn wrong_expected_version_writes_nothing<S: EventStore>(store: S) {
    ok_append(&store, "refused-1", ExpectedVersion::NoStream, evs("a", 2)).await;
    let before = all_events(&store).await;
    let attempts = [
        ExpectedVersion::NoStream,
        ExpectedVersion::Exact(0),
        ExpectedVersion::Exact(1),
        ExpectedVersion::Exact(3),
    ];
    for expected in attempts {
        assert_wrong_version(
            store.append("refused-1", expected, evs("bad", 3)).await,
            "refused-1",
            expected,
            2,
        );
        assert_eq!(store.head(), 2, "head after a refused append");
        assert_eq!(store.stream_version("refused-1").await.unwrap(), 2);
    }
    assert_eq!(
        all_events(&store).await,
        before,
        "the log after refused appends"
    );
    let stream = store.read_stream("refused-1", 1, 100).await.unwrap();
    assert_eq!(stream.len(), 2, "the stream after refused appends");
    assert!(
        stream.iter().all(|e| e.payload.starts_with(b"a#")),
        "a refused event was stored: {stream:?}"
    );
    // The next accepted append takes the next position: refused appends left no hole.
    let r = ok_append(&store, "refused-2", ExpectedVersion::Any, evs("b", 1)).await;
    assert_eq!(r.first_position, 3, "first position after refused appends");
    let r = ok_append(&store, "refused-1", ExpectedVersion::Exact(2), evs("c", 1)).await;
    assert_eq!((r.first_position, r.stream_version), (4, 3));
    assert_gap_free(
        all_events(&store).await.iter().map(|e| e.position),
        4,
        "positions",
    );
}

/// An append without events is invalid input, whatever the expected version, and writes nothing.
pub async fn empty_append_is_invalid<S: EventStore>(store: S) {
    for expected in [
        ExpectedVersion::Any,
        ExpectedVersion::NoStream,
        ExpectedVersion::Exact(0),
    ] {
        assert_invalid(
            store.append("empty-1", expected, Vec::new()).await,
            "an append of no events",
        );
    }
    ok_append(&store, "empty-1", ExpectedVersion::Any, evs("a", 1)).await;
    assert_invalid(
        store
            .append("empty-1", ExpectedVersion::Exact(1), Vec::new())
            .await,
        "an append of no events to an existing stream",
    );
    assert_eq!(store.head(), 1);
    assert_eq!(store.stream_version("empty-1").await.unwrap(), 1);
}

/// Empty and oversized stream ids are invalid input and write nothing.
pub async fn invalid_stream_ids_are_rejected<S: EventStore>(store: S) {
    assert_invalid(
        store.append("", ExpectedVersion::Any, evs("a", 1)).await,
        "an append to the empty stream id",
    );
    assert_invalid(
        store
            .append("", ExpectedVersion::NoStream, evs("a", 1))
            .await,
        "an append to the empty stream id with NoStream",
    );
    let long = "s".repeat(MAX_STREAM_ID_LEN + 1);
    assert_invalid(
        store.append(&long, ExpectedVersion::Any, evs("a", 1)).await,
        "an append to an oversized stream id",
    );
    assert_eq!(store.head(), 0, "invalid appends wrote something");
    // The longest allowed id works.
    let longest = "s".repeat(MAX_STREAM_ID_LEN);
    let r = ok_append(&store, &longest, ExpectedVersion::NoStream, evs("a", 1)).await;
    assert_eq!((r.first_position, r.stream_version), (1, 1));
    let read = store.read_stream(&longest, 1, 10).await.unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].stream_id, longest);
}

/// Empty or oversized event types and oversized payloads are invalid input; the whole append is
/// refused, including its valid events.
pub async fn invalid_event_types_and_payloads_are_rejected<S: EventStore>(store: S) {
    assert_invalid(
        store
            .append(
                "types-1",
                ExpectedVersion::Any,
                vec![ev("Ok", "x"), ev("", "y")],
            )
            .await,
        "an event with an empty type",
    );
    assert_invalid(
        store
            .append(
                "types-1",
                ExpectedVersion::Any,
                vec![ev(&"T".repeat(MAX_EVENT_TYPE_LEN + 1), "y")],
            )
            .await,
        "an event with an oversized type",
    );
    assert_invalid(
        store
            .append(
                "types-1",
                ExpectedVersion::Any,
                vec![ev("Ok", "x"), ev("Big", vec![0u8; MAX_PAYLOAD_LEN + 1])],
            )
            .await,
        "an event with an oversized payload",
    );
    assert_eq!(store.head(), 0, "invalid appends wrote something");
    assert_eq!(store.stream_version("types-1").await.unwrap(), 0);
    assert!(store
        .read_stream("types-1", 1, 10)
        .await
        .unwrap()
        .is_empty());
    let r = ok_append(
        &store,
        "types-1",
        ExpectedVersion::NoStream,
        vec![ev(&"T".repeat(MAX_EVENT_TYPE_LEN), "")],
    )
    .await;
    assert_eq!(r.first_position, 1, "the longest allowed type is accepted");
}

/// Payloads up to [`MAX_PAYLOAD_LEN`] are stored and read back intact, several in one append
/// and next to small events.
pub async fn largest_payloads_round_trip<S: EventStore>(store: S) {
    let big = |seed: u8| -> Vec<u8> {
        (0..MAX_PAYLOAD_LEN)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    };
    let events = vec![
        ev("Small", "a"),
        ev("Big", big(1)),
        ev("Big", big(2)),
        ev("Small", "b"),
    ];
    let r = ok_append(&store, "big-1", ExpectedVersion::NoStream, events.clone()).await;
    assert_eq!((r.first_position, r.last_position), (1, 4));
    ok_append(
        &store,
        "big-2",
        ExpectedVersion::NoStream,
        vec![ev("Big", big(3))],
    )
    .await;
    let read = whole_stream(&store, "big-1", 10).await;
    assert_eq!(read.len(), 4);
    for (e, d) in read.iter().zip(&events) {
        assert!(
            e.payload == d.payload,
            "payload of {} bytes at position {} came back changed ({} bytes)",
            d.payload.len(),
            e.position,
            e.payload.len()
        );
    }
    // Each page holds one event of the largest size: it is beyond the page's byte budget.
    let page = store.read_all(3, 10, &Filter::all()).await.unwrap();
    let sizes: Vec<usize> = page.events.iter().map(|e| e.payload.len()).collect();
    assert_eq!(sizes, [MAX_PAYLOAD_LEN]);
    assert_eq!(page.next_position, 4);
    let page = store.read_all(4, 10, &Filter::all()).await.unwrap();
    let sizes: Vec<usize> = page.events.iter().map(|e| e.payload.len()).collect();
    assert_eq!(sizes, [1, MAX_PAYLOAD_LEN]);
    assert!(page.events[1].payload == big(3), "payload of big-2");
}

/// Every event of `stream`, read in pages of `max_count` until a page that is not full.
async fn whole_stream<S: EventStore>(
    store: &S,
    stream: &str,
    max_count: usize,
) -> Vec<RecordedEvent> {
    let mut out: Vec<RecordedEvent> = Vec::new();
    loop {
        let from = out.last().map_or(1, |e| e.stream_version + 1);
        let page = store.read_stream(stream, from, max_count).await.unwrap();
        assert!(
            page.len() <= max_count,
            "read_stream returned more than max_count"
        );
        let full = stream_page_is_full(&page, max_count);
        out.extend(page);
        if !full {
            return out;
        }
    }
}

/// One append (or one import call) carries at most `MAX_APPEND_BYTES` of payloads and type
/// names: beyond it the request is `InvalidInput` and writes nothing, however small each event.
pub async fn an_append_beyond_the_byte_limit_is_refused<S: EventStore>(store: S) {
    let largest = || ev("Big", vec![5u8; MAX_PAYLOAD_LEN]);
    // Four events of the largest size are the limit's payloads, and their type names go beyond.
    let four: Vec<EventData> = (0..4).map(|_| largest()).collect();
    match store
        .append("huge-1", ExpectedVersion::NoStream, four)
        .await
    {
        Err(StoreError::InvalidInput(reason)) => {
            assert!(reason.contains(&MAX_APPEND_BYTES.to_string()), "{reason}")
        }
        other => panic!("an append beyond MAX_APPEND_BYTES: {other:?}"),
    }
    // Many small events that add up beyond the limit.
    let many: Vec<EventData> = (0..(MAX_APPEND_BYTES / (64 * 1024) + 1))
        .map(|_| ev("Part", vec![1u8; 64 * 1024]))
        .collect();
    assert_invalid(
        store.append("huge-2", ExpectedVersion::Any, many).await,
        "an append of many events beyond MAX_APPEND_BYTES",
    );
    assert_eq!(store.head(), 0, "a refused append writes nothing");
    assert_eq!(store.stream_version("huge-1").await.unwrap(), 0);
    // An import call is bounded the same way.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let imported: Vec<RecordedEvent> = (1..=4)
        .map(|p| {
            let mut event = recorded(p, "huge-3", p, now);
            event.payload = vec![5u8; MAX_PAYLOAD_LEN].into();
            event
        })
        .collect();
    assert_invalid(
        store.import(imported).await,
        "an import beyond MAX_APPEND_BYTES",
    );
    assert_eq!(store.head(), 0, "a refused import writes nothing");
    // Three of the largest with small ones fit.
    let mut three: Vec<EventData> = (0..3).map(|_| largest()).collect();
    three.push(ev("Small", "x"));
    let r = ok_append(&store, "huge-1", ExpectedVersion::NoStream, three).await;
    assert_eq!((r.first_position, r.last_position), (1, 4));
}

/// A page of `read_all`, `read_stream` and `scan_state` ends at the event (or entry) that brings
/// its bytes to `READ_PAGE_BYTES`, whatever `max_count` asks, and always holds one; paging on
/// (by `next_position`, or while the page is full) reads everything once, in order.
pub async fn reads_are_paged_by_bytes<S: EventStore>(store: S) {
    let third = READ_PAGE_BYTES * 3 / 4; // two of them go past the budget
    let wide = |i: u8| ev("Wide", vec![i; third]);
    for i in 0..5u8 {
        ok_append(&store, "wide-1", ExpectedVersion::Any, vec![wide(i)]).await;
        ok_append(&store, "thin-1", ExpectedVersion::Any, evs("t", 3)).await;
    }
    // Positions: wide-1 at 1, 5, 9, 13, 17; thin-1 around them.
    let page = store.read_stream("wide-1", 1, 100).await.unwrap();
    assert_eq!(page.len(), 2, "a stream page ends at the byte budget");
    assert!(stream_page_is_full(&page, 100));
    let whole = whole_stream(&store, "wide-1", 100).await;
    let versions: Vec<u64> = whole.iter().map(|e| e.stream_version).collect();
    assert_eq!(versions, [1, 2, 3, 4, 5]);
    for (i, e) in whole.iter().enumerate() {
        assert!(
            e.payload == vec![i as u8; third],
            "payload of version {}",
            i + 1
        );
    }
    let page = store.read_all(1, 100, &Filter::all()).await.unwrap();
    let positions: Vec<u64> = page.events.iter().map(|e| e.position).collect();
    assert_eq!(
        positions,
        [1, 2, 3, 4, 5],
        "a global page ends at the byte budget"
    );
    assert_eq!(page.next_position, 6);
    assert!(!page.is_end());
    let wide_only = Filter::all().categories(["wide"]);
    let page = store.read_all(2, 100, &wide_only).await.unwrap();
    let positions: Vec<u64> = page.events.iter().map(|e| e.position).collect();
    assert_eq!(positions, [5, 9], "a filtered page ends at the byte budget");
    assert_eq!(page.next_position, 10);
    let all = read_everything(&store, &Filter::all(), 100).await;
    assert_eq!(all.len(), 20);
    let filtered = read_everything(&store, &wide_only, 100).await;
    assert_eq!(filtered.len(), 5);
    // One event beyond the budget is a page by itself.
    ok_append(
        &store,
        "wide-1",
        ExpectedVersion::Any,
        vec![ev("Wide", vec![9u8; MAX_PAYLOAD_LEN])],
    )
    .await;
    let page = store.read_stream("wide-1", 6, 100).await.unwrap();
    assert_eq!(page.len(), 1);
    let page = store.read_all(21, 100, &Filter::all()).await.unwrap();
    assert_eq!((page.events.len(), page.next_position), (1, 22));

    // State entries.
    let head = store.head();
    let state: Vec<StateWrite> = (0..5u8)
        .map(|i| StateWrite {
            key: vec![b'k', i],
            value: Some(vec![i; third]),
        })
        .collect();
    store
        .commit_checkpoint("wide", None, head, state)
        .await
        .unwrap();
    let page = store.scan_state("wide", b"k", b"", 100).await.unwrap();
    assert_eq!(page.len(), 2, "a state page ends at the byte budget");
    assert!(state_page_is_full(&page, 100));
    let mut keys = Vec::new();
    let mut from = Vec::new();
    loop {
        let page = store.scan_state("wide", b"k", &from, 100).await.unwrap();
        let full = state_page_is_full(&page, 100);
        for (key, value) in &page {
            assert!(value == &vec![key[1]; third], "value of {key:?}");
            keys.push(key.clone());
        }
        match page.last() {
            Some((key, _)) if full => {
                from = key.clone();
                from.push(0);
            }
            _ => break,
        }
    }
    assert_eq!(keys, (0..5u8).map(|i| vec![b'k', i]).collect::<Vec<_>>());
}

// ---------------------------------------------------------------------------------------------
// Positions and versions
// ---------------------------------------------------------------------------------------------

/// `AppendResult` gives the first and last global position and the stream's new version.
pub async fn append_result_positions_and_versions<S: EventStore>(store: S) {
    let plan: [(&str, usize); 7] = [
        ("acct-1", 1),
        ("acct-1", 3),
        ("acct-2", 2),
        ("acct-1", 1),
        ("acct-3", 5),
        ("acct-2", 1),
        ("acct-1", 2),
    ];
    let mut position = 0u64;
    let mut versions: HashMap<&str, u64> = HashMap::new();
    for (stream, n) in plan {
        let version = versions.entry(stream).or_default();
        let r = ok_append(
            &store,
            stream,
            ExpectedVersion::Exact(*version),
            evs(stream, n),
        )
        .await;
        let expected = AppendResult::new(position + 1, position + n as u64, *version + n as u64);
        assert_eq!(r, expected, "AppendResult of {n} events to {stream}");
        position += n as u64;
        *version += n as u64;
        assert_eq!(store.head(), position, "head after an acknowledged append");
    }
    // Each result's range holds exactly the events of that append.
    let log = all_events(&store).await;
    assert_eq!(log.len() as u64, position);
    let mut version_seen: HashMap<&str, u64> = HashMap::new();
    let mut at = 0usize;
    for (stream, n) in plan {
        for i in 0..n {
            let e = &log[at];
            let v = version_seen.entry(stream).or_default();
            *v += 1;
            assert_eq!(
                (e.stream_id.as_str(), e.stream_version, e.payload.to_vec()),
                (stream, *v, format!("{stream}#{i}").into_bytes()),
                "event at position {}",
                e.position
            );
            at += 1;
        }
    }
}

/// Positions are gap-free from 1 across all streams, in append order. (Every backend promises
/// this while no write fails midway, which no case here provokes; a server backend may leave a
/// gap where a transaction took positions and then failed, and must then still never let a
/// reader pass a position that could yet appear: see `EventStore`'s documentation.)
pub async fn global_positions_are_gap_free_across_streams<S: EventStore>(store: S) {
    let streams = ["gap-a", "gap-b", "other-c", "gap-d", "x"];
    let mut expected: Vec<(String, u64)> = Vec::new();
    let mut versions: HashMap<&str, u64> = HashMap::new();
    for round in 0..12usize {
        let stream = streams[(round * 7) % streams.len()];
        let n = 1 + round % 3;
        ok_append(&store, stream, ExpectedVersion::Any, evs(stream, n)).await;
        for _ in 0..n {
            let v = versions.entry(stream).or_default();
            *v += 1;
            expected.push((stream.to_owned(), *v));
        }
    }
    let log = all_events(&store).await;
    assert_gap_free(
        log.iter().map(|e| e.position),
        expected.len() as u64,
        "global positions",
    );
    let got: Vec<(String, u64)> = log
        .iter()
        .map(|e| (e.stream_id.to_string(), e.stream_version))
        .collect();
    assert_eq!(got, expected, "(stream, version) by position");
    assert_eq!(store.head(), expected.len() as u64);
}

/// Appends sent at the same time (so that a group-committing backend commits them together)
/// still get distinct, gap-free versions and positions.
pub async fn concurrent_appends_in_one_commit_get_distinct_versions<S: EventStore>(store: S) {
    let store = Arc::new(store);
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let store = store.clone();
            let stream = if t % 2 == 0 { "burst-1" } else { "burst-2" };
            tokio::spawn(async move {
                let n = 1 + t % 3;
                let r = ok_append(&*store, stream, ExpectedVersion::Any, evs("t", n)).await;
                (stream, n as u64, r)
            })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.expect("append task"));
    }
    let total: u64 = results.iter().map(|(_, n, _)| n).sum();
    let mut positions: Vec<u64> = results
        .iter()
        .flat_map(|(_, _, r)| r.first_position..=r.last_position)
        .collect();
    positions.sort_unstable();
    assert_gap_free(
        positions,
        total,
        "positions acknowledged to concurrent appends",
    );
    for stream in ["burst-1", "burst-2"] {
        let mut ranges: Vec<(u64, u64)> = results
            .iter()
            .filter(|(s, _, _)| *s == stream)
            .map(|(_, n, r)| (r.stream_version - n + 1, r.stream_version))
            .collect();
        ranges.sort_unstable();
        let versions: Vec<u64> = ranges.iter().flat_map(|(a, b)| *a..=*b).collect();
        let n = versions.len() as u64;
        assert_gap_free(versions, n, "versions acknowledged to concurrent appends");
        let read = store.read_stream(stream, 1, 1000).await.unwrap();
        assert_gap_free(
            read.iter().map(|e| e.stream_version),
            n,
            "versions read back",
        );
    }
}

/// Of many `NoStream` appends to one new stream sent at the same time, exactly one wins; every
/// other one sees the winner's version.
pub async fn concurrent_no_stream_appends_have_one_winner<S: EventStore>(store: S) {
    let store = Arc::new(store);
    let tasks: Vec<_> = (0..12)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .append(
                        "race-1",
                        ExpectedVersion::NoStream,
                        evs(&format!("task{t}"), 2),
                    )
                    .await
            })
        })
        .collect();
    let mut winners = 0;
    for t in tasks {
        match t.await.expect("append task") {
            Ok(r) => {
                winners += 1;
                assert_eq!(r.stream_version, 2);
            }
            Err(e) => assert_wrong_version(Err::<(), _>(e), "race-1", ExpectedVersion::NoStream, 2),
        }
    }
    assert_eq!(winners, 1, "NoStream appends racing on one stream");
    assert_eq!(store.head(), 2);
    assert_eq!(store.stream_version("race-1").await.unwrap(), 2);
}

/// Writers that read the version, append with `Exact`, and retry on conflict never lose an
/// update.
pub async fn optimistic_concurrency_under_contention<S: EventStore>(store: S) {
    const TASKS: u64 = 8;
    const EACH: u64 = 6;
    let store = Arc::new(store);
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for seq in 0..EACH {
                    loop {
                        let v = store.stream_version("counter-1").await.unwrap();
                        let e = ev("Incremented", format!("{t}:{seq}"));
                        match store
                            .append("counter-1", ExpectedVersion::Exact(v), vec![e])
                            .await
                        {
                            Ok(r) => {
                                assert_eq!(r.stream_version, v + 1);
                                acked.push((r.stream_version, format!("{t}:{seq}")));
                                break;
                            }
                            Err(StoreError::WrongExpectedVersion { actual, .. }) => {
                                assert!(actual > v, "version went from {v} back to {actual}");
                            }
                            Err(e) => panic!("append failed: {e}"),
                        }
                    }
                }
                acked
            })
        })
        .collect();
    let mut acked = BTreeMap::new();
    for t in tasks {
        for (version, payload) in t.await.expect("writer task") {
            assert!(
                acked.insert(version, payload).is_none(),
                "version {version} acknowledged twice"
            );
        }
    }
    let read = store.read_stream("counter-1", 1, 1000).await.unwrap();
    assert_gap_free(
        read.iter().map(|e| e.stream_version),
        TASKS * EACH,
        "versions",
    );
    for e in &read {
        assert_eq!(
            Some(&e.payload[..]),
            acked.get(&e.stream_version).map(|p| p.as_bytes()),
            "the event at version {} is not the one acknowledged",
            e.stream_version
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Reading streams
// ---------------------------------------------------------------------------------------------

/// Writes `stream` with 10 events in appends of 1, 3, 2 and 4, so that reads start inside
/// multi-event appends. Payloads are `v<version>`.
async fn ten_event_stream<S: EventStore>(store: &S, stream: &str) {
    let mut version = 0u64;
    for n in [1u64, 3, 2, 4] {
        let events = (1..=n)
            .map(|i| ev("Counted", format!("v{}", version + i)))
            .collect();
        ok_append(store, stream, ExpectedVersion::Exact(version), events).await;
        version += n;
        // Interleave another stream so that versions and positions differ.
        ok_append(store, "noise-1", ExpectedVersion::Any, evs("noise", 1)).await;
    }
}

/// `read_stream` from any version returns the events from there on, in version order.
pub async fn read_stream_from_version<S: EventStore>(store: S) {
    ten_event_stream(&store, "ten-1").await;
    for from in 1..=12u64 {
        let read = store.read_stream("ten-1", from, 100).await.unwrap();
        let versions: Vec<u64> = read.iter().map(|e| e.stream_version).collect();
        let expected: Vec<u64> = (from..=10).collect();
        assert_eq!(versions, expected, "read_stream(from {from})");
        for e in &read {
            assert_eq!(e.stream_id, "ten-1");
            assert_eq!(e.payload, format!("v{}", e.stream_version).into_bytes());
        }
        let positions: Vec<u64> = read.iter().map(|e| e.position).collect();
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "positions of a stream grow with versions: {positions:?}"
        );
    }
}

/// `read_stream` returns at most `max_count` events: the first ones from the version asked.
pub async fn read_stream_with_max_count<S: EventStore>(store: S) {
    ten_event_stream(&store, "ten-1").await;
    for from in 1..=11u64 {
        for max in 0..=11usize {
            let read = store.read_stream("ten-1", from, max).await.unwrap();
            let versions: Vec<u64> = read.iter().map(|e| e.stream_version).collect();
            let expected: Vec<u64> = (from..=10).take(max).collect();
            assert_eq!(versions, expected, "read_stream(from {from}, max {max})");
        }
    }
    // Paging through the stream three at a time gives every event once.
    let mut from = 1;
    let mut seen = Vec::new();
    loop {
        let page = store.read_stream("ten-1", from, 3).await.unwrap();
        if page.is_empty() {
            break;
        }
        from = page.last().unwrap().stream_version + 1;
        seen.extend(page.into_iter().map(|e| e.stream_version));
    }
    assert_gap_free(seen, 10, "paged read_stream");
}

/// An unknown stream reads as empty and is at version 0, even when its id is a prefix or an
/// extension of a stream that exists.
pub async fn read_stream_of_unknown_stream_is_empty<S: EventStore>(store: S) {
    assert!(store
        .read_stream("nobody-1", 1, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.stream_version("nobody-1").await.unwrap(), 0);
    ok_append(&store, "order-1", ExpectedVersion::Any, evs("a", 3)).await;
    ok_append(&store, "order-10", ExpectedVersion::Any, evs("b", 2)).await;
    for unknown in [
        "order-", "order", "order-11", "order-1-", "rder-1", "ORDER-1",
    ] {
        assert!(
            store.read_stream(unknown, 1, 10).await.unwrap().is_empty(),
            "read_stream({unknown:?}) of an unknown stream"
        );
        assert_eq!(
            store.stream_version(unknown).await.unwrap(),
            0,
            "stream_version({unknown:?}) of an unknown stream"
        );
    }
    assert_eq!(store.read_stream("order-1", 1, 10).await.unwrap().len(), 3);
    assert_eq!(store.read_stream("order-10", 1, 10).await.unwrap().len(), 2);
}

/// Recorded events carry everything given at append (event id, type, schema version,
/// correlation and causation ids, payload), and read the same through both reads.
pub async fn recorded_events_carry_every_field<S: EventStore>(store: S) {
    let (id, corr, cause) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let every_byte: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    let full = EventData::new("OrderPlaced", every_byte.clone())
        .with_event_id(id)
        .with_schema_version(7)
        .with_correlation_id(corr)
        .with_causation_id(cause);
    let bare = EventData::new("OrderShipped", Vec::new());
    let big = EventData::new("OrderPacked", vec![0xA5; 256 * 1024]).with_schema_version(0);
    let given = [full, bare, big];
    let before = now_micros();
    ok_append(&store, "order-42", ExpectedVersion::Any, evs("first", 1)).await;
    ok_append(
        &store,
        "order-42",
        ExpectedVersion::Exact(1),
        given.to_vec(),
    )
    .await;
    let after = now_micros();

    let read = store.read_stream("order-42", 2, 10).await.unwrap();
    assert_eq!(read.len(), 3);
    for (i, (e, d)) in read.iter().zip(&given).enumerate() {
        let i = i as u64;
        assert_eq!(e.position, 2 + i, "position");
        assert_eq!(e.stream_id, "order-42", "stream id");
        assert_eq!(e.stream_version, 2 + i, "stream version");
        assert_eq!(e.category, "order", "category");
        assert_eq!(e.event_type, d.event_type, "event type");
        assert_eq!(e.schema_version, d.schema_version, "schema version");
        assert_eq!(e.event_id, d.event_id, "event id");
        assert_eq!(e.correlation_id, d.correlation_id, "correlation id");
        assert_eq!(e.causation_id, d.causation_id, "causation id");
        assert_eq!(e.payload, d.payload, "payload of {}", d.event_type);
        assert!(
            e.timestamp_micros + 60_000_000 >= before && e.timestamp_micros <= after + 60_000_000,
            "timestamp {} far from the append time [{before}, {after}]",
            e.timestamp_micros
        );
    }
    assert_eq!(read[0].event_id, id);
    assert_eq!(read[0].correlation_id, Some(corr));
    assert_eq!(read[0].causation_id, Some(cause));
    assert_eq!(read[1].correlation_id, None);
    assert_eq!(read[1].causation_id, None);
    let page = store.read_all(2, 10, &Filter::all()).await.unwrap();
    assert_eq!(page.events, read, "read_all and read_stream disagree");
}

/// The category of every event is the part of its stream id before the first `-`.
pub async fn category_is_the_stream_id_before_the_first_dash<S: EventStore>(store: S) {
    let cases = [
        ("order-42", "order"),
        ("order-42-line-7", "order"),
        ("plain", "plain"),
        ("trailing-", "trailing"),
        ("-leading", ""),
        ("Mixed_Case-1", "Mixed_Case"),
        ("ünïcode-ß", "ünïcode"),
    ];
    for (stream, category) in cases {
        assert_eq!(category_of(stream), category, "category_of({stream:?})");
        ok_append(&store, stream, ExpectedVersion::NoStream, evs(stream, 1)).await;
    }
    let log = all_events(&store).await;
    assert_eq!(log.len(), cases.len());
    for (e, (stream, category)) in log.iter().zip(cases) {
        assert_eq!(e.stream_id, stream);
        assert_eq!(e.category, category, "category of an event of {stream:?}");
        let read = store.read_stream(stream, 1, 10).await.unwrap();
        assert_eq!(read[0].category, category);
    }
}

/// `stream_version` is 0 before the first append and follows every append.
pub async fn stream_version_follows_appends<S: EventStore>(store: S) {
    assert_eq!(store.stream_version("sv-1").await.unwrap(), 0);
    let mut v = 0;
    for n in [1usize, 4, 2] {
        ok_append(&store, "sv-1", ExpectedVersion::Any, evs("a", n)).await;
        ok_append(&store, "sv-2", ExpectedVersion::Any, evs("b", 1)).await;
        v += n as u64;
        assert_eq!(store.stream_version("sv-1").await.unwrap(), v);
    }
    assert_eq!(store.stream_version("sv-2").await.unwrap(), 3);
    assert_eq!(store.stream_version("sv-3").await.unwrap(), 0);
}

// ---------------------------------------------------------------------------------------------
// Reading the global log
// ---------------------------------------------------------------------------------------------

/// `read_all` from any position returns the log from there on; past the head it is empty and at
/// its end.
pub async fn read_all_from_position<S: EventStore>(store: S) {
    for i in 0..10 {
        ok_append(
            &store,
            &format!("pos-{}", i % 3),
            ExpectedVersion::Any,
            evs("a", 3),
        )
        .await;
    }
    let all = all_events(&store).await;
    assert_eq!(all.len(), 30);
    for from in 1..=31u64 {
        let batch = store.read_all(from, 100, &Filter::all()).await.unwrap();
        assert_eq!(batch.events, all[(from - 1) as usize..], "read_all({from})");
        assert_eq!(batch.head, 30, "head of read_all({from})");
        assert_eq!(batch.next_position, 31, "next_position of read_all({from})");
        assert!(batch.is_end(), "read_all({from}) reached the head");
    }
    for from in [32u64, 1000, u64::MAX - 1] {
        let batch = store.read_all(from, 100, &Filter::all()).await.unwrap();
        assert!(batch.events.is_empty(), "read_all({from}) past the head");
        assert!(
            batch.is_end(),
            "read_all({from}) past the head is at its end"
        );
        assert_eq!(batch.head, 30);
    }
}

/// `read_all` pages: at most `max_count` events, `next_position` right after the last one, the
/// head on every page, and `is_end` only on the last page.
pub async fn read_all_pages<S: EventStore>(store: S) {
    for i in 0..25 {
        ok_append(
            &store,
            &format!("page-{}", i % 4),
            ExpectedVersion::Any,
            evs("a", 2),
        )
        .await;
    }
    let all = all_events(&store).await;
    assert_eq!(all.len(), 50);
    let mut from = 1;
    let mut pages: Vec<ReadBatch> = Vec::new();
    loop {
        let batch = store.read_all(from, 7, &Filter::all()).await.unwrap();
        assert_eq!(batch.head, 50, "head on a page");
        assert!(batch.events.len() <= 7);
        if batch.is_end() {
            pages.push(batch);
            break;
        }
        assert!(
            !batch.events.is_empty(),
            "a page of an unfiltered read before the end"
        );
        assert_eq!(
            batch.next_position,
            batch.events.last().unwrap().position + 1,
            "next_position follows the last event of an unfiltered page"
        );
        from = batch.next_position;
        pages.push(batch);
        assert!(pages.len() <= 50, "paging does not end");
    }
    let last = pages.last().unwrap();
    assert_eq!(last.next_position, 51, "next_position at the end");
    let paged: Vec<RecordedEvent> = pages.iter().flat_map(|p| p.events.clone()).collect();
    assert_eq!(paged, all, "the pages put together");
    assert!(
        pages.len() >= 8,
        "50 events in pages of 7 need at least 8 pages"
    );
    // A page of exactly the remaining events is at the end.
    let tail = store.read_all(44, 7, &Filter::all()).await.unwrap();
    assert_eq!(tail.events.len(), 7);
    assert!(tail.is_end(), "a page that reaches the head is at its end");
}

/// The log the filter cases read: six streams in four categories (one of them `orderline`, a
/// category that starts like `order`), three event types.
async fn mixed_log<S: EventStore>(store: &S) -> Vec<RecordedEvent> {
    let streams = [
        "order-1",
        "order-2",
        "invoice-1",
        "user-1",
        "orderline-1",
        "order",
    ];
    let types = ["Created", "Updated", "Deleted"];
    for i in 0..30usize {
        let stream = streams[(i * 5 + i / 4) % streams.len()];
        let events = (0..1 + i % 3)
            .map(|j| ev(types[(i + j * 2) % types.len()], format!("{i}.{j}")))
            .collect();
        ok_append(store, stream, ExpectedVersion::Any, events).await;
    }
    all_events(store).await
}

/// Checks that reading through `filter` (in small pages and in one big page) gives exactly the
/// events of `all` that `keep` keeps, and that there are some.
async fn check_filter<S: EventStore>(
    store: &S,
    all: &[RecordedEvent],
    filter: Filter,
    keep: impl Fn(&RecordedEvent) -> bool,
) {
    let expected: Vec<RecordedEvent> = all.iter().filter(|e| keep(e)).cloned().collect();
    assert!(
        !expected.is_empty() && expected.len() < all.len(),
        "the filter {filter:?} should keep some but not all events"
    );
    for page in [1usize, 3, 1000] {
        let got = read_everything(store, &filter, page).await;
        assert_eq!(
            got, expected,
            "read_all through {filter:?} in pages of {page}"
        );
    }
    // Starting in the middle keeps only the later matches.
    let mid = all[all.len() / 2].position;
    let got = store.read_all(mid, 1000, &filter).await.unwrap();
    let later: Vec<RecordedEvent> = expected
        .iter()
        .filter(|e| e.position >= mid)
        .cloned()
        .collect();
    assert_eq!(got.events, later, "read_all({mid}) through {filter:?}");
}

/// `read_all` with a category filter returns exactly the events of those categories.
pub async fn read_all_filters_by_category<S: EventStore>(store: S) {
    let all = mixed_log(&store).await;
    check_filter(&store, &all, Filter::all().categories(["order"]), |e| {
        category_of(&e.stream_id) == "order"
    })
    .await;
    check_filter(
        &store,
        &all,
        Filter::all().categories(["invoice", "orderline"]),
        |e| e.stream_id == "invoice-1" || e.stream_id == "orderline-1",
    )
    .await;
    let none = store
        .read_all(1, 100, &Filter::all().categories(Vec::<String>::new()))
        .await
        .unwrap();
    assert!(
        none.events.is_empty(),
        "an empty category list keeps nothing"
    );
}

/// `read_all` with an event-type filter returns exactly the events of those types.
pub async fn read_all_filters_by_event_type<S: EventStore>(store: S) {
    let all = mixed_log(&store).await;
    check_filter(&store, &all, Filter::all().event_types(["Updated"]), |e| {
        e.event_type == "Updated"
    })
    .await;
    check_filter(
        &store,
        &all,
        Filter::all().event_types(["Created", "Deleted"]),
        |e| e.event_type != "Updated",
    )
    .await;
}

/// `read_all` with both filters returns the events that pass both.
pub async fn read_all_filters_by_category_and_event_type<S: EventStore>(store: S) {
    let all = mixed_log(&store).await;
    check_filter(
        &store,
        &all,
        Filter::all()
            .categories(["order", "user"])
            .event_types(["Created"]),
        |e| (e.category == "order" || e.category == "user") && e.event_type == "Created",
    )
    .await;
    let got = read_everything(
        &store,
        &Filter::all()
            .categories(["invoice"])
            .event_types(["NoSuchType"]),
        5,
    )
    .await;
    assert!(got.is_empty(), "a type no event has");
}

/// A filter that matches nothing, over a log larger than one bounded scan, still makes progress
/// on every page and reaches the end; a filter matching only the last event finds it.
pub async fn read_all_filter_matching_nothing_makes_progress<S: EventStore>(store: S) {
    fill_log(&store, LARGE_LOG_EVENTS).await;
    let needle_pos = LARGE_LOG_EVENTS + 1;
    ok_append(
        &store,
        "needle-1",
        ExpectedVersion::NoStream,
        vec![ev("Needle", "!")],
    )
    .await;
    let head = store.head();
    assert_eq!(head, needle_pos);

    let nothing = Filter::all().categories(["no-such-category"]);
    let mut from = 1;
    let mut pages = 0u64;
    loop {
        let batch = store.read_all(from, 10, &nothing).await.unwrap();
        pages += 1;
        assert!(
            batch.events.is_empty(),
            "a filter matching nothing returned events"
        );
        assert_eq!(batch.head, head);
        if batch.is_end() {
            assert_eq!(batch.next_position, head + 1, "next_position at the end");
            break;
        }
        assert!(
            batch.next_position > from,
            "an empty filtered page made no progress at {from}"
        );
        from = batch.next_position;
        assert!(pages <= head, "more pages than events");
    }

    let needle = Filter::all().event_types(["Needle"]);
    let found = read_everything(&store, &needle, 10).await;
    assert_eq!(found.len(), 1, "the needle");
    assert_eq!(found[0].position, needle_pos);
    assert_eq!(found[0].stream_id, "needle-1");
}

/// A large log read in pages of 500 yields every position exactly once, in order.
pub async fn streamed_read_of_a_large_log<S: EventStore>(store: S) {
    fill_log(&store, LARGE_LOG_EVENTS).await;
    let mut from = 1;
    let mut expected_position = 1u64;
    let mut pages = 0u64;
    let mut versions: HashMap<String, u64> = HashMap::new();
    loop {
        let batch = store.read_all(from, 500, &Filter::all()).await.unwrap();
        pages += 1;
        assert!(batch.events.len() <= 500, "page larger than max_count");
        assert_eq!(batch.head, LARGE_LOG_EVENTS);
        for e in &batch.events {
            assert_eq!(
                e.position, expected_position,
                "positions of a streamed read"
            );
            assert_eq!(
                e.payload[..],
                e.position.to_be_bytes(),
                "payload at position {}",
                e.position
            );
            let v = versions.entry(e.stream_id.to_string()).or_default();
            *v += 1;
            assert_eq!(
                e.stream_version, *v,
                "version of {} at {}",
                e.stream_id, e.position
            );
            expected_position += 1;
        }
        if batch.is_end() {
            break;
        }
        assert!(
            !batch.events.is_empty(),
            "an empty unfiltered page before the end"
        );
        from = batch.next_position;
        assert!(pages <= LARGE_LOG_EVENTS, "paging does not end");
    }
    assert_eq!(expected_position, LARGE_LOG_EVENTS + 1, "events read");
    assert!(pages >= LARGE_LOG_EVENTS / 500, "pages of at most 500");
    for (stream, v) in versions {
        assert_eq!(store.stream_version(&stream).await.unwrap(), v);
    }
}

// ---------------------------------------------------------------------------------------------
// Checkpoints and snapshots
// ---------------------------------------------------------------------------------------------

/// Checkpoints: missing is `None`; saved values load back; a save overwrites (even with a lower
/// value or 0); names are independent; saving writes no events.
fn put(key: &str, value: &str) -> StateWrite {
    StateWrite {
        key: key.as_bytes().to_vec(),
        value: Some(value.as_bytes().to_vec()),
    }
}

/// `commit_checkpoint` stores the checkpoint and every state write together; deletes work; state
/// is per consumer.
pub async fn checkpoint_commits_carry_state_atomically<S: EventStore>(store: S) {
    // Checkpoints are positions of the log (at most the head).
    ok_append(&store, "log-1", ExpectedVersion::NoStream, evs("a", 9)).await;
    store
        .commit_checkpoint("proj", None, 5, vec![put("a", "1"), put("b", "2")])
        .await
        .unwrap();
    assert_eq!(store.load_checkpoint("proj").await.unwrap(), Some(5));
    assert_eq!(
        store.load_state("proj", b"a").await.unwrap(),
        Some(b"1".to_vec())
    );
    assert_eq!(
        store.load_state("proj", b"b").await.unwrap(),
        Some(b"2".to_vec())
    );
    assert_eq!(
        store.load_state("proj2", b"a").await.unwrap(),
        None,
        "state leaked across consumers"
    );
    let delete = StateWrite {
        key: b"a".to_vec(),
        value: None,
    };
    store
        .commit_checkpoint("proj", Some(5), 9, vec![delete, put("b", "3")])
        .await
        .unwrap();
    assert_eq!(store.load_checkpoint("proj").await.unwrap(), Some(9));
    assert_eq!(store.load_state("proj", b"a").await.unwrap(), None);
    assert_eq!(
        store.load_state("proj", b"b").await.unwrap(),
        Some(b"3".to_vec())
    );
    // A plain checkpoint save and a commit agree on what the checkpoint is.
    store.save_checkpoint("plain", 3).await.unwrap();
    store
        .commit_checkpoint("plain", Some(3), 4, vec![])
        .await
        .unwrap();
    assert_eq!(store.load_checkpoint("plain").await.unwrap(), Some(4));
}

/// A commit whose expected checkpoint is not the stored one fails with `CheckpointConflict` and
/// writes neither checkpoint nor state; of two concurrent commits from the same checkpoint, one wins.
pub async fn checkpoint_commit_with_a_wrong_expectation_writes_nothing<S: EventStore>(store: S) {
    ok_append(&store, "log-1", ExpectedVersion::NoStream, evs("a", 17)).await;
    store
        .commit_checkpoint("proj", None, 5, vec![put("k", "v5")])
        .await
        .unwrap();
    match store
        .commit_checkpoint("proj", None, 6, vec![put("k", "zombie")])
        .await
    {
        Err(StoreError::CheckpointConflict {
            expected: None,
            actual: Some(5),
            ..
        }) => {}
        other => panic!("expected a checkpoint conflict, got {other:?}"),
    }
    match store
        .commit_checkpoint("proj", Some(4), 6, vec![put("k", "zombie")])
        .await
    {
        Err(StoreError::CheckpointConflict {
            expected: Some(4),
            actual: Some(5),
            ..
        }) => {}
        other => panic!("expected a checkpoint conflict, got {other:?}"),
    }
    assert_eq!(store.load_checkpoint("proj").await.unwrap(), Some(5));
    assert_eq!(
        store.load_state("proj", b"k").await.unwrap(),
        Some(b"v5".to_vec())
    );
    let store = Arc::new(store);
    let racers: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .commit_checkpoint("proj", Some(5), 10 + i, vec![put("k", &format!("r{i}"))])
                    .await
                    .is_ok()
            })
        })
        .collect();
    let mut wins = 0;
    for r in racers {
        wins += usize::from(r.await.unwrap());
    }
    assert_eq!(wins, 1, "exactly one of the racing commits may win");
    let cp = store.load_checkpoint("proj").await.unwrap().unwrap();
    let value = store.load_state("proj", b"k").await.unwrap().unwrap();
    assert_eq!(
        value,
        format!("r{}", cp - 10).into_bytes(),
        "state and checkpoint disagree"
    );
}

/// `scan_state` returns a consumer's entries by prefix, in key order, page by page.
pub async fn state_scans_page_by_prefix<S: EventStore>(store: S) {
    ok_append(&store, "log-1", ExpectedVersion::NoStream, evs("a", 1)).await;
    let mut writes: Vec<StateWrite> = (0..25)
        .map(|i| put(&format!("order/{i:03}"), &i.to_string()))
        .collect();
    writes.push(put("stock/widget", "7"));
    writes.push(put("orders", "not under order/"));
    store
        .commit_checkpoint("shop", None, 1, writes)
        .await
        .unwrap();
    store
        .commit_checkpoint("other", None, 1, vec![put("order/999", "x")])
        .await
        .unwrap();
    let mut from = Vec::new();
    let mut seen = Vec::new();
    loop {
        let page = store
            .scan_state("shop", b"order/", &from, 10)
            .await
            .unwrap();
        assert!(page.len() <= 10);
        if page.is_empty() {
            break;
        }
        from = page.last().unwrap().0.clone();
        from.push(0);
        seen.extend(page);
    }
    let keys: Vec<String> = seen
        .iter()
        .map(|(k, _)| String::from_utf8(k.clone()).unwrap())
        .collect();
    let expected: Vec<String> = (0..25).map(|i| format!("order/{i:03}")).collect();
    assert_eq!(keys, expected);
    assert_eq!(seen[7].1, b"7".to_vec());
}

/// Checkpoints: missing, saved, overwritten, per name.
pub async fn checkpoints<S: EventStore>(store: S) {
    assert_eq!(store.load_checkpoint("projector").await.unwrap(), None);
    // Checkpoints are positions of the log (at most the head).
    ok_append(&store, "log-1", ExpectedVersion::NoStream, evs("a", 42)).await;
    store.save_checkpoint("projector", 10).await.unwrap();
    assert_eq!(store.load_checkpoint("projector").await.unwrap(), Some(10));
    store.save_checkpoint("projector", 42).await.unwrap();
    assert_eq!(store.load_checkpoint("projector").await.unwrap(), Some(42));
    store.save_checkpoint("projector", 7).await.unwrap();
    assert_eq!(store.load_checkpoint("projector").await.unwrap(), Some(7));
    store.save_checkpoint("projector", 0).await.unwrap();
    assert_eq!(
        store.load_checkpoint("projector").await.unwrap(),
        Some(0),
        "a checkpoint at 0 is not a missing checkpoint"
    );
    store.save_checkpoint("projector", 42).await.unwrap();
    assert_eq!(store.load_checkpoint("projector").await.unwrap(), Some(42));

    for name in ["p", "projector-2", "proj", "über-projektor"] {
        assert_eq!(
            store.load_checkpoint(name).await.unwrap(),
            None,
            "checkpoint {name:?} was never saved"
        );
    }
    store.save_checkpoint("proj", 3).await.unwrap();
    store.save_checkpoint("über-projektor", 4).await.unwrap();
    assert_eq!(store.load_checkpoint("proj").await.unwrap(), Some(3));
    assert_eq!(
        store.load_checkpoint("über-projektor").await.unwrap(),
        Some(4)
    );
    assert_eq!(store.load_checkpoint("projector").await.unwrap(), Some(42));

    assert_eq!(store.head(), 42, "checkpoints wrote events");
    assert_eq!(all_events(&store).await.len(), 42);
    let r = ok_append(&store, "after-1", ExpectedVersion::NoStream, evs("a", 1)).await;
    assert_eq!(r.first_position, 43, "the first event after checkpoints");
    store.save_checkpoint("projector", 43).await.unwrap();
    assert_eq!(store.load_checkpoint("projector").await.unwrap(), Some(43));
    assert_eq!(store.head(), 43);
}

/// A checkpoint past the head is refused with `InvalidInput` and writes nothing, by
/// `save_checkpoint` and by a `commit_checkpoint` that moves the checkpoint (a checkpoint is a
/// position its consumer has processed; one past the head would skip events appended later, and
/// an export of the store could not be imported). A commit that leaves the checkpoint where it
/// is (expected = position) is not refused.
pub async fn a_checkpoint_past_the_head_is_refused<S: EventStore>(store: S) {
    assert_invalid(
        store.save_checkpoint("plain", 1).await,
        "a checkpoint of an empty store",
    );
    assert_invalid(
        store
            .commit_checkpoint("proj", None, 1, vec![put("k", "v")])
            .await,
        "a committed checkpoint of an empty store",
    );
    ok_append(&store, "log-1", ExpectedVersion::NoStream, evs("a", 3)).await;
    for position in [4, 1000, u64::MAX] {
        assert_invalid(
            store.save_checkpoint("plain", position).await,
            "a checkpoint past the head",
        );
        assert_invalid(
            store
                .commit_checkpoint("proj", None, position, vec![put("k", "v")])
                .await,
            "a committed checkpoint past the head",
        );
    }
    assert_eq!(store.load_checkpoint("plain").await.unwrap(), None);
    assert_eq!(store.load_checkpoint("proj").await.unwrap(), None);
    assert_eq!(store.load_state("proj", b"k").await.unwrap(), None);

    store.save_checkpoint("plain", 3).await.unwrap();
    store
        .commit_checkpoint("proj", None, 3, vec![put("k", "v3")])
        .await
        .unwrap();
    assert_invalid(
        store
            .commit_checkpoint("proj", Some(3), 4, vec![put("k", "v4")])
            .await,
        "a commit that moves the checkpoint past the head",
    );
    assert_eq!(store.load_checkpoint("proj").await.unwrap(), Some(3));
    assert_eq!(
        store.load_state("proj", b"k").await.unwrap(),
        Some(b"v3".to_vec())
    );
    // At the head is fine, and so is a commit that keeps the checkpoint where it is.
    store
        .commit_checkpoint("proj", Some(3), 3, vec![put("k", "again")])
        .await
        .unwrap();
    assert_eq!(store.list_checkpoints(None, 10).await.unwrap().len(), 2);
    assert_eq!(store.head(), 3, "checkpoints wrote events");
}

/// A snapshot larger than `MAX_SNAPSHOT_LEN` is `InvalidInput` and replaces nothing; one of
/// exactly the limit is kept.
pub async fn a_snapshot_beyond_the_limit_is_refused<S: EventStore>(store: S) {
    use tidings::store::MAX_SNAPSHOT_LEN;
    ok_append(&store, "cart-big", ExpectedVersion::NoStream, evs("a", 2)).await;
    let small = Snapshot {
        stream_version: 1,
        schema_version: 1,
        payload: b"{}".to_vec(),
    };
    store
        .save_snapshot("cart-big", small.clone())
        .await
        .unwrap();
    let too_big = Snapshot {
        stream_version: 2,
        schema_version: 1,
        payload: vec![7; MAX_SNAPSHOT_LEN + 1],
    };
    match store.save_snapshot("cart-big", too_big).await {
        Err(StoreError::InvalidInput(reason)) => {
            assert!(reason.contains("exceeds the limit"), "{reason}")
        }
        other => panic!("a snapshot past the limit: {other:?}"),
    }
    assert_eq!(store.load_snapshot("cart-big").await.unwrap(), Some(small));
    let at_limit = Snapshot {
        stream_version: 2,
        schema_version: 1,
        payload: vec![7; MAX_SNAPSHOT_LEN],
    };
    store
        .save_snapshot("cart-big", at_limit.clone())
        .await
        .unwrap();
    assert_eq!(
        store.load_snapshot("cart-big").await.unwrap(),
        Some(at_limit)
    );
}

/// Snapshots: missing is `None`; saved ones load back; a save replaces; streams are independent;
/// snapshots write no events and do not clash with checkpoints of the same name.
pub async fn snapshots<S: EventStore>(store: S) {
    assert_eq!(store.load_snapshot("cart-1").await.unwrap(), None);
    ok_append(&store, "cart-1", ExpectedVersion::NoStream, evs("a", 3)).await;
    let first = Snapshot {
        stream_version: 3,
        schema_version: 1,
        payload: b"{\"items\":3}".to_vec(),
    };
    store.save_snapshot("cart-1", first.clone()).await.unwrap();
    assert_eq!(store.load_snapshot("cart-1").await.unwrap(), Some(first));
    let second = Snapshot {
        stream_version: 5,
        schema_version: 2,
        payload: (0..=255u8).collect(),
    };
    store.save_snapshot("cart-1", second.clone()).await.unwrap();
    assert_eq!(
        store.load_snapshot("cart-1").await.unwrap(),
        Some(second.clone()),
        "a snapshot replaces the earlier one"
    );
    let empty = Snapshot {
        stream_version: 1,
        schema_version: 0,
        payload: Vec::new(),
    };
    store.save_snapshot("cart-10", empty.clone()).await.unwrap();
    assert_eq!(store.load_snapshot("cart-10").await.unwrap(), Some(empty));
    for other in ["cart-", "cart", "cart-2", "art-1"] {
        assert_eq!(
            store.load_snapshot(other).await.unwrap(),
            None,
            "snapshot of {other:?} was never saved"
        );
    }
    // A checkpoint named like the stream is another thing.
    assert_eq!(store.load_checkpoint("cart-1").await.unwrap(), None);
    store.save_checkpoint("cart-1", 2).await.unwrap();
    assert_eq!(store.load_snapshot("cart-1").await.unwrap(), Some(second));
    assert_eq!(store.load_checkpoint("cart-1").await.unwrap(), Some(2));

    assert_eq!(store.head(), 3, "snapshots wrote events");
    assert_eq!(store.stream_version("cart-1").await.unwrap(), 3);
    assert_eq!(all_events(&store).await.len(), 3);
}

// ---------------------------------------------------------------------------------------------
// Notifications and the head
// ---------------------------------------------------------------------------------------------

/// `watch_head().current()` is the head: 0 for an empty store, then the last appended position,
/// also for a watch made before the appends.
pub async fn watch_head_current_value<S: EventStore>(store: S) {
    let early = store.watch_head();
    assert_eq!(early.current(), 0);
    assert_eq!(store.head(), 0);
    ok_append(&store, "w-1", ExpectedVersion::Any, evs("a", 3)).await;
    assert_eq!(early.current(), 3, "an older watch sees the new head");
    assert_eq!(store.watch_head().current(), 3, "a new watch");
    let clone = early.clone();
    ok_append(&store, "w-2", ExpectedVersion::Any, evs("b", 2)).await;
    assert_eq!(clone.current(), 5);
    assert_eq!(store.head(), 5);
}

/// `changed()` waits while nothing is appended, then wakes after an append made by another task
/// and returns the new head.
pub async fn watch_head_changed_wakes_after_append_in_another_task<S: EventStore>(store: S) {
    let store = Arc::new(store);
    let mut watch = store.watch_head();
    assert!(
        tokio::time::timeout(Duration::from_millis(100), watch.changed())
            .await
            .is_err(),
        "changed() returned with nothing appended"
    );

    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            ok_append(&*store, "wake-1", ExpectedVersion::Any, evs("a", 2)).await
        })
    };
    let head = tokio::time::timeout(WAKE_TIMEOUT, watch.changed())
        .await
        .expect("changed() did not wake after an append")
        .expect("changed()");
    let r = writer.await.expect("writer task");
    assert!(
        head >= 1 && head <= r.last_position,
        "changed() returned {head}, append ended at {}",
        r.last_position
    );
    // Whatever the watch saw is readable.
    let batch = store.read_all(1, 100, &Filter::all()).await.unwrap();
    assert!(
        batch.head >= head,
        "a read after changed() sees the head it returned"
    );
    assert_eq!(batch.events.len() as u64, batch.head);

    // Once more: the watch only wakes for a head past what it last returned.
    let mut seen = head;
    if seen < r.last_position {
        seen = tokio::time::timeout(WAKE_TIMEOUT, watch.changed())
            .await
            .expect("changed() after a partly seen append")
            .expect("changed()");
    }
    assert_eq!(seen, 2);
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            ok_append(&*store, "wake-2", ExpectedVersion::Any, evs("b", 1)).await
        })
    };
    let head = tokio::time::timeout(WAKE_TIMEOUT, watch.changed())
        .await
        .expect("changed() did not wake after the second append")
        .expect("changed()");
    assert_eq!(head, 3, "changed() after the second append");
    writer.await.expect("writer task");
}

/// `wait_for(p)` returns at once when the head is at `p` or past it, and otherwise waits for the
/// append that brings it there.
pub async fn watch_head_wait_for<S: EventStore>(store: S) {
    let store = Arc::new(store);
    let mut watch = store.watch_head();
    assert_eq!(
        tokio::time::timeout(WAKE_TIMEOUT, watch.wait_for(0))
            .await
            .expect("wait_for(0) on an empty store")
            .unwrap(),
        0
    );
    let waiter = {
        let mut watch = store.watch_head();
        tokio::spawn(async move { watch.wait_for(5).await })
    };
    for i in 1..=4u64 {
        ok_append(&*store, "wf-1", ExpectedVersion::Any, evs("a", 1)).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiter.is_finished(), "wait_for(5) returned at head {i}");
    }
    ok_append(&*store, "wf-2", ExpectedVersion::Any, evs("b", 2)).await;
    let head = tokio::time::timeout(WAKE_TIMEOUT, waiter)
        .await
        .expect("wait_for(5) did not wake")
        .expect("waiter task")
        .expect("wait_for(5)");
    assert!((5..=6).contains(&head), "wait_for(5) returned {head}");
    let head = tokio::time::timeout(WAKE_TIMEOUT, watch.wait_for(3))
        .await
        .expect("wait_for a passed position")
        .unwrap();
    assert_eq!(head, 6);
}

/// Once every handle of the store is dropped, a watch reports [`StoreError::Closed`] instead of
/// waiting forever.
pub async fn watch_head_reports_closed_after_the_store_is_dropped<S: EventStore>(store: S) {
    ok_append(&store, "bye-1", ExpectedVersion::Any, evs("a", 1)).await;
    let mut watch = store.watch_head();
    drop(store);
    match tokio::time::timeout(WAKE_TIMEOUT, watch.changed()).await {
        Ok(Err(StoreError::Closed)) => {}
        Ok(other) => panic!("changed() on a dropped store must fail with Closed, got {other:?}"),
        Err(_) => panic!("changed() on a dropped store waits forever"),
    }
}

/// The head is the last acknowledged position, and nothing past it is ever returned.
pub async fn head_is_the_last_appended_position<S: EventStore>(store: S) {
    assert_eq!(store.head(), 0);
    let empty = store.read_all(1, 10, &Filter::all()).await.unwrap();
    assert!(empty.events.is_empty() && empty.is_end() && empty.head == 0);
    for (i, n) in [1usize, 5, 2, 1, 3].into_iter().enumerate() {
        let r = ok_append(
            &store,
            &format!("h-{}", i % 2),
            ExpectedVersion::Any,
            evs("a", n),
        )
        .await;
        assert_eq!(store.head(), r.last_position, "head after an append");
        assert_eq!(store.watch_head().current(), r.last_position);
        let past = store
            .read_all(r.last_position + 1, 10, &Filter::all())
            .await
            .unwrap();
        assert!(
            past.events.is_empty(),
            "read_all past the head returned events"
        );
        assert!(past.is_end());
        assert_eq!(past.head, r.last_position);
    }
}

/// Under concurrent appends, every read returns only events at or below a head, never a version
/// without the versions before it, and never less than a head already observed.
pub async fn events_above_head_are_never_returned<S: EventStore>(store: S) {
    let store = Arc::new(store);
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..150usize {
                let stream = if i % 2 == 0 { "live-1" } else { "live-2" };
                ok_append(&*store, stream, ExpectedVersion::Any, evs("a", 1 + i % 3)).await;
            }
        })
    };
    let mut reads = 0u64;
    loop {
        let done = writer.is_finished();
        let head_before = store.head();
        let batch = store.read_all(1, 100_000, &Filter::all()).await.unwrap();
        assert!(
            batch.head >= head_before,
            "read_all saw head {} after head() said {head_before}",
            batch.head
        );
        for (i, e) in batch.events.iter().enumerate() {
            assert_eq!(
                e.position,
                i as u64 + 1,
                "positions from read_all under appends"
            );
            assert!(
                e.position <= batch.head,
                "event {} above head {}",
                e.position,
                batch.head
            );
        }
        if batch.is_end() {
            assert_eq!(batch.events.len() as u64, batch.head, "a page to the head");
        }
        let version = store.stream_version("live-1").await.unwrap();
        let stream = store.read_stream("live-1", 1, 100_000).await.unwrap();
        let head_after = store.head();
        assert!(
            stream.len() as u64 >= version,
            "read_stream returned {} events after stream_version said {version}",
            stream.len()
        );
        for (i, e) in stream.iter().enumerate() {
            assert_eq!(
                e.stream_version,
                i as u64 + 1,
                "versions of read_stream under appends"
            );
            assert!(
                e.position <= head_after,
                "read_stream returned position {} above head {head_after}",
                e.position
            );
        }
        reads += 1;
        if done {
            break;
        }
        tokio::task::yield_now().await;
    }
    writer.await.expect("writer task");
    assert!(reads >= 1);
    assert_eq!(store.head(), 300);
}

/// Timestamps never decrease with position and are close to the time of the append.
pub async fn timestamps_are_monotone_with_position<S: EventStore>(store: S) {
    let start = now_micros();
    let store = Arc::new(store);
    let tasks: Vec<_> = (0..4)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..25usize {
                    ok_append(
                        &*store,
                        &format!("time-{t}"),
                        ExpectedVersion::Any,
                        evs("a", 1 + i % 3),
                    )
                    .await;
                    if i % 5 == 0 {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("writer task");
    }
    let end = now_micros();
    let log = all_events(&*store).await;
    let per_task: usize = (0..25).map(|i| 1 + i % 3).sum();
    assert_eq!(log.len(), 4 * per_task);
    for w in log.windows(2) {
        assert!(
            w[0].timestamp_micros <= w[1].timestamp_micros,
            "timestamp at position {} ({}) is after the one at {} ({})",
            w[0].position,
            w[0].timestamp_micros,
            w[1].position,
            w[1].timestamp_micros
        );
    }
    let slack = 60_000_000;
    for e in [&log[0], log.last().unwrap()] {
        assert!(
            e.timestamp_micros + slack >= start && e.timestamp_micros <= end + slack,
            "timestamp {} of position {} is far from the test's time [{start}, {end}]",
            e.timestamp_micros,
            e.position
        );
    }
    assert!(
        log.last().unwrap().timestamp() >= log[0].timestamp(),
        "RecordedEvent::timestamp"
    );
}

/// `verify` finds no problem in a store written only through the trait.
pub async fn verify_reports_a_healthy_store<S: EventStore>(store: S) {
    let report = store.verify().await.unwrap();
    assert!(
        report.is_ok(),
        "verify of an empty store: {:?}",
        report.problems
    );
    assert_eq!((report.head, report.events_checked), (0, 0));
    let mut streams = HashSet::new();
    for i in 0..40usize {
        let stream = format!("v{}-{}", i % 3, i % 7);
        streams.insert(stream.clone());
        ok_append(&store, &stream, ExpectedVersion::Any, evs("a", 1 + i % 4)).await;
    }
    store.save_checkpoint("verify", 3).await.unwrap();
    store
        .save_snapshot(
            "v0-0",
            Snapshot {
                stream_version: 1,
                schema_version: 1,
                payload: b"s".to_vec(),
            },
        )
        .await
        .unwrap();
    let report = store.verify().await.unwrap();
    assert!(
        report.is_ok(),
        "verify of a healthy store: {:?}",
        report.problems
    );
    assert_eq!(report.head, store.head());
    assert_eq!(report.events_checked, store.head(), "events checked");
    assert!(report.index_entries_checked >= streams.len() as u64);
}

// ---------------------------------------------------------------------------------------------
// Listing and import (used by the operations CLI)
// ---------------------------------------------------------------------------------------------

/// Every stream of the store, through `list_streams` in pages of `page`, checking that pages
/// respect the limit and never repeat a stream.
async fn list_all_streams<S: EventStore>(store: &S, page: usize) -> Vec<StreamInfo> {
    let mut out: Vec<StreamInfo> = Vec::new();
    loop {
        let after = out.last().map(|s| s.stream_id.clone());
        let batch = store
            .list_streams(after.as_deref(), page)
            .await
            .unwrap_or_else(|e| panic!("list_streams(after {after:?}, {page}) failed: {e}"));
        assert!(
            batch.len() <= page,
            "list_streams returned more than its limit"
        );
        for s in &batch {
            assert!(
                !out.iter().any(|o| o.stream_id == s.stream_id),
                "list_streams listed {:?} twice",
                s.stream_id
            );
        }
        let n = batch.len();
        out.extend(batch);
        if n < page {
            return out;
        }
    }
}

/// `list_streams` lists each stream with events exactly once, with its version, category and
/// last position, in pages that continue after a given stream; an empty store lists nothing.
pub async fn list_streams_pages_through_every_stream_once_with_its_version<S: EventStore>(
    store: S,
) {
    assert!(store.list_streams(None, 10).await.unwrap().is_empty());
    let names = [
        "a", "a-b", "ab", "order-1", "order-10", "order-2", "über-1", "x-y-z", "cart", "cart-9",
    ];
    let mut expected: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for round in 0..3usize {
        for (i, name) in names.iter().enumerate() {
            if (i + round) % 3 == 0 {
                continue;
            }
            let r = ok_append(&store, name, ExpectedVersion::Any, evs(name, 1 + i % 3)).await;
            expected.insert((*name).to_owned(), (r.stream_version, r.last_position));
        }
    }
    assert!(
        store.list_streams(None, 0).await.unwrap().is_empty(),
        "a limit of 0 lists nothing"
    );
    for page in [1, 3, 100] {
        let listed = list_all_streams(&store, page).await;
        let got: BTreeMap<String, (u64, u64)> = listed
            .iter()
            .map(|s| (s.stream_id.clone(), (s.version, s.last_position)))
            .collect();
        assert_eq!(got, expected, "streams listed in pages of {page}");
        for s in &listed {
            assert_eq!(s.category, category_of(&s.stream_id), "category of {s:?}");
            assert_eq!(store.stream_version(&s.stream_id).await.unwrap(), s.version);
        }
    }
}

/// `list_checkpoints` lists saved and committed checkpoints in name order, in pages.
pub async fn list_checkpoints_pages_through_every_checkpoint_in_name_order<S: EventStore>(
    store: S,
) {
    assert!(store.list_checkpoints(None, 10).await.unwrap().is_empty());
    ok_append(&store, "log-1", ExpectedVersion::NoStream, evs("a", 99)).await;
    let mut expected = BTreeMap::new();
    for (i, name) in ["billing", "b", "zeta", "über", "billing-2", "a"]
        .iter()
        .enumerate()
    {
        store.save_checkpoint(name, i as u64 * 10).await.unwrap();
        expected.insert((*name).to_owned(), i as u64 * 10);
    }
    store
        .commit_checkpoint("projector", None, 5, vec![put("k", "v")])
        .await
        .unwrap();
    expected.insert("projector".into(), 5);
    store.save_checkpoint("zeta", 99).await.unwrap();
    expected.insert("zeta".into(), 99);
    for page in [1, 2, 100] {
        let mut all: Vec<CheckpointInfo> = Vec::new();
        loop {
            let after = all.last().map(|c| c.name.clone());
            let batch = store
                .list_checkpoints(after.as_deref(), page)
                .await
                .unwrap();
            assert!(batch.len() <= page);
            let n = batch.len();
            all.extend(batch);
            if n < page {
                break;
            }
        }
        let names: Vec<&str> = all.iter().map(|c| c.name.as_str()).collect();
        let expected_names: Vec<&str> = expected.keys().map(String::as_str).collect();
        assert_eq!(names, expected_names, "names in order, pages of {page}");
        for c in &all {
            assert_eq!(Some(&c.position), expected.get(&c.name), "checkpoint {c:?}");
        }
    }
}

/// A store with leases lists those under a prefix, held and expired alike, in byte order of
/// their names, at most `limit`; one without leases refuses the listing as it refuses leases.
pub async fn leases_are_listed_by_prefix_in_name_order<S: EventStore>(store: S) {
    let holder = LeaseHolder::new("host-a", 7, Uuid::new_v4());
    let long = Duration::from_secs(60);
    match store
        .acquire_lease("orders/members/001", &holder, long)
        .await
    {
        Err(StoreError::Unsupported(_)) => {
            assert!(
                matches!(
                    store.list_leases("orders/", 10).await,
                    Err(StoreError::Unsupported(_))
                ),
                "a store without leases must refuse to list them"
            );
            return;
        }
        Ok(LeaseAttempt::Acquired(_)) => {}
        other => panic!("taking a free lease: {other:?}"),
    }
    assert!(store.list_leases("nothing/", 10).await.unwrap().is_empty());
    let names = [
        "orders/members/000",
        "orders/members/010",
        "orders/members/002",
        "orders.p00of6",
        "orders/membersX",
        "ordersZ/members/000",
        "order/members/000",
        "orders/members/\u{e9}",
    ];
    let mut expired = None;
    for name in names {
        let ttl = if name.ends_with("002") {
            Duration::from_millis(1)
        } else {
            long
        };
        match store.acquire_lease(name, &holder, ttl).await.unwrap() {
            LeaseAttempt::Acquired(lease) if ttl != long => expired = Some(lease),
            LeaseAttempt::Acquired(_) => {}
            other => panic!("taking the free lease {name:?}: {other:?}"),
        }
    }
    // One released, one left to expire: both are still listed, as not held.
    if let Some(lease) = &expired {
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!store.load_lease(&lease.name).await.unwrap().unwrap().held);
    }
    let LeaseAttempt::Acquired(released) = store
        .acquire_lease("orders/members/005", &holder, long)
        .await
        .unwrap()
    else {
        panic!("taking a free lease");
    };
    store.release_lease(&released).await.unwrap();

    let listed = store.list_leases("orders/members/", 100).await.unwrap();
    let listed_names: Vec<&str> = listed.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(
        listed_names,
        [
            "orders/members/000",
            "orders/members/001",
            "orders/members/002",
            "orders/members/005",
            "orders/members/010",
            "orders/members/\u{e9}",
        ],
        "the leases under the prefix, in byte order of their names"
    );
    let held: Vec<bool> = listed.iter().map(|l| l.held).collect();
    assert_eq!(
        held,
        [true, true, false, false, true, true],
        "which are held"
    );
    for info in &listed {
        assert_eq!(info.holder, holder, "lease {:?}", info.name);
        assert!(info.generation >= 1);
    }
    let first_two = store.list_leases("orders/members/", 2).await.unwrap();
    assert_eq!(
        first_two
            .iter()
            .map(|l| l.name.as_str())
            .collect::<Vec<_>>(),
        ["orders/members/000", "orders/members/001"],
        "at most `limit`, the first in name order"
    );
    assert!(store.list_leases("orders/", 0).await.unwrap().is_empty());
    let all = store.list_leases("", 100).await.unwrap();
    assert_eq!(
        all.len(),
        names.len() + 2,
        "an empty prefix lists every lease"
    );
}

/// A recorded event made by hand, as an export from another store would give it.
fn recorded(position: u64, stream: &str, version: u64, timestamp_micros: u64) -> RecordedEvent {
    let payload: Vec<u8> = (0..(position % 7) as u8)
        .map(|b| b.wrapping_mul(37))
        .collect();
    let mut data = EventData::new(format!("Imported{}", position % 3), payload)
        .with_event_id(Uuid::new_v4())
        .with_schema_version(1 + (position % 2) as u32);
    if position.is_multiple_of(2) {
        data = data.with_correlation_id(Uuid::new_v4());
    }
    if position.is_multiple_of(3) {
        data = data.with_causation_id(Uuid::new_v4());
    }
    RecordedEvent::new(position, stream, version, data).with_timestamp_micros(timestamp_micros)
}

/// `import` writes events exactly as given (positions, versions, ids, timestamps, payloads),
/// in several batches; reads, versions, listing and `verify` agree; later appends continue the
/// positions, versions and timestamps.
pub async fn import_reproduces_recorded_events_exactly_and_appends_continue_after_it<
    S: EventStore,
>(
    store: S,
) {
    let streams = ["order-1", "order-2", "payment-1", "solo"];
    let mut versions: HashMap<&str, u64> = HashMap::new();
    let base = 1_600_000_000_000_000u64;
    let events: Vec<RecordedEvent> = (1..=60u64)
        .map(|p| {
            // Runs of the same stream, then switches, like appends of several events would give.
            let stream = streams[((p / 4) % streams.len() as u64) as usize];
            let v = versions.entry(stream).or_insert(0);
            *v += 1;
            // Timestamps that repeat within a "commit" and then go up.
            recorded(p, stream, *v, base + (p / 5) * 1000)
        })
        .collect();
    assert_eq!(store.import(events[..25].to_vec()).await.unwrap(), 25);
    assert_eq!(store.import(events[25..].to_vec()).await.unwrap(), 60);
    assert_eq!(store.head(), 60);
    assert_eq!(all_events(&store).await, events, "the log after import");
    for stream in streams {
        let of_stream: Vec<RecordedEvent> = events
            .iter()
            .filter(|e| e.stream_id == stream)
            .cloned()
            .collect();
        assert_eq!(
            store.read_stream(stream, 1, 1000).await.unwrap(),
            of_stream,
            "stream {stream} after import"
        );
        assert_eq!(
            store.stream_version(stream).await.unwrap(),
            versions[stream]
        );
    }
    let listed = list_all_streams(&store, 100).await;
    assert_eq!(listed.len(), streams.len());
    let report = store.verify().await.unwrap();
    assert!(report.is_ok(), "verify after import: {:?}", report.problems);
    assert_eq!(report.events_checked, 60);

    let r = ok_append(
        &store,
        "order-1",
        ExpectedVersion::Exact(versions["order-1"]),
        evs("n", 2),
    )
    .await;
    assert_eq!(r.first_position, 61, "an append after an import");
    assert_eq!(r.stream_version, versions["order-1"] + 2);
    let appended = store.read_all(61, 10, &Filter::all()).await.unwrap().events;
    assert!(
        appended[0].timestamp_micros >= events[59].timestamp_micros,
        "timestamps go on from the imported ones"
    );
}

/// Asserts that `result` is an `ImportRejected` at `position`.
fn assert_import_rejected(result: Result<u64>, position: u64, what: &str) {
    match result {
        Err(StoreError::ImportRejected { position: p, .. }) => {
            assert_eq!(p, position, "{what}: the rejected position")
        }
        other => panic!("{what} must fail with ImportRejected at {position}, got {other:?}"),
    }
}

/// An import that does not continue the log exactly (wrong first position, a gap, a stream
/// version out of sequence, timestamps going down or far in the future, a wrong category) fails with a typed error
/// and writes nothing; invalid names are `InvalidInput`.
pub async fn import_that_does_not_continue_the_log_writes_nothing<S: EventStore>(store: S) {
    assert_invalid(store.import(Vec::new()).await, "an empty import");
    ok_append(&store, "order-1", ExpectedVersion::NoStream, evs("a", 2)).await;
    let before = all_events(&store).await;
    let last_ts = before[1].timestamp_micros;
    let ts = last_ts + 1;

    assert_import_rejected(
        store.import(vec![recorded(1, "order-9", 1, ts)]).await,
        1,
        "an import over existing positions",
    );
    assert_import_rejected(
        store.import(vec![recorded(4, "order-9", 1, ts)]).await,
        4,
        "an import that leaves a gap after the head",
    );
    assert_import_rejected(
        store
            .import(vec![
                recorded(3, "order-9", 1, ts),
                recorded(5, "order-9", 2, ts),
            ])
            .await,
        5,
        "an import with a gap inside",
    );
    assert_import_rejected(
        store.import(vec![recorded(3, "order-1", 1, ts)]).await,
        3,
        "an import that repeats a stream version",
    );
    assert_import_rejected(
        store
            .import(vec![
                recorded(3, "order-9", 1, ts),
                recorded(4, "order-9", 3, ts),
            ])
            .await,
        4,
        "an import that skips a stream version",
    );
    assert_import_rejected(
        store
            .import(vec![
                recorded(3, "order-9", 1, ts + 5),
                recorded(4, "order-9", 2, ts + 4),
            ])
            .await,
        4,
        "an import whose timestamps go down",
    );
    assert_import_rejected(
        store
            .import(vec![recorded(3, "order-9", 1, last_ts.saturating_sub(1))])
            .await,
        3,
        "an import from before the store's last event",
    );
    // Timestamps never go down with position: one far in the future would pin every later
    // append's timestamp to it.
    for future in [u64::MAX, ts + 48 * 3600 * 1_000_000] {
        assert_import_rejected(
            store.import(vec![recorded(3, "order-9", 1, future)]).await,
            3,
            "an import with a timestamp far in the future",
        );
    }
    let mut wrong_category = recorded(3, "order-9", 1, ts);
    wrong_category.category = "payment".into();
    assert_import_rejected(
        store.import(vec![wrong_category]).await,
        3,
        "an import with a category that is not the stream's",
    );
    assert_invalid(
        store.import(vec![recorded(3, "", 1, ts)]).await,
        "an import with an empty stream id",
    );
    assert_eq!(store.head(), 2, "rejected imports moved the head");
    assert_eq!(
        all_events(&store).await,
        before,
        "rejected imports wrote events"
    );
    assert_eq!(store.stream_version("order-9").await.unwrap(), 0);

    let fitting = vec![recorded(3, "order-9", 1, ts), recorded(4, "order-1", 3, ts)];
    assert_eq!(store.import(fitting.clone()).await.unwrap(), 4);
    assert_eq!(all_events(&store).await[2..], fitting[..]);
}

// ---------------------------------------------------------------------------------------------
// Metadata
// ---------------------------------------------------------------------------------------------

/// Metadata of every kind a header can hold: a W3C trace context, non-ASCII keys and values, an
/// empty value, characters JSON escapes.
fn rich_metadata() -> Metadata {
    [
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("tracestate", "vendor=abc,other=\"q\""),
        ("tenant", "acme"),
        ("ключ", "значение ✓"),
        ("empty", ""),
        ("quote\"and\\backslash", "{\"json\": [1]}"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// Metadata given at append (alone and in concurrent appends, which a server backend commits
/// together) and at import comes back unchanged from `read_stream` and every kind of
/// `read_all`; events without metadata read with none; bad metadata is `InvalidInput` and
/// writes nothing; metadata counts in a page's bytes exactly as `page_bytes` says.
pub async fn metadata_round_trips_through_append_import_and_every_read<S: EventStore>(store: S) {
    let rich = rich_metadata();
    let given = vec![
        ev("Placed", "a").with_metadata_map(rich.clone()),
        ev("Placed", "b"),
        ev("Shipped", "c").with_metadata("tenant", "other"),
    ];
    ok_append(&store, "meta-1", ExpectedVersion::NoStream, given.clone()).await;
    let appends = (0..8).map(|i| {
        let store = &store;
        async move {
            let stream = format!("metb-{i}");
            let events = vec![ev("Placed", format!("{i}")).with_metadata("n", i.to_string())];
            store
                .append(&stream, ExpectedVersion::NoStream, events)
                .await
        }
    });
    for result in futures_util::future::join_all(appends).await {
        result.expect("a concurrent append with metadata");
    }
    let read = store.read_stream("meta-1", 1, 10).await.unwrap();
    let metadata: Vec<&Metadata> = read.iter().map(|e| &e.metadata).collect();
    assert_eq!(
        metadata,
        given.iter().map(|d| &d.metadata).collect::<Vec<_>>(),
        "read_stream"
    );
    assert!(read[1].metadata.is_empty());
    for i in 0..8 {
        let e = &store
            .read_stream(&format!("metb-{i}"), 1, 10)
            .await
            .unwrap()[0];
        assert_eq!(e.metadata.get("n"), Some(&i.to_string()), "metb-{i}");
    }
    let everything = all_events(&store).await;
    assert_eq!(everything.len(), 11);
    assert_eq!(
        &everything[..3],
        &read[..],
        "read_all and read_stream disagree"
    );
    for filter in [
        Filter::all().categories(["meta"]),
        Filter::all().event_types(["Placed", "Shipped"]),
        Filter::all()
            .categories(["meta"])
            .event_types(["Placed", "Shipped"]),
    ] {
        let page = store.read_all(1, 100, &filter).await.unwrap();
        assert_eq!(&page.events[..3], &read[..], "read_all with {filter:?}");
    }

    // Bad metadata is refused before anything is written.
    let head = store.head();
    let bad = |key: &str, value: &str| ev("Placed", "x").with_metadata(key, value);
    for (what, event) in [
        ("an empty key", bad("", "v")),
        (
            "a key too long",
            bad(&"k".repeat(MAX_METADATA_KEY_LEN + 1), "v"),
        ),
        ("a key with a newline", bad("a\nb", "v")),
        ("a value with a NUL", bad("k", "a\0b")),
        ("a value with a carriage return", bad("k", "a\rb")),
        (
            "metadata beyond its limit",
            bad("k", &"v".repeat(MAX_METADATA_LEN)),
        ),
        (
            "payload and metadata beyond an event's limit",
            ev("Placed", vec![0u8; MAX_PAYLOAD_LEN - 10]).with_metadata("key", "0123456789"),
        ),
    ] {
        assert_invalid(
            store
                .append("meta-2", ExpectedVersion::Any, vec![event])
                .await,
            what,
        );
    }
    let longest_key = "k".repeat(MAX_METADATA_KEY_LEN);
    ok_append(
        &store,
        "meta-2",
        ExpectedVersion::NoStream,
        vec![bad(&longest_key, "v")],
    )
    .await;
    assert_eq!(store.head(), head + 1, "refused appends wrote nothing");

    // Metadata counts in a page's bytes: an event one byte short of the budget with its
    // metadata still lets the next one in; three events that fit without metadata make a page
    // of two with it.
    let overhead = "page-1".len() + "page".len() + "P".len();
    let meta = |n: usize| Metadata::from([("m".to_owned(), "v".repeat(n - 1))]);
    let first =
        ev("P", vec![1u8; READ_PAGE_BYTES - 1 - overhead - 1000]).with_metadata_map(meta(1000));
    assert_eq!(
        RecordedEvent::new(1, "page-1", 1, first.clone()).page_bytes(),
        READ_PAGE_BYTES - 1
    );
    ok_append(&store, "page-1", ExpectedVersion::NoStream, vec![first]).await;
    ok_append(
        &store,
        "page-1",
        ExpectedVersion::Exact(1),
        vec![ev("P", "small")],
    )
    .await;
    let page = store.read_stream("page-1", 1, 10).await.unwrap();
    assert_eq!(
        page.len(),
        2,
        "an event just under the budget with its metadata"
    );
    let half = READ_PAGE_BYTES / 2 - overhead - 1000;
    for _ in 0..3 {
        let e = ev("P", vec![2u8; half]).with_metadata_map(meta(2000));
        ok_append(&store, "page-2", ExpectedVersion::Any, vec![e]).await;
    }
    let page = store.read_stream("page-2", 1, 10).await.unwrap();
    assert_eq!(page.len(), 2, "a stream page counts metadata bytes");
    assert!(stream_page_is_full(&page, 10));
    let first_of_page_2 = page[0].position;
    let page = store
        .read_all(first_of_page_2, 10, &Filter::all().categories(["page"]))
        .await
        .unwrap();
    assert_eq!(page.events.len(), 2, "a global page counts metadata bytes");

    // Import: metadata given comes back, and bad metadata is refused.
    let next = store.head() + 1;
    let last_ts = all_events(&store).await.last().unwrap().timestamp_micros;
    let imported = vec![
        RecordedEvent::new(
            next,
            "imp-1",
            1,
            ev("Imported", "i").with_metadata_map(rich.clone()),
        )
        .with_timestamp_micros(last_ts),
        RecordedEvent::new(next + 1, "imp-1", 2, ev("Imported", "j"))
            .with_timestamp_micros(last_ts),
    ];
    let bad_import = vec![RecordedEvent::new(
        next,
        "imp-1",
        1,
        ev("Imported", "i").with_metadata("bad\u{7f}key", "v"),
    )
    .with_timestamp_micros(last_ts)];
    assert_invalid(
        store.import(bad_import).await,
        "an import with bad metadata",
    );
    assert_eq!(store.import(imported.clone()).await.unwrap(), next + 1);
    assert_eq!(store.read_stream("imp-1", 1, 10).await.unwrap(), imported);
    let page = store.read_all(next, 10, &Filter::all()).await.unwrap();
    assert_eq!(page.events, imported, "read_all after import");
    let report = store.verify().await.unwrap();
    assert!(report.is_ok(), "verify: {:?}", report.problems);
}
