use serde::{Deserialize, Serialize};
use tidings::DomainEvent;

#[derive(Serialize, Deserialize, DomainEvent)]
#[domain_event(name = "OrderEvent")]
enum OrderEvent {
    OrderPlaced { cents: u64 },
    OrderCancelled,
}

fn main() {}
