//! A handler of two event types, starting from the end, and one starting from a position.

use serde::{Deserialize, Serialize};
use tidings::subscription::{EventContext, EventHandler, HandleEvent, HandlerError, StartFrom};
use tidings::{async_trait, DomainEvent, EventHandler};

#[derive(Serialize, Deserialize, DomainEvent)]
enum OrderEvent {
    OrderPlaced { cents: u64 },
    OrderCancelled,
}

#[derive(Serialize, Deserialize, DomainEvent)]
enum PaymentEvent {
    PaymentVerified { cents: u64 },
}

#[derive(EventHandler)]
#[event_handler(name = "revenue", events(OrderEvent, PaymentEvent), start_from = "end")]
struct Revenue;

#[async_trait]
impl HandleEvent<OrderEvent> for Revenue {
    async fn handle(&mut self, _: OrderEvent, _: &mut EventContext<'_>) -> Result<(), HandlerError> {
        Ok(())
    }
}

#[async_trait]
impl HandleEvent<PaymentEvent> for Revenue {
    async fn handle(&mut self, _: PaymentEvent, _: &mut EventContext<'_>) -> Result<(), HandlerError> {
        Ok(())
    }
}

#[derive(EventHandler)]
#[event_handler(name = "late-payments", events(PaymentEvent), start_from = "42")]
struct LatePayments;

#[async_trait]
impl HandleEvent<PaymentEvent> for LatePayments {
    async fn handle(&mut self, _: PaymentEvent, _: &mut EventContext<'_>) -> Result<(), HandlerError> {
        Ok(())
    }
}

fn main() {
    assert_eq!(Revenue::NAME, "revenue");
    assert_eq!(
        Revenue::event_types(),
        ["OrderPlaced", "OrderCancelled", "PaymentVerified"]
    );
    assert_eq!(Revenue::start_from(), StartFrom::End);
    assert_eq!(LatePayments::NAME, "late-payments");
    assert_eq!(LatePayments::event_types(), ["PaymentVerified"]);
    assert_eq!(LatePayments::start_from(), StartFrom::Position(42));
}
