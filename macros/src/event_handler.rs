//! `#[derive(EventHandler)]`.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;
use syn::{DeriveInput, LitStr};

use crate::attr::{entries, Errors};

const KEYS: &[&str] = &["name", "events", "start_from"];

pub fn expand(input: &DeriveInput) -> TokenStream {
    let mut errors = Errors::default();
    let ident = &input.ident;
    let found = entries(&input.attrs, "event_handler", KEYS, &mut errors);
    let mut name: Option<LitStr> = None;
    let mut events: Vec<syn::Path> = Vec::new();
    let mut start_from = quote!(::tidings::__private::StartFrom::Beginning);
    let mut saw_events = false;
    for e in &found {
        match e.key.as_str() {
            "name" => {
                if let Some(lit) = e.str_value(&mut errors) {
                    let value = lit.value();
                    if value.is_empty() || value.len() > 512 {
                        errors.push(lit.span(), "the subscription name must be 1 to 512 bytes");
                    }
                    if name.is_none() {
                        name = Some(lit);
                    }
                }
            }
            "events" => {
                saw_events = true;
                match &e.list {
                    Some(list) if !list.is_empty() => {
                        for path in list {
                            let text = path.to_token_stream().to_string();
                            if events
                                .iter()
                                .any(|p| p.to_token_stream().to_string() == text)
                            {
                                errors.push(
                                    path.span(),
                                    format!("event type `{text}` is listed twice"),
                                );
                            } else {
                                events.push(path.clone());
                            }
                        }
                    }
                    _ => errors.push(
                        e.span,
                        "`events` lists the event types handled: events(OrderEvent, PaymentEvent)",
                    ),
                }
            }
            "start_from" => {
                if let Some(lit) = e.str_value(&mut errors) {
                    match lit.value().as_str() {
                        "beginning" => {
                            start_from = quote!(::tidings::__private::StartFrom::Beginning)
                        }
                        "end" => start_from = quote!(::tidings::__private::StartFrom::End),
                        other => match other.parse::<u64>() {
                            Ok(p) => {
                                start_from = quote!(::tidings::__private::StartFrom::Position(#p))
                            }
                            Err(_) => errors.push(
                                lit.span(),
                                "start_from is \"beginning\", \"end\" or a position such as \"42\"",
                            ),
                        },
                    }
                }
            }
            _ => {}
        }
    }
    if !found.iter().any(|e| e.key == "name") {
        errors.push(
            attr_span(input),
            "missing subscription name: #[event_handler(name = \"...\", events(...))]",
        );
    }
    if !saw_events {
        errors.push(
            attr_span(input),
            "missing the event types handled: #[event_handler(name = \"...\", events(SomeEvent))]",
        );
    }
    if !input.generics.params.is_empty() {
        errors.push(
            input.generics.span(),
            "an EventHandler cannot be generic: its name is a constant",
        );
    }

    let failed = errors.errors_present();
    let errors = errors.finish();
    let name = name.map_or_else(|| quote!("invalid"), |n| n.to_token_stream());
    let arms = events.iter().map(|ty| {
        // Spanned at the listed type: a missing `Handle<T>` impl is reported there.
        quote_spanned! {ty.span()=>
            if <#ty as ::tidings::__private::DomainEvent>::EVENT_TYPES.contains(&event_type) {
                let decoded = <#ty as ::tidings::__private::DomainEvent>::from_recorded(event)?;
                return <Self as ::tidings::__private::Handle<#ty>>::handle(self, decoded, ctx)
                    .await
                    .map_err(::tidings::__private::HandlerFailure::Handler);
            }
        }
    });
    let type_lists = events.iter().map(|ty| {
        quote_spanned! {ty.span()=>
            types.extend_from_slice(<#ty as ::tidings::__private::DomainEvent>::EVENT_TYPES);
        }
    });
    let body = if failed {
        quote!(unimplemented!())
    } else {
        quote! {
            let event_type = event.event_type.as_str();
            #(#arms)*
            ::core::result::Result::Ok(())
        }
    };
    quote! {
        #errors
        #[allow(unused_qualifications, unreachable_code, clippy::needless_return)]
        const _: () = {
            #[automatically_derived]
            #[::tidings::__private::async_trait]
            impl ::tidings::__private::EventHandler for #ident {
                const NAME: &'static str = #name;

                fn event_types() -> ::tidings::__private::Vec<&'static str> {
                    let mut types = ::tidings::__private::Vec::new();
                    #(#type_lists)*
                    types
                }

                fn start_from() -> ::tidings::__private::StartFrom {
                    #start_from
                }

                async fn dispatch(
                    &mut self,
                    event: &::tidings::__private::RecordedEvent,
                    ctx: &mut ::tidings::__private::EventContext<'_>,
                ) -> ::core::result::Result<(), ::tidings::__private::HandlerFailure> {
                    #body
                }
            }
        };
    }
}

/// Where to report a missing key: the `#[event_handler]` attribute if present, else the type.
fn attr_span(input: &DeriveInput) -> Span {
    input
        .attrs
        .iter()
        .find(|a| a.path().is_ident("event_handler"))
        .map_or_else(|| input.ident.span(), |a| a.span())
}
