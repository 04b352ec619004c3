//! The process that `tests/tests/subscription_crash.rs` kills with SIGKILL while durable
//! subscriptions run in it.
//!
//! `subscription_child run DIR [append]` opens the store in `DIR` and starts two subscriptions
//! under an actix `System`:
//!
//! - [`AtLeastOnce`] (`"alo"`): prints `SEEN <position>` (flushed) for every order and payment
//!   event it handles: its effect outside the store, which a crash may repeat but never skip;
//! - [`ExactlyOnce`] (`"eo"`): a projection keeping `count`, `sum` (of positions) and per-stream
//!   counts in its subscription state, committed with its checkpoint every [`EO_COMMIT_EVERY`]
//!   events, so a crash can neither lose nor double-count an event.
//!
//! The projection also prints `EO <position>` (flushed) for every event it handles, so that the
//! parent can tell how much handled work a kill threw away.
//!
//! With `TIDINGS_CHILD_PARTITIONS=N` (N > 1) both run with N partitioned workers, and the
//! projection keeps only per-stream keys (`stream/<id>` and `sum/<id>`), so that its partitions
//! work in parallel.
//!
//! It prints `STARTED <head>` once both are started, `LIVE <name> <head>` once a subscription has
//! handled every event up to the head it started at, and `COMMITTED <head>` once both have
//! committed a checkpoint there. With `append` a task also appends mixed events (1 to 3 per
//! append, over several streams) while the subscriptions run, printing `ACK <first> <last>`
//! (flushed) for each acknowledged append. If a subscription fails it prints
//! `FAILED <name> <reason>` and exits with status 3. It stops by itself after [`MAX_RUN`].

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidings::store::{EventStore, ExpectedVersion, SledEventStore};
use tidings::subscription::{
    EventContext, HandleEvent, HandlerError, SubscriptionConfig, SubscriptionHandle,
    SubscriptionState, Subscriptions,
};
use tidings::{async_trait, EventHandler};
use tidings_tests::domain::{mixed_event, OrderEvent, PaymentEvent};
use tidings_tests::support::{die, say};

/// The child stops by itself after this long.
const MAX_RUN: Duration = Duration::from_secs(30);
/// The exactly-once projection commits after this many events...
///
/// Catching up, each subscription spends most of its time waiting for its commits (each one
/// durable), so its pace follows its `commit_every`; the projection also reads its state from
/// the store after every commit. These settings keep the two at a similar pace, so that a kill
/// during catch-up finds both still catching up, and small, so that kills often land between a
/// handled event and the commit that covers it.
const EO_COMMIT_EVERY: u64 = 16;
/// ...or after this long.
const EO_COMMIT_INTERVAL: Duration = Duration::from_millis(50);
/// The at-least-once handler commits after this many events...
const ALO_COMMIT_EVERY: u64 = 7;
/// ...or after this long.
const ALO_COMMIT_INTERVAL: Duration = Duration::from_millis(20);
/// Streams the `append` mode writes to.
const LIVE_STREAMS: u64 = 8;
/// The pause between two appends of the `append` mode.
const APPEND_PAUSE: Duration = Duration::from_millis(2);

/// The at-least-once handler: its effect is the `SEEN` line it prints.
#[derive(Clone, EventHandler)]
#[event_handler(name = "alo", events(OrderEvent, PaymentEvent))]
pub struct AtLeastOnce;

#[async_trait]
impl HandleEvent<OrderEvent> for AtLeastOnce {
    async fn handle(
        &mut self,
        _: OrderEvent,
        ctx: &mut EventContext<'_>,
    ) -> Result<(), HandlerError> {
        say(format_args!("SEEN {}", ctx.event().position));
        Ok(())
    }
}

#[async_trait]
impl HandleEvent<PaymentEvent> for AtLeastOnce {
    async fn handle(
        &mut self,
        _: PaymentEvent,
        ctx: &mut EventContext<'_>,
    ) -> Result<(), HandlerError> {
        say(format_args!("SEEN {}", ctx.event().position));
        Ok(())
    }
}

/// The exactly-once projection: everything it knows is in its subscription state.
#[derive(Clone, EventHandler)]
#[event_handler(name = "eo", events(OrderEvent, PaymentEvent))]
pub struct ExactlyOnce {
    /// Partitioned: keep per-stream keys only.
    partitioned: bool,
}

/// Counts the event in hand: `stream/<id>`, `sum/<id>` (of positions), and unless partitioned,
/// `count` and `sum` over all streams.
async fn project(ctx: &mut EventContext<'_>, partitioned: bool) -> Result<(), HandlerError> {
    let event = ctx.event();
    if !partitioned {
        let count: u64 = ctx.get_json(b"count").await?.unwrap_or(0);
        let sum: u64 = ctx.get_json(b"sum").await?.unwrap_or(0);
        ctx.put_json(b"count", &(count + 1))?;
        ctx.put_json(b"sum", &(sum + event.position))?;
    }
    let key = format!("stream/{}", event.stream_id).into_bytes();
    let in_stream: u64 = ctx.get_json(&key).await?.unwrap_or(0);
    ctx.put_json(&key, &(in_stream + 1))?;
    let key = format!("sum/{}", event.stream_id).into_bytes();
    let stream_sum: u64 = ctx.get_json(&key).await?.unwrap_or(0);
    ctx.put_json(&key, &(stream_sum + event.position))?;
    say(format_args!("EO {}", event.position));
    Ok(())
}

#[async_trait]
impl HandleEvent<OrderEvent> for ExactlyOnce {
    async fn handle(
        &mut self,
        _: OrderEvent,
        ctx: &mut EventContext<'_>,
    ) -> Result<(), HandlerError> {
        project(ctx, self.partitioned).await
    }
}

#[async_trait]
impl HandleEvent<PaymentEvent> for ExactlyOnce {
    async fn handle(
        &mut self,
        _: PaymentEvent,
        ctx: &mut EventContext<'_>,
    ) -> Result<(), HandlerError> {
        project(ctx, self.partitioned).await
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let append = match args.get(3).map(String::as_str) {
        None => false,
        Some("append") => true,
        Some(other) => die(&format!("unknown option {other:?}")),
    };
    match (args.get(1).map(String::as_str), args.get(2)) {
        (Some("run"), Some(dir)) => {
            actix::System::new().block_on(run(Path::new(dir), append));
        }
        _ => die(&"usage: subscription_child run DIR [append]"),
    }
}

/// The `run` mode: both subscriptions, the appender if asked, and the progress lines.
async fn run(dir: &Path, append: bool) {
    let deadline = Instant::now() + MAX_RUN;
    let store = Arc::new(SledEventStore::open(dir).unwrap_or_else(|e| die(&e)));
    let start_head = store.head();
    let subs = Subscriptions::new(store.clone());
    let partitions: usize = match std::env::var("TIDINGS_CHILD_PARTITIONS") {
        Ok(n) => n.parse().unwrap_or_else(|e| die(&e)),
        Err(_) => 1,
    };
    let alo_config = SubscriptionConfig::default()
        .batch_size(64)
        .commit_every(ALO_COMMIT_EVERY)
        .commit_interval(ALO_COMMIT_INTERVAL);
    let eo_config = SubscriptionConfig::default()
        .batch_size(64)
        .commit_every(EO_COMMIT_EVERY)
        .commit_interval(EO_COMMIT_INTERVAL);
    let projection = ExactlyOnce {
        partitioned: partitions > 1,
    };
    let (alo, eo) = if partitions > 1 {
        (
            subs.start_partitioned(AtLeastOnce, partitions, alo_config),
            subs.start_partitioned(projection, partitions, eo_config),
        )
    } else {
        (
            subs.start_with(AtLeastOnce, alo_config),
            subs.start_with(projection, eo_config),
        )
    };
    let (alo, eo) = (
        alo.unwrap_or_else(|e| die(&e)),
        eo.unwrap_or_else(|e| die(&e)),
    );
    say(format_args!("STARTED {start_head}"));
    if append {
        actix::spawn(append_until(store.clone(), deadline));
    }
    let (mut live, mut committed) = ([false; 2], false);
    while Instant::now() < deadline {
        let statuses = [alo.status(), eo.status()];
        for (s, live) in statuses.iter().zip(&mut live) {
            if let SubscriptionState::Failed(reason) = &s.state {
                say(format_args!("FAILED {} {reason}", s.name));
                std::process::exit(3);
            }
            if !*live && s.handled_up_to >= start_head {
                *live = true;
                say(format_args!("LIVE {} {start_head}", s.name));
            }
        }
        if !committed && statuses.iter().all(|s| s.checkpoint >= start_head) {
            committed = true;
            say(format_args!("COMMITTED {start_head}"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop(&[alo, eo]).await;
}

/// Stops the subscriptions at the end of a run that was not killed.
async fn stop(handles: &[SubscriptionHandle]) {
    for h in handles {
        h.stop().await;
    }
}

/// The `append` mode's writer: appends of 1 to 3 mixed events over [`LIVE_STREAMS`] streams,
/// each acknowledged with `ACK <first> <last>`, until `deadline`.
async fn append_until(store: Arc<SledEventStore>, deadline: Instant) {
    let mut i = store.head();
    while Instant::now() < deadline {
        let n = 1 + i % 3;
        let stream = format!("live-{}", (i / 3) % LIVE_STREAMS);
        let events = (i..i + n).map(mixed_event).collect();
        let result = store
            .append(&stream, ExpectedVersion::Any, events)
            .await
            .unwrap_or_else(|e| die(&e));
        if result.last_position + 1 - result.first_position != n {
            die(&format!("append of {n} to {stream} gave {result:?}"));
        }
        say(format_args!(
            "ACK {} {}",
            result.first_position, result.last_position
        ));
        i += n;
        tokio::time::sleep(APPEND_PAUSE).await;
    }
}
