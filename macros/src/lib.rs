//! Derive macros for tidings. Use them through the `tidings` crate, which re-exports them:
//! `use tidings::DomainEvent;`.
//!
//! Misuse is a compile error pointing at the offending tokens; every error is collected before
//! reporting, and a fallback impl is still emitted so that one mistake gives one error.

mod attr;
mod domain_event;
mod event_handler;

use proc_macro::TokenStream;
use syn::{parse_macro_input, DeriveInput};

/// Implements `tidings::DomainEvent` for a struct (one event type, named after the struct) or an
/// enum (one event type per variant, named after the variant).
///
/// Attributes:
/// - on the type: `#[domain_event(version = N)]`: the schema version written (default 1);
/// - on a struct or a variant: `#[domain_event(name = "OrderPlaced")]`: the event type name.
#[proc_macro_derive(DomainEvent, attributes(domain_event))]
pub fn derive_domain_event(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    domain_event::expand(&input).into()
}

/// Implements `tidings::subscription::EventHandler`: the subscription's name, the event types it
/// handles, and the dispatch of each recorded event to the type's `Handle<E>` impl.
///
/// ```ignore
/// #[derive(EventHandler)]
/// #[event_handler(name = "stock-reservations", events(OrderEvent, PaymentEvent), start_from = "beginning")]
/// struct StockReservations { /* ... */ }
/// ```
///
/// - `name` (required): the subscription's stable name; its checkpoint is stored under it.
/// - `events(...)` (required): the `DomainEvent` types handled; each needs an `impl Handle<T>`.
///   Only their event types are read from the store, and only they are decoded.
/// - `start_from`: `"beginning"` (default), `"end"`, or a position, used only the first time.
#[proc_macro_derive(EventHandler, attributes(event_handler))]
pub fn derive_event_handler(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    event_handler::expand(&input).into()
}
