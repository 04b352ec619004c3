use serde::{Deserialize, Serialize};
use tidings::DomainEvent;

#[derive(Serialize, Deserialize, DomainEvent)]
#[domain_event(verison = 2)]
struct OrderPlaced {
    cents: u64,
}

fn main() {}
