//! The header names a relay puts on each message (and an inbox reads back).

/// JetStream's de-duplication header: the event id (a UUID, hyphenated).
pub const MSG_ID: &str = "Nats-Msg-Id";
/// The event's global position in the log.
pub const POSITION: &str = "Tidings-Position";
/// The event's stream id.
pub const STREAM: &str = "Tidings-Stream";
/// The event's version within its stream.
pub const STREAM_VERSION: &str = "Tidings-Stream-Version";
/// The stream's category.
pub const CATEGORY: &str = "Tidings-Category";
/// The event's type name.
pub const EVENT_TYPE: &str = "Tidings-Event-Type";
/// The version of the payload's schema.
pub const SCHEMA_VERSION: &str = "Tidings-Schema-Version";
/// The correlation id, when the event has one.
pub const CORRELATION_ID: &str = "Tidings-Correlation-Id";
/// The causation id, when the event has one.
pub const CAUSATION_ID: &str = "Tidings-Causation-Id";
/// When the store committed the event, in microseconds since the Unix epoch.
pub const TIMESTAMP: &str = "Tidings-Timestamp-Micros";
/// The name of the relay that published the message.
pub const RELAY: &str = "Tidings-Relay";
/// The prefix of the headers that carry an event's metadata (`Tidings-Meta-tenant: acme`),
/// except the W3C trace context keys, which go as `traceparent` and `tracestate` themselves so
/// that a traced consumer finds them where the W3C convention for messaging puts them.
pub const META_PREFIX: &str = "Tidings-Meta-";

/// The header that carries metadata `key`: [`META_PREFIX`] and the key, its bytes outside the
/// characters a header name may hold (RFC 9110 `tchar`) written `%XX`; `traceparent` and
/// `tracestate` as they are.
pub fn metadata_header(key: &str) -> String {
    if crate::trace::TRACE_CONTEXT_KEYS.contains(&key) {
        return key.to_owned();
    }
    let mut name = String::with_capacity(META_PREFIX.len() + key.len());
    name.push_str(META_PREFIX);
    for b in key.bytes() {
        let tchar = b.is_ascii_alphanumeric() || b"!#$&'*+-.^_`|~".contains(&b);
        if tchar {
            name.push(b as char);
        } else {
            name.push_str(&format!("%{b:02X}"));
        }
    }
    name
}

#[cfg(test)]
mod tests {
    use super::metadata_header;

    #[test]
    fn metadata_keys_become_header_names() {
        assert_eq!(metadata_header("tenant"), "Tidings-Meta-tenant");
        assert_eq!(metadata_header("traceparent"), "traceparent");
        assert_eq!(metadata_header("tracestate"), "tracestate");
        assert_eq!(
            metadata_header("user id: é"),
            "Tidings-Meta-user%20id%3A%20%C3%A9"
        );
        assert_eq!(metadata_header("100%"), "Tidings-Meta-100%25");
    }
}
