//! An enum event with renamed variants and a schema version.

use serde::{Deserialize, Serialize};
use tidings::DomainEvent;

#[derive(Serialize, Deserialize, DomainEvent)]
#[domain_event(version = 3)]
enum OrderEvent {
    #[domain_event(name = "OrderPlaced")]
    Placed { cents: u64 },
    #[domain_event(name = "OrderCancelled")]
    Cancelled,
    Shipped(String),
}

fn main() {
    assert_eq!(
        OrderEvent::EVENT_TYPES,
        ["OrderPlaced", "OrderCancelled", "Shipped"]
    );
    assert_eq!(OrderEvent::Placed { cents: 1 }.event_type(), "OrderPlaced");
    assert_eq!(OrderEvent::Cancelled.event_type(), "OrderCancelled");
    assert_eq!(OrderEvent::Shipped("x".into()).event_type(), "Shipped");
    assert_eq!(OrderEvent::Cancelled.event_version(), 3);
    let data = OrderEvent::Placed { cents: 1250 }.to_event_data().unwrap();
    assert_eq!(data.schema_version, 3);
}
