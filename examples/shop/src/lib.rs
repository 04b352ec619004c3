//! The tidings shop: order, payment and stock react to each other's events.
//!
//! - Three aggregates, each in its module with its commands, events and state: [`order`],
//!   [`payment`], [`stock`].
//! - Three services that react ([`services`]): payments charges a placed order through a
//!   [`PaymentGateway`](gateway::PaymentGateway) and refunds a paid order that is cancelled;
//!   stock reserves a paid order's items; fulfilment confirms or cancels the order.
//! - A read model ([`view`]) kept by an exactly-once projection.
//! - The invariants ([`invariants`]), checked from the log.
//! - [`Shop`] puts them together over a store: the embedded one, or PostgreSQL, where each
//!   service may run in a process of its own.
//! - [`cli`]: the `shop_example` command line (the story, `serve`, the subcommands).
//!
//! The flow: `OrderPlaced` → payments charges → `PaymentVerified` or `PaymentDeclined` → stock
//! reserves → `StockReserved` or `OutOfStock` → `OrderConfirmed` or `OrderCancelled`; an order
//! cancelled after its payment was verified is refunded (`PaymentRefunded`).
//!
//! The walk-through is `docs/shop.md`.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod catalog;
pub mod cli;
pub mod gateway;
pub mod invariants;
pub mod order;
pub mod payment;
pub mod services;
mod shop;
pub mod stock;
pub mod view;

pub use self::invariants::{all_pass, Check};
pub use self::shop::{Service, SharedShop, Shop, ShopConfig, ShopError};
