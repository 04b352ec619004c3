//! The shop and a NATS broker: `--publish nats://...` runs an outbox relay beside the services,
//! and `watch-nats` prints what arrives on the broker.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use futures_util::StreamExt;
use tidings::broker::headers;
use tidings::broker::nats::async_nats::jetstream::{consumer, stream};
use tidings::broker::nats::{NatsBroker, NatsRelay, RelayConfig, RelaySpec};
use tidings::broker::SubjectTemplate;
use tidings::subscription::SubscriptionHandle;

use super::CliError;
use crate::shop::SharedShop;

/// The JetStream stream the shop publishes to, unless `--nats-stream` says otherwise.
pub(crate) const STREAM: &str = "SHOP";
/// The subjects' first token, unless `--nats-prefix` says otherwise.
pub(crate) const PREFIX: &str = "shop";

/// The shop's relay: every event of the shop, to `<prefix>.<category>.<event type>`.
pub(crate) struct ShopOutbox;

impl RelaySpec for ShopOutbox {
    const NAME: &'static str = "nats-relay";
}

/// Where `--publish` sends the shop's events.
#[derive(Clone, Debug)]
pub(crate) struct Publish {
    /// The NATS server.
    pub url: String,
    /// The JetStream stream (created if missing).
    pub stream: String,
    /// The subjects' first token: events go to `<prefix>.<category>.<event type>`.
    pub prefix: String,
}

impl Publish {
    fn subjects(&self) -> Result<SubjectTemplate, CliError> {
        let p = &self.prefix;
        if p.is_empty()
            || p.split('.').any(str::is_empty)
            || p.chars().any(|c| c == '*' || c == '>' || c.is_whitespace())
        {
            return Err(format!(
                "--nats-prefix {p:?}: a subject prefix is one or more dot-separated tokens \
                 without wildcards or white space"
            )
            .into());
        }
        Ok(SubjectTemplate::parse(&format!(
            "{p}.{{category}}.{{event_type}}"
        ))?)
    }
}

/// Connects, makes sure the JetStream stream (subjects `<prefix>.>`) exists, and starts the
/// relay among the shop's subscriptions.
pub(crate) async fn start_relay(
    shop: &SharedShop,
    to: &Publish,
) -> Result<(NatsBroker, SubscriptionHandle), CliError> {
    let subjects = to.subjects()?;
    let broker = NatsBroker::connect(&to.url, Duration::from_secs(5)).await?;
    broker
        .jetstream()
        .get_or_create_stream(stream::Config {
            name: to.stream.clone(),
            subjects: vec![format!("{}.>", to.prefix)],
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("JetStream stream {} at {}: {e}", to.stream, to.url))?;
    let config = RelayConfig::new(subjects);
    let relay = NatsRelay::<ShopOutbox>::new(&broker, config).start(shop.subscriptions())?;
    Ok((broker, relay))
}

/// Waits (at most 2 minutes) until the relay has published every event, and says so.
pub(crate) async fn finish_relay(shop: &SharedShop, relay: &SubscriptionHandle, to: &Publish) {
    let head = shop.store().head();
    if let Err(e) = relay
        .wait_until_handled(head, Duration::from_secs(120))
        .await
    {
        println!("\nBroker\n  the relay has not published every event yet: {e}");
    }
    let s = relay.status();
    println!(
        "\nBroker\n  {} events published to JetStream stream {} at {} ({}.<category>.<event \
         type>), lag {}, parked {}; `shop_example watch-nats` shows them",
        s.handled_up_to,
        to.stream,
        to.url,
        to.prefix,
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
    /// Keep printing new messages until interrupted, instead of stopping after the last
    /// message the stream held when it started (or after 10 s without any).
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
    let mut last_shown = 0u64;
    loop {
        let next = if args.follow {
            messages.next().await
        } else {
            if last_seq == 0 || (shown > 0 && last_shown >= last_seq) {
                break;
            }
            match tokio::time::timeout(Duration::from_secs(10), messages.next()).await {
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
        last_shown = seq;
    }
    println!("{shown} messages shown");
    Ok(ExitCode::SUCCESS)
}
