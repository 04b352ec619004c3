use serde::{Deserialize, Serialize};
use tidings::DomainEvent;

#[derive(Serialize, Deserialize, DomainEvent)]
#[domain_event(version = 0)]
struct OrderPlaced {
    cents: u64,
}

fn main() {}
