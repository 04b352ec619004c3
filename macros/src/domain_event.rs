//! `#[derive(DomainEvent)]`.

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::{Data, DeriveInput};

use crate::attr::{entries, Errors};

const TYPE_KEYS: &[&str] = &["version", "name"];
const VARIANT_KEYS: &[&str] = &["name"];

pub fn expand(input: &DeriveInput) -> TokenStream {
    let mut errors = Errors::default();
    let ident = &input.ident;
    let type_entries = entries(&input.attrs, "domain_event", TYPE_KEYS, &mut errors);
    let mut version: u32 = 1;
    // The type-level `name`, with the span of its key.
    let mut type_name = None;
    for e in &type_entries {
        match e.key.as_str() {
            "version" => {
                if let Some(lit) = e.int_value(&mut errors) {
                    match lit.base10_parse::<u32>() {
                        Ok(0) | Err(_) => {
                            errors.push(lit.span(), "version must be 1 or more (a u32)")
                        }
                        Ok(v) => version = v,
                    }
                }
            }
            "name" => type_name = e.str_value(&mut errors).map(|s| (s, e.span)),
            _ => {}
        }
    }

    // (event type name; its span: the `name = "..."` string, else the type's or variant's name;
    // the variant; match pattern)
    let mut types: Vec<(String, Span, Option<&syn::Ident>, TokenStream)> = Vec::new();
    match &input.data {
        Data::Struct(_) => {
            let (name, span) = type_name.map_or_else(
                || (ident.to_string(), ident.span()),
                |(s, _)| (s.value(), s.span()),
            );
            types.push((name, span, None, quote!(_)));
        }
        Data::Enum(data) => {
            if let Some((_, key_span)) = &type_name {
                errors.push(
                    *key_span,
                    "`name` names a struct's event type; an enum has one event type per variant: \
                     put #[domain_event(name = \"...\")] on a variant instead",
                );
            }
            if data.variants.is_empty() {
                errors.push(ident.span(), "an event enum needs at least one variant");
            }
            for variant in &data.variants {
                let v = &variant.ident;
                let (mut name, mut span) = (v.to_string(), v.span());
                for e in entries(&variant.attrs, "domain_event", VARIANT_KEYS, &mut errors) {
                    if let Some(s) = e.str_value(&mut errors) {
                        (name, span) = (s.value(), s.span());
                    }
                }
                types.push((name, span, Some(v), quote!(Self::#v { .. })));
            }
        }
        Data::Union(u) => errors.push(
            u.union_token.span,
            "DomainEvent cannot be derived for a union",
        ),
    }
    for (i, (name, span, _, _)) in types.iter().enumerate() {
        if name.is_empty() {
            errors.push(*span, "an event type name cannot be empty");
        }
        if let Some((_, _, first, _)) = types[..i].iter().find(|(n, ..)| n == name) {
            let first = first.map_or_else(String::new, |v| format!(": variant `{v}` has it too"));
            errors.push(
                *span,
                format!("event type name {name:?} is used twice{first}"),
            );
        }
    }

    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let names: Vec<&String> = types.iter().map(|(n, ..)| n).collect();
    let arms = types.iter().map(|(n, _, _, pat)| quote!(#pat => #n,));
    let body = if errors.errors_present() {
        // Fallback: the impl still exists, so the user sees only the errors above.
        quote!(unimplemented!())
    } else {
        quote!(match self { #(#arms)* })
    };
    let errors = errors.finish();
    if matches!(input.data, Data::Union(_)) {
        // No fallback impl: a union is never `Serialize`, so it would only add errors.
        return quote!(#errors);
    }
    quote! {
        #errors
        #[allow(non_upper_case_globals, unused_attributes, unused_qualifications, unreachable_code)]
        const _: () = {
            #[automatically_derived]
            impl #impl_generics ::tidings::__private::DomainEvent for #ident #ty_generics #where_clause {
                const EVENT_TYPES: &'static [&'static str] = &[#(#names),*];
                fn event_type(&self) -> &'static str {
                    #body
                }
                fn event_version(&self) -> u32 {
                    #version
                }
            }
        };
    }
}
