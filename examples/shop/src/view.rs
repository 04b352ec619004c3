//! The read model: order summaries, stock levels and money, kept by an exactly-once projection.
//!
//! [`ShopView`] keeps everything in its subscription state through [`EventContext`]: each
//! event's writes are committed atomically with the subscription's checkpoint, so after a crash
//! the state and the checkpoint agree and no event is counted twice or lost. [`ReadModel::load`]
//! reads the committed state back from the store, from any process that has it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tidings::prelude::*;
use tidings::store::state_page_is_full;

use crate::catalog::Line;
use crate::order::OrderEvent;
use crate::payment::PaymentEvent;
use crate::stock::StockEvent;

const ORDER: &[u8] = b"order/";
const STOCK: &[u8] = b"stock/";
const TOTALS: &[u8] = b"totals";

/// Where an order's payment is, as the read model shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PaymentView {
    /// Not charged yet.
    #[default]
    Pending,
    /// Charged.
    Verified,
    /// Declined.
    Declined,
    /// Charged, then refunded.
    Refunded,
}

/// Where an order is, as the read model shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutcomeView {
    /// Not final yet.
    #[default]
    Pending,
    /// Confirmed.
    Confirmed,
    /// Cancelled, and why.
    Cancelled(String),
}

/// One order, summarized.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderSummary {
    /// Its id.
    pub order_id: String,
    /// Who ordered.
    pub customer: String,
    /// What.
    pub items: Vec<Line>,
    /// Its total, in cents.
    pub total_cents: u64,
    /// Its payment.
    pub payment: PaymentView,
    /// Whether its items were reserved.
    pub reserved: bool,
    /// Where it is.
    pub outcome: OutcomeView,
}

/// Counters over all orders.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Orders placed.
    pub placed: u64,
    /// Orders confirmed.
    pub confirmed: u64,
    /// Orders cancelled because the payment was declined.
    pub cancelled_declined: u64,
    /// Orders cancelled because of missing stock.
    pub cancelled_out_of_stock: u64,
    /// Money charged, in cents.
    pub charged_cents: u64,
    /// Money refunded, in cents.
    pub refunded_cents: u64,
}

impl Totals {
    /// Orders cancelled, for any reason.
    pub fn cancelled(&self) -> u64 {
        self.cancelled_declined + self.cancelled_out_of_stock
    }

    /// Orders not final yet.
    pub fn pending(&self) -> u64 {
        self.placed
            .saturating_sub(self.confirmed)
            .saturating_sub(self.cancelled())
    }
}

/// The projection that keeps the read model (subscription `"shop-view"`).
#[derive(EventHandler)]
#[event_handler(name = "shop-view", events(OrderEvent, PaymentEvent, StockEvent))]
pub struct ShopView;

fn order_key(order_id: &str) -> Vec<u8> {
    [ORDER, order_id.as_bytes()].concat()
}

fn stock_key(sku: &str) -> Vec<u8> {
    [STOCK, sku.as_bytes()].concat()
}

async fn totals(ctx: &EventContext<'_>) -> Result<Totals, HandlerError> {
    Ok(ctx.get_json(TOTALS).await?.unwrap_or_default())
}

async fn summary(ctx: &EventContext<'_>, order_id: &str) -> Result<OrderSummary, HandlerError> {
    ctx.get_json(&order_key(order_id))
        .await?
        .ok_or_else(|| format!("no summary of order {order_id:?}").into())
}

/// Adds `delta` (positive or negative) to the level of every line's SKU.
async fn move_stock(
    ctx: &mut EventContext<'_>,
    items: &[Line],
    sign: i64,
) -> Result<(), HandlerError> {
    for l in items {
        let key = stock_key(&l.sku);
        let level: i64 = ctx.get_json(&key).await?.unwrap_or(0);
        ctx.put_json(&key, &(level + sign * i64::from(l.quantity)))?;
    }
    Ok(())
}

#[async_trait]
impl HandleEvent<OrderEvent> for ShopView {
    async fn handle(
        &mut self,
        event: OrderEvent,
        ctx: &mut EventContext<'_>,
    ) -> Result<(), HandlerError> {
        let mut t = totals(ctx).await?;
        let order = match event {
            OrderEvent::OrderPlaced {
                order_id,
                customer,
                items,
                total_cents,
            } => {
                t.placed += 1;
                OrderSummary {
                    order_id,
                    customer,
                    items,
                    total_cents,
                    ..OrderSummary::default()
                }
            }
            OrderEvent::OrderConfirmed { order_id } => {
                t.confirmed += 1;
                let mut s = summary(ctx, &order_id).await?;
                s.outcome = OutcomeView::Confirmed;
                s
            }
            OrderEvent::OrderCancelled { order_id, reason } => {
                match reason {
                    crate::order::CancelReason::PaymentDeclined(_) => t.cancelled_declined += 1,
                    crate::order::CancelReason::OutOfStock(_) => t.cancelled_out_of_stock += 1,
                }
                let mut s = summary(ctx, &order_id).await?;
                s.outcome = OutcomeView::Cancelled(reason.to_string());
                s
            }
        };
        ctx.put_json(&order_key(&order.order_id), &order)?;
        ctx.put_json(TOTALS, &t)
    }
}

#[async_trait]
impl HandleEvent<PaymentEvent> for ShopView {
    async fn handle(
        &mut self,
        event: PaymentEvent,
        ctx: &mut EventContext<'_>,
    ) -> Result<(), HandlerError> {
        let mut t = totals(ctx).await?;
        let mut s = summary(ctx, event.order_id()).await?;
        match event {
            PaymentEvent::PaymentVerified { amount_cents, .. } => {
                t.charged_cents += amount_cents;
                s.payment = PaymentView::Verified;
            }
            PaymentEvent::PaymentDeclined { .. } => s.payment = PaymentView::Declined,
            PaymentEvent::PaymentRefunded { amount_cents, .. } => {
                t.refunded_cents += amount_cents;
                s.payment = PaymentView::Refunded;
            }
        }
        ctx.put_json(&order_key(&s.order_id), &s)?;
        ctx.put_json(TOTALS, &t)
    }
}

#[async_trait]
impl HandleEvent<StockEvent> for ShopView {
    async fn handle(
        &mut self,
        event: StockEvent,
        ctx: &mut EventContext<'_>,
    ) -> Result<(), HandlerError> {
        match event {
            StockEvent::Restocked { items } => move_stock(ctx, &items, 1).await,
            StockEvent::StockReserved { order_id, items } => {
                move_stock(ctx, &items, -1).await?;
                let mut s = summary(ctx, &order_id).await?;
                s.reserved = true;
                ctx.put_json(&order_key(&order_id), &s)
            }
            StockEvent::OutOfStock { .. } => Ok(()),
        }
    }
}

/// The read model as last committed by [`ShopView`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadModel {
    /// The position the projection has handled up to (its checkpoint).
    pub checkpoint: u64,
    /// Counters over all orders.
    pub totals: Totals,
    /// Units available per SKU (negative would be a bug, so the type can show one).
    pub stock: BTreeMap<String, i64>,
    /// Every order, by id.
    pub orders: BTreeMap<String, OrderSummary>,
}

impl ReadModel {
    /// Reads the committed read model from `store`.
    pub async fn load(store: &dyn EventStore) -> Result<ReadModel, StoreError> {
        let name = ShopView::NAME;
        let decode = |what: &str, e: serde_json::Error| {
            StoreError::codec(format!("read model entry {what}"), e)
        };
        let mut model = ReadModel {
            checkpoint: store.load_checkpoint(name).await?.unwrap_or(0),
            ..ReadModel::default()
        };
        if let Some(bytes) = store.load_state(name, TOTALS).await? {
            model.totals = serde_json::from_slice(&bytes).map_err(|e| decode("totals", e))?;
        }
        for (key, value) in scan(store, name, STOCK).await? {
            let sku = String::from_utf8_lossy(&key[STOCK.len()..]).into_owned();
            let level = serde_json::from_slice(&value).map_err(|e| decode(&sku, e))?;
            model.stock.insert(sku, level);
        }
        for (key, value) in scan(store, name, ORDER).await? {
            let id = String::from_utf8_lossy(&key[ORDER.len()..]).into_owned();
            let summary = serde_json::from_slice(&value).map_err(|e| decode(&id, e))?;
            model.orders.insert(id, summary);
        }
        Ok(model)
    }
}

/// Every state entry of `name` under `prefix`, page by page.
async fn scan(
    store: &dyn EventStore,
    name: &str,
    prefix: &[u8],
) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
    const PAGE: usize = 512;
    let mut out = Vec::new();
    let mut from = prefix.to_vec();
    loop {
        let page = store.scan_state(name, prefix, &from, PAGE).await?;
        let full = state_page_is_full(&page, PAGE);
        if let Some((last, _)) = page.last() {
            from = last.clone();
            from.push(0);
        }
        out.extend(page);
        if !full {
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use tidings::subscription::testing::{FailureKind, HandlerTest};

    use super::*;
    use crate::order::CancelReason;

    fn placed(id: &str, items: Vec<Line>, total_cents: u64) -> OrderEvent {
        OrderEvent::OrderPlaced {
            order_id: id.into(),
            customer: "ada".into(),
            items,
            total_cents,
        }
    }

    fn widgets(n: u32) -> Vec<Line> {
        vec![Line::new("widget", n)]
    }

    #[tokio::test]
    async fn a_confirmed_order_moves_stock_money_and_its_summary() {
        let outcome = HandlerTest::new(ShopView)
            .given_in("stock-main", [StockEvent::Restocked { items: widgets(5) }])
            .given_in("order-a", [placed("a", widgets(2), 2_500)])
            .when_in(
                "payment-a",
                PaymentEvent::PaymentVerified {
                    order_id: "a".into(),
                    amount_cents: 2_500,
                    reference: "r".into(),
                },
            )
            .when_in(
                "stock-main",
                StockEvent::StockReserved {
                    order_id: "a".into(),
                    items: widgets(2),
                },
            )
            .when_in(
                "order-a",
                OrderEvent::OrderConfirmed {
                    order_id: "a".into(),
                },
            )
            .run()
            .await;
        outcome
            .then_ok()
            .then_state_json(b"stock/widget", &3)
            .then_state_json(
                TOTALS,
                &Totals {
                    placed: 1,
                    confirmed: 1,
                    charged_cents: 2_500,
                    ..Totals::default()
                },
            )
            .then_state_json(
                b"order/a",
                &OrderSummary {
                    order_id: "a".into(),
                    customer: "ada".into(),
                    items: widgets(2),
                    total_cents: 2_500,
                    payment: PaymentView::Verified,
                    reserved: true,
                    outcome: OutcomeView::Confirmed,
                },
            );
    }

    #[tokio::test]
    async fn a_declined_order_is_counted_with_its_reason() {
        HandlerTest::new(ShopView)
            .given([placed("b", widgets(1), 1_250)])
            .when(OrderEvent::OrderCancelled {
                order_id: "b".into(),
                reason: CancelReason::PaymentDeclined("card expired".into()),
            })
            .run()
            .await
            .then_ok()
            .then_state_json(
                TOTALS,
                &Totals {
                    placed: 1,
                    cancelled_declined: 1,
                    ..Totals::default()
                },
            );
    }

    #[tokio::test]
    async fn news_of_an_unknown_order_fails_and_writes_nothing() {
        // Out of order (the summary is missing): an ordinary error, retried, then parked.
        HandlerTest::new(ShopView)
            .when(PaymentEvent::PaymentRefunded {
                order_id: "ghost".into(),
                amount_cents: 100,
            })
            .run()
            .await
            .then_error(FailureKind::Retryable)
            .then_no_state(TOTALS)
            .then_whole_state_json(&[]);
    }
}
