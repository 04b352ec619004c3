//! The shop and a NATS broker: `--publish nats://...` runs an outbox relay beside the services,
//! and `watch-nats` prints what arrives on the broker.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use futures_util::StreamExt;
use tidings::broker::headers;
use tidings::broker::nats::async_nats::jetstream::{consumer, stream};
use tidings::broker::nats::{NatsBroker, NatsRelay, RelayConfig, RelaySpec};
use tidings::broker::SubjectTemplate;
use tidings::subscription::SubscriptionHandle;

use super::CliError;
use crate::shop::SharedShop;

/// The JetStream stream the shop publishes to.
pub(crate) const STREAM: &str = "SHOP";
/// Where each event goes.
pub(crate) const SUBJECTS: &str = "shop.{category}.{event_type}";

/// The shop's relay: every event of the shop, to `shop.<category>.<event type>`.
pub(crate) struct ShopOutbox;

impl RelaySpec for ShopOutbox {
    const NAME: &'static str = "nats-relay";
}

/// Connects to `url`, makes sure the stream `SHOP` (subjects `shop.>`) exists, and starts the
/// relay among the shop's subscriptions.
pub(crate) async fn start_relay(
    shop: &SharedShop,
    url: &str,
) -> Result<(NatsBroker, SubscriptionHandle), CliError> {
    let broker = NatsBroker::connect(url, Duration::from_secs(5)).await?;
    broker
        .jetstream()
        .get_or_create_stream(stream::Config {
            name: STREAM.into(),
            subjects: vec!["shop.>".into()],
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("JetStream stream {STREAM} at {url}: {e}"))?;
    let config = RelayConfig::new(SubjectTemplate::parse(SUBJECTS)?);
    let relay = NatsRelay::<ShopOutbox>::new(&broker, config).start(shop.subscriptions())?;
    Ok((broker, relay))
}

/// Waits (at most 30 s) until the relay has published every event, and says so.
pub(crate) async fn finish_relay(shop: &SharedShop, relay: &SubscriptionHandle, url: &str) {
    let head = shop.store().head();
    let deadline = Instant::now() + Duration::from_secs(30);
    while relay.status().handled_up_to < head && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = relay.status();
    println!(
        "\nBroker\n  {} events published to JetStream stream {STREAM} at {url} ({SUBJECTS}), \
         lag {}, parked {}; `shop_example watch-nats` shows them",
        s.handled_up_to,
        s.lag(),
        s.parked
    );
}

/// The arguments of `watch-nats`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The NATS server.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    url: String,
    /// The JetStream stream to read.
    #[arg(long, default_value = STREAM)]
    stream: String,
    /// Only the last N messages (default: all).
    #[arg(long, value_name = "N")]
    last: Option<u64>,
    /// Keep printing new messages until interrupted, instead of stopping after 2 s without any.
    #[arg(long)]
    follow: bool,
}

/// `watch-nats`: prints the messages of the stream, one line each.
pub(crate) async fn watch(args: WatchArgs) -> Result<ExitCode, CliError> {
    let broker = NatsBroker::connect(&args.url, Duration::from_secs(5)).await?;
    let mut stream = broker
        .jetstream()
        .get_stream(&args.stream)
        .await
        .map_err(|e| format!("JetStream stream {} at {}: {e}", args.stream, args.url))?;
    let last_seq = stream.info().await?.state.last_sequence;
    let deliver_policy = match args.last {
        Some(n) => consumer::DeliverPolicy::ByStartSequence {
            start_sequence: last_seq.saturating_sub(n).saturating_add(1).max(1),
        },
        None => consumer::DeliverPolicy::All,
    };
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    println!(
        "JetStream stream {} at {}: {} messages",
        args.stream,
        args.url,
        stream.cached_info().state.messages
    );
    let mut shown = 0u64;
    loop {
        let next = if args.follow {
            messages.next().await
        } else {
            match tokio::time::timeout(Duration::from_secs(2), messages.next()).await {
                Ok(next) => next,
                Err(_) => break,
            }
        };
        let Some(message) = next else { break };
        let message = message?;
        let header = |name| {
            message
                .headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map_or("-", |v| v.as_str())
        };
        let seq = message.info().map_or(0, |i| i.stream_sequence);
        println!(
            "#{seq:<6} {:<36} position {:<6} {} v{} {}",
            message.subject.as_str(),
            header(headers::POSITION),
            header(headers::STREAM),
            header(headers::STREAM_VERSION),
            String::from_utf8_lossy(&message.payload),
        );
        shown += 1;
    }
    println!("{shown} messages shown");
    Ok(ExitCode::SUCCESS)
}
