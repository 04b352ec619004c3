//! The aggregate of W4 and W5, written once for tidings and once for cqrs-es with the same logic.

use std::fmt;
use std::sync::OnceLock;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tidings::DomainEvent;

/// Nanoseconds since the first call in this process (a clock that events can carry).
pub fn now_nanos() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// A note that makes each event's JSON payload ~200 bytes.
pub fn note() -> String {
    "n".repeat(150)
}

/// Add `n` to a counter; `sent_nanos` is carried into the event (W4 measures end to end).
#[derive(Clone, Debug)]
pub struct Add {
    /// How much.
    pub n: u64,
    /// When the command was sent ([`now_nanos`]).
    pub sent_nanos: u64,
    /// Payload filler.
    pub note: String,
}

/// The one event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, DomainEvent)]
pub enum CounterEvent {
    /// A counter went up.
    Added {
        /// How much.
        n: u64,
        /// When the command was sent.
        sent_nanos: u64,
        /// Payload filler.
        note: String,
    },
}

/// Refuses to add zero.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct ZeroAdd;

impl fmt::Display for ZeroAdd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("cannot add zero")
    }
}

impl std::error::Error for ZeroAdd {}

/// The counter's state, for tidings.
#[derive(Default, Serialize, Deserialize)]
pub struct Counter {
    total: u64,
    adds: u64,
}

fn decide(command: Add) -> Result<CounterEvent, ZeroAdd> {
    if command.n == 0 {
        return Err(ZeroAdd);
    }
    Ok(CounterEvent::Added {
        n: command.n,
        sent_nanos: command.sent_nanos,
        note: command.note,
    })
}

impl tidings::aggregate::Aggregate for Counter {
    const CATEGORY: &'static str = "counter";
    type Command = Add;
    type Event = CounterEvent;
    type Error = ZeroAdd;

    fn handle(&self, command: Add) -> Result<Vec<CounterEvent>, ZeroAdd> {
        decide(command).map(|e| vec![e])
    }

    fn apply(&mut self, event: &CounterEvent) {
        let CounterEvent::Added { n, .. } = event;
        self.total += n;
        self.adds += 1;
    }
}

/// The same counter for cqrs-es.
#[derive(Default, Serialize, Deserialize)]
pub struct CqCounter {
    total: u64,
    adds: u64,
}

impl cqrs_es::DomainEvent for CounterEvent {
    fn event_type(&self) -> String {
        "Added".into()
    }

    fn event_version(&self) -> String {
        "1".into()
    }
}

impl cqrs_es::Aggregate for CqCounter {
    const TYPE: &'static str = "counter";
    type Command = Add;
    type Event = CounterEvent;
    type Error = ZeroAdd;
    type Services = ();

    async fn handle(
        &mut self,
        command: Add,
        _services: &(),
        sink: &cqrs_es::event_sink::EventSink<Self>,
    ) -> Result<(), ZeroAdd> {
        sink.write(decide(command)?, self).await;
        Ok(())
    }

    fn apply(&mut self, event: CounterEvent) {
        let CounterEvent::Added { n, .. } = event;
        self.total += n;
        self.adds += 1;
    }
}
