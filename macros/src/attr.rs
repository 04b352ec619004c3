//! Parsing `#[name(key = value, ...)]` attributes: known keys only, each at most once, every
//! error collected.

use proc_macro2::Span;
use quote::ToTokens;
use syn::punctuated::Punctuated;
use syn::{Attribute, Expr, ExprLit, Lit, LitInt, LitStr, Token};

/// Collects errors so that all of them are reported at once (like serde's `Ctxt`).
#[derive(Default)]
pub struct Errors {
    errors: Option<syn::Error>,
    unknown_key: bool,
}

impl Errors {
    /// Records an error at `span`.
    pub fn push(&mut self, span: Span, message: impl std::fmt::Display) {
        self.add(syn::Error::new(span, message));
    }

    /// Records an error spanning all of `tokens` (the whole range is underlined).
    pub fn push_spanned(&mut self, tokens: impl ToTokens, message: impl std::fmt::Display) {
        self.add(syn::Error::new_spanned(tokens, message));
    }

    /// Records an error.
    pub fn add(&mut self, error: syn::Error) {
        match &mut self.errors {
            Some(e) => e.combine(error),
            None => self.errors = Some(error),
        }
    }

    /// Whether any error was recorded.
    pub fn errors_present(&self) -> bool {
        self.errors.is_some()
    }

    /// Whether an unknown key was reported: a misspelt key, so that "missing key" errors would
    /// only repeat it.
    pub fn unknown_key_seen(&self) -> bool {
        self.unknown_key
    }

    /// The errors as `compile_error!` invocations, if any.
    pub fn finish(self) -> Option<proc_macro2::TokenStream> {
        self.errors.map(|e| e.to_compile_error())
    }
}

/// One `key = value` (or bare `key`) of an attribute, with the key's span.
pub struct Entry {
    pub key: String,
    pub span: Span,
    pub value: Option<Expr>,
    /// For `key(a, b, c)`: the paths inside (possibly none).
    pub list: Option<Vec<syn::Path>>,
}

/// Reads every `#[name(...)]` attribute, checking keys against `known`; reports unknown and
/// duplicate keys.
pub fn entries(attrs: &[Attribute], name: &str, known: &[&str], errors: &mut Errors) -> Vec<Entry> {
    let mut out: Vec<Entry> = Vec::new();
    for attr in attrs.iter().filter(|a| a.path().is_ident(name)) {
        let result = attr.parse_nested_meta(|meta| {
            let key = meta
                .path
                .get_ident()
                .map(|i| i.to_string())
                .unwrap_or_default();
            let span = meta
                .path
                .segments
                .first()
                .map_or_else(Span::call_site, |s| s.ident.span());
            if !known.contains(&key.as_str()) {
                errors.push(
                    span,
                    format!(
                        "unknown key `{}` in #[{name}(...)]; expected one of: {}",
                        quote::ToTokens::to_token_stream(&meta.path),
                        known.join(", ")
                    ),
                );
                errors.unknown_key = true;
                // Skip its value, if any, to go on with the next key.
                if meta.input.peek(syn::Token![=]) {
                    let _: Expr = meta.value()?.parse()?;
                } else if meta.input.peek(syn::token::Paren) {
                    let _ = meta.parse_nested_meta(|_| Ok(()));
                }
                return Ok(());
            }
            if out.iter().any(|e| e.key == key) {
                errors.push(span, format!("duplicate key `{key}` in #[{name}(...)]"));
            }
            let mut entry = Entry {
                key,
                span,
                value: None,
                list: None,
            };
            if meta.input.peek(syn::Token![=]) {
                entry.value = Some(meta.value()?.parse()?);
            } else if meta.input.peek(syn::token::Paren) {
                // Not `parse_nested_meta`: an empty list must reach the caller, whose error
                // says what belongs there.
                let content;
                syn::parenthesized!(content in meta.input);
                let list = Punctuated::<syn::Path, Token![,]>::parse_terminated(&content)?;
                entry.list = Some(list.into_iter().collect());
            }
            out.push(entry);
            Ok(())
        });
        if let Err(e) = result {
            errors.add(e);
        }
    }
    out
}

impl Entry {
    /// The value as a string literal.
    pub fn str_value(&self, errors: &mut Errors) -> Option<LitStr> {
        match &self.value {
            Some(Expr::Lit(ExprLit {
                lit: Lit::Str(s), ..
            })) => Some(s.clone()),
            _ => {
                self.wrong_value(errors, format!("a string: {} = \"...\"", self.key));
                None
            }
        }
    }

    /// The value as an integer literal.
    pub fn int_value(&self, errors: &mut Errors) -> Option<LitInt> {
        match &self.value {
            Some(Expr::Lit(ExprLit {
                lit: Lit::Int(i), ..
            })) => Some(i.clone()),
            _ => {
                self.wrong_value(errors, format!("an integer: {} = 2", self.key));
                None
            }
        }
    }

    /// Reports a value of the wrong kind at the value, or at the key if it has none.
    fn wrong_value(&self, errors: &mut Errors, expected: String) {
        let message = format!("`{}` takes {expected}", self.key);
        match &self.value {
            Some(value) => errors.push_spanned(value, message),
            None => errors.push(self.span, message),
        }
    }
}
