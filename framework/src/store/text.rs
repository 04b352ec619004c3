//! [`Text`]: the immutable, cheaply cloned string of a recorded event's stream id, category and
//! type, which a read slices out of one buffer per page instead of allocating per field.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

use bytestring::ByteString;

/// An immutable UTF-8 string that can share its bytes with other values: the stream id,
/// category and event type of a [`RecordedEvent`](super::RecordedEvent).
///
/// A read (of either store) copies the strings of a page of events into one buffer, and their
/// payloads into another, and hands out slices of them, so reading an event allocates nothing
/// for its strings and payload (its metadata, when it has any, is a map of its own), and cloning
/// a `Text` never copies. It reads like a `&str` (it dereferences to one), compares with
/// `str`, `&str` and `String`, and converts to a `String` with [`to_string`](ToString) or
/// [`String::from`].
///
/// ```
/// use tidings::store::Text;
/// let stream = Text::from("order-42");
/// assert_eq!(stream, "order-42");
/// assert_eq!(stream.as_str().split_once('-'), Some(("order", "42")));
/// assert!(stream.starts_with("order")); // any method of `str`
/// let owned: String = stream.clone().into();
/// assert_eq!(owned, "order-42");
/// ```
///
/// Events of one page share its buffers: keeping one event keeps the whole page's bytes (less
/// than [`READ_PAGE_BYTES`](super::READ_PAGE_BYTES) plus one event) in memory. To keep a few
/// events out of many pages for long, keep [`RecordedEvent::detached`](super::RecordedEvent::detached)
/// copies.
#[derive(Clone, Default)]
pub struct Text(ByteString);

impl Text {
    /// The empty string (no allocation).
    pub const fn new() -> Self {
        Text(ByteString::from_static(""))
    }

    /// A `Text` of a `'static` string, without copying it.
    pub const fn from_static(text: &'static str) -> Self {
        Text(ByteString::from_static(text))
    }

    /// The string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A copy that shares no buffer with other values (see the type's documentation).
    #[must_use]
    pub fn detached(&self) -> Self {
        Text(ByteString::from(self.as_str()))
    }

    /// The part `range` of `self`, sharing its buffer (crate-internal: the page reader).
    pub(crate) fn slice(&self, range: std::ops::Range<usize>) -> Self {
        Text(self.0.slice_ref(&self.0[range]))
    }
}

impl Deref for Text {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl AsRef<[u8]> for Text {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl Borrow<str> for Text {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<String> for Text {
    fn from(text: String) -> Self {
        Text(ByteString::from(text))
    }
}

impl From<&str> for Text {
    fn from(text: &str) -> Self {
        Text(ByteString::from(text))
    }
}

impl From<&String> for Text {
    fn from(text: &String) -> Self {
        Text(ByteString::from(text.as_str()))
    }
}

impl From<Text> for String {
    fn from(text: Text) -> Self {
        text.as_str().to_owned()
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_str(), f)
    }
}

impl PartialEq for Text {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Text {}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for Text {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other.as_str()
    }
}

impl PartialEq<Text> for str {
    fn eq(&self, other: &Text) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<Text> for &str {
    fn eq(&self, other: &Text) -> bool {
        *self == other.as_str()
    }
}

impl PartialEq<Text> for String {
    fn eq(&self, other: &Text) -> bool {
        self.as_str() == other.as_str()
    }
}

impl PartialOrd for Text {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Text {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl Hash for Text {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // As `str` hashes, so that `Borrow<str>` lookups in maps agree.
        self.as_str().hash(state);
    }
}

impl serde::Serialize for Text {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Text {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Text::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn compares_hashes_and_orders_as_its_string() {
        let a = Text::from("order-1".to_owned());
        assert_eq!(a, "order-1");
        assert_eq!("order-1", a);
        assert_eq!(a, "order-1".to_owned());
        let (a_text, b_text) = (Text::from("a"), Text::from("b"));
        assert!(a_text < b_text);
        let mut map = HashMap::new();
        map.insert(a.clone(), 1);
        assert_eq!(map.get("order-1"), Some(&1));
        assert_eq!(format!("{a} {a:?}"), "order-1 \"order-1\"");
    }

    #[test]
    fn slices_share_the_buffer_and_detached_copies_do_not() {
        let page = Text::from("order-1payment-2".to_owned());
        let order = page.slice(0..7);
        let payment = page.slice(7..16);
        assert_eq!((order.as_str(), payment.as_str()), ("order-1", "payment-2"));
        assert_eq!(order.as_ptr(), page.as_ptr());
        let copy = payment.detached();
        assert_eq!(copy, payment);
        assert_ne!(copy.as_ptr(), payment.as_ptr());
    }

    #[test]
    fn serializes_as_a_string() {
        let json = serde_json::to_string(&Text::from("x")).unwrap();
        assert_eq!(json, "\"x\"");
        let back: Text = serde_json::from_str(&json).unwrap();
        assert_eq!(back, "x");
    }
}
