//! The outbox relay: a durable subscription that publishes each event to JetStream, once.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::{self, ErrorCode};
use async_nats::HeaderMap;
use async_trait::async_trait;

use super::NatsBroker;
use crate::broker::{headers, SubjectTemplate};
use crate::store::{Filter, RecordedEvent};
use crate::subscription::{
    EventContext, EventHandler, FailurePolicy, HandlerError, HandlerFailure, Refused, StartError,
    StartFrom, SubscriptionConfig, SubscriptionHandle, Subscriptions, Unavailable,
};

/// What a relay is: its subscription name, the events it publishes and where it starts.
///
/// A unit type per relay, because a subscription's name and filter are part of its type (its
/// checkpoint is stored under the name):
///
/// ```
/// use tidings::broker::nats::RelaySpec;
/// use tidings::store::Filter;
///
/// /// Publishes the shop's orders and payments.
/// struct ShopOutbox;
///
/// impl RelaySpec for ShopOutbox {
///     const NAME: &'static str = "shop-outbox";
///     fn filter() -> Filter {
///         Filter::all().categories(["order", "payment"])
///     }
/// }
/// ```
pub trait RelaySpec: Send + Sync + 'static {
    /// The relay's subscription name: stable across releases (its checkpoint is stored under
    /// it).
    const NAME: &'static str;

    /// The events it publishes. Default: all. The framework's own records (`$tidings.` types:
    /// remembered refusals, deadline records) are never published.
    fn filter() -> Filter {
        Filter::all()
    }

    /// Where it starts the first time. Default: the beginning of the log.
    fn start_from() -> StartFrom {
        StartFrom::Beginning
    }
}

/// Settings of a relay.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RelayConfig {
    /// The subject of each event, such as `shop.{category}.{event_type}`.
    pub subjects: SubjectTemplate,
    /// How many streams are published concurrently (the subscription's partitions): each lane
    /// has one message in flight at a time, so a stream's next event is published only after
    /// its previous one is acknowledged. Default 256.
    pub lanes: usize,
    /// How long to wait for JetStream's acknowledgement before publishing the message again
    /// (with the same message id, so that the broker keeps one). Default 5 s.
    pub ack_timeout: Duration,
    /// The subscription's settings. The default reads pages of 4 096 events (the lanes of a
    /// page finish together before the next page, so a page many times the lanes keeps them
    /// busy; it is also the most events held in memory), and its failure policy retries a
    /// failed publish 3 times (100 ms, doubling up to 2 s), then parks the event with its
    /// stream; a broker that is unreachable is waited for without limit instead (see
    /// [`Unavailable`]).
    pub subscription: SubscriptionConfig,
    /// Called after each acknowledged publish, with the time from the publish to JetStream's
    /// acknowledgement (for metrics; it runs on the relay's lane, so keep it short). Default
    /// none.
    pub on_published: Option<OnPublished>,
}

/// A callback the relay calls after each acknowledged publish with the event, JetStream's
/// answer and the publish→ack time ([`RelayConfig::on_published`]).
#[derive(Clone)]
pub struct OnPublished(pub Arc<PublishedFn>);

/// The function inside [`OnPublished`].
pub type PublishedFn = dyn Fn(&RecordedEvent, &Published, Duration) + Send + Sync;

impl std::fmt::Debug for OnPublished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnPublished(..)")
    }
}

impl RelayConfig {
    /// Defaults, publishing to `subjects`.
    pub fn new(subjects: SubjectTemplate) -> Self {
        RelayConfig {
            subjects,
            lanes: 256,
            ack_timeout: Duration::from_secs(5),
            subscription: SubscriptionConfig::default()
                .batch_size(4096)
                .failure_policy(FailurePolicy::retry_then_park(
                    3,
                    Duration::from_millis(100),
                    Duration::from_secs(2),
                )),
            on_published: None,
        }
    }

    /// Sets the callback called after each acknowledged publish.
    ///
    /// ```
    /// # use std::sync::atomic::{AtomicU64, Ordering};
    /// # use std::sync::Arc;
    /// use tidings::broker::nats::RelayConfig;
    /// use tidings::broker::SubjectTemplate;
    ///
    /// let slowest_micros = Arc::new(AtomicU64::new(0));
    /// let seen = slowest_micros.clone();
    /// let config = RelayConfig::new(SubjectTemplate::parse("shop.{category}").unwrap())
    ///     .on_published(move |_event, _published, took| {
    ///         seen.fetch_max(took.as_micros() as u64, Ordering::Relaxed);
    ///     });
    /// assert!(config.on_published.is_some());
    /// ```
    #[must_use]
    pub fn on_published(
        mut self,
        f: impl Fn(&RecordedEvent, &Published, Duration) + Send + Sync + 'static,
    ) -> Self {
        self.on_published = Some(OnPublished(Arc::new(f)));
        self
    }

    /// Sets the number of lanes (at least 1).
    #[must_use]
    pub fn lanes(mut self, lanes: usize) -> Self {
        self.lanes = lanes.max(1);
        self
    }

    /// Sets the acknowledgement timeout.
    #[must_use]
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        self.ack_timeout = timeout;
        self
    }

    /// Sets the subscription's settings.
    #[must_use]
    pub fn subscription(mut self, config: SubscriptionConfig) -> Self {
        self.subscription = config;
        self
    }
}

/// What JetStream answered for a published event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    /// The JetStream stream that stored it.
    pub stream: String,
    /// Its sequence number there.
    pub sequence: u64,
    /// Whether JetStream had it already (same message id within the stream's de-duplication
    /// window): published before a crash, and not stored again.
    pub duplicate: bool,
}

/// Why an event could not be published.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishFailure {
    /// The broker did not acknowledge: unreachable, timed out, no stream for the subject, out
    /// of resources. Publish again later (the message id makes it safe).
    #[error("the broker is unavailable: {0}")]
    Unavailable(String),
    /// The broker refused this message and would refuse it again: larger than the server's
    /// `max_payload` or the stream's maximum message size, or a value that cannot be a header.
    #[error("the broker refused the message: {0}")]
    Refused(String),
}

impl PublishFailure {
    /// As a handler error that a subscription understands: [`Unavailable`] (retried until the
    /// broker answers) or [`Refused`] (parked at once).
    pub fn into_handler_error(self) -> HandlerError {
        match self {
            PublishFailure::Unavailable(_) => Box::new(Unavailable(Box::new(self))),
            PublishFailure::Refused(_) => Box::new(Refused(Box::new(self))),
        }
    }
}

/// Publishes recorded events to JetStream with their metadata as headers and the event id as
/// the message id (JetStream's de-duplication). Used by [`NatsRelay`]; usable from a handler
/// of your own too (`publisher.publish(ctx.event()).await`).
#[derive(Clone, Debug)]
pub struct NatsPublisher {
    jetstream: jetstream::Context,
    subjects: SubjectTemplate,
    relay: String,
}

impl NatsPublisher {
    /// A publisher on `broker`'s connection, to `subjects`, that waits `ack_timeout` for each
    /// acknowledgement. `relay` is put in the [`RELAY`](headers::RELAY) header.
    pub fn new(
        broker: &NatsBroker,
        subjects: SubjectTemplate,
        ack_timeout: Duration,
        relay: impl Into<String>,
    ) -> Self {
        let mut jetstream = jetstream::new(broker.client().clone());
        jetstream.set_timeout(ack_timeout);
        NatsPublisher {
            jetstream,
            subjects,
            relay: relay.into(),
        }
    }

    /// The subject and headers `event` is published with.
    pub fn message(&self, event: &RecordedEvent) -> Result<(String, HeaderMap), PublishFailure> {
        for (what, value) in [
            ("stream id", event.stream_id.as_str()),
            ("event type", event.event_type.as_str()),
        ] {
            if value.chars().any(char::is_control) {
                return Err(PublishFailure::Refused(format!(
                    "the {what} {value:?} has a control character, which a header cannot carry"
                )));
            }
        }
        let mut h = HeaderMap::new();
        h.insert(headers::MSG_ID, event.event_id.to_string().as_str());
        h.insert(headers::POSITION, event.position.to_string().as_str());
        h.insert(headers::STREAM, event.stream_id.as_str());
        h.insert(
            headers::STREAM_VERSION,
            event.stream_version.to_string().as_str(),
        );
        h.insert(headers::CATEGORY, event.category.as_str());
        h.insert(headers::EVENT_TYPE, event.event_type.as_str());
        h.insert(
            headers::SCHEMA_VERSION,
            event.schema_version.to_string().as_str(),
        );
        if let Some(id) = event.correlation_id {
            h.insert(headers::CORRELATION_ID, id.to_string().as_str());
        }
        if let Some(id) = event.causation_id {
            h.insert(headers::CAUSATION_ID, id.to_string().as_str());
        }
        h.insert(
            headers::TIMESTAMP,
            event.timestamp_micros.to_string().as_str(),
        );
        h.insert(headers::RELAY, self.relay.as_str());
        // Metadata values hold no control characters (checked at append), so each is a valid
        // header value as it is.
        for (key, value) in &event.metadata {
            h.insert(headers::metadata_header(key).as_str(), value.as_str());
        }
        Ok((self.subjects.render(event), h))
    }

    /// Publishes `event` and waits for JetStream's acknowledgement.
    pub async fn publish(&self, event: &RecordedEvent) -> Result<Published, PublishFailure> {
        let (subject, headers) = self.message(event)?;
        // A slice of the page the event was read in: no copy (decision 63).
        let payload = event.payload.clone();
        let ack = self
            .jetstream
            .publish_with_headers(subject, headers, payload)
            .await
            .map_err(classify)?
            .await
            .map_err(classify)?;
        Ok(Published {
            stream: ack.stream,
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }
}

/// Refusals that publishing again cannot change; everything else is waited out.
fn classify(e: PublishError) -> PublishFailure {
    let refused = match e.kind() {
        PublishErrorKind::MaxPayloadExceeded => true,
        PublishErrorKind::Other => std::error::Error::source(&e)
            .and_then(|s| s.downcast_ref::<jetstream::Error>())
            .is_some_and(|js| js.error_code() == ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM),
        _ => false,
    };
    let message = match std::error::Error::source(&e) {
        Some(source) => format!("{e}: {source}"),
        None => e.to_string(),
    };
    if refused {
        PublishFailure::Refused(message)
    } else {
        PublishFailure::Unavailable(message)
    }
}

/// The outbox relay: a durable subscription that publishes the events `S` selects to
/// JetStream, each exactly once and each stream in order.
///
/// - Each event is published with its id as `Nats-Msg-Id`, so JetStream keeps one copy of an
///   event published twice (after a crash, the events after the checkpoint are published again)
///   within the stream's de-duplication window.
/// - The checkpoint passes an event only after JetStream acknowledged it (an event is handled
///   when its publish is acknowledged, and a subscription's checkpoint never passes an event that
///   is not handled).
/// - A stream's events are published one at a time, in order; streams go concurrently, over
///   [`RelayConfig::lanes`] lanes (the subscription's partitions).
/// - An unreachable broker is waited for without limit (never skipped or parked); a message the
///   broker refuses (too large) is parked with the rest of its stream, as the subscription's
///   failure policy says, and can be replayed or skipped like any parked event.
///
/// Its status, lag and parked events are those of a subscription named `S::NAME` (or the name
/// set with [`SubscriptionConfig::name`] in [`RelayConfig::subscription`], which the messages'
/// relay header carries too): the CLI's `subscriptions` commands show them.
///
/// ```no_run
/// # use std::time::Duration;
/// # use std::sync::Arc;
/// # use tidings::broker::SubjectTemplate;
/// # use tidings::broker::nats::{NatsBroker, NatsRelay, RelayConfig, RelaySpec};
/// # use tidings::subscription::Subscriptions;
/// # struct ShopOutbox;
/// # impl RelaySpec for ShopOutbox { const NAME: &'static str = "shop-outbox"; }
/// # async fn run(subscriptions: &Subscriptions) -> Result<(), Box<dyn std::error::Error>> {
/// let broker = NatsBroker::connect("nats://127.0.0.1:4222", Duration::from_secs(5)).await?;
/// let config = RelayConfig::new(SubjectTemplate::parse("shop.{category}.{event_type}")?);
/// let relay = NatsRelay::<ShopOutbox>::new(&broker, config).start(subscriptions)?;
/// println!("{:?}", relay.status());
/// # Ok(()) }
/// ```
pub struct NatsRelay<S: RelaySpec> {
    publisher: Arc<NatsPublisher>,
    config: Arc<RelayConfig>,
    spec: PhantomData<fn() -> S>,
}

impl<S: RelaySpec> std::fmt::Debug for NatsRelay<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsRelay")
            .field("publisher", &self.publisher)
            .field("config", &self.config)
            .finish()
    }
}

impl<S: RelaySpec> Clone for NatsRelay<S> {
    fn clone(&self) -> Self {
        NatsRelay {
            publisher: self.publisher.clone(),
            config: self.config.clone(),
            spec: PhantomData,
        }
    }
}

impl<S: RelaySpec> NatsRelay<S> {
    /// A relay on `broker`'s connection.
    pub fn new(broker: &NatsBroker, config: RelayConfig) -> Self {
        let name = config
            .subscription
            .name
            .as_ref()
            .map_or(S::NAME, |name| name.as_str());
        let publisher =
            NatsPublisher::new(broker, config.subjects.clone(), config.ack_timeout, name);
        NatsRelay {
            publisher: Arc::new(publisher),
            config: Arc::new(config),
            spec: PhantomData,
        }
    }

    /// Starts the relay's subscription with its lanes and settings.
    pub fn start(self, subscriptions: &Subscriptions) -> Result<SubscriptionHandle, StartError> {
        let lanes = self.config.lanes;
        let config = self.config.subscription.clone();
        subscriptions.start_partitioned(self, lanes, config)
    }

    /// The publisher it uses.
    pub fn publisher(&self) -> &NatsPublisher {
        &self.publisher
    }
}

#[async_trait]
impl<S: RelaySpec> EventHandler for NatsRelay<S> {
    const NAME: &'static str = S::NAME;

    /// Not used: the relay's filter is [`RelaySpec::filter`].
    fn event_types() -> Vec<&'static str> {
        Vec::new()
    }

    fn start_from() -> StartFrom {
        S::start_from()
    }

    fn filter() -> Filter {
        S::filter()
    }

    async fn dispatch(
        &mut self,
        event: &RecordedEvent,
        _ctx: &mut EventContext<'_>,
    ) -> Result<(), HandlerFailure> {
        // The framework's own records (remembered refusals, deadline records) are not domain
        // events: other services have no use for them.
        if crate::aggregate::is_framework_record(&event.event_type) {
            return Ok(());
        }
        let started = std::time::Instant::now();
        match self.publisher.publish(event).await {
            Ok(published) => {
                if let Some(OnPublished(f)) = &self.config.on_published {
                    f(event, &published, started.elapsed());
                }
                Ok(())
            }
            Err(failure) => Err(HandlerFailure::Handler(failure.into_handler_error())),
        }
    }
}
