use serde::{Deserialize, Serialize};
use tidings::DomainEvent;

#[derive(Serialize, Deserialize, DomainEvent)]
enum OrderEvent {
    OrderPlaced { cents: u64 },
    #[domain_event(name = "OrderPlaced")]
    OrderPlacedV2 { cents: u64, currency: String },
}

fn main() {}
