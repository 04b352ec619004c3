//! The process that `tests/tests/subscription_failures.rs` kills with SIGKILL while a
//! subscription parks events.
//!
//! `parking_child run DIR` opens the store in `DIR` and runs the subscription `"parking"`: an
//! exactly-once projection counting orders per stream in its state (`stream/<id>`), whose handler
//! fails on every event of a stream whose id starts with `bad-`, under
//! `FailurePolicy::RetryThenPark` (one retry), so those streams are parked while the others are
//! counted. It commits often (every [`COMMIT_EVERY`] events) so that kills land between commits.
//! It prints `STARTED <head>`, then `CAUGHTUP <head>` once its committed checkpoint reaches the
//! head it started at. If the subscription fails it prints `FAILED <reason>` and exits with
//! status 3. It stops by itself after [`MAX_RUN`].

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidings::store::{EventStore, SledEventStore};
use tidings::subscription::{
    EventContext, FailurePolicy, HandleEvent, HandlerError, SubscriptionConfig, SubscriptionState,
    Subscriptions,
};
use tidings::{async_trait, EventHandler};
use tidings_tests::domain::OrderEvent;
use tidings_tests::support::{die, say};

/// The child stops by itself after this long.
const MAX_RUN: Duration = Duration::from_secs(30);
/// Events between two commits.
const COMMIT_EVERY: u64 = 8;

/// Counts orders per stream; cannot handle the `bad-` streams.
#[derive(EventHandler)]
#[event_handler(name = "parking", events(OrderEvent))]
pub struct Parking;

#[async_trait]
impl HandleEvent<OrderEvent> for Parking {
    async fn handle(
        &mut self,
        _: OrderEvent,
        ctx: &mut EventContext<'_>,
    ) -> Result<(), HandlerError> {
        let stream = &ctx.event().stream_id;
        if stream.starts_with("bad-") {
            return Err(format!("bad stream {stream}").into());
        }
        let key = format!("stream/{stream}").into_bytes();
        let n: u64 = ctx.get_json(&key).await?.unwrap_or(0);
        ctx.put_json(&key, &(n + 1))?;
        Ok(())
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match (args.get(1).map(String::as_str), args.get(2)) {
        (Some("run"), Some(dir)) => actix::System::new().block_on(run(Path::new(dir))),
        _ => die(&"usage: parking_child run DIR"),
    }
}

async fn run(dir: &Path) {
    let deadline = Instant::now() + MAX_RUN;
    let store = Arc::new(SledEventStore::open(dir).unwrap_or_else(|e| die(&e)));
    let head = store.head();
    let subs = Subscriptions::new(store.clone());
    let config = SubscriptionConfig::default()
        .batch_size(32)
        .commit_every(COMMIT_EVERY)
        .commit_interval(Duration::from_millis(20))
        .failure_policy(FailurePolicy::retry_then_park(
            1,
            Duration::from_micros(100),
            Duration::from_micros(200),
        ));
    let handle = subs.start_with(Parking, config).unwrap_or_else(|e| die(&e));
    say(format_args!("STARTED {head}"));
    let mut caught_up = false;
    while Instant::now() < deadline {
        let status = handle.status();
        if let SubscriptionState::Failed(reason) = &status.state {
            say(format_args!("FAILED {reason}"));
            std::process::exit(3);
        }
        if !caught_up && status.checkpoint >= head {
            caught_up = true;
            say(format_args!("CAUGHTUP {head}"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    handle.stop().await;
}
