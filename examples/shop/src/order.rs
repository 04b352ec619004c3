//! The order aggregate: a customer's order, from placed to confirmed or cancelled.
//!
//! Stream `order-<order id>`. An order is placed once, then reaches exactly one final state:
//! confirmed (paid and reserved) or cancelled (payment declined, or out of stock).

use serde::{Deserialize, Serialize};
use tidings::prelude::*;

use crate::catalog::{normalize, total, Line};

// ---- commands ----

/// What can be asked of an order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OrderCommand {
    /// A customer places the order.
    Place {
        /// The order's id (the aggregate id; recorded in the events for readers).
        order_id: String,
        /// Who orders.
        customer: String,
        /// What, at catalog prices.
        items: Vec<Line>,
    },
    /// Paid and reserved: the order goes out.
    Confirm,
    /// The order cannot go out.
    Cancel {
        /// Why.
        reason: CancelReason,
    },
}

// ---- events ----

/// Why an order was cancelled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CancelReason {
    /// The payment gateway declined the charge (its reason).
    PaymentDeclined(String),
    /// The warehouse could not reserve these lines (the quantities missing).
    OutOfStock(Vec<Line>),
}

impl std::fmt::Display for CancelReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CancelReason::PaymentDeclined(why) => write!(f, "payment declined ({why})"),
            CancelReason::OutOfStock(missing) => {
                let missing: Vec<String> = missing.iter().map(Line::to_string).collect();
                write!(f, "out of stock (short: {})", missing.join(" "))
            }
        }
    }
}

/// What happened to an order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, DomainEvent)]
pub enum OrderEvent {
    /// The order was placed.
    OrderPlaced {
        /// The order's id.
        order_id: String,
        /// Who ordered.
        customer: String,
        /// What (normalized: one line per SKU, sorted).
        items: Vec<Line>,
        /// What it costs, in cents.
        total_cents: u64,
    },
    /// The order was paid and its items reserved.
    OrderConfirmed {
        /// The order's id.
        order_id: String,
    },
    /// The order was cancelled.
    OrderCancelled {
        /// The order's id.
        order_id: String,
        /// Why.
        reason: CancelReason,
    },
}

impl OrderEvent {
    /// The order the event is about.
    pub fn order_id(&self) -> &str {
        match self {
            OrderEvent::OrderPlaced { order_id, .. }
            | OrderEvent::OrderConfirmed { order_id }
            | OrderEvent::OrderCancelled { order_id, .. } => order_id,
        }
    }
}

/// Why an order refuses a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum OrderError {
    /// `Place` on an order that exists.
    #[error("order already placed")]
    AlreadyPlaced,
    /// `Confirm` or `Cancel` on an order never placed.
    #[error("no such order")]
    NotPlaced,
    /// An order with no lines, or a line of quantity 0.
    #[error("an order needs at least one line, each of quantity 1 or more")]
    NoItems,
    /// A SKU the shop does not sell (or a total that overflows).
    #[error("the order has an unknown sku or an impossible total")]
    UnknownSku,
    /// An empty customer name.
    #[error("the customer name is empty")]
    NoCustomer,
    /// The order already reached the other final state.
    #[error("the order is already {0:?}")]
    AlreadyFinal(OrderStatus),
}

// ---- aggregate ----

/// Where an order is in its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderStatus {
    /// Not placed (no events yet).
    #[default]
    New,
    /// Placed, waiting for payment and stock.
    Placed,
    /// Final: paid and reserved.
    Confirmed,
    /// Final: cancelled.
    Cancelled,
}

/// The order's state, rebuilt from its events.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Order {
    /// Its id (set by `OrderPlaced`).
    pub order_id: String,
    /// Who ordered.
    pub customer: String,
    /// What.
    pub items: Vec<Line>,
    /// What it costs, in cents.
    pub total_cents: u64,
    /// Where it is.
    pub status: OrderStatus,
}

impl Aggregate for Order {
    const CATEGORY: &'static str = "order";
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = OrderError;

    fn handle(&self, command: OrderCommand) -> Result<Vec<OrderEvent>, OrderError> {
        use OrderStatus::*;
        match (command, self.status) {
            (
                OrderCommand::Place {
                    order_id,
                    customer,
                    items,
                },
                New,
            ) => {
                if customer.trim().is_empty() {
                    return Err(OrderError::NoCustomer);
                }
                if items.is_empty() || items.iter().any(|l| l.quantity == 0) {
                    return Err(OrderError::NoItems);
                }
                let items = normalize(&items);
                let total_cents = total(&items).ok_or(OrderError::UnknownSku)?;
                Ok(vec![OrderEvent::OrderPlaced {
                    order_id,
                    customer,
                    items,
                    total_cents,
                }])
            }
            (OrderCommand::Place { .. }, _) => Err(OrderError::AlreadyPlaced),
            (_, New) => Err(OrderError::NotPlaced),
            (OrderCommand::Confirm, Placed) => Ok(vec![OrderEvent::OrderConfirmed {
                order_id: self.order_id.clone(),
            }]),
            (OrderCommand::Cancel { reason }, Placed) => Ok(vec![OrderEvent::OrderCancelled {
                order_id: self.order_id.clone(),
                reason,
            }]),
            // Asked again for the final state it is in: nothing more happens.
            (OrderCommand::Confirm, Confirmed) | (OrderCommand::Cancel { .. }, Cancelled) => {
                Ok(vec![])
            }
            // One final state only.
            (_, status) => Err(OrderError::AlreadyFinal(status)),
        }
    }

    fn apply(&mut self, event: &OrderEvent) {
        match event {
            OrderEvent::OrderPlaced {
                order_id,
                customer,
                items,
                total_cents,
            } => {
                self.order_id = order_id.clone();
                self.customer = customer.clone();
                self.items = items.clone();
                self.total_cents = *total_cents;
                self.status = OrderStatus::Placed;
            }
            OrderEvent::OrderConfirmed { .. } => self.status = OrderStatus::Confirmed,
            OrderEvent::OrderCancelled { .. } => self.status = OrderStatus::Cancelled,
        }
    }
}

#[cfg(test)]
mod tests {
    use tidings::aggregate::testing::AggregateTest;

    use super::*;

    fn placed() -> OrderEvent {
        OrderEvent::OrderPlaced {
            order_id: "o-1".into(),
            customer: "ada".into(),
            items: vec![Line::new("widget", 2)],
            total_cents: 2_500,
        }
    }

    #[test]
    fn placing_normalizes_lines_and_prices_them() {
        AggregateTest::<Order>::given_no_previous_events()
            .when(OrderCommand::Place {
                order_id: "o-1".into(),
                customer: "ada".into(),
                items: vec![Line::new("widget", 1), Line::new("widget", 1)],
            })
            .then_expect_events(vec![placed()]);
    }

    #[test]
    fn bad_orders_are_refused() {
        let place = |customer: &str, items: Vec<Line>| OrderCommand::Place {
            order_id: "o-1".into(),
            customer: customer.into(),
            items,
        };
        AggregateTest::<Order>::given_no_previous_events()
            .when(place("ada", vec![]))
            .then_expect_error(OrderError::NoItems);
        AggregateTest::<Order>::given_no_previous_events()
            .when(place(" ", vec![Line::new("widget", 1)]))
            .then_expect_error(OrderError::NoCustomer);
        AggregateTest::<Order>::given_no_previous_events()
            .when(place("ada", vec![Line::new("sprocket", 1)]))
            .then_expect_error(OrderError::UnknownSku);
        AggregateTest::<Order>::given([placed()])
            .when(place("ada", vec![Line::new("widget", 1)]))
            .then_expect_error(OrderError::AlreadyPlaced);
        AggregateTest::<Order>::given_no_previous_events()
            .when(OrderCommand::Confirm)
            .then_expect_error(OrderError::NotPlaced);
    }

    #[test]
    fn an_order_reaches_one_final_state_only() {
        let confirmed = OrderEvent::OrderConfirmed {
            order_id: "o-1".into(),
        };
        AggregateTest::<Order>::given([placed(), confirmed.clone()])
            .when(OrderCommand::Cancel {
                reason: CancelReason::PaymentDeclined("x".into()),
            })
            .then_expect_error(OrderError::AlreadyFinal(OrderStatus::Confirmed));
        AggregateTest::<Order>::given([placed(), confirmed])
            .when(OrderCommand::Confirm)
            .then_expect_events(vec![]);
    }
}
