//! A quick measurement of subscription catch-up with and without exactly-once state, as ratios
//! measured in the same run (the full benchmark runner is `tidings-bench`).
//!
//! `cargo run --release -p tidings --example projection_throughput [EVENTS]`
//!
//! Appends EVENTS order events (default 100 000) over 1 000 streams, then catches up on them with
//! three subscriptions, one after the other: a handler that does nothing, a projection that
//! reads and writes a per-stream counter and a total in its subscription state (committed with
//! its checkpoint), and the same projection with 4 partitioned workers (its total key is shared
//! by the partitions, so it also shows what sharing a key costs). Prints events per second and
//! the ratio to the no-op handler.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tidings::store::{EventStore, ExpectedVersion, SledEventStore};
use tidings::subscription::{EventContext, HandleEvent, HandlerError, Subscriptions};
use tidings::{async_trait, DomainEvent, EventHandler};

/// The events the subscriptions read.
#[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
enum OrderEvent {
    OrderPlaced { cents: u64 },
}

/// Does nothing.
#[derive(EventHandler)]
#[event_handler(name = "noop", events(OrderEvent))]
struct Noop;

#[async_trait]
impl HandleEvent<OrderEvent> for Noop {
    async fn handle(
        &mut self,
        _: OrderEvent,
        _: &mut EventContext<'_>,
    ) -> Result<(), HandlerError> {
        Ok(())
    }
}

/// Keeps a per-stream count and a total in its exactly-once state.
#[derive(Clone, EventHandler)]
#[event_handler(name = "projection", events(OrderEvent))]
struct Projection;

#[async_trait]
impl HandleEvent<OrderEvent> for Projection {
    async fn handle(
        &mut self,
        event: OrderEvent,
        ctx: &mut EventContext<'_>,
    ) -> Result<(), HandlerError> {
        let OrderEvent::OrderPlaced { cents } = event;
        let key = format!("cents/{}", ctx.event().stream_id).into_bytes();
        let sum: u64 = ctx.get_json(&key).await?.unwrap_or(0);
        ctx.put_json(&key, &(sum + cents))?;
        let total: u64 = ctx.get_json(b"total").await?.unwrap_or(0);
        ctx.put_json(b"total", &(total + cents))?;
        Ok(())
    }
}

/// The same projection under another name, for the partitioned run.
#[derive(Clone, EventHandler)]
#[event_handler(name = "partitioned", events(OrderEvent))]
struct Partitioned;

#[async_trait]
impl HandleEvent<OrderEvent> for Partitioned {
    async fn handle(
        &mut self,
        event: OrderEvent,
        ctx: &mut EventContext<'_>,
    ) -> Result<(), HandlerError> {
        Projection.handle(event, ctx).await
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let events: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(100_000);
    let dir = tempfile::tempdir()?;
    actix::System::new().block_on(async move {
        let store = Arc::new(SledEventStore::open(dir.path())?);
        let mut appends = Vec::new();
        for i in 0..events {
            let store = store.clone();
            appends.push(tokio::spawn(async move {
                let data = OrderEvent::OrderPlaced { cents: i }.to_event_data()?;
                let stream = format!("order-{}", i % 1000);
                store
                    .append(&stream, ExpectedVersion::Any, vec![data])
                    .await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            }));
            if appends.len() == 256 {
                for a in appends.drain(..) {
                    a.await?.map_err(|e| e.to_string())?;
                }
            }
        }
        for a in appends {
            a.await?.map_err(|e| e.to_string())?;
        }
        let head = store.head();
        let subs = Subscriptions::new(store.clone() as Arc<dyn EventStore>);
        let started = Instant::now();
        let h = subs.start(Noop)?;
        h.wait_until_handled(head, Duration::from_secs(3600))
            .await?;
        h.stop().await;
        let noop = events as f64 / started.elapsed().as_secs_f64();
        let started = Instant::now();
        let h = subs.start(Projection)?;
        h.wait_until_handled(head, Duration::from_secs(3600))
            .await?;
        h.stop().await;
        let projection = events as f64 / started.elapsed().as_secs_f64();
        let started = Instant::now();
        let h = subs.start_partitioned(Partitioned, 4, Default::default())?;
        h.wait_until_handled(head, Duration::from_secs(3600))
            .await?;
        h.stop().await;
        let partitioned = events as f64 / started.elapsed().as_secs_f64();
        println!("{:<40} {:>12} {:>8}", "handler", "events/s", "ratio");
        for (name, rate) in [
            ("no-op", noop),
            ("exactly-once projection", projection),
            ("same, 4 partitions, a shared key", partitioned),
        ] {
            println!("{name:<40} {rate:>12.0} {:>8.2}", rate / noop);
        }
        Ok(())
    })
}
