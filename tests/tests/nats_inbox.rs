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
        a.iter().map(|e| e.payload.as_slice()).collect::<Vec<_>>(),
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
