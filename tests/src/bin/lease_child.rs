//! A process that runs one subscription on a PostgreSQL store, for the failover tests
//! (`tests/tests/postgres_failover.rs`), which start several of it on one schema and kill or
//! pause the one that holds the subscription's lease.
//!
//! `lease_child URL SCHEMA` starts the subscription `"failover"` ([`Counted`]): for every event
//! it prints `HANDLED <token> <position> <stream> <version>` (flushed; its effect outside the
//! store, which a kill may repeat but never skip) and records in its exactly-once state how
//! often it handled the position (`count/<position>`) and under which fencing token
//! (`token/<position>`), committed with its checkpoint every few events.
//!
//! It prints `HOLDING <token>` each time it starts running the subscription (it took the
//! lease), `STANDBY <holder pid>` each time it starts waiting for another process, and
//! `FAILED <reason>` (then exits with status 3) if the subscription fails. Settings from the
//! environment: `TIDINGS_LEASE_TTL_MS` (default 600), `TIDINGS_IDLE_TX_MS` (the store's
//! idle-in-transaction timeout, default 2000). It stops by itself after [`MAX_RUN`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use tidings::store::PostgresConfig;
use tidings::subscription::{
    EventContext, HandleEvent, HandlerError, SubscriptionConfig, SubscriptionState, Subscriptions,
};
use tidings::{async_trait, EventHandler};
use tidings_tests::domain::OrderEvent;
use tidings_tests::support::{die, env_or, say};

/// The child stops by itself after this long.
const MAX_RUN: Duration = Duration::from_secs(120);

/// The subscription: counts each position in its exactly-once state, with the fencing token
/// that handled it.
#[derive(EventHandler)]
#[event_handler(name = "failover", events(OrderEvent))]
struct Counted;

#[async_trait]
impl HandleEvent<OrderEvent> for Counted {
    async fn handle(
        &mut self,
        _: OrderEvent,
        ctx: &mut EventContext<'_>,
    ) -> Result<(), HandlerError> {
        let event = ctx.event();
        let token = ctx.fencing_token().unwrap_or(0);
        let key = format!("count/{:020}", event.position).into_bytes();
        let count: u64 = ctx.get_json(&key).await?.unwrap_or(0);
        ctx.put_json(&key, &(count + 1))?;
        let key = format!("token/{:020}", event.position).into_bytes();
        ctx.put_json(&key, &token)?;
        say(format_args!(
            "HANDLED {token} {} {} {}",
            event.position, event.stream_id, event.stream_version
        ));
        Ok(())
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(url), Some(schema)) = (args.get(1), args.get(2)) else {
        die(&"usage: lease_child URL SCHEMA");
    };
    let config = PostgresConfig::new(url.clone())
        .schema(schema.clone())
        .pool_size(4)
        .poll_interval(Duration::from_millis(100))
        .idle_transaction_timeout(Duration::from_millis(env_or("TIDINGS_IDLE_TX_MS", 2000)));
    let store = Arc::new(config.open_blocking().unwrap_or_else(|e| die(&e)));
    actix::System::new().block_on(async move {
        let subs = Subscriptions::new(store);
        let config = SubscriptionConfig::default()
            .batch_size(16)
            .commit_every(5)
            .commit_interval(Duration::from_millis(20))
            .restart_backoff(Duration::from_millis(10))
            .lease_ttl(Duration::from_millis(env_or("TIDINGS_LEASE_TTL_MS", 600)));
        let handle = subs.start_with(Counted, config).unwrap_or_else(|e| die(&e));
        let me = std::process::id();
        let deadline = Instant::now() + MAX_RUN;
        // The last role printed: (holding, token or holder pid).
        let mut last: Option<(bool, u64)> = None;
        while Instant::now() < deadline {
            let status = handle.status();
            let role = match (&status.state, &status.holder) {
                (SubscriptionState::Failed(reason), _) => {
                    say(format_args!("FAILED {reason}"));
                    std::process::exit(3);
                }
                (SubscriptionState::Standby, Some(holder)) => {
                    Some((false, holder.holder.pid as u64))
                }
                (SubscriptionState::Starting, _) => None,
                (_, Some(holder)) if holder.holder.pid == me => Some((true, holder.generation)),
                _ => None,
            };
            if role.is_some() && role != last {
                match role {
                    Some((true, token)) => say(format_args!("HOLDING {token}")),
                    Some((false, pid)) => say(format_args!("STANDBY {pid}")),
                    None => {}
                }
                last = role;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        handle.stop().await;
    });
}
