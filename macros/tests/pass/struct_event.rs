//! A struct event: one event type, named after the struct, or renamed.

use serde::{Deserialize, Serialize};
use tidings::DomainEvent;

#[derive(Serialize, Deserialize, DomainEvent)]
struct Restocked {
    sku: String,
    quantity: u32,
}

#[derive(Serialize, Deserialize, DomainEvent)]
#[domain_event(name = "PriceChanged", version = 2)]
struct PriceChangedV2 {
    sku: String,
    cents: u64,
}

fn main() {
    let restocked = Restocked {
        sku: "a".into(),
        quantity: 3,
    };
    assert_eq!(Restocked::EVENT_TYPES, ["Restocked"]);
    assert_eq!(restocked.event_type(), "Restocked");
    assert_eq!(restocked.event_version(), 1);
    let changed = PriceChangedV2 {
        sku: "a".into(),
        cents: 5,
    };
    assert_eq!(PriceChangedV2::EVENT_TYPES, ["PriceChanged"]);
    assert_eq!(changed.event_type(), "PriceChanged");
    assert_eq!(changed.event_version(), 2);
}
