//! The inbox: a JetStream durable consumer whose messages become events appended in tidings,
//! each exactly once.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::consumer::{pull, AckPolicy, PullConsumer};
use async_nats::jetstream::{AckKind, Message};
use async_nats::HeaderMap;
use async_trait::async_trait;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{debug, warn};
use uuid::Uuid;

use super::{BrokerError, NatsBroker};
use crate::broker::headers;
use crate::event::EventDecodeError;
use crate::store::{
    EventData, EventStore, ExpectedVersion, IntoEventStore, StateWrite, StoreError,
};
use crate::subscription::{
    encode_parked, parked_in_store, parked_key, parked_message_key, replay_key,
    replay_requests_in_store, status_write, subscription_status_from_store, FailurePolicy,
    HandlerError, InboxProgress, ParkedEvent, Refused, SubscriptionState, SubscriptionStatus,
    Unavailable,
};

/// What an inbox does with one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InboxAction {
    /// Append these events to `stream` (the inbox gives them ids derived from the message id,
    /// so that a redelivered message is recognised). At most [`InboxConfig::max_events`].
    Append {
        /// The stream.
        stream: String,
        /// The events, in order.
        events: Vec<EventData>,
    },
    /// Nothing to append (the handler did its work itself, for example by sending a command
    /// whose id is [`InboxMessage::command_id`], which the aggregate runs once).
    Done,
}

/// A message as the inbox's handler sees it.
#[derive(Debug)]
pub struct InboxMessage<'a> {
    /// The message (subject, headers, payload).
    pub message: &'a Message,
    /// Its id: the `Nats-Msg-Id` header, or `<stream>/<sequence>` in JetStream when it has none.
    pub id: &'a str,
    /// True when the message is a parked one, replayed from the inbox's state after a
    /// `replay-parked` (then `message.info()` fails: it was not delivered by JetStream now).
    pub replayed: bool,
    inbox: &'a str,
}

impl InboxMessage<'_> {
    /// An id for a command sent because of this message: the same for every delivery of it, so
    /// that an aggregate answers a redelivered message's command from its history.
    pub fn command_id(&self) -> Uuid {
        derive_id(self.inbox, self.id, u32::MAX)
    }
}

/// Turns messages into events (or commands).
#[async_trait]
pub trait InboxHandler: Send + 'static {
    /// Handles one message. An error leaves the message unacknowledged (JetStream delivers it
    /// again after a pause), so handling must not have effects that a retry repeats, other
    /// than through the returned action or idempotent commands.
    ///
    /// What an error does follows the subscriptions' [`FailurePolicy`] (the inbox's
    /// [`InboxConfig::failure_policy`]): [`Unavailable`] (something the handler needs is
    /// unreachable) is retried with a growing pause without limit, never parked; [`Refused`],
    /// an [`EventDecodeError`] or a `serde_json::Error` (the message cannot be read) park the
    /// message at once; any other error is retried `max_retries` times, then the message is
    /// parked. A parked message is kept in the store with its subject, headers and payload,
    /// and acknowledged: `tidings parked <inbox>` lists it, `replay-parked` hands it to the
    /// handler again, `skip-parked` drops it.
    async fn handle(&mut self, message: &InboxMessage<'_>) -> Result<InboxAction, HandlerError>;
}

/// Settings of an inbox.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct InboxConfig {
    /// The inbox's name: its durable consumer and its state in the store are named after it.
    pub name: String,
    /// The JetStream stream it consumes.
    pub stream: String,
    /// Only subjects matching this filter (default: all of the stream).
    pub filter_subject: Option<String>,
    /// Messages fetched at a time (default 64): at most this many held in memory.
    pub batch: usize,
    /// How long JetStream waits for an acknowledgement before it delivers a message again
    /// (default 30 s).
    pub ack_wait: Duration,
    /// How many message ids are remembered to recognise duplicates (default 100 000): a
    /// message delivered again after this many later ones is applied again.
    pub remember: u64,
    /// The most events one message may append (default 64).
    pub max_events: usize,
    /// What a message whose handler fails does (default: 5 retries with a pause from 200 ms
    /// up to 5 s, then it is parked; see [`InboxHandler::handle`]). Under
    /// [`FailurePolicy::Stop`] the inbox stops, `Failed`, and leaves the message unacknowledged.
    pub failure_policy: FailurePolicy,
    /// How often a running inbox refreshes its status record (the consumer's pending count, its
    /// parked messages) and looks for replays asked for by `replay-parked` (default 1 s).
    pub status_interval: Duration,
}

impl InboxConfig {
    /// Defaults for inbox `name` consuming JetStream stream `stream`.
    pub fn new(name: impl Into<String>, stream: impl Into<String>) -> Self {
        InboxConfig {
            name: name.into(),
            stream: stream.into(),
            filter_subject: None,
            batch: 64,
            ack_wait: Duration::from_secs(30),
            remember: 100_000,
            max_events: 64,
            failure_policy: FailurePolicy::retry_then_park(
                5,
                Duration::from_millis(200),
                Duration::from_secs(5),
            ),
            status_interval: Duration::from_secs(1),
        }
    }

    /// Sets what a failing message does.
    #[must_use]
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.failure_policy = policy;
        self
    }

    /// Sets how often the running inbox refreshes its status record (at least 10 ms).
    #[must_use]
    pub fn status_interval(mut self, interval: Duration) -> Self {
        self.status_interval = interval.max(Duration::from_millis(10));
        self
    }

    /// Sets the subject filter.
    #[must_use]
    pub fn filter_subject(mut self, subject: impl Into<String>) -> Self {
        self.filter_subject = Some(subject.into());
        self
    }

    /// Sets the acknowledgement wait.
    #[must_use]
    pub fn ack_wait(mut self, wait: Duration) -> Self {
        self.ack_wait = wait;
        self
    }

    /// Sets how many message ids are remembered.
    #[must_use]
    pub fn remember(mut self, ids: u64) -> Self {
        self.remember = ids.max(1);
        self
    }
}

/// What an inbox did so far (this run).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct InboxStats {
    /// Messages applied (events appended or the handler's action done) and acknowledged.
    pub applied: u64,
    /// Messages recognised as already applied (a redelivery or a republish) and acknowledged.
    pub duplicates: u64,
    /// Handler or store failures (the message is delivered again, or parked).
    pub failures: u64,
    /// Messages parked (kept in the store and acknowledged).
    pub parked: u64,
    /// Parked messages applied by a replay.
    pub replayed: u64,
    /// Why the inbox stopped, if it failed.
    pub failed: Option<String>,
}

/// Why an inbox could not apply a message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InboxError {
    /// The store failed; the message is delivered again.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The handler failed; the message is delivered again.
    #[error("inbox handler failed: {0}")]
    Handler(HandlerError),
    /// The broker failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The handler returned more events than [`InboxConfig::max_events`] (the message is
    /// parked).
    #[error("a message made {0} events, more than the inbox's max_events")]
    TooManyEvents(usize),
}

/// What a failure of a message means for it.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    /// Not the message's fault: retried without limit, never parked.
    Transient,
    /// Retrying cannot help: parked at once.
    Permanent,
    /// Retried by the policy, then parked.
    Retry,
}

fn classify(e: &InboxError) -> Failure {
    match e {
        InboxError::Handler(h) if h.is::<Unavailable>() => Failure::Transient,
        InboxError::Handler(h)
            if h.is::<Refused>() || h.is::<EventDecodeError>() || h.is::<serde_json::Error>() =>
        {
            Failure::Permanent
        }
        InboxError::Handler(_) => Failure::Retry,
        InboxError::TooManyEvents(_) => Failure::Permanent,
        // An append the store refuses as invalid (a bad stream id, a payload too large).
        InboxError::Store(StoreError::InvalidInput(_)) => Failure::Permanent,
        InboxError::Store(_) | InboxError::Broker(_) => Failure::Transient,
    }
}

/// A JetStream durable consumer (explicit acknowledgements) whose messages become events in
/// the store, each message exactly once:
///
/// - A message is acknowledged only after what it caused is durable in the store.
/// - Its id (`Nats-Msg-Id`) is remembered in the inbox's state in the store, committed with
///   [`EventStore::commit_checkpoint`], so a redelivery (a lost acknowledgement, a crash before
///   it) or a republish is recognised and only acknowledged.
/// - An append is planned first (its stream and expected version, in the same state), then made
///   with that expected version and event ids derived from the message id: after a crash between
///   the append and the record that it was made, the next delivery finds the events in the
///   stream instead of appending them again.
pub struct NatsInbox<H: InboxHandler> {
    store: Arc<dyn EventStore>,
    broker: NatsBroker,
    config: InboxConfig,
    handler: H,
    stats: Arc<Mutex<InboxStats>>,
    /// The status record, committed with every commit of the inbox's state.
    status: Arc<Mutex<SubscriptionStatus>>,
    /// Whether `status` was loaded from the store.
    loaded: bool,
    /// Parked messages by subject (the parked "streams").
    parked: BTreeMap<String, u64>,
    /// Failed attempts of messages in hand that count towards the policy's retries (not the
    /// transient ones), by message id; an entry goes when its message is applied or parked.
    attempts: std::collections::HashMap<String, u32>,
    /// The inbox's stored checkpoint, once loaded (its state is committed with it). The inbox
    /// reads no log: each commit moves it to the store's head, so that tools that show a
    /// consumer's lag as head minus checkpoint show none.
    checkpoint: Option<u64>,
}

impl<H: InboxHandler> std::fmt::Debug for NatsInbox<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsInbox")
            .field("config", &self.config)
            .field("checkpoint", &self.checkpoint)
            .finish_non_exhaustive()
    }
}

/// A running inbox: its figures, and a stop.
#[derive(Clone, Debug)]
pub struct InboxHandle {
    stop: watch::Sender<bool>,
    done: watch::Receiver<bool>,
    stats: Arc<Mutex<InboxStats>>,
    status: Arc<Mutex<SubscriptionStatus>>,
}

impl InboxHandle {
    /// What the inbox did so far.
    pub fn stats(&self) -> InboxStats {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Its status, as last committed to the store (or about to be): the record that
    /// `tidings subscriptions` shows from any process, with [`SubscriptionStatus::inbox`] set.
    pub fn status(&self) -> SubscriptionStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Stops it after the message in hand and waits until it has.
    pub async fn stop(&self) -> InboxStats {
        self.stop.send_replace(true);
        let mut done = self.done.clone();
        let _ = done.wait_for(|d| *d).await;
        self.stats()
    }
}

/// A planned append, kept in the inbox's state until it is known to be made.
#[derive(Serialize, Deserialize)]
struct Intent {
    stream: String,
    expected: u64,
    first_event: Uuid,
}

const SEEN: &[u8] = b"seen/";
const INTENT: &[u8] = b"intent/";
const RING: &[u8] = b"ring/";
const RING_NEXT: &[u8] = b"ring-next";

/// A parked message as the inbox keeps it (bincode, under `parked_message_key`).
#[derive(Serialize, Deserialize)]
struct StoredMessage {
    id: String,
    subject: String,
    headers: Vec<(String, Vec<String>)>,
    payload: Vec<u8>,
}

/// Every value of every header of `message`.
fn headers_of(message: &Message) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = message
        .headers
        .iter()
        .flat_map(|h| h.iter())
        .map(|(name, values)| {
            let name: &str = name.as_ref();
            (
                name.to_owned(),
                values.iter().map(|v| v.as_str().to_owned()).collect(),
            )
        })
        .collect();
    out.sort();
    out
}

fn key(prefix: &[u8], id: &str) -> Vec<u8> {
    [prefix, id.as_bytes()].concat()
}

/// The id of event `index` caused by message `id` of inbox `inbox`.
fn derive_id(inbox: &str, id: &str, index: u32) -> Uuid {
    Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!("tidings-inbox/{inbox}/{id}/{index}").as_bytes(),
    )
}

impl<H: InboxHandler> NatsInbox<H> {
    /// An inbox on `broker`, appending to `store` (see [`IntoEventStore`]).
    pub fn new(
        store: impl IntoEventStore,
        broker: &NatsBroker,
        config: InboxConfig,
        handler: H,
    ) -> Self {
        let mut status = crate::subscription::status_cell_default(&config.name);
        status.inbox = Some(InboxProgress::new(config.stream.clone()));
        NatsInbox {
            store: store.into_event_store(),
            broker: broker.clone(),
            config,
            handler,
            stats: Default::default(),
            status: Arc::new(Mutex::new(status)),
            loaded: false,
            parked: BTreeMap::new(),
            attempts: Default::default(),
            checkpoint: None,
        }
    }

    /// Creates (or finds) the durable consumer and runs the inbox as a task on the current
    /// runtime (or actix arbiter) until stopped.
    ///
    /// It first records its status (`Live`, or `Parked` with parked messages) in the store and
    /// applies the replays of parked messages recorded while it was stopped.
    pub async fn start(mut self) -> Result<InboxHandle, InboxError> {
        let (consumer, messages) = self.consumer().await?;
        self.begin().await?;
        let (stop, stop_rx) = watch::channel(false);
        let (done_tx, done) = watch::channel(false);
        let stats = self.stats.clone();
        let status = self.status.clone();
        tokio::task::spawn_local(async move {
            let mut inbox = self;
            if let Err(e) = inbox.run(consumer, messages, stop_rx).await {
                warn!(inbox = %inbox.config.name, error = %e, "inbox failed");
                inbox.stats.lock().unwrap_or_else(|p| p.into_inner()).failed = Some(e.to_string());
                inbox.set_state(SubscriptionState::Failed(e.to_string()));
                if let Err(e) = inbox.commit(Vec::new()).await {
                    warn!(error = %e, "inbox could not record that it failed");
                }
            }
            // The store is let go before the stop returns (another process may open it next).
            drop(inbox);
            let _ = done_tx.send(true);
        });
        Ok(InboxHandle {
            stop,
            done,
            stats,
            status,
        })
    }

    async fn consumer(&self) -> Result<(PullConsumer, pull::Stream), InboxError> {
        let js = self.broker.jetstream();
        let stream = js
            .get_stream(&self.config.stream)
            .await
            .map_err(|e| BrokerError::JetStream(e.to_string()))?;
        let consumer: PullConsumer = stream
            .get_or_create_consumer(
                &self.config.name,
                pull::Config {
                    durable_name: Some(self.config.name.clone()),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: self.config.ack_wait,
                    filter_subject: self.config.filter_subject.clone().unwrap_or_default(),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| BrokerError::JetStream(e.to_string()))?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(self.config.batch.max(1))
            .messages()
            .await
            .map_err(|e| BrokerError::JetStream(e.to_string()))?;
        Ok((consumer, messages))
    }

    /// Records the inbox as running and applies replays recorded while it was stopped.
    async fn begin(&mut self) -> Result<(), InboxError> {
        self.ensure_loaded().await?;
        self.set_state(self.running_state());
        self.commit(Vec::new()).await?;
        self.replay_requested().await?;
        Ok(())
    }

    async fn run(
        &mut self,
        consumer: PullConsumer,
        mut messages: pull::Stream,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), InboxError> {
        let mut tick = tokio::time::interval(self.config.status_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next = tokio::select! {
                _ = stop.wait_for(|s| *s) => {
                    self.set_state(SubscriptionState::Stopped);
                    return self.commit(Vec::new()).await;
                }
                _ = tick.tick() => {
                    if let Err(e) = self.housekeeping(&consumer).await {
                        warn!(inbox = %self.config.name, error = %e, "inbox could not refresh its status");
                    }
                    continue;
                }
                next = messages.next() => next,
            };
            let message = match next {
                None => return Ok(()),
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    // A missed heartbeat or a reconnection: the stream carries on.
                    debug!(error = %e, "inbox consumer");
                    continue;
                }
            };
            match self.apply(&message).await {
                Ok(duplicate) => {
                    if let Err(e) = message.ack().await {
                        warn!(error = %e, "inbox acknowledgement failed: the message comes again and is recognised");
                    }
                    let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
                    if duplicate {
                        stats.duplicates += 1;
                    } else {
                        stats.applied += 1;
                    }
                }
                Err(e) => self.failed(&message, e).await?,
            }
        }
    }

    /// A message could not be applied: retried (never acknowledged before it is applied or
    /// parked), parked, or the inbox stops, by [`classify`] and the failure policy.
    async fn failed(&mut self, message: &Message, e: InboxError) -> Result<(), InboxError> {
        let (sequence, delivered) = match message.info() {
            Ok(info) => (info.stream_sequence, info.delivered.max(1) as u32),
            Err(_) => (0, 1),
        };
        let class = classify(&e);
        self.stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .failures += 1;
        let reason = e.to_string();
        let id = self.message_id(message)?;
        // Transient failures do not count towards the policy's retries.
        let failed_before = match class {
            Failure::Transient => 0,
            _ => {
                let n = self.attempts.entry(id.clone()).or_default();
                *n += 1;
                *n - 1
            }
        };
        let park = match (&self.config.failure_policy, &class) {
            (_, Failure::Transient) => false,
            (FailurePolicy::RetryThenPark { .. }, Failure::Permanent) => true,
            (FailurePolicy::RetryThenPark { max_retries, .. }, _) => failed_before >= *max_retries,
            (FailurePolicy::Stop, _) => {
                let _ = message.ack_with(AckKind::Nak(None)).await;
                return Err(e);
            }
        };
        if park {
            self.attempts.remove(&id);
            warn!(inbox = %self.config.name, sequence, error = %reason, "inbox parks a message");
            match self.park(message, &id, sequence, &reason).await {
                Ok(()) => {
                    self.stats.lock().unwrap_or_else(|p| p.into_inner()).parked += 1;
                    if let Err(e) = message.ack().await {
                        warn!(error = %e, "inbox acknowledgement failed: the message comes again and is recognised");
                    }
                    return Ok(());
                }
                Err(e) => warn!(error = %e, "inbox could not park a message; it comes again"),
            }
        } else {
            warn!(inbox = %self.config.name, sequence, delivered, error = %reason, "inbox could not apply a message; it comes again");
        }
        // Retried: JetStream delivers it again after the pause (its delivery count is the
        // retry count, kept by the server across restarts).
        let policy = match &self.config.failure_policy {
            p @ FailurePolicy::RetryThenPark { .. } => p.clone(),
            _ => FailurePolicy::retry_then_park(
                0,
                Duration::from_millis(200),
                Duration::from_secs(5),
            ),
        };
        let pause = policy.backoff(delivered.saturating_sub(1), sequence);
        {
            let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
            status.retries += 1;
            if class == Failure::Transient {
                status.state = SubscriptionState::Unavailable(reason.clone());
            }
            if let Some(inbox) = status.inbox.as_mut() {
                inbox.last_error = Some(reason);
            }
        }
        if let Err(e) = self.commit(Vec::new()).await {
            debug!(error = %e, "inbox could not record a failure");
        }
        let _ = message.ack_with(AckKind::Nak(Some(pause))).await;
        Ok(())
    }

    fn message_id(&self, message: &Message) -> Result<String, InboxError> {
        match message
            .headers
            .as_ref()
            .and_then(|h| h.get(headers::MSG_ID))
        {
            Some(v) => Ok(v.as_str().to_owned()),
            None => {
                let info = message
                    .info()
                    .map_err(|e| BrokerError::JetStream(e.to_string()))?;
                Ok(format!("{}/{}", info.stream, info.stream_sequence))
            }
        }
    }

    /// Applies one message without acknowledging it: `Ok(true)` when it had been applied
    /// already (or parked). The message must be acknowledged after this returns `Ok`.
    pub async fn apply(&mut self, message: &Message) -> Result<bool, InboxError> {
        self.ensure_loaded().await?;
        let id = self.message_id(message)?;
        let sequence = message.info().map(|i| i.stream_sequence).ok();
        let name = self.config.name.clone();
        if self
            .store
            .load_state(&name, &key(SEEN, &id))
            .await?
            .is_some()
        {
            self.progress(sequence, |i| i.duplicates += 1);
            return Ok(true);
        }
        if self.made_before(&id).await? {
            self.progress(sequence, |i| i.duplicates += 1);
            let writes = self.remember_writes(&id).await?;
            self.commit(writes).await?;
            return Ok(true);
        }
        self.make(message, &id, false).await?;
        self.attempts.remove(&id);
        self.progress(sequence, |_| {});
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .events_handled += 1;
        let writes = self.remember_writes(&id).await?;
        self.commit(writes).await?;
        Ok(false)
    }

    /// Whether message `id`'s append was planned before a crash and made: the stream holds
    /// its first event.
    async fn made_before(&self, id: &str) -> Result<bool, InboxError> {
        let Some(bytes) = self
            .store
            .load_state(&self.config.name, &key(INTENT, id))
            .await?
        else {
            return Ok(false);
        };
        let Ok(intent) = serde_json::from_slice::<Intent>(&bytes) else {
            return Ok(false);
        };
        let at = self
            .store
            .read_stream(&intent.stream, intent.expected + 1, 1)
            .await?;
        Ok(at.first().is_some_and(|e| e.event_id == intent.first_event))
    }

    /// Runs the handler on `message` and makes its append (planned first), without recording
    /// the message as applied.
    async fn make(
        &mut self,
        message: &Message,
        id: &str,
        replayed: bool,
    ) -> Result<(), InboxError> {
        let name = self.config.name.clone();
        let view = InboxMessage {
            message,
            id,
            replayed,
            inbox: &name,
        };
        let action = self
            .handler
            .handle(&view)
            .await
            .map_err(InboxError::Handler)?;
        let InboxAction::Append { stream, events } = action else {
            return Ok(());
        };
        if events.len() > self.config.max_events {
            return Err(InboxError::TooManyEvents(events.len()));
        }
        let events: Vec<EventData> = events
            .into_iter()
            .enumerate()
            .map(|(i, e)| e.with_event_id(derive_id(&name, id, i as u32)))
            .collect();
        let Some(first) = events.first().map(|e| e.event_id) else {
            return Ok(());
        };
        let store = self.store.clone();
        // A concurrent writer may move the stream between the plan and the append: plan
        // again (bounded; the message comes again if it keeps happening).
        let mut attempts = 0;
        loop {
            let expected = store.stream_version(&stream).await?;
            let intent = Intent {
                stream: stream.clone(),
                expected,
                first_event: first,
            };
            let value = serde_json::to_vec(&intent).expect("an intent encodes");
            self.commit(vec![StateWrite {
                key: key(INTENT, id),
                value: Some(value),
            }])
            .await?;
            match store
                .append(&stream, ExpectedVersion::Exact(expected), events.clone())
                .await
            {
                Ok(_) => return Ok(()),
                Err(StoreError::WrongExpectedVersion { .. }) if attempts < 10 => attempts += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Parks `message`: keeps it (subject, headers, payload, why) in the inbox's state and
    /// records its id as handled, in one commit.
    async fn park(
        &mut self,
        message: &Message,
        id: &str,
        sequence: u64,
        reason: &str,
    ) -> Result<(), InboxError> {
        let subject = message.subject.as_str().to_owned();
        let event_type = message
            .headers
            .as_ref()
            .and_then(|h| h.get(headers::EVENT_TYPE))
            .map_or_else(|| "message".to_owned(), |v| v.as_str().to_owned());
        let entry = ParkedEvent {
            position: sequence,
            stream_id: subject.clone(),
            event_type,
            reason: reason.to_owned(),
            parked_at: SystemTime::now(),
        };
        let stored = StoredMessage {
            id: id.to_owned(),
            subject: subject.clone(),
            headers: headers_of(message),
            payload: message.payload.to_vec(),
        };
        let mut writes = vec![
            StateWrite {
                key: parked_key(sequence),
                value: Some(encode_parked(&entry)),
            },
            StateWrite {
                key: parked_message_key(sequence),
                value: Some(bincode::serialize(&stored).expect("a parked message encodes")),
            },
        ];
        writes.extend(self.remember_writes(id).await?);
        *self.parked.entry(subject).or_default() += 1;
        self.count_parked();
        self.progress(Some(sequence), |_| {});
        self.commit(writes).await
    }

    /// Applies the replays of parked messages that `replay-parked` recorded: each requested
    /// subject's parked messages in sequence order, until one fails again (it stays parked
    /// with the reason updated). A transient failure leaves the request for the next look.
    async fn replay_requested(&mut self) -> Result<(), InboxError> {
        let name = self.config.name.clone();
        let requests = replay_requests_in_store(&*self.store, &name).await?;
        if requests.is_empty() {
            return Ok(());
        }
        let parked = parked_in_store(&*self.store, &name).await?;
        for subject in requests {
            let mut done = vec![StateWrite {
                key: replay_key(&subject),
                value: None,
            }];
            for entry in parked.iter().filter(|p| p.stream_id == subject) {
                let message_key = parked_message_key(entry.position);
                let stored = self
                    .store
                    .load_state(&name, &message_key)
                    .await?
                    .and_then(|b| bincode::deserialize::<StoredMessage>(&b).ok());
                let Some(stored) = stored else {
                    warn!(inbox = %name, sequence = entry.position, "a parked message is missing from the inbox's state; it stays parked");
                    break;
                };
                let message = self.rebuild(&stored);
                let outcome = if self.made_before(&stored.id).await? {
                    Ok(())
                } else {
                    self.make(&message, &stored.id, true).await
                };
                match outcome {
                    Ok(()) => {
                        let mut writes = std::mem::take(&mut done);
                        writes.extend([
                            StateWrite {
                                key: parked_key(entry.position),
                                value: None,
                            },
                            StateWrite {
                                key: message_key,
                                value: None,
                            },
                            StateWrite {
                                key: key(INTENT, &stored.id),
                                value: None,
                            },
                        ]);
                        if let Some(n) = self.parked.get_mut(&subject) {
                            *n = n.saturating_sub(1);
                            if *n == 0 {
                                self.parked.remove(&subject);
                            }
                        }
                        self.count_parked();
                        self.status
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .events_handled += 1;
                        self.commit(writes).await?;
                        self.stats
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .replayed += 1;
                    }
                    Err(e) if classify(&e) == Failure::Transient => {
                        warn!(inbox = %name, error = %e, "inbox replay waits: it is tried again");
                        return Ok(());
                    }
                    Err(e) => {
                        warn!(inbox = %name, sequence = entry.position, error = %e, "a replayed message failed again; it stays parked");
                        let mut again = entry.clone();
                        again.reason = e.to_string();
                        done.push(StateWrite {
                            key: parked_key(entry.position),
                            value: Some(encode_parked(&again)),
                        });
                        break;
                    }
                }
            }
            if !done.is_empty() {
                self.commit(done).await?;
            }
        }
        Ok(())
    }

    /// A parked message as JetStream delivered it (without its delivery information).
    fn rebuild(&self, stored: &StoredMessage) -> Message {
        let mut headers = HeaderMap::new();
        for (name, values) in &stored.headers {
            for value in values {
                headers.append(name.as_str(), value.as_str());
            }
        }
        Message {
            message: async_nats::Message {
                subject: stored.subject.as_str().into(),
                reply: None,
                payload: stored.payload.clone().into(),
                headers: Some(headers),
                status: None,
                description: None,
                length: stored.payload.len(),
            },
            context: self.broker.jetstream().clone(),
        }
    }

    /// Between messages: replays that were asked for; the parked count (the CLI may have
    /// skipped some) and the consumer's pending count, recorded when they changed.
    async fn housekeeping(&mut self, consumer: &PullConsumer) -> Result<(), InboxError> {
        self.replay_requested().await?;
        let name = self.config.name.clone();
        let mut parked: BTreeMap<String, u64> = BTreeMap::new();
        for p in parked_in_store(&*self.store, &name).await? {
            *parked.entry(p.stream_id).or_default() += 1;
        }
        let pending = match consumer.get_info().await {
            Ok(info) => Some(info.num_pending + info.num_ack_pending as u64),
            Err(e) => {
                debug!(error = %e, "inbox consumer info");
                None
            }
        };
        let changed = {
            let status = self.status.lock().unwrap_or_else(|p| p.into_inner());
            let known = status.inbox.as_ref().and_then(|i| i.pending);
            parked != self.parked || (pending.is_some() && pending != known)
        };
        if changed {
            self.parked = parked;
            self.count_parked();
            if let Some(pending) = pending {
                let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(inbox) = status.inbox.as_mut() {
                    inbox.pending = Some(pending);
                }
            }
            self.commit(Vec::new()).await?;
        }
        Ok(())
    }

    /// Loads the totals of the stored status record and the parked messages, once.
    async fn ensure_loaded(&mut self) -> Result<(), InboxError> {
        if self.loaded {
            return Ok(());
        }
        let name = self.config.name.clone();
        let stored = match subscription_status_from_store(&*self.store, &name).await {
            Ok(stored) => stored,
            Err(e @ StoreError::Codec { .. }) => {
                let e = crate::store::error_chain(&e);
                warn!(inbox = %name, error = %e, "the inbox's status record does not decode; it starts a new one");
                None
            }
            Err(e) => return Err(e.into()),
        };
        let mut parked: BTreeMap<String, u64> = BTreeMap::new();
        for p in parked_in_store(&*self.store, &name).await? {
            *parked.entry(p.stream_id).or_default() += 1;
        }
        self.parked = parked;
        {
            let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(stored) = stored {
                status.events_handled = stored.events_handled;
                status.retries = stored.retries;
                if let (Some(now), Some(before)) = (status.inbox.as_mut(), stored.inbox) {
                    now.last_sequence = before.last_sequence;
                    now.duplicates = before.duplicates;
                }
            }
        }
        self.count_parked();
        self.loaded = true;
        Ok(())
    }

    fn count_parked(&mut self) {
        let (parked, streams) = (self.parked.values().sum(), self.parked.len() as u64);
        let state = self.running_state_with(parked);
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        status.parked = parked;
        status.parked_streams = streams;
        if matches!(
            status.state,
            SubscriptionState::Live | SubscriptionState::Parked
        ) {
            status.state = state;
        }
    }

    fn running_state(&self) -> SubscriptionState {
        self.running_state_with(self.parked.values().sum())
    }

    fn running_state_with(&self, parked: u64) -> SubscriptionState {
        if parked > 0 {
            SubscriptionState::Parked
        } else {
            SubscriptionState::Live
        }
    }

    fn set_state(&mut self, state: SubscriptionState) {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).state = state;
    }

    /// Notes that the message at `sequence` was dealt with (and the state is running again).
    fn progress(&mut self, sequence: Option<u64>, f: impl FnOnce(&mut InboxProgress)) {
        let state = self.running_state();
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if matches!(status.state, SubscriptionState::Unavailable(_)) {
            status.state = state;
        }
        if let Some(inbox) = status.inbox.as_mut() {
            if let Some(sequence) = sequence {
                inbox.last_sequence = inbox.last_sequence.max(sequence);
            }
            inbox.last_error = None;
            f(inbox);
        }
    }

    /// The writes that record `id` as applied (and forget its plan and the id `remember`
    /// places back).
    async fn remember_writes(&mut self, id: &str) -> Result<Vec<StateWrite>, InboxError> {
        let name = &self.config.name;
        let next: u64 = match self.store.load_state(name, RING_NEXT).await? {
            Some(b) => serde_json::from_slice(&b).unwrap_or(0),
            None => 0,
        };
        let slot = format!("{:020}", next % self.config.remember).into_bytes();
        let ring_key = [RING, &slot].concat();
        let mut writes = Vec::with_capacity(5);
        if let Some(old) = self.store.load_state(name, &ring_key).await? {
            let old = String::from_utf8_lossy(&old).into_owned();
            writes.push(StateWrite {
                key: key(SEEN, &old),
                value: None,
            });
        }
        writes.push(StateWrite {
            key: ring_key,
            value: Some(id.as_bytes().to_vec()),
        });
        writes.push(StateWrite {
            key: key(SEEN, id),
            value: Some(slot),
        });
        writes.push(StateWrite {
            key: key(INTENT, id),
            value: None,
        });
        writes.push(StateWrite {
            key: RING_NEXT.to_vec(),
            value: Some(serde_json::to_vec(&(next + 1)).expect("a number encodes")),
        });
        Ok(writes)
    }

    /// Commits `writes` with the inbox's status record.
    async fn commit(&mut self, mut writes: Vec<StateWrite>) -> Result<(), InboxError> {
        self.ensure_loaded().await?;
        let name = &self.config.name;
        let expected = match self.checkpoint {
            Some(c) => c,
            None => match self.store.load_checkpoint(name).await? {
                Some(c) => c,
                None => {
                    self.store
                        .commit_checkpoint(name, None, 0, Vec::new())
                        .await?;
                    0
                }
            },
        };
        let to = self.store.head().max(expected);
        let status = {
            let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
            status.checkpoint = to;
            status.handled_up_to = to;
            status.head = to;
            status.clone()
        };
        writes.push(status_write(&status));
        match self
            .store
            .commit_checkpoint(name, Some(expected), to, writes)
            .await
        {
            Ok(()) => {
                self.checkpoint = Some(to);
                Ok(())
            }
            Err(e) => {
                // Another process (the CLI skipping a parked message) may have committed at
                // the same checkpoint, or moved it: read it again next time.
                self.checkpoint = None;
                Err(e.into())
            }
        }
    }
}
