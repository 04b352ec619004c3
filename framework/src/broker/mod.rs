//! Brokers: publish the log's events to a message broker exactly once and in order, and take
//! messages from one in (feature `nats`, NATS JetStream). See `docs/brokers.md`.
//!
//! The relay is a durable subscription (it has a checkpoint, a status, parked events, and the
//! CLI shows it like any other); the inbox is a broker consumer whose de-duplication record is
//! a consumer state in the store, committed with its checkpoint.

pub mod headers;
pub mod nats;
mod subject;

pub use self::subject::{SubjectTemplate, SubjectTemplateError};
