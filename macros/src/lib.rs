//! Derive macros for tidings. Use them through the `tidings` crate, which re-exports them:
//! `use tidings::DomainEvent;`.
//!
//! Misuse is a compile error pointing at the offending tokens; every error is collected before
//! reporting, and a fallback impl is still emitted so that one mistake gives one error.

mod attr;
mod domain_event;

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
