//! `#[derive(DomainEvent)]`.

use proc_macro2::TokenStream;
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
            "name" => type_name = e.str_value(&mut errors),
            _ => {}
        }
    }

    // (event type name, match pattern)
    let mut types: Vec<(String, proc_macro2::Span, TokenStream)> = Vec::new();
    match &input.data {
        Data::Struct(_) => {
            let name = type_name.map_or_else(|| ident.to_string(), |s| s.value());
            types.push((name, ident.span(), quote!(_)));
        }
        Data::Enum(data) => {
            if let Some(name) = &type_name {
                errors.push(
                    name.span(),
                    "`name` on an enum: put it on each variant instead",
                );
            }
            if data.variants.is_empty() {
                errors.push(ident.span(), "an event enum needs at least one variant");
            }
            for variant in &data.variants {
                let mut name = variant.ident.to_string();
                for e in entries(&variant.attrs, "domain_event", VARIANT_KEYS, &mut errors) {
                    if let Some(s) = e.str_value(&mut errors) {
                        name = s.value();
                    }
                }
                let v = &variant.ident;
                types.push((name, variant.ident.span(), quote!(Self::#v { .. })));
            }
        }
        Data::Union(u) => errors.push(
            u.union_token.span,
            "DomainEvent cannot be derived for a union",
        ),
    }
    for (i, (name, span, _)) in types.iter().enumerate() {
        if name.is_empty() {
            errors.push(*span, "an event type name cannot be empty");
        }
        if types[..i].iter().any(|(n, _, _)| n == name) {
            errors.push(*span, format!("event type name {name:?} is used twice"));
        }
    }

    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let names: Vec<&String> = types.iter().map(|(n, _, _)| n).collect();
    let arms = types.iter().map(|(n, _, pat)| quote!(#pat => #n,));
    let body = if errors.errors_present() {
        // Fallback: the impl still exists, so the user sees only the errors above.
        quote!(unimplemented!())
    } else {
        quote!(match self { #(#arms)* })
    };
    let errors = errors.finish();
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
