use serde::{Deserialize, Serialize};
use tidings::subscription::{EventContext, HandleEvent, HandlerError};
use tidings::{async_trait, DomainEvent, EventHandler};

#[derive(Serialize, Deserialize, DomainEvent)]
enum OrderEvent {
    OrderPlaced { cents: u64 },
}

#[derive(EventHandler)]
#[event_handler(name = "counter", events(OrderEvent), start_from = "middle")]
struct Counter;

#[async_trait]
impl HandleEvent<OrderEvent> for Counter {
    async fn handle(&mut self, _: OrderEvent, _: &mut EventContext<'_>) -> Result<(), HandlerError> {
        Ok(())
    }
}

fn main() {}
