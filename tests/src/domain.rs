//! A small shared example domain for integration tests: orders and payments.

use serde::{Deserialize, Serialize};
use tidings::DomainEvent;

/// Events of the order stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, DomainEvent)]
pub enum OrderEvent {
    /// An order was placed.
    OrderPlaced {
        /// Its value in cents.
        cents: u64,
    },
    /// An order was cancelled.
    OrderCancelled,
}

/// Events of the payment stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, DomainEvent)]
pub enum PaymentEvent {
    /// A payment went through.
    PaymentVerified {
        /// The amount in cents.
        cents: u64,
    },
}

/// An event type no test handler lists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, DomainEvent)]
pub struct Audited {
    /// What was audited.
    pub note: String,
}
