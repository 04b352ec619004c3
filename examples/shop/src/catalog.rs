//! What the shop sells: the price list, and order lines (`sku=quantity`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The price list: every SKU the shop sells, with its unit price in cents.
pub const CATALOG: &[(&str, u64)] = &[
    ("widget", 1_250),
    ("gadget", 4_999),
    ("gizmo", 799),
    ("doohickey", 2_500),
];

/// The unit price of `sku` in cents, if the shop sells it.
pub fn price(sku: &str) -> Option<u64> {
    CATALOG.iter().find(|(s, _)| *s == sku).map(|(_, p)| *p)
}

/// One line of an order or of a stock movement: a quantity of one SKU.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Line {
    /// The stock keeping unit, one of [`CATALOG`].
    pub sku: String,
    /// How many.
    pub quantity: u32,
}

impl Line {
    /// A line of `quantity` × `sku`.
    pub fn new(sku: impl Into<String>, quantity: u32) -> Self {
        Line {
            sku: sku.into(),
            quantity,
        }
    }
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.sku, self.quantity)
    }
}

/// Why a line does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// Not of the form `sku=quantity`.
    #[error("{0:?} is not a line: write sku=quantity, e.g. widget=2")]
    Syntax(String),
    /// The quantity is not a positive whole number.
    #[error("{0:?}: the quantity must be a whole number from 1 to 4294967295")]
    Quantity(String),
    /// The shop does not sell that SKU.
    #[error("unknown sku {0:?} (the shop sells {skus})", skus = skus())]
    UnknownSku(String),
}

fn skus() -> String {
    CATALOG
        .iter()
        .map(|(s, _)| *s)
        .collect::<Vec<_>>()
        .join(", ")
}

impl FromStr for Line {
    type Err = LineError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (sku, quantity) = s
            .split_once('=')
            .ok_or_else(|| LineError::Syntax(s.to_owned()))?;
        let quantity: u32 = quantity
            .trim()
            .parse()
            .ok()
            .filter(|q| *q > 0)
            .ok_or_else(|| LineError::Quantity(s.to_owned()))?;
        let sku = sku.trim();
        if price(sku).is_none() {
            return Err(LineError::UnknownSku(sku.to_owned()));
        }
        Ok(Line::new(sku, quantity))
    }
}

/// The total of `lines` at catalog prices, in cents; `None` if a SKU is unknown or it overflows.
pub fn total(lines: &[Line]) -> Option<u64> {
    lines.iter().try_fold(0u64, |sum, l| {
        price(&l.sku)?
            .checked_mul(u64::from(l.quantity))
            .and_then(|c| sum.checked_add(c))
    })
}

/// Merges lines of the same SKU and sorts them by SKU, so that equal orders compare equal.
pub fn normalize(lines: &[Line]) -> Vec<Line> {
    let mut merged: std::collections::BTreeMap<&str, u64> = Default::default();
    for l in lines {
        *merged.entry(&l.sku).or_default() += u64::from(l.quantity);
    }
    merged
        .into_iter()
        .map(|(sku, q)| Line::new(sku, u32::try_from(q).unwrap_or(u32::MAX)))
        .collect()
}

/// Cents as money: `12.50`.
pub fn money(cents: u64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_and_bad_lines_say_why() {
        assert_eq!("widget=2".parse(), Ok(Line::new("widget", 2)));
        assert_eq!(
            "widget".parse::<Line>(),
            Err(LineError::Syntax("widget".into()))
        );
        assert_eq!(
            "widget=0".parse::<Line>(),
            Err(LineError::Quantity("widget=0".into()))
        );
        assert_eq!(
            "sprocket=1".parse::<Line>(),
            Err(LineError::UnknownSku("sprocket".into()))
        );
    }

    #[test]
    fn totals_use_catalog_prices() {
        let lines = [Line::new("widget", 2), Line::new("gizmo", 1)];
        assert_eq!(total(&lines), Some(2 * 1_250 + 799));
        assert_eq!(total(&[Line::new("nope", 1)]), None);
        assert_eq!(money(1_250), "12.50");
        assert_eq!(
            normalize(&[Line::new("b", 1), Line::new("a", 2), Line::new("b", 3)]),
            vec![Line::new("a", 2), Line::new("b", 4)]
        );
    }
}
