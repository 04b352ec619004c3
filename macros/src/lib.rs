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
/// handles, and the dispatch of each recorded event to the type's `HandleEvent<E>` impl.
///
/// ```ignore
/// #[derive(EventHandler)]
/// #[event_handler(name = "stock-reservations", events(OrderEvent, PaymentEvent), start_from = "beginning")]
/// struct StockReservations { /* ... */ }
/// ```
///
/// - `name` (required): the subscription's stable name; its checkpoint is stored under it.
/// - `events(...)` (required): the `DomainEvent` types handled; each needs an `impl HandleEvent<T>`.
///   Only their event types are read from the store, and only they are decoded.
/// - `start_from`: `"beginning"` (default), `"end"`, or a position, used only the first time.
#[proc_macro_derive(EventHandler, attributes(event_handler))]
pub fn derive_event_handler(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    event_handler::expand(&input, event_handler::Kind::Handler).into()
}

/// Derives `tidings::subscription::EventHandler` for a process manager: each event of the listed
/// types goes to the type's `tidings::process::Reacts<T>` impl, through the framework's routing
/// by correlation key, per-instance state and deadlines (see `tidings::process`).
///
/// ```ignore
/// #[derive(ProcessManager)]
/// #[process_manager(name = "transfers", events(TransferEvent, AccountEvent))]
/// struct Transfers { /* what `send` needs: the aggregate registries */ }
/// ```
///
/// The attribute takes the same keys as `#[event_handler]`: `name` (required, the subscription's
/// name, under which the instances' state is stored), `events(...)` (required, each with an
/// `impl Reacts<T>`), `start_from`. The type also implements `tidings::process::ProcessManager`.
#[proc_macro_derive(ProcessManager, attributes(process_manager))]
pub fn derive_process_manager(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    event_handler::expand(&input, event_handler::Kind::Process).into()
}
