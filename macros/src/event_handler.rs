//! `#[derive(EventHandler)]`, and `#[derive(ProcessManager)]`, which is an event handler whose
//! events go to the framework's process-manager routing instead of `HandleEvent<E>` impls.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;
use syn::{DeriveInput, LitStr};

use crate::attr::{entries, Errors};

const KEYS: &[&str] = &["name", "events", "start_from"];

/// What is derived.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `#[derive(EventHandler)]`: each event goes to its `HandleEvent<E>` impl.
    Handler,
    /// `#[derive(ProcessManager)]`: each event goes to `Reacts<E>` through the framework, and
    /// the framework's deadline records are read too.
    Process,
}

impl Kind {
    fn attr(self) -> &'static str {
        match self {
            Kind::Handler => "event_handler",
            Kind::Process => "process_manager",
        }
    }
}

pub fn expand(input: &DeriveInput, kind: Kind) -> TokenStream {
    let mut errors = Errors::default();
    let ident = &input.ident;
    let attr = kind.attr();
    let found = entries(&input.attrs, attr, KEYS, &mut errors);
    let mut name: Option<LitStr> = None;
    let mut events: Vec<syn::Path> = Vec::new();
    let mut start_from = quote!(::tidings::__private::StartFrom::Beginning);
    let mut saw_events = false;
    for e in &found {
        match e.key.as_str() {
            "name" => {
                if let Some(lit) = e.str_value(&mut errors) {
                    if let Err(why) = check_name(&lit.value()) {
                        errors.push(lit.span(), &why);
                    }
                    if name.is_none() {
                        name = Some(lit);
                    }
                }
            }
            "events" => {
                saw_events = true;
                match &e.list {
                    Some(list) if list.is_empty() => errors.push(
                        e.span,
                        "`events()` is empty: list the event types handled, \
                         e.g. events(OrderEvent, PaymentEvent)",
                    ),
                    Some(list) => {
                        for path in list {
                            let text = path.to_token_stream().to_string();
                            if events
                                .iter()
                                .any(|p| p.to_token_stream().to_string() == text)
                            {
                                errors.push_spanned(
                                    path,
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
    // After an unknown key (most likely a misspelt one), a missing key would only repeat it.
    if !errors.unknown_key_seen() {
        if !found.iter().any(|e| e.key == "name") {
            missing(
                input,
                attr,
                &mut errors,
                &format!("missing subscription name: #[{attr}(name = \"...\", events(...))]"),
            );
        }
        if !saw_events {
            missing(
                input,
                attr,
                &mut errors,
                &format!(
                    "missing the event types handled: #[{attr}(name = \"...\", events(SomeEvent))]"
                ),
            );
        }
    }
    if !input.generics.params.is_empty() {
        errors.push_spanned(
            &input.generics,
            format!(
                "{} cannot be derived for a generic type: its subscription name is one \
                 constant, which every instantiation would share",
                match kind {
                    Kind::Handler => "EventHandler",
                    Kind::Process => "ProcessManager",
                }
            ),
        );
    }

    let failed = errors.errors_present();
    // A generic type's fallback impl names its parameters (else "missing generics" follows the
    // error above); `Self: Send + 'static` stands for the bounds the parameters lack.
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let where_clause = if input.generics.params.is_empty() {
        quote!(#where_clause)
    } else {
        let predicates = where_clause.iter().flat_map(|w| &w.predicates);
        quote!(where #(#predicates,)* Self: ::core::marker::Send + 'static)
    };
    let errors = errors.finish();
    let name = name.map_or_else(|| quote!("invalid"), |n| n.to_token_stream());
    let arms = events.iter().map(|ty| {
        // Spanned at the listed type: a missing `HandleEvent<T>` impl is reported there.
        let call = match kind {
            Kind::Handler => quote_spanned! {ty.span()=>
                <Self as ::tidings::__private::HandleEvent<#ty>>::handle(self, decoded, ctx)
                    .await
                    .map_err(::tidings::__private::HandlerFailure::Handler)
            },
            Kind::Process => quote_spanned! {ty.span()=>
                ::tidings::__private::process_event::<Self, #ty>(self, decoded, ctx).await
            },
        };
        quote_spanned! {ty.span()=>
            if <#ty as ::tidings::__private::DomainEvent>::EVENT_TYPES.contains(&event_type) {
                let decoded = <#ty as ::tidings::__private::DomainEvent>::from_recorded(event)?;
                return #call;
            }
        }
    });
    let partitionable = match kind {
        Kind::Handler => quote!(),
        Kind::Process => quote! {
            fn partitionable() -> bool {
                false
            }
        },
    };
    let (deadline_type, deadline_arm) = match kind {
        Kind::Handler => (quote!(), quote!()),
        Kind::Process => (
            quote!(types.push(::tidings::__private::DEADLINE_DUE_TYPE);),
            quote! {
                if event_type == ::tidings::__private::DEADLINE_DUE_TYPE {
                    return ::tidings::__private::process_deadline::<Self>(self, ctx).await;
                }
            },
        ),
    };
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
            #deadline_arm
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
            impl #impl_generics ::tidings::__private::EventHandler for #ident #ty_generics #where_clause {
                const NAME: &'static str = #name;

                fn event_types() -> ::tidings::__private::Vec<&'static str> {
                    let mut types = ::tidings::__private::Vec::new();
                    #(#type_lists)*
                    #deadline_type
                    types
                }

                fn start_from() -> ::tidings::__private::StartFrom {
                    #start_from
                }

                #partitionable

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

/// Reports a missing key at the whole `#[event_handler]` attribute if present, else the type.
fn missing(input: &DeriveInput, attr: &str, errors: &mut Errors, message: &str) {
    match input.attrs.iter().find(|a| a.path().is_ident(attr)) {
        Some(attr) => errors.push_spanned(attr, message),
        None => errors.push(input.ident.span(), message),
    }
}

/// The longest subscription name (`tidings::subscription::MAX_SUBSCRIPTION_NAME_LEN`).
const MAX_NAME_LEN: usize = 200;

/// The rule of `tidings::subscription::SubscriptionName`, checked when the derive compiles.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!(
            "the subscription name must be 1 to {MAX_NAME_LEN} bytes"
        ));
    }
    let refused = name.char_indices().find(|&(at, c)| {
        !(c.is_ascii_alphanumeric() || (at > 0 && matches!(c, '-' | '_' | '.' | ':')))
    });
    match refused {
        Some((_, c)) => Err(format!(
            "the subscription name has {c:?}: a name is ASCII letters, digits, '-', '_', '.' \
             and ':', starting with a letter or a digit"
        )),
        None => Ok(()),
    }
}
