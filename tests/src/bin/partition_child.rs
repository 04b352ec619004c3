//! A process that runs one distributed subscription on a PostgreSQL store, for the rebalancing
//! tests (`tests/tests/postgres_distributed.rs`), which start several of it on one schema, kill
//! some with SIGKILL and stop others.
//!
//! `partition_child URL SCHEMA` starts the distributed subscription `"spread"` ([`Spread`]) with
//! `TIDINGS_PARTITIONS` partitions (default 6). For every event it prints
//! `HANDLED <partition> <token> <position> <stream> <version>` (flushed; its effect outside the
//! store, which a kill may repeat but never skip) and records in its partition's exactly-once
//! state how often it handled the position (`count/<position>`) and under which fencing token
//! (`token/<position>`), committed with the partition's checkpoint every few events.
//!
//! It prints `ASSIGNED <slot> <members> <partitions>` each time the partitions it owns change
//! (`-` for none), `RUNNING <partitions>` each time the partitions whose loops run here change,
//! and `FAILED <reason>` (then exits with status 3) if a partition fails. A line `stop` on its
//! stdin (or its end) stops it gracefully: it prints `STOPPED` once every partition stopped and
//! its member lease is given up, and exits. Settings from the environment:
//! `TIDINGS_LEASE_TTL_MS` (default 600). It stops by itself after [`MAX_RUN`].

use std::io::BufRead;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidings::store::PostgresConfig;
use tidings::subscription::{
    DistributedConfig, EventContext, HandleEvent, HandlerError, SubscriptionConfig,
    SubscriptionState, Subscriptions,
};
use tidings::{async_trait, EventHandler};
use tidings_tests::domain::OrderEvent;
use tidings_tests::support::{die, env_or, say};

/// The child stops by itself after this long.
const MAX_RUN: Duration = Duration::from_secs(300);

/// The subscription: counts each position in its partition's exactly-once state, with the
/// fencing token that handled it.
#[derive(Clone, EventHandler)]
#[event_handler(name = "spread", events(OrderEvent))]
struct Spread;

#[async_trait]
impl HandleEvent<OrderEvent> for Spread {
    async fn handle(
        &mut self,
        _: OrderEvent,
        ctx: &mut EventContext<'_>,
    ) -> Result<(), HandlerError> {
        let event = ctx.event();
        let token = ctx.fencing_token().unwrap_or(0);
        // The partition's subscription is named `spread.pNNofM`.
        let partition: u32 = ctx.subscription()["spread.p".len().."spread.p".len() + 2].parse()?;
        let key = format!("count/{:020}", event.position).into_bytes();
        let count: u64 = ctx.get_json(&key).await?.unwrap_or(0);
        ctx.put_json(&key, &(count + 1))?;
        let key = format!("token/{:020}", event.position).into_bytes();
        ctx.put_json(&key, &token)?;
        say(format_args!(
            "HANDLED {partition} {token} {} {} {}",
            event.position, event.stream_id, event.stream_version
        ));
        Ok(())
    }
}

/// A list of partitions as printed: `0,3` or `-`.
fn list(partitions: &[u32]) -> String {
    if partitions.is_empty() {
        return "-".into();
    }
    let parts: Vec<String> = partitions.iter().map(u32::to_string).collect();
    parts.join(",")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(url), Some(schema)) = (args.get(1), args.get(2)) else {
        die(&"usage: partition_child URL SCHEMA");
    };
    let config = PostgresConfig::new(url.clone())
        .schema(schema.clone())
        .pool_size(6)
        .poll_interval(Duration::from_millis(100));
    let store = Arc::new(config.open_blocking().unwrap_or_else(|e| die(&e)));
    // `stop` on stdin, or its end (the test that started this process is gone).
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            match line {
                Ok(line) if line.trim() == "stop" => break,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        let _ = stop_tx.send(());
    });
    actix::System::new().block_on(async move {
        let subs = Subscriptions::new(store);
        let config = SubscriptionConfig::default()
            .batch_size(16)
            .commit_every(5)
            .commit_interval(Duration::from_millis(20))
            .restart_backoff(Duration::from_millis(10))
            .lease_ttl(Duration::from_millis(env_or("TIDINGS_LEASE_TTL_MS", 600)));
        let partitions = env_or("TIDINGS_PARTITIONS", 6) as u32;
        let handle = subs
            .start_distributed(Spread, config, DistributedConfig::new(partitions))
            .unwrap_or_else(|e| die(&e));
        let deadline = Instant::now() + MAX_RUN;
        let mut assigned_seen: Option<(Option<u32>, usize, Vec<u32>)> = None;
        let mut running_seen: Option<Vec<u32>> = None;
        while Instant::now() < deadline && stop_rx.try_recv().is_err() {
            for status in handle.statuses() {
                if let SubscriptionState::Failed(reason) = status.state {
                    say(format_args!("FAILED {}: {reason}", status.name));
                    std::process::exit(3);
                }
            }
            let assigned = (handle.slot(), handle.members().len(), handle.assigned());
            if assigned_seen.as_ref() != Some(&assigned) {
                let slot = assigned.0.map_or("-".to_owned(), |s| s.to_string());
                say(format_args!(
                    "ASSIGNED {slot} {} {}",
                    assigned.1,
                    list(&assigned.2)
                ));
                assigned_seen = Some(assigned);
            }
            let running = handle.running();
            if running_seen.as_ref() != Some(&running) {
                say(format_args!("RUNNING {}", list(&running)));
                running_seen = Some(running);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        handle.stop().await;
        say(format_args!("STOPPED"));
    });
}
