//! The NATS JetStream inbox (feature `nats`): messages become appended events once each, also
//! when JetStream delivers a message again because its acknowledgement never came.
//!
//! Each test creates a JetStream stream of its own and deletes it. Without a NATS server the
//! tests skip loudly, unless `TIDINGS_REQUIRE_NATS=1`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tidings::broker::nats::async_nats::jetstream::consumer::{pull, AckPolicy};
use tidings::broker::nats::async_nats::HeaderMap;
use tidings::broker::nats::{InboxConfig, InboxHandle, NatsInbox};
use tidings::store::{EventStore, SledEventStore, StateWrite};
use tidings_tests::nats::{self, TestStream, ToEvents};

/// The first message of `js`, fetched by hand through the inbox's durable consumer and never
/// acknowledged (as by a process killed before its ack): JetStream delivers it again after 1 s.
async fn first_delivery(
    js: &TestStream,
    broker: &tidings::broker::nats::NatsBroker,
) -> tidings::broker::nats::async_nats::jetstream::Message {
    let consumer: tidings::broker::nats::async_nats::jetstream::consumer::PullConsumer = broker
        .jetstream()
        .get_stream(&js.name)
        .await
        .unwrap()
        .get_or_create_consumer(
            "inbox",
            pull::Config {
                durable_name: Some("inbox".into()),
                ack_policy: AckPolicy::Explicit,
                ack_wait: Duration::from_secs(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut first = consumer.fetch().max_messages(1).messages().await.unwrap();
    first.next().await.unwrap().unwrap()
}

async fn publish(
    js: &TestStream,
    broker: &tidings::broker::nats::NatsBroker,
    token: &str,
    id: &str,
    body: &str,
) {
    let mut h = HeaderMap::new();
    h.insert("Nats-Msg-Id", id);
    broker
        .jetstream()
        .publish_with_headers(
            format!("{}.in.{token}", js.prefix),
            h,
            body.to_owned().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

async fn wait_stats(
    inbox: &InboxHandle,
    done: impl Fn(&tidings::broker::nats::InboxStats) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = inbox.stats();
        assert!(s.failed.is_none(), "{s:?}");
        if done(&s) {
            return;
        }
        assert!(Instant::now() < deadline, "inbox stuck: {s:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[actix::test]
async fn messages_become_events_once_and_a_redelivery_after_a_missing_ack_is_applied_once() {
    if !nats::available("inbox once") {
        return;
    }
    let js = TestStream::create("inbox_once", |_| {});
    let broker = nats::connect().await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledEventStore::open(dir.path()).unwrap());
    for (i, token) in ["a", "b", "a"].iter().enumerate() {
        publish(
            &js,
            &broker,
            token,
            &format!("m{i}"),
            &format!("{{\"i\":{i}}}"),
        )
        .await;
    }
    let config = InboxConfig::new("inbox", js.name.clone()).ack_wait(Duration::from_secs(1));

    // A first delivery is applied but never acknowledged (as by a process killed between its
    // append and its ack): the same durable consumer, fetched by hand.
    let first = first_delivery(&js, &broker).await;
    let mut inbox = NatsInbox::new(store.clone(), &broker, config.clone(), ToEvents);
    assert!(
        !inbox.apply(&first).await.unwrap(),
        "applied the first time"
    );
    drop(first);

    // The inbox runs; JetStream delivers the unacknowledged message again after ack_wait.
    let running = NatsInbox::new(store.clone(), &broker, config, ToEvents)
        .start()
        .await
        .unwrap();
    wait_stats(&running, |s| s.applied == 2 && s.duplicates == 1).await;
    // A republish of the same message id is absorbed by JetStream (within its window), and
    // after the window the inbox's own record recognises it.
    publish(&js, &broker, "a", "m0", "{\"i\":0}").await;
    let stats = running.stop().await;
    assert_eq!(
        (stats.applied, stats.duplicates, stats.failures),
        (2, 1, 0),
        "{stats:?}"
    );

    let a = store.read_stream("inbound-a", 1, 10).await.unwrap();
    let b = store.read_stream("inbound-b", 1, 10).await.unwrap();
    assert_eq!(
        a.iter().map(|e| &e.payload[..]).collect::<Vec<_>>(),
        [b"{\"i\":0}".as_slice(), b"{\"i\":2}"]
    );
    assert_eq!(b.len(), 1);
    assert_eq!(store.head(), 3, "three messages, three events");
}

#[actix::test]
async fn a_crash_between_the_append_and_its_record_does_not_append_again() {
    if !nats::available("inbox planned append") {
        return;
    }
    let js = TestStream::create("inbox_plan", |_| {});
    let broker = nats::connect().await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledEventStore::open(dir.path()).unwrap());
    publish(&js, &broker, "a", "m0", "{\"i\":0}").await;
    let config = InboxConfig::new("inbox", js.name.clone()).ack_wait(Duration::from_secs(1));
    let first = first_delivery(&js, &broker).await;
    let mut inbox = NatsInbox::new(store.clone(), &broker, config.clone(), ToEvents);
    assert!(!inbox.apply(&first).await.unwrap());
    drop(first);
    // The state a kill leaves after the append and before the record that it was made: the
    // plan (stream, expected version, first event id) without the message id's record (the
    // inbox's state keys, docs/brokers.md and decision 40).
    let appended = store.read_stream("inbound-a", 1, 1).await.unwrap()[0].event_id;
    let plan =
        format!("{{\"stream\":\"inbound-a\",\"expected\":0,\"first_event\":\"{appended}\"}}");
    let at = store.load_checkpoint("inbox").await.unwrap();
    store
        .commit_checkpoint(
            "inbox",
            at,
            at.unwrap(),
            vec![
                StateWrite {
                    key: b"seen/m0".to_vec(),
                    value: None,
                },
                StateWrite {
                    key: b"intent/m0".to_vec(),
                    value: Some(plan.into_bytes()),
                },
            ],
        )
        .await
        .unwrap();

    let running = NatsInbox::new(store.clone(), &broker, config, ToEvents)
        .start()
        .await
        .unwrap();
    wait_stats(&running, |s| s.duplicates == 1).await;
    let stats = running.stop().await;
    assert_eq!((stats.applied, stats.duplicates), (0, 1), "{stats:?}");
    assert_eq!(
        store.read_stream("inbound-a", 1, 10).await.unwrap().len(),
        1,
        "appended once"
    );
    assert!(
        store
            .load_state("inbox", b"seen/m0")
            .await
            .unwrap()
            .is_some(),
        "recorded now"
    );
}

/// An inbox handler that appends each message's payload as a `Received` event to
/// `inbound-<the subject's last token>` when the payload is JSON, and otherwise refuses it as
/// undecodable (a `serde_json::Error`: parked at once) until `fixed`. Messages whose payload
/// is `"flaky"` fail `flaky` times first: `Unavailable` (transient) and then one plain error.
struct Strict {
    fixed: Arc<std::sync::atomic::AtomicBool>,
    flaky: Arc<std::sync::atomic::AtomicU32>,
}

impl Strict {
    fn new() -> Self {
        Strict {
            fixed: Default::default(),
            flaky: Default::default(),
        }
    }
}

#[tidings::async_trait]
impl tidings::broker::nats::InboxHandler for Strict {
    async fn handle(
        &mut self,
        m: &tidings::broker::nats::InboxMessage<'_>,
    ) -> Result<tidings::broker::nats::InboxAction, tidings::subscription::HandlerError> {
        use std::sync::atomic::Ordering;
        let payload = m.message.payload.to_vec();
        if payload == b"\"flaky\"" {
            match self.flaky.fetch_sub(1, Ordering::SeqCst) {
                0 => self.flaky.store(0, Ordering::SeqCst),
                1 => return Err("a plain error, retried by the policy".into()),
                _ => {
                    return Err(tidings::subscription::Unavailable(
                        "the service is down for now".into(),
                    )
                    .into())
                }
            }
        }
        if !self.fixed.load(Ordering::SeqCst) {
            serde_json::from_slice::<serde_json::Value>(&payload)?;
        }
        let token = m.message.subject.as_str().rsplit('.').next().unwrap_or("x");
        Ok(tidings::broker::nats::InboxAction::Append {
            stream: format!("inbound-{token}"),
            events: vec![tidings::store::EventData::new("Received", payload)],
        })
    }
}

/// Runs the ops CLI as a process of its own on the store in `dir` (which this process must
/// not hold open) and returns its standard output.
fn cli(dir: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cli_child"))
        .arg("--store")
        .arg(dir)
        .args(args)
        .output()
        .expect("run the CLI");
    assert!(
        out.status.success(),
        "tidings {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The JSON lines of `text`.
fn lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

/// Runs the CLI in this process on `store` (opened here: the inbox may be running).
async fn cli_here(store: &Arc<SledEventStore>, args: &[&str]) -> String {
    use clap::Parser;
    let cli =
        tidings_cli::Cli::try_parse_from(std::iter::once("tidings").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("tidings {args:?}: {e}"));
    let dyn_store: Arc<dyn EventStore> = store.clone();
    let subscriptions = tidings::subscription::Subscriptions::new(dyn_store.clone());
    let mut out = Vec::new();
    tidings_cli::execute_on(
        &cli,
        &dyn_store,
        &subscriptions,
        &tidings_cli::Registry::new(),
        &mut out,
    )
    .await
    .unwrap_or_else(|e| panic!("tidings {args:?}: {e}"));
    String::from_utf8(out).unwrap()
}

/// How many messages the inbox's durable consumer has not acknowledged (not delivered, or
/// delivered and waiting).
async fn unacknowledged(broker: &tidings::broker::nats::NatsBroker, js: &TestStream) -> u64 {
    let consumer: tidings::broker::nats::async_nats::jetstream::consumer::PullConsumer = broker
        .jetstream()
        .get_stream(&js.name)
        .await
        .unwrap()
        .get_consumer("inbox")
        .await
        .unwrap();
    let info = consumer.get_info().await.unwrap();
    info.num_pending + info.num_ack_pending as u64
}

/// Waits (bounded) until `done` holds for the inbox's stored status record.
async fn wait_stored(
    store: &Arc<SledEventStore>,
    done: impl Fn(&tidings::subscription::SubscriptionStatus) -> bool,
) -> tidings::subscription::SubscriptionStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stored = tidings::subscription::subscription_status_from_store(&**store, "inbox")
            .await
            .unwrap();
        if let Some(s) = &stored {
            if done(s) {
                return s.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "status never got there: {stored:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[actix::test]
async fn a_poison_message_is_parked_and_acknowledged_listed_and_replayed_once_after_a_fix() {
    if !nats::available("inbox parks a poison message") {
        return;
    }
    let js = TestStream::create("inbox_park", |_| {});
    let broker = nats::connect().await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledEventStore::open(dir.path()).unwrap());
    publish(&js, &broker, "a", "m0", "not json").await;
    publish(&js, &broker, "a", "m1", "{\"i\":1}").await;
    let config = InboxConfig::new("inbox", js.name.clone())
        .ack_wait(Duration::from_secs(5))
        .status_interval(Duration::from_millis(50));
    let handler = Strict::new();
    let fixed = handler.fixed.clone();
    let running = NatsInbox::new(store.clone(), &broker, config.clone(), handler)
        .start()
        .await
        .unwrap();
    wait_stats(&running, |s| s.parked == 1 && s.applied == 1).await;
    // Parked, then acknowledged: JetStream has nothing left for the consumer.
    let deadline = Instant::now() + Duration::from_secs(30);
    while unacknowledged(&broker, &js).await != 0 {
        assert!(
            Instant::now() < deadline,
            "the parked message was never acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let a = store.read_stream("inbound-a", 1, 10).await.unwrap();
    assert_eq!(
        a.len(),
        1,
        "the next message is applied, the poison one is not"
    );
    assert_eq!(a[0].payload, &b"{\"i\":1}"[..]);

    // The CLI (here, beside the running inbox) lists it, with its subject and the reason.
    let parked = lines(&cli_here(&store, &["--json", "parked", "inbox"]).await);
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(parked[0]["position"], 1, "the broker stream's sequence");
    assert_eq!(parked[0]["stream_id"], format!("{}.in.a", js.prefix));
    assert!(
        parked[0]["reason"].as_str().unwrap().contains("expected"),
        "the decode error: {parked:?}"
    );
    let status = wait_stored(&store, |s| {
        s.inbox.as_ref().is_some_and(|i| i.pending == Some(0))
    })
    .await;
    assert_eq!(
        status.state,
        tidings::subscription::SubscriptionState::Parked
    );
    assert_eq!((status.parked, status.events_handled), (1, 1), "{status:?}");
    let listed = lines(&cli_here(&store, &["--json", "subscriptions"]).await);
    let line = listed.iter().find(|l| l["name"] == "inbox").unwrap();
    assert_eq!(line["parked"], 1, "{line}");
    assert_eq!(line["lag"], 0, "{line}");
    assert_eq!(line["inbox"]["broker_stream"], js.name.as_str(), "{line}");
    assert_eq!(line["inbox"]["last_sequence"], 2, "{line}");

    // The handler is fixed; a replay asked for through the CLI is applied by the running
    // inbox, once.
    fixed.store(true, std::sync::atomic::Ordering::SeqCst);
    let replay = cli_here(&store, &["replay-parked", "inbox"]).await;
    assert!(replay.contains("recorded a replay"), "{replay}");
    wait_stats(&running, |s| s.replayed == 1).await;
    let status = wait_stored(&store, |s| s.parked == 0).await;
    assert_eq!(status.state, tidings::subscription::SubscriptionState::Live);
    assert_eq!(status.events_handled, 2);
    let a = store.read_stream("inbound-a", 1, 10).await.unwrap();
    assert_eq!(
        a.iter().map(|e| &e.payload[..]).collect::<Vec<_>>(),
        [b"{\"i\":1}".as_slice(), b"not json"],
        "the replayed message is applied once, after the one that came after it"
    );
    assert!(lines(&cli_here(&store, &["--json", "parked", "inbox"]).await).is_empty());
    let stats = running.stop().await;
    assert_eq!(
        (
            stats.applied,
            stats.parked,
            stats.replayed,
            stats.duplicates
        ),
        (1, 1, 1, 0),
        "{stats:?}"
    );

    // Another process sees the inbox's status record once this one let the store go.
    store.close().await;
    drop(store);
    let listed = lines(&cli(dir.path(), &["--json", "subscriptions"]));
    let line = listed.iter().find(|l| l["name"] == "inbox").unwrap();
    assert_eq!(
        line["state"],
        format!(
            "stopped (inbox of broker stream {}, last sequence 2, 0 pending)",
            js.name
        ),
        "{line}"
    );
    assert_eq!(line["parked"], 0, "{line}");
}

#[actix::test]
async fn a_parked_message_skipped_from_another_process_is_never_applied_and_stays_recorded() {
    if !nats::available("inbox skips a parked message") {
        return;
    }
    let js = TestStream::create("inbox_skip", |_| {});
    let broker = nats::connect().await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledEventStore::open(dir.path()).unwrap());
    publish(&js, &broker, "a", "m0", "not json").await;
    publish(&js, &broker, "b", "m1", "{\"i\":1}").await;
    let config = InboxConfig::new("inbox", js.name.clone())
        .ack_wait(Duration::from_secs(5))
        .status_interval(Duration::from_millis(50));
    let running = NatsInbox::new(store.clone(), &broker, config.clone(), Strict::new())
        .start()
        .await
        .unwrap();
    wait_stats(&running, |s| s.parked == 1 && s.applied == 1).await;
    running.stop().await;
    store.close().await;
    drop(store);

    // Another process lists the parked message and skips it.
    let parked = lines(&cli(dir.path(), &["--json", "parked", "inbox"]));
    assert_eq!(parked.len(), 1, "{parked:?}");
    let position = parked[0]["position"].to_string();
    let skipped = lines(&cli(
        dir.path(),
        &["--json", "skip-parked", "inbox", &position],
    ));
    assert_eq!(skipped[0]["still_parked"], 0, "{skipped:?}");
    assert!(lines(&cli(dir.path(), &["--json", "parked", "inbox"])).is_empty());

    // The inbox starts again: nothing is parked, the skipped message is never applied, and its
    // id stays recorded as handled (a redelivery or a republish is only acknowledged).
    let store = Arc::new(SledEventStore::open(dir.path()).unwrap());
    let handler = Strict::new();
    handler
        .fixed
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let running = NatsInbox::new(store.clone(), &broker, config, handler)
        .start()
        .await
        .unwrap();
    let status = running.status();
    assert_eq!(status.parked, 0, "{status:?}");
    assert_eq!(status.state, tidings::subscription::SubscriptionState::Live);
    let stats = running.stop().await;
    assert_eq!((stats.applied, stats.replayed), (0, 0), "{stats:?}");
    assert!(store
        .read_stream("inbound-a", 1, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .load_state("inbox", b"seen/m0")
        .await
        .unwrap()
        .is_some());
    assert!(
        store
            .load_state("inbox", b"\0tidings/parked-message/00000000000000000001")
            .await
            .unwrap()
            .is_none(),
        "the kept message went with the entry"
    );
}

#[actix::test]
async fn a_transient_failure_is_retried_and_never_parked() {
    if !nats::available("inbox retries a transient failure") {
        return;
    }
    let js = TestStream::create("inbox_retry", |_| {});
    let broker = nats::connect().await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledEventStore::open(dir.path()).unwrap());
    publish(&js, &broker, "a", "m0", "\"flaky\"").await;
    // One retry allowed by the policy: the three `Unavailable` do not count towards it, the
    // plain error does, and the fifth attempt succeeds.
    let config = InboxConfig::new("inbox", js.name.clone())
        .ack_wait(Duration::from_secs(5))
        .failure_policy(tidings::subscription::FailurePolicy::retry_then_park(
            1,
            Duration::from_millis(10),
            Duration::from_millis(50),
        ));
    let handler = Strict::new();
    handler.flaky.store(4, std::sync::atomic::Ordering::SeqCst);
    let running = NatsInbox::new(store.clone(), &broker, config, handler)
        .start()
        .await
        .unwrap();
    wait_stats(&running, |s| s.applied == 1).await;
    let stats = running.stop().await;
    assert_eq!((stats.failures, stats.parked), (4, 0), "{stats:?}");
    assert_eq!(
        store.read_stream("inbound-a", 1, 10).await.unwrap().len(),
        1
    );
    let status = running.status();
    assert_eq!((status.parked, status.retries), (0, 4), "{status:?}");
    assert!(tidings::subscription::parked_in_store(&*store, "inbox")
        .await
        .unwrap()
        .is_empty());
}

/// Runs the ops CLI as a process of its own on the PostgreSQL schema `schema`.
fn cli_pg(schema: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cli_child"))
        .args(["--store", &tidings_tests::pg::url(), "--schema", schema])
        .args(args)
        .output()
        .expect("run the CLI");
    assert!(
        out.status.success(),
        "tidings {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Waits (bounded) until the inbox's line in `tidings subscriptions`, run as another process,
/// satisfies `done`; returns it.
async fn wait_listed(schema: &str, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let listed = lines(&cli_pg(schema, &["--json", "subscriptions"]));
        if let Some(line) = listed.into_iter().find(|l| l["name"] == "inbox") {
            if done(&line) {
                return line;
            }
            assert!(Instant::now() < deadline, "never listed so: {line}");
        }
        assert!(Instant::now() < deadline, "the inbox is never listed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[actix::test]
async fn on_postgres_another_process_sees_the_running_inbox_and_its_replay_is_applied_by_it() {
    if !nats::available("inbox status on PostgreSQL") {
        return;
    }
    let Some(schema) = tidings_tests::pg::Schema::fresh("inbox status on PostgreSQL") else {
        return;
    };
    let js = TestStream::create("inbox_pg", |_| {});
    let broker = nats::connect().await;
    let store: Arc<dyn EventStore> = Arc::new(
        schema
            .config()
            .open()
            .await
            .unwrap_or_else(|e| panic!("open the store: {e}")),
    );
    publish(&js, &broker, "a", "m0", "not json").await;
    publish(&js, &broker, "a", "m1", "{\"i\":1}").await;
    let config = InboxConfig::new("inbox", js.name.clone())
        .ack_wait(Duration::from_secs(5))
        .status_interval(Duration::from_millis(50));
    let handler = Strict::new();
    let fixed = handler.fixed.clone();
    let running = NatsInbox::new(store.clone(), &broker, config, handler)
        .start()
        .await
        .unwrap();
    wait_stats(&running, |s| s.parked == 1 && s.applied == 1).await;

    // Another process, while the inbox runs: its state, broker sequence, lag and the parked
    // message.
    let line = wait_listed(schema.name(), |l| l["inbox"]["pending"] == 0).await;
    assert_eq!(line["parked"], 1, "{line}");
    assert_eq!(line["lag"], 0, "{line}");
    assert_eq!(line["inbox"]["last_sequence"], 2, "{line}");
    assert!(
        line["state"]
            .as_str()
            .unwrap()
            .starts_with("last recorded: parked (inbox of"),
        "{line}"
    );
    let parked = lines(&cli_pg(schema.name(), &["--json", "parked", "inbox"]));
    assert_eq!(parked.len(), 1, "{parked:?}");

    // The handler is fixed; a replay asked for by another process is applied by the running
    // inbox, once.
    fixed.store(true, std::sync::atomic::Ordering::SeqCst);
    let replay = cli_pg(schema.name(), &["replay-parked", "inbox"]);
    assert!(replay.contains("recorded a replay"), "{replay}");
    wait_stats(&running, |s| s.replayed == 1).await;
    let line = wait_listed(schema.name(), |l| l["parked"] == 0).await;
    assert!(
        line["state"]
            .as_str()
            .unwrap()
            .starts_with("last recorded: live (inbox of"),
        "{line}"
    );
    let a = store.read_stream("inbound-a", 1, 10).await.unwrap();
    assert_eq!(
        a.iter().map(|e| &e.payload[..]).collect::<Vec<_>>(),
        [b"{\"i\":1}".as_slice(), b"not json"],
        "the replayed message is applied once"
    );
    running.stop().await;
    let line = wait_listed(schema.name(), |_| true).await;
    assert!(
        line["state"]
            .as_str()
            .unwrap()
            .starts_with("stopped (inbox of"),
        "{line}"
    );
}
