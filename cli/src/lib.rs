//! The `tidings` operations CLI, also embeddable by an application (see issue 8).
