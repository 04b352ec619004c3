use tidings::DomainEvent;

#[derive(DomainEvent)]
union OrderPlaced {
    cents: u64,
    euros: f64,
}

fn main() {}
