//! The payment aggregate: the money side of one order.
//!
//! Stream `payment-<order id>`. The gateway is asked by the payment service (I/O stays out of
//! the aggregate); the aggregate records the gateway's answer once: a payment is verified or
//! declined at most once, and refunded at most once, only after it was verified.

use serde::{Deserialize, Serialize};
use tidings::prelude::*;

// ---- commands ----

/// The gateway's answer to a charge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChargeOutcome {
    /// The money was taken; the gateway's reference.
    Approved {
        /// The gateway's reference for the charge.
        reference: String,
    },
    /// The gateway refused.
    Declined {
        /// The gateway's reason.
        reason: String,
    },
}

/// What can be asked of a payment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PaymentCommand {
    /// Record the gateway's answer to the charge of an order.
    RecordCharge {
        /// The order paid for.
        order_id: String,
        /// How much, in cents.
        amount_cents: u64,
        /// What the gateway said.
        outcome: ChargeOutcome,
    },
    /// Record that the charge was given back.
    RecordRefund,
}

// ---- events ----

/// What happened to a payment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, DomainEvent)]
pub enum PaymentEvent {
    /// The customer was charged.
    PaymentVerified {
        /// The order paid for.
        order_id: String,
        /// How much, in cents.
        amount_cents: u64,
        /// The gateway's reference.
        reference: String,
    },
    /// The gateway refused the charge; nothing was taken.
    PaymentDeclined {
        /// The order.
        order_id: String,
        /// How much was asked, in cents.
        amount_cents: u64,
        /// The gateway's reason.
        reason: String,
    },
    /// The charge was given back (the order was cancelled after payment).
    PaymentRefunded {
        /// The order.
        order_id: String,
        /// How much, in cents.
        amount_cents: u64,
    },
}

impl PaymentEvent {
    /// The order the event is about.
    pub fn order_id(&self) -> &str {
        match self {
            PaymentEvent::PaymentVerified { order_id, .. }
            | PaymentEvent::PaymentDeclined { order_id, .. }
            | PaymentEvent::PaymentRefunded { order_id, .. } => order_id,
        }
    }
}

/// Why a payment refuses a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum PaymentError {
    /// The order's charge was already recorded: an order is charged at most once.
    #[error("the charge of this order is already recorded")]
    AlreadyCharged,
    /// A charge of 0 cents.
    #[error("a charge must be of 1 cent or more")]
    ZeroAmount,
    /// A refund of a payment that was never verified.
    #[error("nothing to refund: the payment was not verified")]
    NothingToRefund,
}

// ---- aggregate ----

/// Where a payment is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PaymentStatus {
    /// No charge recorded.
    #[default]
    New,
    /// Charged.
    Verified,
    /// Declined (final).
    Declined,
    /// Charged, then refunded (final).
    Refunded,
}

/// The payment's state.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Payment {
    /// The order.
    pub order_id: String,
    /// The amount charged (or asked), in cents.
    pub amount_cents: u64,
    /// Where it is.
    pub status: PaymentStatus,
}

impl Aggregate for Payment {
    const CATEGORY: &'static str = "payment";
    type Command = PaymentCommand;
    type Event = PaymentEvent;
    type Error = PaymentError;

    fn handle(&self, command: PaymentCommand) -> Result<Vec<PaymentEvent>, PaymentError> {
        match command {
            PaymentCommand::RecordCharge { .. } if self.status != PaymentStatus::New => {
                Err(PaymentError::AlreadyCharged)
            }
            PaymentCommand::RecordCharge {
                amount_cents: 0, ..
            } => Err(PaymentError::ZeroAmount),
            PaymentCommand::RecordCharge {
                order_id,
                amount_cents,
                outcome,
            } => Ok(vec![match outcome {
                ChargeOutcome::Approved { reference } => PaymentEvent::PaymentVerified {
                    order_id,
                    amount_cents,
                    reference,
                },
                ChargeOutcome::Declined { reason } => PaymentEvent::PaymentDeclined {
                    order_id,
                    amount_cents,
                    reason,
                },
            }]),
            PaymentCommand::RecordRefund => match self.status {
                PaymentStatus::Verified => Ok(vec![PaymentEvent::PaymentRefunded {
                    order_id: self.order_id.clone(),
                    amount_cents: self.amount_cents,
                }]),
                PaymentStatus::Refunded => Ok(vec![]),
                PaymentStatus::New | PaymentStatus::Declined => Err(PaymentError::NothingToRefund),
            },
        }
    }

    fn apply(&mut self, event: &PaymentEvent) {
        match event {
            PaymentEvent::PaymentVerified {
                order_id,
                amount_cents,
                ..
            } => {
                self.order_id = order_id.clone();
                self.amount_cents = *amount_cents;
                self.status = PaymentStatus::Verified;
            }
            PaymentEvent::PaymentDeclined {
                order_id,
                amount_cents,
                ..
            } => {
                self.order_id = order_id.clone();
                self.amount_cents = *amount_cents;
                self.status = PaymentStatus::Declined;
            }
            PaymentEvent::PaymentRefunded { .. } => self.status = PaymentStatus::Refunded,
        }
    }
}

#[cfg(test)]
mod tests {
    use tidings::aggregate::testing::AggregateTest;

    use super::*;

    fn charge(outcome: ChargeOutcome) -> PaymentCommand {
        PaymentCommand::RecordCharge {
            order_id: "o-1".into(),
            amount_cents: 500,
            outcome,
        }
    }

    fn verified() -> PaymentEvent {
        PaymentEvent::PaymentVerified {
            order_id: "o-1".into(),
            amount_cents: 500,
            reference: "ch-1".into(),
        }
    }

    #[test]
    fn a_payment_is_charged_once_and_refunded_once() {
        AggregateTest::<Payment>::given_no_previous_events()
            .when(charge(ChargeOutcome::Approved {
                reference: "ch-1".into(),
            }))
            .then_expect_events(vec![verified()]);
        AggregateTest::<Payment>::given([verified()])
            .when(charge(ChargeOutcome::Approved {
                reference: "ch-2".into(),
            }))
            .then_expect_error(PaymentError::AlreadyCharged);
        let refunded = PaymentEvent::PaymentRefunded {
            order_id: "o-1".into(),
            amount_cents: 500,
        };
        AggregateTest::<Payment>::given([verified()])
            .when(PaymentCommand::RecordRefund)
            .then_expect_events(vec![refunded.clone()]);
        AggregateTest::<Payment>::given([verified(), refunded])
            .when(PaymentCommand::RecordRefund)
            .then_expect_events(vec![]);
    }

    #[test]
    fn a_declined_payment_has_nothing_to_refund() {
        let declined = PaymentEvent::PaymentDeclined {
            order_id: "o-1".into(),
            amount_cents: 500,
            reason: "card limit".into(),
        };
        AggregateTest::<Payment>::given([declined])
            .when(PaymentCommand::RecordRefund)
            .then_expect_error(PaymentError::NothingToRefund);
        AggregateTest::<Payment>::given_no_previous_events()
            .when(PaymentCommand::RecordCharge {
                order_id: "o-1".into(),
                amount_cents: 0,
                outcome: ChargeOutcome::Declined { reason: "x".into() },
            })
            .then_expect_error(PaymentError::ZeroAmount);
    }
}
