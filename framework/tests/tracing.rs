//! The tracing spans tidings makes (issue 17), read back from a `tracing_subscriber::fmt`
//! subscriber that writes every closed span, with its fields, into a buffer. The subscriber is
//! this binary's global default (the sled writer's commit spans are on its own thread), so the
//! binary holds one test.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use support::{Ping, Tally};
use tidings::aggregate::{AggregateConfig, AggregateRegistry, CommandEnvelope};
use tidings::store::{EventStore, ExpectedVersion, Filter, RecordedEvent, SledEventStore};
use tidings::subscription::{EventContext, HandleEvent, HandlerError, Subscriptions};
use tidings::{async_trait, DomainEvent, EventHandler};
use tracing_subscriber::fmt::format::FmtSpan;
use uuid::Uuid;

/// Everything the subscriber wrote.
fn log() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .with_span_events(FmtSpan::CLOSE)
            .with_writer(move || Sink(sink.clone()))
            .init();
        log
    })
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The closed spans named `name` whose fields include every one of `fields` (as the fmt
/// subscriber writes them: `key=value`, strings quoted).
fn closed(name: &str, fields: &[&str]) -> Vec<String> {
    let text = String::from_utf8_lossy(&log().lock().unwrap()).into_owned();
    text.lines()
        .filter(|l| l.contains(&format!("{name}{{")) && l.ends_with_close())
        .filter(|l| fields.iter().all(|f| l.contains(f)))
        .map(str::to_owned)
        .collect()
}

trait CloseLine {
    fn ends_with_close(&self) -> bool;
}

impl CloseLine for &str {
    fn ends_with_close(&self) -> bool {
        self.contains(": close time.busy=")
    }
}

/// Waits (bounded) until a span matching `fields` has closed, then returns its lines.
async fn until_closed(name: &str, fields: &[&str]) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let found = closed(name, fields);
        if !found.is_empty() {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no closed span {name} with {fields:?}; the log:\n{}",
            String::from_utf8_lossy(&log().lock().unwrap())
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[derive(EventHandler)]
#[event_handler(name = "traced", events(Ping))]
struct Traced;

#[async_trait]
impl HandleEvent<Ping> for Traced {
    async fn handle(&mut self, _: Ping, _: &mut EventContext<'_>) -> Result<(), HandlerError> {
        Ok(())
    }
}

/// Reacts to a `Ping` that carries a trace context with a command built from the event
/// (`CommandEnvelope::caused_by`), as a process in the middle of a trace would.
#[derive(EventHandler)]
#[event_handler(name = "reactor", events(Ping))]
struct Reactor {
    tallies: AggregateRegistry<Tally>,
}

#[async_trait]
impl HandleEvent<Ping> for Reactor {
    async fn handle(&mut self, ping: Ping, ctx: &mut EventContext<'_>) -> Result<(), HandlerError> {
        if ctx.event().traceparent().is_some() {
            let command = CommandEnvelope::caused_by(ctx.event(), "react", ping.n);
            self.tallies
                .execute("reacted", command)
                .await
                .map_err(|e| HandlerError::from(e.to_string()))?;
        }
        Ok(())
    }
}

#[actix::test]
async fn appends_reads_commits_commands_and_events_have_spans_with_their_fields() {
    log();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledEventStore::open(dir.path()).unwrap());

    // An append of 3 events: its span has the stream, the count and the positions given; the
    // writer's commit group that held it says what it committed and how long the fsync took.
    let events = (0..3)
        .map(|n| Ping { n }.to_event_data().unwrap())
        .collect();
    let r = store
        .append("ping-1", ExpectedVersion::NoStream, events)
        .await
        .unwrap();
    assert_eq!((r.first_position, r.last_position), (1, 3));
    until_closed(
        "tidings.append",
        &[
            "backend=\"sled\"",
            "stream=\"ping-1\"",
            "events=3",
            "first_position=1",
            "last_position=3",
        ],
    )
    .await;
    let commits = until_closed(
        "tidings.commit",
        &["backend=\"sled\"", "appends=1", "events=3"],
    )
    .await;
    assert!(
        commits[0].contains("fsync_micros="),
        "the commit span has the fsync time: {}",
        commits[0]
    );

    // A refused append: its span carries the error, and no positions.
    let refused = store
        .append(
            "ping-1",
            ExpectedVersion::Exact(1),
            vec![Ping { n: 9 }.to_event_data().unwrap()],
        )
        .await;
    assert!(refused.is_err());
    let lines = until_closed(
        "tidings.append",
        &["stream=\"ping-1\"", "events=1", "error="],
    )
    .await;
    assert!(!lines[0].contains("first_position"), "{}", lines[0]);

    // An append refused before it reaches the writer (an empty stream id) has its span too.
    let invalid = store
        .append(
            "",
            ExpectedVersion::Any,
            vec![Ping { n: 8 }.to_event_data().unwrap()],
        )
        .await;
    assert!(invalid.is_err());
    until_closed("tidings.append", &["stream=\"\"", "error="]).await;

    // Reads: the page's start and size.
    assert_eq!(store.read_stream("ping-1", 2, 10).await.unwrap().len(), 2);
    until_closed(
        "tidings.read_stream",
        &["stream=\"ping-1\"", "from_version=2", "events=2"],
    )
    .await;
    let page = store.read_all(1, 2, &Filter::default()).await.unwrap();
    assert_eq!(page.events.len(), 2);
    until_closed("tidings.read_all", &["from_position=1", "events=2"]).await;

    // A command: its span carries the correlation id the events get.
    let tallies = AggregateRegistry::<Tally>::start(store.clone(), AggregateConfig::default());
    let correlation = Uuid::new_v4();
    let command = CommandEnvelope::new(5).correlated_with(correlation);
    let command_id = command.command_id;
    tallies.execute("t1", command).await.unwrap();
    until_closed(
        "command",
        &[
            "aggregate=\"tally\"",
            &format!("command_id={command_id}"),
            &format!("correlation_id={correlation}"),
        ],
    )
    .await;
    tallies.shutdown().await;

    // An event handled by a subscription: its span carries the event's ids.
    let causation = Uuid::new_v4();
    let data = Ping { n: 10 }
        .to_event_data()
        .unwrap()
        .with_correlation_id(correlation)
        .with_causation_id(causation);
    let event_id = data.event_id;
    let at = store
        .append("ping-2", ExpectedVersion::Any, vec![data])
        .await
        .unwrap();
    let subs = Subscriptions::new(store.clone());
    let handle = subs.start(Traced).unwrap();
    handle
        .wait_until_handled(at.last_position, Duration::from_secs(20))
        .await
        .unwrap();
    until_closed(
        "event",
        &[
            &format!("position={}", at.first_position),
            "stream=ping-2",
            &format!("event_id={event_id}"),
            &format!("correlation_id={correlation}"),
            &format!("causation_id={causation}"),
        ],
    )
    .await;
    handle.stop().await;

    // W3C trace context: a command with a traceparent records events that carry it, and its
    // span shows it.
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let tallies = AggregateRegistry::<Tally>::start(store.clone(), AggregateConfig::default());
    let command = CommandEnvelope::new(7)
        .with_trace_context(traceparent, Some("vendor=1"))
        .unwrap();
    let command_id = command.command_id;
    tallies.execute("traced", command).await.unwrap();
    let recorded: Vec<RecordedEvent> = store.read_stream("tally-traced", 1, 10).await.unwrap();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].traceparent(), Some(traceparent));
    assert_eq!(recorded[0].tracestate(), Some("vendor=1"));
    until_closed(
        "command",
        &[
            &format!("command_id={command_id}"),
            &format!("traceparent=\"{traceparent}\""),
        ],
    )
    .await;

    // An event with a trace context: the subscription's `event` span shows it, and the handler
    // that reacts with a command built from the event (`caused_by`) passes it on to the command
    // (its span) and to the events that command records.
    let data = Ping { n: 11 }
        .to_event_data()
        .unwrap()
        .with_trace_context(traceparent, None)
        .unwrap();
    let event_id = data.event_id;
    let at = store
        .append("ping-3", ExpectedVersion::Any, vec![data])
        .await
        .unwrap();
    let handle = subs
        .start(Reactor {
            tallies: tallies.clone(),
        })
        .unwrap();
    handle
        .wait_until_handled(at.last_position, Duration::from_secs(20))
        .await
        .unwrap();
    until_closed(
        "event",
        &[
            &format!("event_id={event_id}"),
            &format!("traceparent=\"{traceparent}\""),
        ],
    )
    .await;
    let reacted = store.read_stream("tally-reacted", 1, 10).await.unwrap();
    assert_eq!(reacted.len(), 1, "the reaction recorded one event");
    assert_eq!(reacted[0].traceparent(), Some(traceparent));
    assert!(reacted[0].causation_id.is_some());
    until_closed(
        "command",
        &[
            "id=reacted",
            &format!("causation_id={event_id}"),
            &format!("traceparent=\"{traceparent}\""),
        ],
    )
    .await;
    // Events without a trace context have no such field.
    assert!(
        closed("event", &["stream=ping-2"])
            .iter()
            .all(|l| !l.contains("traceparent")),
        "an event without a trace context"
    );
    handle.stop().await;
    tallies.shutdown().await;
    store.close().await;
}
