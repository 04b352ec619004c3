//! A small shared example domain for integration tests: orders and payments.

use serde::{Deserialize, Serialize};
use tidings::store::EventData;
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

/// Event number `i` of a mixed log: an order, a payment, an audit (which no test handler lists)
/// or a cancelled order, in turn.
pub fn mixed_event(i: u64) -> EventData {
    let data = match i % 4 {
        0 => OrderEvent::OrderPlaced { cents: i }.to_event_data(),
        1 => PaymentEvent::PaymentVerified { cents: i }.to_event_data(),
        2 => Audited {
            note: format!("n{i}"),
        }
        .to_event_data(),
        _ => OrderEvent::OrderCancelled.to_event_data(),
    };
    data.expect("test events encode")
}
