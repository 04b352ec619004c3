//! The stock aggregate: the levels of one warehouse.
//!
//! Stream `stock-<warehouse>` (the shop has one, [`WAREHOUSE`]). A reservation takes every line
//! of an order or none: it is recorded as `StockReserved` or as `OutOfStock` (an event, not a
//! refusal, because the order reacts to it). The aggregate does not remember which orders it
//! reserved for: that a redelivered `PaymentVerified` does not reserve twice is the framework's
//! doing (the command id derives from the event, see `services.rs`), and the invariants check it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tidings::prelude::*;

use crate::catalog::{normalize, price, Line};

/// The shop's warehouse: the id of its stock aggregate.
pub const WAREHOUSE: &str = "main";

// ---- commands ----

/// What can be asked of the warehouse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StockCommand {
    /// Goods arrive.
    Restock {
        /// What arrives.
        items: Vec<Line>,
    },
    /// Set aside the items of a paid order: all of them, or none.
    Reserve {
        /// The order.
        order_id: String,
        /// Its lines.
        items: Vec<Line>,
    },
}

// ---- events ----

/// What happened in the warehouse.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, DomainEvent)]
pub enum StockEvent {
    /// Goods arrived.
    Restocked {
        /// What arrived (normalized).
        items: Vec<Line>,
    },
    /// Every line of the order was set aside.
    StockReserved {
        /// The order.
        order_id: String,
        /// What was set aside (normalized).
        items: Vec<Line>,
    },
    /// The order could not be reserved; nothing was set aside.
    OutOfStock {
        /// The order.
        order_id: String,
        /// The lines short, with the quantity missing.
        missing: Vec<Line>,
    },
}

/// Why the warehouse refuses a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum StockError {
    /// No lines, or a line of quantity 0.
    #[error("nothing to restock or reserve: give lines of quantity 1 or more")]
    NoItems,
    /// A SKU the shop does not sell.
    #[error("unknown sku {0:?}")]
    UnknownSku(String),
}

// ---- aggregate ----

/// The warehouse's state: units available per SKU.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Stock {
    /// Units available per SKU (a missing SKU has none).
    pub levels: BTreeMap<String, u64>,
}

impl Stock {
    /// Units of `sku` available.
    pub fn level(&self, sku: &str) -> u64 {
        self.levels.get(sku).copied().unwrap_or(0)
    }
}

fn check(items: &[Line]) -> Result<Vec<Line>, StockError> {
    if items.is_empty() || items.iter().any(|l| l.quantity == 0) {
        return Err(StockError::NoItems);
    }
    if let Some(l) = items.iter().find(|l| price(&l.sku).is_none()) {
        return Err(StockError::UnknownSku(l.sku.clone()));
    }
    Ok(normalize(items))
}

impl Aggregate for Stock {
    const CATEGORY: &'static str = "stock";
    type Command = StockCommand;
    type Event = StockEvent;
    type Error = StockError;

    fn handle(&self, command: StockCommand) -> Result<Vec<StockEvent>, StockError> {
        match command {
            StockCommand::Restock { items } => Ok(vec![StockEvent::Restocked {
                items: check(&items)?,
            }]),
            StockCommand::Reserve { order_id, items } => {
                let items = check(&items)?;
                let missing: Vec<Line> = items
                    .iter()
                    .filter_map(|l| {
                        let short = u64::from(l.quantity).saturating_sub(self.level(&l.sku));
                        (short > 0).then(|| Line::new(&l.sku, short as u32))
                    })
                    .collect();
                Ok(vec![if missing.is_empty() {
                    StockEvent::StockReserved { order_id, items }
                } else {
                    StockEvent::OutOfStock { order_id, missing }
                }])
            }
        }
    }

    fn apply(&mut self, event: &StockEvent) {
        match event {
            StockEvent::Restocked { items } => {
                for l in items {
                    *self.levels.entry(l.sku.clone()).or_default() += u64::from(l.quantity);
                }
            }
            StockEvent::StockReserved { items, .. } => {
                for l in items {
                    let level = self.levels.entry(l.sku.clone()).or_default();
                    // `handle` only reserves what is there; saturating keeps `apply` total.
                    *level = level.saturating_sub(u64::from(l.quantity));
                }
            }
            StockEvent::OutOfStock { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use tidings::aggregate::testing::AggregateTest;

    use super::*;

    fn restocked() -> StockEvent {
        StockEvent::Restocked {
            items: vec![Line::new("gadget", 1), Line::new("widget", 3)],
        }
    }

    #[test]
    fn a_reservation_takes_every_line_or_none() {
        let state = AggregateTest::<Stock>::given([restocked()])
            .when(StockCommand::Reserve {
                order_id: "o-1".into(),
                items: vec![Line::new("widget", 2), Line::new("gadget", 1)],
            })
            .then_expect_events(vec![StockEvent::StockReserved {
                order_id: "o-1".into(),
                items: vec![Line::new("gadget", 1), Line::new("widget", 2)],
            }]);
        assert_eq!((state.level("widget"), state.level("gadget")), (1, 0));
        let state = AggregateTest::<Stock>::given([restocked()])
            .when(StockCommand::Reserve {
                order_id: "o-2".into(),
                items: vec![Line::new("widget", 5), Line::new("gadget", 1)],
            })
            .then_expect_events(vec![StockEvent::OutOfStock {
                order_id: "o-2".into(),
                missing: vec![Line::new("widget", 2)],
            }]);
        assert_eq!(state.level("widget"), 3);
    }

    #[test]
    fn bad_lines_are_refused() {
        AggregateTest::<Stock>::given_no_previous_events()
            .when(StockCommand::Restock { items: vec![] })
            .then_expect_error(StockError::NoItems);
        AggregateTest::<Stock>::given_no_previous_events()
            .when(StockCommand::Restock {
                items: vec![Line::new("sprocket", 1)],
            })
            .then_expect_error(StockError::UnknownSku("sprocket".into()));
    }
}
