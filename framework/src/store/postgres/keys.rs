//! The advisory-lock keys and the notification channel of one schema.
//!
//! Advisory locks are shared by everything in a database, so each key is derived from the
//! schema's name: two tidings schemas in one database never wait on each other's locks.

/// The lock keys and channel of one schema.
#[derive(Clone, Debug)]
pub struct Keys {
    /// The first half of each stream's two-part transaction lock (the second is the stream id's
    /// `hashtext`).
    pub stream_class: i32,
    /// The session lock under which a writer takes its transaction id and positions.
    pub positions: i64,
    /// The transaction lock that serializes migrations.
    pub migrate: i64,
    /// The LISTEN/NOTIFY channel that wakes readers after an append.
    pub channel: String,
}

impl Keys {
    /// The keys of `schema`.
    pub fn new(schema: &str) -> Self {
        let hash = |what: &str| crc32fast::hash(format!("tidings/{what}/{schema}").as_bytes());
        // Single-key advisory locks live in their own key space (apart from two-key ones); the
        // high bits tell the two kinds of single keys apart.
        Keys {
            stream_class: hash("streams") as i32,
            positions: (0x7469_0001_i64 << 32) | i64::from(hash("positions")),
            migrate: (0x7469_0002_i64 << 32) | i64::from(hash("migrate")),
            channel: format!("tidings_{schema}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Keys;

    #[test]
    fn keys_differ_between_schemas_and_between_kinds() {
        let (a, b) = (Keys::new("tidings"), Keys::new("shop"));
        assert_ne!(a.stream_class, b.stream_class);
        assert_ne!(a.positions, b.positions);
        assert_ne!(a.positions, a.migrate);
        assert_eq!(a.channel, "tidings_tidings");
    }
}
