//! Derive macros for tidings. `#[derive(EventHandler)]` arrives with durable subscriptions.
