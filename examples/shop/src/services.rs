//! The services: event handlers that react to one aggregate's events by sending commands to
//! another. Each is a durable subscription (`#[derive(EventHandler)]`) with its own checkpoint,
//! so each can be down and catch up on its own.
//!
//! Every command a handler sends is built with [`CommandEnvelope::caused_by`]: its id derives
//! from the event's id and the reaction's name. After a crash the events since the handler's
//! last checkpoint are delivered again; the repeated commands carry the same ids and the
//! aggregates answer them from their history, so nothing is charged, reserved, confirmed or
//! refunded twice.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tidings::prelude::*;
use tracing::{debug, info, warn};

use crate::gateway::{ChargeRequest, PaymentGateway, RefundRequest};
use crate::order::{CancelReason, Order, OrderCommand, OrderEvent};
use crate::payment::{Payment, PaymentCommand, PaymentError, PaymentEvent, PaymentStatus};
use crate::stock::{Stock, StockCommand, StockEvent, WAREHOUSE};

/// Reaction names: with the causing event's id they make the command ids.
const CHARGE: &str = "charge-payment";
const REFUND: &str = "refund-payment";
const RESERVE: &str = "reserve-stock";
const CONFIRM: &str = "confirm-order";
const CANCEL: &str = "cancel-order";

/// Counts the commands that aggregates answered from history (`duplicate: true`): reactions
/// repeated because their event was delivered again after a crash or a retry.
#[derive(Clone, Debug, Default)]
pub struct Repeats(Arc<AtomicU64>);

impl Repeats {
    /// How many so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn count(&self, outcome: &tidings::aggregate::CommandOutcome) {
        if outcome.duplicate {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The payment service: charges each placed order through the gateway, and refunds an order
/// cancelled after its payment was verified.
#[derive(EventHandler)]
#[event_handler(name = "payments", events(OrderEvent))]
pub struct PaymentService {
    payments: AggregateRegistry<Payment>,
    gateway: Arc<dyn PaymentGateway>,
    repeats: Repeats,
}

impl PaymentService {
    /// The service over the payment aggregates and a gateway, counting repeats in `repeats`.
    pub fn new(
        payments: AggregateRegistry<Payment>,
        gateway: Arc<dyn PaymentGateway>,
        repeats: Repeats,
    ) -> Self {
        PaymentService {
            payments,
            gateway,
            repeats,
        }
    }
}

#[async_trait]
impl HandleEvent<OrderEvent> for PaymentService {
    async fn handle(
        &mut self,
        event: OrderEvent,
        ctx: &mut EventContext<'_>,
    ) -> Result<(), HandlerError> {
        let recorded = ctx.event();
        match event {
            OrderEvent::OrderPlaced {
                order_id,
                customer,
                total_cents,
                ..
            } => {
                // The gateway's idempotency key is the command's id: one charge per event.
                let key = CommandEnvelope::caused_by(recorded, CHARGE, ()).command_id;
                let request = ChargeRequest {
                    idempotency_key: key,
                    order_id: order_id.clone(),
                    customer,
                    amount_cents: total_cents,
                };
                let outcome = self.gateway.charge(&request).await?;
                let command = PaymentCommand::RecordCharge {
                    order_id: order_id.clone(),
                    amount_cents: total_cents,
                    outcome,
                };
                let envelope = CommandEnvelope::caused_by(recorded, CHARGE, command);
                match self.payments.execute(&order_id, envelope).await {
                    Ok(outcome) => {
                        self.repeats.count(&outcome);
                        debug!(order_id, duplicate = outcome.duplicate, "charge recorded");
                    }
                    // Recorded by an earlier command (beyond the idempotence window): done.
                    Err(AggregateError::Rejected(PaymentError::AlreadyCharged)) => {
                        warn!(order_id, "charge already recorded");
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            OrderEvent::OrderCancelled { order_id, .. } => {
                let (status, amount_cents) = self
                    .payments
                    .query(&order_id, |p| (p.status, p.amount_cents))
                    .await?;
                // Declined (nothing taken) or already refunded by an earlier delivery.
                if status != PaymentStatus::Verified {
                    return Ok(());
                }
                let envelope =
                    CommandEnvelope::caused_by(recorded, REFUND, PaymentCommand::RecordRefund);
                self.gateway
                    .refund(&RefundRequest {
                        idempotency_key: envelope.command_id,
                        order_id: order_id.clone(),
                        amount_cents,
                    })
                    .await?;
                let outcome = self.payments.execute(&order_id, envelope).await?;
                self.repeats.count(&outcome);
                info!(order_id, amount_cents, "refunded");
            }
            OrderEvent::OrderConfirmed { .. } => {}
        }
        Ok(())
    }
}

/// The stock service: reserves the items of each order whose payment was verified.
#[derive(EventHandler)]
#[event_handler(name = "stock", events(PaymentEvent))]
pub struct StockService {
    orders: AggregateRegistry<Order>,
    stock: AggregateRegistry<Stock>,
    repeats: Repeats,
}

impl StockService {
    /// The service over the order aggregates (to read an order's items) and the warehouse.
    pub fn new(
        orders: AggregateRegistry<Order>,
        stock: AggregateRegistry<Stock>,
        repeats: Repeats,
    ) -> Self {
        StockService {
            orders,
            stock,
            repeats,
        }
    }
}

#[async_trait]
impl HandleEvent<PaymentEvent> for StockService {
    async fn handle(
        &mut self,
        event: PaymentEvent,
        ctx: &mut EventContext<'_>,
    ) -> Result<(), HandlerError> {
        let PaymentEvent::PaymentVerified { order_id, .. } = event else {
            return Ok(());
        };
        let items = self.orders.query(&order_id, |o| o.items.clone()).await?;
        if items.is_empty() {
            return Err(format!("payment verified for {order_id:?}, an order never placed").into());
        }
        let command = StockCommand::Reserve {
            order_id: order_id.clone(),
            items,
        };
        let outcome = self
            .stock
            .execute(
                WAREHOUSE,
                CommandEnvelope::caused_by(ctx.event(), RESERVE, command),
            )
            .await?;
        self.repeats.count(&outcome);
        debug!(
            order_id,
            duplicate = outcome.duplicate,
            "reservation decided"
        );
        Ok(())
    }
}

/// The order service: confirms an order whose items were reserved, and cancels one whose payment
/// was declined or whose items are out of stock.
#[derive(EventHandler)]
#[event_handler(name = "fulfilment", events(PaymentEvent, StockEvent))]
pub struct FulfilmentService {
    orders: AggregateRegistry<Order>,
    repeats: Repeats,
}

impl FulfilmentService {
    /// The service over the order aggregates.
    pub fn new(orders: AggregateRegistry<Order>, repeats: Repeats) -> Self {
        FulfilmentService { orders, repeats }
    }

    async fn send(
        &self,
        ctx: &EventContext<'_>,
        order_id: &str,
        name: &str,
        command: OrderCommand,
    ) -> Result<(), HandlerError> {
        let envelope = CommandEnvelope::caused_by(ctx.event(), name, command);
        // A refusal (the order is already in the other final state) is an error: it would mean
        // two verdicts for one order, which the flow never gives. It is not skipped silently.
        let outcome = self.orders.execute(order_id, envelope).await?;
        self.repeats.count(&outcome);
        debug!(
            order_id,
            name,
            duplicate = outcome.duplicate,
            "order updated"
        );
        Ok(())
    }
}

#[async_trait]
impl HandleEvent<PaymentEvent> for FulfilmentService {
    async fn handle(
        &mut self,
        event: PaymentEvent,
        ctx: &mut EventContext<'_>,
    ) -> Result<(), HandlerError> {
        if let PaymentEvent::PaymentDeclined {
            order_id, reason, ..
        } = event
        {
            let reason = CancelReason::PaymentDeclined(reason);
            self.send(ctx, &order_id, CANCEL, OrderCommand::Cancel { reason })
                .await?;
        }
        Ok(())
    }
}

#[async_trait]
impl HandleEvent<StockEvent> for FulfilmentService {
    async fn handle(
        &mut self,
        event: StockEvent,
        ctx: &mut EventContext<'_>,
    ) -> Result<(), HandlerError> {
        match event {
            StockEvent::StockReserved { order_id, .. } => {
                self.send(ctx, &order_id, CONFIRM, OrderCommand::Confirm)
                    .await
            }
            StockEvent::OutOfStock { order_id, missing } => {
                let reason = CancelReason::OutOfStock(missing);
                self.send(ctx, &order_id, CANCEL, OrderCommand::Cancel { reason })
                    .await
            }
            StockEvent::Restocked { .. } => Ok(()),
        }
    }
}
