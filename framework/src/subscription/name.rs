//! The name of a subscription: a validated value, chosen at run time or taken from the handler.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// The longest subscription name, in bytes. It leaves room under the store's 512-byte key limit
/// for the framework to derive names from it (such as `{name}/{partition}`).
pub const MAX_SUBSCRIPTION_NAME_LEN: usize = 200;

/// The name of a subscription: where its checkpoint, state, status, parked events and lease are
/// kept in the store.
///
/// One handler type can run under several names, each a subscription of its own (a rebuild
/// side by side, `totals-v2` beside `totals`; one instance per tenant): set it with
/// [`SubscriptionConfig::name`](super::SubscriptionConfig::name). Without it, a subscription is
/// named by its handler's [`EventHandler::NAME`](super::EventHandler::NAME).
///
/// A name is 1 to [`MAX_SUBSCRIPTION_NAME_LEN`] bytes of ASCII letters, digits, `-`, `_`, `.`
/// and `:`, and starts with a letter or a digit (`/` is kept for names the framework derives).
///
/// ```
/// use tidings::subscription::{SubscriptionName, SubscriptionNameError};
///
/// let name = SubscriptionName::new("totals-v2")?;
/// assert_eq!(name, "totals-v2");
/// assert_eq!(name.as_str(), "totals-v2");
/// let tenant: SubscriptionName = format!("totals:{}", "acme").parse()?;
/// assert_eq!(tenant.to_string(), "totals:acme");
/// assert!(matches!(
///     SubscriptionName::new("totals v2"),
///     Err(SubscriptionNameError::Character { character: ' ', at: 6, .. })
/// ));
/// # Ok::<(), SubscriptionNameError>(())
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubscriptionName(Arc<str>);

/// Why a string is not a valid [`SubscriptionName`]. Bad input: fix the name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubscriptionNameError {
    /// The name is empty.
    #[error("a subscription name cannot be empty")]
    Empty,
    /// The name is longer than [`MAX_SUBSCRIPTION_NAME_LEN`] bytes.
    #[error(
        "the subscription name {name:?} is {len} bytes, more than {MAX_SUBSCRIPTION_NAME_LEN}"
    )]
    TooLong {
        /// The name given.
        name: String,
        /// Its length in bytes.
        len: usize,
    },
    /// The name has a character that a name cannot have (or starts with one it cannot start
    /// with).
    #[error(
        "the subscription name {name:?} has {character:?} at byte {at}: a name is ASCII letters, \
         digits, '-', '_', '.' and ':', starting with a letter or a digit"
    )]
    Character {
        /// The name given.
        name: String,
        /// The first character refused.
        character: char,
        /// Its byte offset.
        at: usize,
    },
}

impl SubscriptionName {
    /// Validates `name`.
    pub fn new(name: impl AsRef<str>) -> Result<Self, SubscriptionNameError> {
        let name = name.as_ref();
        check(name)?;
        Ok(SubscriptionName(Arc::from(name)))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn check(name: &str) -> Result<(), SubscriptionNameError> {
    if name.is_empty() {
        return Err(SubscriptionNameError::Empty);
    }
    if name.len() > MAX_SUBSCRIPTION_NAME_LEN {
        return Err(SubscriptionNameError::TooLong {
            name: name.to_owned(),
            len: name.len(),
        });
    }
    let refused = name.char_indices().find(|&(at, c)| {
        let allowed = c.is_ascii_alphanumeric() || (at > 0 && matches!(c, '-' | '_' | '.' | ':'));
        !allowed
    });
    match refused {
        Some((at, character)) => Err(SubscriptionNameError::Character {
            name: name.to_owned(),
            character,
            at,
        }),
        None => Ok(()),
    }
}

impl fmt::Display for SubscriptionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SubscriptionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl AsRef<str> for SubscriptionName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for SubscriptionName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for SubscriptionName {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl FromStr for SubscriptionName {
    type Err = SubscriptionNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SubscriptionName::new(s)
    }
}

impl TryFrom<&str> for SubscriptionName {
    type Error = SubscriptionNameError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        SubscriptionName::new(s)
    }
}

impl TryFrom<String> for SubscriptionName {
    type Error = SubscriptionNameError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        SubscriptionName::new(s)
    }
}

impl PartialEq<str> for SubscriptionName {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for SubscriptionName {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl PartialEq<SubscriptionName> for &str {
    fn eq(&self, other: &SubscriptionName) -> bool {
        *self == &*other.0
    }
}

impl From<SubscriptionName> for String {
    fn from(name: SubscriptionName) -> String {
        name.0.as_ref().to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for ok in ["a", "totals", "totals-v2", "totals:acme", "x_1.2", "9lives"] {
            assert_eq!(SubscriptionName::new(ok).unwrap(), ok);
        }
        assert_eq!(SubscriptionName::new(""), Err(SubscriptionNameError::Empty));
        let long = "a".repeat(MAX_SUBSCRIPTION_NAME_LEN + 1);
        assert!(matches!(
            SubscriptionName::new(&long),
            Err(SubscriptionNameError::TooLong { len, .. }) if len == long.len()
        ));
        assert!(SubscriptionName::new("a".repeat(MAX_SUBSCRIPTION_NAME_LEN)).is_ok());
        for (bad, character, at) in [
            ("-x", '-', 0),
            ("a/0", '/', 1),
            ("a b", ' ', 1),
            ("a\0", '\0', 1),
            ("é", 'é', 0),
        ] {
            match SubscriptionName::new(bad) {
                Err(SubscriptionNameError::Character {
                    character: c,
                    at: i,
                    ..
                }) => assert_eq!((c, i), (character, at), "{bad:?}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }
}
