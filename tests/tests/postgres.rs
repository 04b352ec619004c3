//! What the PostgreSQL store promises beyond the conformance suite: no reader skips an event
//! whose writer commits late, subscriptions are exactly-once with many writers committing in any
//! order (and some rolling back), and a lost connection is retried, not fatal.
//!
//! Each test runs in a schema of its own on the test server ([`tidings_tests::pg`]) and skips
//! loudly without one (fails with `TIDINGS_REQUIRE_POSTGRES=1`). Writers outside the store use
//! the schema's own `append` function inside transactions they hold open, as a slow writer in
//! another process would.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use tidings::store::{
    EventData, EventStore, ExpectedVersion, Filter, PostgresEventStore, RecordedEvent, StoreError,
};
use tidings::subscription::{
    EventContext, HandleEvent, HandlerError, SubscriptionConfig, SubscriptionHandle, Subscriptions,
};
use tidings::{async_trait, DomainEvent, EventHandler};
use tidings_tests::domain::OrderEvent;
use tidings_tests::pg::{self, Schema};
use uuid::Uuid;

/// Held for reading by every test of this file, and for writing by the one that restarts the
/// server, so that no other test sees its server go away.
static SERVER: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// The longest a test waits for a condition that must come true.
const PATIENCE: Duration = Duration::from_secs(90);

/// Positions handled, in the order handled (in memory: may repeat after a restart).
type Seen = Arc<Mutex<Vec<u64>>>;

/// An exactly-once projection: counts, in its committed state, how often it handled each
/// position (key `p/` + position), and records what it handled in memory.
#[derive(EventHandler)]
#[event_handler(name = "tally", events(OrderEvent))]
struct Tally {
    seen: Seen,
}

#[async_trait]
impl HandleEvent<OrderEvent> for Tally {
    async fn handle(
        &mut self,
        _: OrderEvent,
        ctx: &mut EventContext<'_>,
    ) -> Result<(), HandlerError> {
        let position = ctx.event().position;
        let key = tally_key(position);
        let count = ctx.get_json::<u64>(&key).await?.unwrap_or(0);
        ctx.put_json(&key, &(count + 1))?;
        self.seen.lock().unwrap().push(position);
        Ok(())
    }
}

fn tally_key(position: u64) -> Vec<u8> {
    let mut key = b"p/".to_vec();
    key.extend_from_slice(&position.to_be_bytes());
    key
}

/// The tally's committed state: how often each position was handled.
async fn tally(store: &PostgresEventStore) -> BTreeMap<u64, u64> {
    let mut out = BTreeMap::new();
    let mut from = b"p/".to_vec();
    loop {
        let page = store.scan_state("tally", b"p/", &from, 500).await.unwrap();
        for (key, value) in &page {
            let position = u64::from_be_bytes(key[2..].try_into().unwrap());
            out.insert(position, serde_json::from_slice(value).unwrap());
        }
        match page.last() {
            Some((key, _)) if page.len() == 500 => {
                from = key.clone();
                from.push(0);
            }
            _ => return out,
        }
    }
}

/// Every event of the log that the store returns, by position order.
async fn log(store: &PostgresEventStore) -> Vec<RecordedEvent> {
    let mut out = Vec::new();
    let mut from = 1;
    loop {
        let batch = store.read_all(from, 1000, &Filter::all()).await.unwrap();
        out.extend(batch.events.iter().cloned());
        if batch.is_end() {
            return out;
        }
        from = batch.next_position;
    }
}

/// A fresh schema and a store in it (the URL names the connections after `app`, so that a test
/// can find them in `pg_stat_activity`).
fn open(
    test: &str,
    app: &str,
    config: impl FnOnce(tidings::store::PostgresConfig) -> tidings::store::PostgresConfig,
) -> Option<(Schema, Arc<PostgresEventStore>)> {
    let schema = Schema::fresh(test)?;
    let mut config = config(schema.config()).pool_size(8);
    config.url = format!("{}?application_name={app}", pg::url());
    let store = config
        .open_blocking()
        .unwrap_or_else(|e| panic!("open the store: {e}"));
    Some((schema, Arc::new(store)))
}

/// Waits until `condition` holds, polling, for at most [`PATIENCE`].
async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until the subscription has handled everything up to the store's head, which must
/// stay put meanwhile (every writer is done).
async fn caught_up(handle: &SubscriptionHandle, store: &PostgresEventStore) {
    let head = store.read_all(1, 1, &Filter::all()).await.unwrap().head;
    if let Err(e) = handle.wait_until_handled(head, PATIENCE).await {
        panic!("the subscription did not reach the head {head}: {e}");
    }
}

fn order(cents: u64) -> EventData {
    OrderEvent::OrderPlaced { cents }.to_event_data().unwrap()
}

/// Appends `events` to `stream` through the schema's `append` function on a plain connection,
/// inside the transaction the caller has open; returns the first position.
async fn raw_append(
    client: &tokio_postgres::Client,
    schema: &str,
    stream: &str,
    events: &[EventData],
) -> u64 {
    let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    let versions: Vec<i32> = events.iter().map(|e| e.schema_version as i32).collect();
    let none: Vec<Option<Uuid>> = vec![None; events.len()];
    let payloads: Vec<&[u8]> = events.iter().map(|e| &e.payload[..]).collect();
    let category = tidings::store::category_of(stream);
    let row = client
        .query_one(
            &format!("SELECT o_first FROM \"{schema}\".append($1, $2, -1, $3, $4, $5, $6, $7, $8)"),
            &[
                &stream, &category, &ids, &types, &versions, &none, &none, &payloads,
            ],
        )
        .await
        .expect("append through the schema's function");
    row.get::<_, i64>(0) as u64
}

/// A writer holds its transaction open after taking position p while others append and commit
/// after it. Meanwhile no reader passes p (the head stays below it, the subscription stops
/// before it, the other writers' appends return after the visibility timeout). When it commits,
/// the subscription gets every event exactly once, in position order.
#[actix::test]
async fn a_writer_holding_its_transaction_open_is_not_skipped() {
    let _shared = SERVER.read().await;
    let Some((schema, store)) = open("a_writer_holding_its_transaction_open", "held", |c| {
        c.visibility_timeout(Duration::from_millis(200))
    }) else {
        return;
    };
    let seen = Seen::default();
    let subs = Subscriptions::new(store.clone());
    let handle = subs
        .start_with(
            Tally { seen: seen.clone() },
            SubscriptionConfig::default().batch_size(7),
        )
        .unwrap();
    for i in 0..10 {
        store
            .append("order-early", ExpectedVersion::Any, vec![order(i)])
            .await
            .unwrap();
    }
    wait_until("the first 10 events handled", || {
        seen.lock().unwrap().len() == 10
    })
    .await;

    let held = pg::connect().await.unwrap();
    held.batch_execute("BEGIN").await.unwrap();
    let held_position = raw_append(&held, schema.name(), "order-held", &[order(999)]).await;
    assert_eq!(held_position, 11, "the held writer took the next position");

    // Four writers append 24 events after it; each append is acknowledged once the
    // visibility timeout passes (the held transaction holds the read horizon back).
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..3u64 {
                    let events = vec![order(w * 100 + i), order(w * 100 + i + 50)];
                    let r = store
                        .append(&format!("order-late{w}"), ExpectedVersion::Any, events)
                        .await
                        .unwrap();
                    assert!(r.first_position > held_position);
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    assert_eq!(
        store.head(),
        10,
        "the head passed a position whose writer is open"
    );
    let visible = log(&store).await;
    assert_eq!(
        visible.len(),
        10,
        "a read returned events past the open writer"
    );
    assert!(
        store
            .read_stream("order-late0", 1, 10)
            .await
            .unwrap()
            .is_empty(),
        "a stream read returned events past the open writer"
    );
    assert!(
        seen.lock().unwrap().iter().all(|&p| p < held_position),
        "the subscription passed the open writer: {:?}",
        seen.lock().unwrap()
    );

    held.batch_execute("COMMIT").await.unwrap();
    let total = 10 + 1 + 24;
    wait_until("every event handled after the commit", || {
        seen.lock().unwrap().len() >= total
    })
    .await;
    caught_up(&handle, &store).await;
    let positions: Vec<u64> = log(&store).await.iter().map(|e| e.position).collect();
    assert_eq!(positions, (1..=total as u64).collect::<Vec<_>>());
    assert_eq!(
        *seen.lock().unwrap(),
        positions,
        "the subscription got every event once, in position order"
    );
    handle.stop().await;
    let counts = tally(&store).await;
    assert_eq!(counts.keys().copied().collect::<Vec<_>>(), positions);
    assert!(counts.values().all(|&c| c == 1), "counts: {counts:?}");
}

/// Many writers, some through the store and some through transactions held open for a random
/// while (a few rolled back, leaving gaps in the positions), while the subscription runs and is
/// restarted twice. Afterwards its exactly-once state holds every committed event exactly once
/// and nothing else; in memory it saw every event.
#[actix::test]
async fn random_writers_with_random_commit_delays_are_seen_exactly_once() {
    let _shared = SERVER.read().await;
    let Some((schema, store)) = open("random_writers", "random", |c| c) else {
        return;
    };
    let seed: u64 = rand::random();
    eprintln!("random_writers: seed {seed}");
    let seen = Seen::default();
    let subs = Subscriptions::new(store.clone());
    let config = SubscriptionConfig::default().batch_size(5).commit_every(3);
    let mut handle = subs
        .start_with(Tally { seen: seen.clone() }, config.clone())
        .unwrap();
    let writers: Vec<_> = (0..8u64)
        .map(|w| {
            let store = store.clone();
            let schema = schema.name().to_owned();
            tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ w);
                let raw = pg::connect().await.unwrap();
                let mut rolled_back = 0u64;
                let mut committed = Vec::new();
                for i in 0..25u64 {
                    let stream = format!("order-w{w}s{}", i % 3);
                    let events: Vec<EventData> = (0..rng.gen_range(1..=3))
                        .map(|k| order(i * 10 + k))
                        .collect();
                    let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
                    match rng.gen_range(0..10) {
                        0..=4 => {
                            store
                                .append(&stream, ExpectedVersion::Any, events)
                                .await
                                .unwrap();
                            committed.extend(ids);
                        }
                        choice => {
                            raw.batch_execute("BEGIN").await.unwrap();
                            raw_append(&raw, &schema, &stream, &events).await;
                            let pause = rng.gen_range(0..25);
                            tokio::time::sleep(Duration::from_millis(pause)).await;
                            if choice == 9 {
                                raw.batch_execute("ROLLBACK").await.unwrap();
                                rolled_back += 1;
                            } else {
                                raw.batch_execute("COMMIT").await.unwrap();
                                committed.extend(ids);
                            }
                        }
                    }
                }
                (rolled_back, committed)
            })
        })
        .collect();
    // Two restarts while the writers write: each resumes from the stored checkpoint.
    for round in 1..=2 {
        wait_until("progress before a restart", || {
            seen.lock().unwrap().len() >= round * 40
        })
        .await;
        handle.stop().await;
        handle = subs
            .start_with(Tally { seen: seen.clone() }, config.clone())
            .unwrap();
    }
    let mut rolled_back = 0;
    let mut written = BTreeSet::new();
    for w in writers {
        let (r, ids) = w.await.unwrap();
        rolled_back += r;
        written.extend(ids);
    }
    // The last commits are readable once the tracker sees them (appends through the store
    // wait for that themselves; raw ones do not).
    let committed = log(&store).await;
    caught_up(&handle, &store).await;
    handle.stop().await;

    let logged: BTreeSet<Uuid> = committed.iter().map(|e| e.event_id).collect();
    assert_eq!(
        logged.len(),
        committed.len(),
        "an event stored twice (seed {seed})"
    );
    assert_eq!(
        logged, written,
        "the log holds exactly the events whose writers committed (seed {seed})"
    );
    let positions: BTreeSet<u64> = committed.iter().map(|e| e.position).collect();
    let counts = tally(&store).await;
    assert_eq!(
        counts.keys().copied().collect::<BTreeSet<_>>(),
        positions,
        "the projection's positions are the log's (seed {seed}, {rolled_back} rolled back)"
    );
    let repeated: Vec<_> = counts.iter().filter(|(_, &c)| c != 1).collect();
    assert!(
        repeated.is_empty(),
        "handled more than once into the exactly-once state: {repeated:?} (seed {seed})"
    );
    let in_memory: BTreeSet<u64> = seen.lock().unwrap().iter().copied().collect();
    assert_eq!(in_memory, positions, "in memory (seed {seed})");
    let versions_ok = committed.iter().fold(BTreeMap::new(), |mut m, e| {
        let v = m.entry(e.stream_id.clone()).or_insert(0u64);
        assert_eq!(
            e.stream_version,
            *v + 1,
            "versions of {} (seed {seed})",
            e.stream_id
        );
        *v += 1;
        m
    });
    assert!(!versions_ok.is_empty());
    let report = store.verify().await.unwrap();
    assert!(report.is_ok(), "verify: {:?}", report.problems);
}

/// How a test cuts the store off from the server.
#[derive(Clone, Copy, Debug)]
enum Outage {
    /// `pg_terminate_backend` of every connection of the store (its listener included).
    Terminate,
    /// A restart of the whole server (`pg_ctlcluster ... restart`).
    Restart,
}

/// Appends `count` events, one per append, to one stream with exact expected versions. On
/// `Unavailable` the outcome is unknown: the writer reads the stream (waiting out the outage)
/// to learn whether the append was stored, as the error's documentation says, and appends again
/// only if it was not. Returns the ids acknowledged and how many appends got `Unavailable`.
async fn write_through_outages(store: &PostgresEventStore, count: u64) -> (BTreeSet<Uuid>, u64) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut acknowledged = BTreeSet::new();
    let mut unavailable = 0u64;
    let mut version = 0u64;
    for i in 0..count {
        let event = order(i);
        let id = event.event_id;
        loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the outage never ended"
            );
            match store
                .append(
                    "order-outage",
                    ExpectedVersion::Exact(version),
                    vec![event.clone()],
                )
                .await
            {
                Ok(r) => {
                    version = r.stream_version;
                    acknowledged.insert(id);
                    break;
                }
                Err(StoreError::Unavailable(_)) => {
                    unavailable += 1;
                    let stored = loop {
                        assert!(
                            tokio::time::Instant::now() < deadline,
                            "the outage never ended"
                        );
                        match store.read_stream("order-outage", version + 1, 1).await {
                            Ok(events) => break events,
                            Err(StoreError::Unavailable(_)) => {
                                tokio::time::sleep(Duration::from_millis(20)).await
                            }
                            Err(e) => panic!("read after a lost connection: {e}"),
                        }
                    };
                    if let Some(e) = stored.first() {
                        assert_eq!(e.event_id, id, "an event nobody appended");
                        version += 1;
                        acknowledged.insert(id);
                        break;
                    }
                }
                Err(e) => panic!("append failed with an untyped error: {e:?}"),
            }
        }
    }
    (acknowledged, unavailable)
}

/// Cuts the store's connections `rounds` times while a writer appends 300 events and a
/// subscription follows: appends fail with the typed `Unavailable` error (or go through), the
/// subscription waits for the store and resumes from its checkpoint, and in the end every
/// acknowledged event is stored once and handled exactly once.
async fn survive(outage: Outage, rounds: usize) {
    let app = format!("tidings_outage_{}", std::process::id());
    let Some((_schema, store)) = open("survive an outage", &app, |c| {
        c.poll_interval(Duration::from_millis(50))
    }) else {
        return;
    };
    let seen = Seen::default();
    let subs = Subscriptions::new(store.clone());
    let handle = subs
        .start_with(
            Tally { seen: seen.clone() },
            SubscriptionConfig::default().restart_backoff(Duration::from_millis(10)),
        )
        .unwrap();
    let total = 300u64;
    let writer = {
        let store = store.clone();
        tokio::spawn(async move { write_through_outages(&store, total).await })
    };
    let step = total as usize / (rounds + 1);
    for round in 1..=rounds {
        wait_until("progress between outages", || {
            seen.lock().unwrap().len() >= round * step
        })
        .await;
        match outage {
            Outage::Terminate => {
                let killer = pg::connect().await.unwrap();
                let row = killer
                    .query_one(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                         WHERE application_name = $1",
                        &[&app],
                    )
                    .await
                    .unwrap();
                assert!(row.get::<_, i64>(0) > 0, "no connection was terminated");
            }
            Outage::Restart => {
                let restarted = tokio::task::spawn_blocking(pg::restart_server)
                    .await
                    .unwrap();
                assert!(restarted, "the server could not be restarted");
            }
        }
    }
    let (acknowledged, unavailable) = writer.await.unwrap();
    eprintln!(
        "{rounds} outages ({outage:?}): {unavailable} appends got Unavailable; subscription \
         status {:?}",
        handle.status()
    );
    caught_up(&handle, &store).await;
    handle.stop().await;
    let events = log(&store).await;
    let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len() as u64, total, "every event stored once");
    assert_eq!(ids.iter().copied().collect::<BTreeSet<_>>(), acknowledged);
    let counts = tally(&store).await;
    let positions: BTreeSet<u64> = events.iter().map(|e| e.position).collect();
    assert_eq!(counts.keys().copied().collect::<BTreeSet<_>>(), positions);
    assert!(counts.values().all(|&c| c == 1), "counts: {counts:?}");
}

/// Five rounds of `pg_terminate_backend` on every connection of the store.
#[actix::test]
async fn terminated_connections_make_appends_fail_typed_and_subscriptions_resume() {
    let _shared = SERVER.read().await;
    survive(Outage::Terminate, 5).await;
}

/// Restarts of the whole server (`TIDINGS_PG_RESTARTS`, default 1), alone on the server: the
/// other tests of this file wait. Needs `pg_ctlcluster` and the right to use it (CI has both);
/// without them it skips loudly, or fails with `TIDINGS_REQUIRE_POSTGRES=1`.
#[actix::test]
async fn a_server_restart_makes_appends_fail_typed_and_subscriptions_resume() {
    let _alone = SERVER.write().await;
    if !pg::can_restart_server("a_server_restart") {
        return;
    }
    let rounds = tidings_tests::support::env_or("TIDINGS_PG_RESTARTS", 1) as usize;
    survive(Outage::Restart, rounds.max(1)).await;
}

/// Eight stores open one new schema at the same moment (as eight processes starting together
/// would): each migration runs once, and every store works.
#[test]
fn opening_a_new_schema_from_many_stores_at_once_migrates_it_once() {
    let _shared = SERVER.blocking_read();
    let Some(schema) = Schema::fresh("opening_a_new_schema_from_many_stores_at_once") else {
        return;
    };
    let barrier = std::sync::Barrier::new(8);
    let stores: Vec<PostgresEventStore> = std::thread::scope(|scope| {
        let opening: Vec<_> = (0..8)
            .map(|_| {
                scope.spawn(|| {
                    barrier.wait();
                    schema.config().pool_size(2).open_blocking()
                })
            })
            .collect();
        opening
            .into_iter()
            .map(|t| t.join().unwrap().expect("open while others open"))
            .collect()
    });
    let name = schema.name().to_owned();
    let (migrations, appended) = pg::blocking(async move {
        let client = pg::connect().await.unwrap();
        let versions = recorded_migrations(&client, &name).await;
        let mut positions = Vec::new();
        for (i, store) in stores.iter().enumerate() {
            let r = store
                .append(
                    &format!("open-{i}"),
                    ExpectedVersion::NoStream,
                    vec![order(1)],
                )
                .await
                .unwrap();
            positions.push(r.first_position);
        }
        (versions, positions)
    });
    assert_eq!(
        migrations,
        (1..=tidings::store::POSTGRES_SCHEMA_VERSION).collect::<Vec<_>>(),
        "each migration recorded once"
    );
    assert_eq!(appended, (1..=8).collect::<Vec<u64>>());
}

/// The migrations recorded in schema `name`, in order.
async fn recorded_migrations(client: &tokio_postgres::Client, name: &str) -> Vec<i32> {
    let sql = format!("SELECT version FROM \"{name}\".migrations ORDER BY version");
    let rows = client.query(&sql, &[]).await.unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

/// A schema at migration 5 (events written without metadata, by the previous build's
/// `append_v5`) is migrated at open: its events read with empty metadata, and appends carry
/// metadata from then on.
#[test]
fn a_schema_at_migration_5_migrates_and_its_events_read_without_metadata() {
    let _shared = SERVER.blocking_read();
    let Some(schema) = Schema::fresh("a_schema_at_migration_5_migrates") else {
        return;
    };
    drop(schema.open(|c| c));
    let name = schema.name().to_owned();
    // Back to what migration 5 left (migrations 6 to 8 only add the column and functions, and
    // mark the clock as set), then an append as a process of that build makes it.
    pg::blocking(async move {
        let client = pg::connect().await.unwrap();
        client
            .batch_execute(&format!(
                "DROP FUNCTION \"{name}\".append_v8; DROP FUNCTION \"{name}\".append_batch_v8; \
                 DROP FUNCTION \"{name}\".append_v7; DROP FUNCTION \"{name}\".append_batch_v7; \
                 DROP FUNCTION \"{name}\".append_v6; DROP FUNCTION \"{name}\".append_batch_v6; \
                 ALTER TABLE \"{name}\".events DROP COLUMN metadata; \
                 DELETE FROM \"{name}\".migrations WHERE version >= 6;"
            ))
            .await
            .unwrap();
        client
            .batch_execute(&format!(
                "SELECT * FROM \"{name}\".append_v5('order-1', 'order', -1, \
                     ARRAY[gen_random_uuid()], ARRAY['Old'], ARRAY[1], ARRAY[NULL::uuid], \
                     ARRAY[NULL::uuid], ARRAY['{{}}'::bytea]);"
            ))
            .await
            .unwrap();
    });
    let store = schema.open(|c| c);
    let versions = pg::blocking({
        let name = schema.name().to_owned();
        async move { recorded_migrations(&pg::connect().await.unwrap(), &name).await }
    });
    assert_eq!(versions, (1..=8).collect::<Vec<_>>());
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let events = pg::blocking(async move {
        let new = EventData::new("New", b"{}".to_vec())
            .with_trace_context(traceparent, None)
            .unwrap();
        store
            .append("order-1", ExpectedVersion::Exact(1), vec![new])
            .await
            .unwrap();
        store.read_stream("order-1", 1, 10).await.unwrap()
    });
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].event_type, "Old");
    assert!(events[0].metadata.is_empty());
    assert_eq!(events[1].traceparent(), Some(traceparent));
}

/// A schema at migration 6 is migrated at open, and processes of the previous build, which call
/// `append_v6` and `append_batch_v6`, go on appending beside those of this one, which call the
/// `_v8` functions: the versions and positions of both follow each other.
#[test]
fn a_schema_at_migration_6_migrates_and_appends_of_the_previous_build_go_on() {
    previous_build_appends_go_on(6);
}

/// The same from migration 7 (`append_v7`, `append_batch_v7`). Its clock was never set as
/// called (as migration 3 left it when no append followed): migration 8 keeps its value, so
/// the timestamps of later appends do not go below it.
#[test]
fn a_schema_at_migration_7_migrates_and_appends_of_the_previous_build_go_on() {
    previous_build_appends_go_on(7);
}

/// A schema brought back to migration `old` (6 or 7), appended to by a process of that build,
/// migrated by opening it, then appended to by both builds in turn.
fn previous_build_appends_go_on(old: i32) {
    let _shared = SERVER.blocking_read();
    let Some(schema) = Schema::fresh(&format!("a_schema_at_migration_{old}_migrates")) else {
        return;
    };
    drop(schema.open(|c| c));
    let name = schema.name().to_owned();
    let old_append = format!(
        "SELECT o_actual, o_first FROM \"{name}\".append_v{old}('order-1', 'order', -1, \
             ARRAY[gen_random_uuid()], ARRAY['Old'], ARRAY[1], ARRAY[NULL::uuid], \
             ARRAY[NULL::uuid], ARRAY['{{}}'::bytea], ARRAY[NULL::jsonb])"
    );
    let old_batch = format!(
        "SELECT o_actual, o_first FROM \"{name}\".append_batch_v{old}( \
             ARRAY['order-1', 'order-2'], ARRAY['order', 'order'], ARRAY[-1, 0]::bigint[], \
             ARRAY[1, 1], ARRAY[gen_random_uuid(), gen_random_uuid()], ARRAY['Old', 'Old'], \
             ARRAY[1, 1], ARRAY[NULL::uuid, NULL], ARRAY[NULL::uuid, NULL], \
             ARRAY['{{}}'::bytea, '{{}}'], ARRAY[NULL::jsonb, NULL])"
    );
    // An hour ahead of the server's clock: a seed the clock must keep.
    let seed: i64 = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros()
        + 3_600_000_000) as i64;
    // Back to what migration `old` left (the later ones only add functions and mark the clock as
    // set), then an append as a process of that build makes it.
    let first = pg::blocking({
        let (name, old_append) = (name.clone(), old_append.clone());
        async move {
            let client = pg::connect().await.unwrap();
            let mut undo = String::new();
            for version in old + 1..=8 {
                undo += &format!(
                    "DROP FUNCTION \"{name}\".append_v{version}; \
                     DROP FUNCTION \"{name}\".append_batch_v{version}; "
                );
            }
            undo += &format!("DELETE FROM \"{name}\".migrations WHERE version > {old};");
            client.batch_execute(&undo).await.unwrap();
            let row = client.query_one(&old_append, &[]).await.unwrap();
            if old == 7 {
                // As migration 3 left the clock: a value, not yet called.
                client
                    .batch_execute(&format!("SELECT setval('\"{name}\".clock', {seed}, false)"))
                    .await
                    .unwrap();
            }
            (row.get::<_, i64>(0), row.get::<_, Option<i64>>(1))
        }
    });
    assert_eq!(first, (1, Some(1)));
    let store = schema.open(|c| c);
    let (versions, events) = pg::blocking(async move {
        let client = pg::connect().await.unwrap();
        let versions = recorded_migrations(&client, &name).await;
        let r = store
            .append("order-1", ExpectedVersion::Exact(1), vec![order(2)])
            .await
            .unwrap();
        assert_eq!((r.first_position, r.stream_version), (2, 2));
        // The previous build's process appends again, alone and in a batch.
        let row = client.query_one(&old_append, &[]).await.unwrap();
        assert_eq!(
            (row.get::<_, i64>(0), row.get::<_, Option<i64>>(1)),
            (3, Some(3))
        );
        let row = client.query_one(&old_batch, &[]).await.unwrap();
        assert_eq!(row.get::<_, Vec<i64>>(0), vec![3, 0]);
        assert_eq!(row.get::<_, Vec<Option<i64>>>(1), vec![Some(4), Some(5)]);
        let r = store
            .append("order-2", ExpectedVersion::Exact(1), vec![order(6)])
            .await
            .unwrap();
        assert_eq!((r.first_position, r.stream_version), (6, 2));
        (versions, log(&store).await)
    });
    assert_eq!(versions, (1..=8).collect::<Vec<_>>());
    let stored: Vec<(u64, &str, u64)> = events
        .iter()
        .map(|e| (e.position, e.stream_id.as_str(), e.stream_version))
        .collect();
    assert_eq!(
        stored,
        vec![
            (1, "order-1", 1),
            (2, "order-1", 2),
            (3, "order-1", 3),
            (4, "order-1", 4),
            (5, "order-2", 1),
            (6, "order-2", 2),
        ]
    );
    let stamps: Vec<i64> = events.iter().map(|e| e.timestamp_micros as i64).collect();
    assert!(
        stamps.windows(2).all(|w| w[0] <= w[1]),
        "timestamps go down with position: {stamps:?}"
    );
    if old == 7 {
        assert!(
            stamps[1..].iter().all(|&t| t >= seed),
            "an append after the migration went below the clock's seed {seed}: {stamps:?}"
        );
    }
}

/// A schema that a newer build migrated is refused with `UnsupportedFormat`, not used.
#[test]
fn a_schema_migrated_by_a_newer_build_is_refused() {
    let _shared = SERVER.blocking_read();
    let Some(schema) = Schema::fresh("a_schema_migrated_by_a_newer_build_is_refused") else {
        return;
    };
    drop(schema.open(|c| c));
    let name = schema.name().to_owned();
    pg::blocking(async move {
        let client = pg::connect().await.unwrap();
        client
            .execute(
                &format!("INSERT INTO \"{name}\".migrations (version) VALUES (99)"),
                &[],
            )
            .await
            .unwrap();
    });
    match schema.config().open_blocking() {
        Err(StoreError::UnsupportedFormat {
            found, supported, ..
        }) => assert_eq!(
            (found, supported as i32),
            (99, tidings::store::POSTGRES_SCHEMA_VERSION)
        ),
        other => panic!("a newer schema must be refused, got {other:?}"),
    }
}

/// Bad settings and names PostgreSQL cannot hold get typed errors; odd but valid names
/// (control characters, emoji, quotes) round-trip.
#[test]
fn bad_settings_and_hostile_names_get_typed_errors() {
    let _shared = SERVER.blocking_read();
    let Some(schema) = Schema::fresh("bad_settings_and_hostile_names") else {
        return;
    };
    for bad in [
        "",
        "Upper",
        "1st",
        "a;drop table x",
        "a\"b",
        &"x".repeat(49),
    ] {
        match schema.config().schema(bad).open_blocking() {
            Err(StoreError::InvalidInput(_)) => {}
            other => panic!("schema {bad:?} must be refused as invalid, got {other:?}"),
        }
    }
    match tidings::store::PostgresConfig::new("postgres://[bad").open_blocking() {
        Err(StoreError::InvalidInput(_)) => {}
        other => panic!("a malformed URL must be InvalidInput, got {other:?}"),
    }
    let started = std::time::Instant::now();
    match tidings::store::PostgresConfig::new("postgres://root@127.0.0.1:1/test")
        .connect_timeout(Duration::from_secs(3))
        .open_blocking()
    {
        Err(StoreError::Unavailable(_)) => {}
        other => panic!("an unreachable server must be Unavailable, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "an unreachable server took {:?} to report",
        started.elapsed()
    );

    let store = schema.open(|c| c);
    pg::blocking(async move {
        match store
            .append("nul-\0-1", ExpectedVersion::Any, vec![order(1)])
            .await
        {
            Err(StoreError::InvalidInput(_)) => {}
            other => panic!("a NUL in a stream id must be InvalidInput, got {other:?}"),
        }
        match store.save_checkpoint("nul\0", 1).await {
            Err(StoreError::InvalidInput(_)) => {}
            other => panic!("a NUL in a consumer name must be InvalidInput, got {other:?}"),
        }
        assert!(store
            .read_stream("nul-\0-1", 1, 10)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(store.stream_version("nul-\0-1").await.unwrap(), 0);
        assert_eq!(store.load_checkpoint("nul\0").await.unwrap(), None);
        for odd in [
            "ctl-\u{1}\n\t\u{7f}",
            "quote-'\"; DROP TABLE x; --",
            "emoji-🦀",
            "a",
        ] {
            store
                .append(odd, ExpectedVersion::NoStream, vec![order(2)])
                .await
                .unwrap_or_else(|e| panic!("append to {odd:?}: {e}"));
            let events = store.read_stream(odd, 1, 10).await.unwrap();
            assert_eq!(events.len(), 1);
            assert_eq!(events[0].stream_id, odd);
            assert_eq!(events[0].category, tidings::store::category_of(odd));
        }
        let listed = store.list_streams(Some("a\0zzz"), 100).await.unwrap();
        let ids: Vec<&str> = listed.iter().map(|s| s.stream_id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "ctl-\u{1}\n\t\u{7f}",
                "emoji-🦀",
                "quote-'\"; DROP TABLE x; --"
            ],
            "listing after a name with a NUL"
        );
        let report = store.verify().await.unwrap();
        assert!(report.is_ok(), "{:?}", report.problems);
    });
}

/// Leases: one holder at a time; another is told who holds it; an expired lease goes to the
/// next taker with a higher generation; the old holder can then neither renew nor commit
/// (`Fenced`, nothing written); a released lease is free at once.
#[test]
fn a_lease_has_one_holder_and_fences_the_commits_of_a_lost_one() {
    let _shared = SERVER.blocking_read();
    let Some(schema) = Schema::fresh("a_lease_has_one_holder") else {
        return;
    };
    let store = schema.open(|c| c);
    pg::blocking(async move {
        use tidings::store::{LeaseAttempt, LeaseHolder};
        let a = LeaseHolder::new("host-a", 1, Uuid::new_v4());
        let b = LeaseHolder::new("host-b", 2, Uuid::new_v4());
        let short = Duration::from_millis(300);
        let long = Duration::from_secs(60);
        let LeaseAttempt::Acquired(lease_a) = store.acquire_lease("sub", &a, short).await.unwrap()
        else {
            panic!("a free lease must be taken");
        };
        assert_eq!(lease_a.generation, 1);
        match store.acquire_lease("sub", &b, long).await.unwrap() {
            LeaseAttempt::HeldBy(info) => {
                assert_eq!((info.holder.clone(), info.generation), (a.clone(), 1))
            }
            other => panic!("a held lease must not be taken: {other:?}"),
        }
        assert!(store.renew_lease(&lease_a, short).await.unwrap());
        // Checkpoints are positions of the log (at most the head).
        let events = (0..9)
            .map(|i| tidings::store::EventData::new("Tick", format!("{i}")))
            .collect();
        store
            .append("log-1", tidings::store::ExpectedVersion::NoStream, events)
            .await
            .unwrap();
        store
            .commit_checkpoint_fenced(&lease_a, "sub", None, 5, vec![])
            .await
            .unwrap();
        // A stops renewing: once its lease expires, B takes it with the next generation.
        let deadline = std::time::Instant::now() + PATIENCE;
        let lease_b = loop {
            match store.acquire_lease("sub", &b, long).await.unwrap() {
                LeaseAttempt::Acquired(lease) => break lease,
                LeaseAttempt::HeldBy(_) => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the lease never expired"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(lease_b.generation, 2);
        assert!(
            !store.renew_lease(&lease_a, short).await.unwrap(),
            "A renewed a lost lease"
        );
        match store
            .commit_checkpoint_fenced(
                &lease_a,
                "sub",
                Some(5),
                9,
                vec![tidings::store::StateWrite {
                    key: b"k".to_vec(),
                    value: Some(b"zombie".to_vec()),
                }],
            )
            .await
        {
            Err(StoreError::Fenced { generation: 1, .. }) => {}
            other => panic!("a lost lease's commit must be Fenced, got {other:?}"),
        }
        assert_eq!(store.load_checkpoint("sub").await.unwrap(), Some(5));
        assert_eq!(store.load_state("sub", b"k").await.unwrap(), None);
        store
            .commit_checkpoint_fenced(&lease_b, "sub", Some(5), 9, vec![])
            .await
            .unwrap();
        let info = store.load_lease("sub").await.unwrap().unwrap();
        assert_eq!((info.holder, info.generation), (b.clone(), 2));
        store.release_lease(&lease_b).await.unwrap();
        match store.acquire_lease("sub", &a, long).await.unwrap() {
            LeaseAttempt::Acquired(lease) => assert_eq!(lease.generation, 3),
            other => panic!("a released lease must be free at once: {other:?}"),
        }
    });
}

/// A process that appends wakes the others: a second store on the same schema (another
/// process's, with polling slowed to an hour) sees each append's head through the notification
/// sent after the commit, not through a poll.
#[actix::test]
async fn another_process_sees_appends_through_notifications() {
    let _shared = SERVER.read().await;
    let Some((schema, writer)) = open("notifications", "notify_writer", |c| c) else {
        return;
    };
    let reader = schema.open(|c| c.poll_interval(Duration::from_secs(3600)));
    let mut head = reader.watch_head();
    for round in 1..=5u64 {
        let appended = writer
            .append(
                &format!("order-n{round}"),
                ExpectedVersion::NoStream,
                vec![order(round), order(round + 100)],
            )
            .await
            .unwrap();
        let seen = tokio::time::timeout(PATIENCE, head.wait_for(appended.last_position))
            .await
            .expect("the other store was never woken");
        assert!(seen.is_ok(), "the other store closed");
        assert!(reader.head() >= appended.last_position);
    }
}

/// A process that starts listening late still hears of an append committed before it listened
/// but readable only after (an older transaction held the horizon back): its notification went
/// out before the listener existed, and polling is slowed to an hour, so only the listener's
/// first look at what is committed can make it follow the head there.
#[actix::test]
async fn a_late_listener_follows_appends_that_become_readable_later() {
    let _shared = SERVER.read().await;
    let Some((schema, writer)) = open("late_listener", "late_writer", |c| {
        c.visibility_timeout(Duration::from_millis(50))
    }) else {
        return;
    };
    let held = pg::connect().await.unwrap();
    held.batch_execute("BEGIN; SELECT pg_current_xact_id();")
        .await
        .unwrap();
    let appended = writer
        .append("order-late", ExpectedVersion::NoStream, vec![order(1)])
        .await
        .unwrap();
    let reader = schema.open(|mut c| {
        c.url = format!("{}?application_name=late_reader", pg::url());
        c.poll_interval(Duration::from_secs(3600))
    });
    assert!(
        reader.head() < appended.last_position,
        "the held transaction did not hold the horizon back"
    );
    let mut head = reader.watch_head();
    // The listener has taken its first look (while the horizon is still held) once both of the
    // reader's connections, the pool's and the listener's, sit idle after a query other than
    // LISTEN.
    let looked = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'late_reader' \
                  AND state = 'idle' AND query LIKE 'SELECT%'";
    // (Asked on a connection of its own: a transaction sees one snapshot of the activity.)
    let watcher = pg::connect().await.unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while watcher
        .query_one(looked, &[])
        .await
        .unwrap()
        .get::<_, i64>(0)
        < 2
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the reader's listener never read the head"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    held.batch_execute("COMMIT").await.unwrap();
    let seen = tokio::time::timeout(PATIENCE, head.wait_for(appended.last_position))
        .await
        .expect("the late listener never saw the append");
    assert!(seen.is_ok(), "the other store closed");
}

/// The server's, database's or role's defaults cannot change how the store works: a URL whose
/// options make sessions read-only, serializable and asynchronously committed still gets
/// writable, read-committed, synchronously committed connections (the store's settings are
/// sent after the user's and win).
#[actix::test]
async fn hostile_session_defaults_are_overridden() {
    let _shared = SERVER.read().await;
    let Some(schema) = Schema::fresh("hostile_session_defaults") else {
        return;
    };
    let mut config = schema.config();
    config.url = format!(
        "{}?options=-c%20default_transaction_read_only%3Don%20\
         -c%20default_transaction_isolation%3Dserializable%20-c%20synchronous_commit%3Doff",
        pg::url()
    );
    let store = Arc::new(config.open().await.expect("open with hostile defaults"));
    let writers: Vec<_> = (0..8u64)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..10 {
                    store
                        .append(&format!("order-h{w}"), ExpectedVersion::Any, vec![order(i)])
                        .await
                        .expect("append on a connection with hostile defaults");
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    store.save_checkpoint("hostile", 80).await.unwrap();
    assert_eq!(store.load_checkpoint("hostile").await.unwrap(), Some(80));
    assert_eq!(
        store
            .read_all(1, 100, &Filter::all())
            .await
            .unwrap()
            .events
            .len(),
        80
    );
}

/// An append that fails while it holds the positions lock (a session lock shared by every
/// writer of the schema) releases it, even when the caller is not the store and keeps its
/// connection: here the positions sequence is exhausted, so taking a position fails inside the
/// locked section, and afterwards the caller's session holds no advisory lock.
#[actix::test]
async fn an_append_failing_under_the_positions_lock_releases_it() {
    let _shared = SERVER.read().await;
    let Some((schema, store)) = open("positions_lock_released", "lock_release", |c| c) else {
        return;
    };
    store
        .append("order-1", ExpectedVersion::NoStream, vec![order(1)])
        .await
        .unwrap();
    let raw = pg::connect().await.unwrap();
    raw.batch_execute(&format!(
        "SELECT setval('\"{}\".positions', 9223372036854775807)",
        schema.name()
    ))
    .await
    .unwrap();
    let ids = vec![Uuid::new_v4()];
    // The first version of the function, the previous build's and the one the store calls now.
    let calls = [
        "append('order-2', 'order', -1, $1, ARRAY['OrderPlaced'], ARRAY[1], \
         ARRAY[NULL::uuid], ARRAY[NULL::uuid], ARRAY['{}'::bytea])",
        "append_v7('order-2', 'order', -1, $1, ARRAY['OrderPlaced'], ARRAY[1], \
         ARRAY[NULL::uuid], ARRAY[NULL::uuid], ARRAY['{}'::bytea], ARRAY[NULL::jsonb])",
        "append_v8('order-2', 'order', -1, $1, ARRAY['OrderPlaced'], ARRAY[1], \
         ARRAY[NULL::uuid], ARRAY[NULL::uuid], ARRAY['{}'::bytea], ARRAY[NULL::jsonb])",
    ];
    for call in calls {
        let failed = raw
            .query_one(
                &format!("SELECT o_first FROM \"{}\".{call}", schema.name()),
                &[&ids],
            )
            .await
            .expect_err("an exhausted positions sequence must fail the append");
        assert!(
            failed.to_string().contains("maximum value")
                || format!("{:?}", failed.as_db_error()).contains("maximum value"),
            "unexpected error: {failed:?}"
        );
        let held: i64 = raw
            .query_one(
                "SELECT count(*) FROM pg_locks \
                 WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(held, 0, "the failed {call} left an advisory lock held");
    }
}

/// An acknowledged append is readable at once, also when its commit overlapped others of the
/// same process (two committers, 16 writers: the older commit is often still flushing when the
/// next takes its transaction id, and the store answers the younger one when it sees the older
/// end, without asking the server). Each writer reads its own stream and the global log right
/// after each acknowledgement.
#[actix::test]
async fn appends_whose_commits_overlap_are_readable_when_acknowledged() {
    let _shared = SERVER.read().await;
    let Some((_schema, store)) = open("overlapping_commits", "overlap", |c| c.committers(2)) else {
        return;
    };
    let writers: Vec<_> = (0..16u64)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let stream = format!("order-o{w}");
                for i in 0..25u64 {
                    let r = store
                        .append(&stream, ExpectedVersion::Exact(i), vec![order(i)])
                        .await
                        .unwrap();
                    assert!(
                        store.head() >= r.last_position,
                        "head behind an acknowledged append"
                    );
                    let mine = store.read_stream(&stream, 1, 100).await.unwrap();
                    assert_eq!(
                        mine.len() as u64,
                        i + 1,
                        "stream read after acknowledgement"
                    );
                    let page = store
                        .read_all(r.last_position, 1, &Filter::all())
                        .await
                        .unwrap();
                    assert_eq!(
                        page.events.first().map(|e| e.position),
                        Some(r.last_position),
                        "global read after acknowledgement"
                    );
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    assert_eq!(log(&store).await.len(), 16 * 25);
}

/// Appends that arrive together commit together (group commit), and each still gets its own
/// answer: 48 writers on streams of their own, every fifth append expecting a wrong version.
/// Every refused append is `WrongExpectedVersion` with the stream's real version and wrote
/// nothing; every acknowledged one is in the log exactly where its answer says; some commits
/// carried the appends of several streams (one transaction id over several streams).
#[actix::test]
async fn appends_that_arrive_together_commit_together_and_each_gets_its_answer() {
    let _shared = SERVER.read().await;
    let Some((schema, store)) = open("group_commit", "group", |c| c.committers(2)) else {
        return;
    };
    let writers: Vec<_> = (0..48u64)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let stream = format!("order-g{w}");
                let mut version = 0u64;
                let mut acknowledged = Vec::new();
                for i in 0..20u64 {
                    let events = vec![order(i), order(i + 1000)];
                    let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
                    let expected = if i % 5 == 4 {
                        ExpectedVersion::Exact(version + 7)
                    } else {
                        ExpectedVersion::Exact(version)
                    };
                    match store.append(&stream, expected, events).await {
                        Ok(r) => {
                            assert!(i % 5 != 4, "a wrong expectation was accepted");
                            assert_eq!(r.stream_version, version + 2);
                            assert_eq!(r.last_position, r.first_position + 1);
                            version = r.stream_version;
                            acknowledged.push((r.first_position, ids));
                        }
                        Err(StoreError::WrongExpectedVersion { actual, .. }) => {
                            assert_eq!(i % 5, 4, "a right expectation was refused");
                            assert_eq!(actual, version, "the refusal names the real version");
                        }
                        Err(e) => panic!("append failed: {e}"),
                    }
                }
                (stream, acknowledged)
            })
        })
        .collect();
    let mut acknowledged = BTreeMap::new();
    for w in writers {
        let (stream, appends) = w.await.unwrap();
        for (first, ids) in appends {
            acknowledged.insert(first, (stream.clone(), ids));
        }
    }
    let events = log(&store).await;
    assert_eq!(
        events.len(),
        48 * 16 * 2,
        "only the acknowledged appends are stored"
    );
    for (first, (stream, ids)) in &acknowledged {
        let at = events.iter().position(|e| e.position == *first).unwrap();
        let stored: Vec<Uuid> = events[at..at + 2].iter().map(|e| e.event_id).collect();
        assert_eq!(&stored, ids, "append at {first} of {stream}");
        assert!(events[at..at + 2].iter().all(|e| &e.stream_id == stream));
    }
    let report = store.verify().await.unwrap();
    assert!(report.is_ok(), "verify: {:?}", report.problems);
    let raw = pg::connect().await.unwrap();
    let shared: i64 = raw
        .query_one(
            &format!(
                "SELECT count(*) FROM (SELECT xid FROM \"{}\".events GROUP BY xid \
                 HAVING count(DISTINCT stream_id) > 1) batches",
                schema.name()
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    eprintln!("group commit: {shared} transactions carried the appends of several streams");
    assert!(shared > 0, "no two appends ever shared a commit");
}

/// Counts how the subscription loop commits: a store that forwards everything to a PostgreSQL
/// store, counting commits with and without the lease's fence.
struct CountingCommits {
    inner: Arc<PostgresEventStore>,
    fenced: std::sync::atomic::AtomicU64,
    unfenced: std::sync::atomic::AtomicU64,
}

#[async_trait]
impl EventStore for CountingCommits {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> tidings::store::Result<tidings::store::AppendResult> {
        self.inner.append(stream, expected, events).await
    }
    async fn read_stream(
        &self,
        stream: &str,
        from: u64,
        max: usize,
    ) -> tidings::store::Result<Vec<RecordedEvent>> {
        self.inner.read_stream(stream, from, max).await
    }
    async fn stream_version(&self, stream: &str) -> tidings::store::Result<u64> {
        self.inner.stream_version(stream).await
    }
    async fn read_all(
        &self,
        from: u64,
        max: usize,
        filter: &Filter,
    ) -> tidings::store::Result<tidings::store::ReadBatch> {
        self.inner.read_all(from, max, filter).await
    }
    fn head(&self) -> u64 {
        self.inner.head()
    }
    fn watch_head(&self) -> tidings::store::HeadWatch {
        self.inner.watch_head()
    }
    async fn save_checkpoint(&self, name: &str, position: u64) -> tidings::store::Result<()> {
        self.unfenced
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.save_checkpoint(name, position).await
    }
    async fn load_checkpoint(&self, name: &str) -> tidings::store::Result<Option<u64>> {
        self.inner.load_checkpoint(name).await
    }
    async fn commit_checkpoint(
        &self,
        name: &str,
        expected: Option<u64>,
        position: u64,
        state: Vec<tidings::store::StateWrite>,
    ) -> tidings::store::Result<()> {
        self.unfenced
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner
            .commit_checkpoint(name, expected, position, state)
            .await
    }
    async fn load_state(&self, name: &str, key: &[u8]) -> tidings::store::Result<Option<Vec<u8>>> {
        self.inner.load_state(name, key).await
    }
    async fn scan_state(
        &self,
        name: &str,
        prefix: &[u8],
        from: &[u8],
        max: usize,
    ) -> tidings::store::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.inner.scan_state(name, prefix, from, max).await
    }
    async fn save_snapshot(
        &self,
        stream: &str,
        snapshot: tidings::store::Snapshot,
    ) -> tidings::store::Result<()> {
        self.inner.save_snapshot(stream, snapshot).await
    }
    async fn load_snapshot(
        &self,
        stream: &str,
    ) -> tidings::store::Result<Option<tidings::store::Snapshot>> {
        self.inner.load_snapshot(stream).await
    }
    async fn verify(&self) -> tidings::store::Result<tidings::store::VerifyReport> {
        self.inner.verify().await
    }
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &tidings::store::LeaseHolder,
        ttl: Duration,
    ) -> tidings::store::Result<tidings::store::LeaseAttempt> {
        self.inner.acquire_lease(name, holder, ttl).await
    }
    async fn renew_lease(
        &self,
        lease: &tidings::store::Lease,
        ttl: Duration,
    ) -> tidings::store::Result<bool> {
        self.inner.renew_lease(lease, ttl).await
    }
    async fn release_lease(&self, lease: &tidings::store::Lease) -> tidings::store::Result<()> {
        self.inner.release_lease(lease).await
    }
    async fn load_lease(
        &self,
        name: &str,
    ) -> tidings::store::Result<Option<tidings::store::LeaseInfo>> {
        self.inner.load_lease(name).await
    }
    async fn commit_checkpoint_fenced(
        &self,
        lease: &tidings::store::Lease,
        name: &str,
        expected: Option<u64>,
        position: u64,
        state: Vec<tidings::store::StateWrite>,
    ) -> tidings::store::Result<()> {
        self.fenced
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner
            .commit_checkpoint_fenced(lease, name, expected, position, state)
            .await
    }
}

/// While it holds its lease, a subscription commits only through the fence: its checkpoints
/// with their state, its status records, a flush and its stop. (The failover tests cannot tell
/// this apart: the checkpoint's own compare-and-set also refuses most late commits.)
#[actix::test]
async fn a_subscription_holding_its_lease_commits_only_fenced() {
    let _shared = SERVER.read().await;
    let Some((_schema, store)) = open("only_fenced", "only_fenced", |c| c) else {
        return;
    };
    let counting = Arc::new(CountingCommits {
        inner: store.clone(),
        fenced: Default::default(),
        unfenced: Default::default(),
    });
    for i in 0..40 {
        store
            .append(
                &format!("order-{}", i % 4),
                ExpectedVersion::Any,
                vec![order(i)],
            )
            .await
            .unwrap();
    }
    let seen = Seen::default();
    let subs = Subscriptions::new(counting.clone());
    let config = SubscriptionConfig::default().batch_size(7).commit_every(3);
    let handle = subs
        .start_with(Tally { seen: seen.clone() }, config)
        .unwrap();
    caught_up(&handle, &store).await;
    handle.flush().await.expect("flushed");
    handle.stop().await;
    let fenced = counting.fenced.load(std::sync::atomic::Ordering::SeqCst);
    let unfenced = counting.unfenced.load(std::sync::atomic::Ordering::SeqCst);
    assert!(fenced >= 10, "{fenced} fenced commits");
    assert_eq!(unfenced, 0, "commits without the fence");
}
