use serde::{Deserialize, Serialize};
use tidings::subscription::{EventContext, Handle, HandlerError};
use tidings::{async_trait, DomainEvent, EventHandler};

#[derive(Serialize, Deserialize, DomainEvent)]
enum OrderEvent {
    OrderPlaced { cents: u64 },
}

#[derive(Serialize, Deserialize, DomainEvent)]
enum PaymentEvent {
    PaymentVerified { cents: u64 },
}

/// Lists `PaymentEvent` but has no `Handle<PaymentEvent>`.
#[derive(EventHandler)]
#[event_handler(name = "counter", events(OrderEvent, PaymentEvent))]
struct Counter;

#[async_trait]
impl Handle<OrderEvent> for Counter {
    async fn handle(&mut self, _: OrderEvent, _: &mut EventContext<'_>) -> Result<(), HandlerError> {
        Ok(())
    }
}

fn main() {}
