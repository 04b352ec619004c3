use serde::{Deserialize, Serialize};
use tidings::{DomainEvent, ProcessManager};

#[derive(Serialize, Deserialize, DomainEvent)]
enum OrderEvent {
    OrderPlaced { id: String },
}

#[derive(ProcessManager)]
#[process_manager(name = "checkout", events(OrderEvent))]
struct Checkout<T>(T);

fn main() {}
