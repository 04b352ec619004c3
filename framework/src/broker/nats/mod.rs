//! NATS JetStream (feature `nats`): a connection ([`NatsBroker`]), the outbox relay
//! ([`NatsRelay`]) and the inbox ([`NatsInbox`]).

mod connection;
mod inbox;
mod relay;

pub use self::connection::{BrokerError, NatsBroker};
pub use self::inbox::{
    InboxAction, InboxConfig, InboxError, InboxHandle, InboxHandler, InboxMessage, InboxStats,
    NatsInbox,
};
pub use self::relay::{
    NatsPublisher, NatsRelay, OnPublished, PublishFailure, Published, PublishedFn, RelayConfig,
    RelaySpec,
};

/// The async-nats client crate, so that applications use the same version (for example to
/// create or inspect JetStream streams).
pub use async_nats;
