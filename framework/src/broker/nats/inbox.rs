//! The inbox: a JetStream durable consumer whose messages become events appended in tidings,
//! each exactly once.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy};
use async_nats::jetstream::{AckKind, Message};
use async_trait::async_trait;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{debug, warn};
use uuid::Uuid;

use super::{BrokerError, NatsBroker};
use crate::broker::headers;
use crate::store::{EventData, EventStore, ExpectedVersion, StateWrite, StoreError};
use crate::subscription::HandlerError;

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
        }
    }

    /// Sets the subject filter.
    pub fn filter_subject(mut self, subject: impl Into<String>) -> Self {
        self.filter_subject = Some(subject.into());
        self
    }

    /// Sets the acknowledgement wait.
    pub fn ack_wait(mut self, wait: Duration) -> Self {
        self.ack_wait = wait;
        self
    }

    /// Sets how many message ids are remembered.
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
    /// Handler or store failures (the message is delivered again).
    pub failures: u64,
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
    /// The handler returned more events than [`InboxConfig::max_events`].
    #[error("a message made {0} events, more than the inbox's max_events")]
    TooManyEvents(usize),
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
    /// The inbox's stored checkpoint, once loaded (its state is committed with it). The inbox
    /// reads no log: each commit moves it to the store's head, so that tools that show a
    /// consumer's lag as head minus checkpoint show none.
    checkpoint: Option<u64>,
}

/// A running inbox: its figures, and a stop.
#[derive(Clone, Debug)]
pub struct InboxHandle {
    stop: watch::Sender<bool>,
    done: watch::Receiver<bool>,
    stats: Arc<Mutex<InboxStats>>,
}

impl InboxHandle {
    /// What the inbox did so far.
    pub fn stats(&self) -> InboxStats {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
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
    /// An inbox on `broker`, appending to `store`.
    pub fn new(
        store: Arc<dyn EventStore>,
        broker: &NatsBroker,
        config: InboxConfig,
        handler: H,
    ) -> Self {
        NatsInbox {
            store,
            broker: broker.clone(),
            config,
            handler,
            stats: Default::default(),
            checkpoint: None,
        }
    }

    /// Creates (or finds) the durable consumer and runs the inbox as a task on the current
    /// runtime (or actix arbiter) until stopped.
    pub async fn start(self) -> Result<InboxHandle, InboxError> {
        let consumer = self.consumer().await?;
        let (stop, stop_rx) = watch::channel(false);
        let (done_tx, done) = watch::channel(false);
        let stats = self.stats.clone();
        tokio::task::spawn_local(async move {
            let mut inbox = self;
            if let Err(e) = inbox.run(consumer, stop_rx).await {
                warn!(inbox = %inbox.config.name, error = %e, "inbox failed");
                inbox.stats.lock().unwrap_or_else(|p| p.into_inner()).failed = Some(e.to_string());
            }
            let _ = done_tx.send(true);
        });
        Ok(InboxHandle { stop, done, stats })
    }

    async fn consumer(&self) -> Result<pull::Stream, InboxError> {
        let js = self.broker.jetstream();
        let stream = js
            .get_stream(&self.config.stream)
            .await
            .map_err(|e| BrokerError::JetStream(e.to_string()))?;
        let consumer: async_nats::jetstream::consumer::PullConsumer = stream
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
        consumer
            .stream()
            .max_messages_per_batch(self.config.batch.max(1))
            .messages()
            .await
            .map_err(|e| BrokerError::JetStream(e.to_string()).into())
    }

    async fn run(
        &mut self,
        mut messages: pull::Stream,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), InboxError> {
        loop {
            let next = tokio::select! {
                _ = stop.wait_for(|s| *s) => return Ok(()),
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
                Err(e) => {
                    warn!(error = %e, "inbox could not apply a message; it comes again");
                    self.stats
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .failures += 1;
                    let _ = message
                        .ack_with(AckKind::Nak(Some(Duration::from_millis(500))))
                        .await;
                }
            }
        }
    }

    /// Applies one message without acknowledging it: `Ok(true)` when it had been applied
    /// already. The message must be acknowledged after this returns `Ok`.
    pub async fn apply(&mut self, message: &Message) -> Result<bool, InboxError> {
        let id = match message
            .headers
            .as_ref()
            .and_then(|h| h.get(headers::MSG_ID))
        {
            Some(v) => v.as_str().to_owned(),
            None => {
                let info = message
                    .info()
                    .map_err(|e| BrokerError::JetStream(e.to_string()))?;
                format!("{}/{}", info.stream, info.stream_sequence)
            }
        };
        let name = self.config.name.clone();
        let store = self.store.clone();
        if store.load_state(&name, &key(SEEN, &id)).await?.is_some() {
            return Ok(true);
        }
        // Planned before a crash: made already if the stream holds its first event.
        if let Some(bytes) = store.load_state(&name, &key(INTENT, &id)).await? {
            if let Ok(intent) = serde_json::from_slice::<Intent>(&bytes) {
                let at = store
                    .read_stream(&intent.stream, intent.expected + 1, 1)
                    .await?;
                if at.first().is_some_and(|e| e.event_id == intent.first_event) {
                    self.remember(&id).await?;
                    return Ok(true);
                }
            }
        }
        let view = InboxMessage {
            message,
            id: &id,
            inbox: &name,
        };
        let action = self
            .handler
            .handle(&view)
            .await
            .map_err(InboxError::Handler)?;
        if let InboxAction::Append { stream, events } = action {
            if events.len() > self.config.max_events {
                return Err(InboxError::TooManyEvents(events.len()));
            }
            let events: Vec<EventData> = events
                .into_iter()
                .enumerate()
                .map(|(i, e)| e.with_event_id(derive_id(&name, &id, i as u32)))
                .collect();
            let Some(first) = events.first().map(|e| e.event_id) else {
                self.remember(&id).await?;
                return Ok(false);
            };
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
                    key: key(INTENT, &id),
                    value: Some(value),
                }])
                .await?;
                match store
                    .append(&stream, ExpectedVersion::Exact(expected), events.clone())
                    .await
                {
                    Ok(_) => break,
                    Err(StoreError::WrongExpectedVersion { .. }) if attempts < 10 => attempts += 1,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        self.remember(&id).await?;
        Ok(false)
    }

    /// Records `id` as applied (and forgets its plan and the id `remember` places back).
    async fn remember(&mut self, id: &str) -> Result<(), InboxError> {
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
        self.commit(writes).await
    }

    async fn commit(&mut self, writes: Vec<StateWrite>) -> Result<(), InboxError> {
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
        self.store
            .commit_checkpoint(name, Some(expected), to, writes)
            .await?;
        self.checkpoint = Some(to);
        Ok(())
    }
}
