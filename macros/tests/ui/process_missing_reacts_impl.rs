use serde::{Deserialize, Serialize};
use tidings::aggregate::CommandEnvelope;
use tidings::process::{Dispatched, ProcessManager, Reacts, Steps};
use tidings::subscription::HandlerError;
use tidings::{async_trait, DomainEvent, ProcessManager};

#[derive(Serialize, Deserialize, DomainEvent)]
enum OrderEvent {
    OrderPlaced { id: String },
}

#[derive(Serialize, Deserialize, DomainEvent)]
enum PaymentEvent {
    PaymentVerified { id: String },
}

/// Lists `PaymentEvent` but has no `Reacts<PaymentEvent>`.
#[derive(ProcessManager)]
#[process_manager(name = "checkout", events(OrderEvent, PaymentEvent))]
struct Checkout;

#[async_trait]
impl ProcessManager for Checkout {
    type State = u32;
    type Command = String;
    async fn send(&mut self, _: CommandEnvelope<String>) -> Result<Dispatched, HandlerError> {
        Ok(Dispatched::Accepted)
    }
}

impl Reacts<OrderEvent> for Checkout {
    fn correlate(event: &OrderEvent) -> Option<String> {
        let OrderEvent::OrderPlaced { id } = event;
        Some(id.clone())
    }
    fn react(&self, _: &mut u32, _: OrderEvent, _: &mut Steps<String>) {}
}

fn main() {}
