#![doc = include_str!("../../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod store;

/// The names most programs need.
pub mod prelude {
    pub use crate::store::{
        EventData, EventStore, ExpectedVersion, Filter, RecordedEvent, SledEventStore, StoreError,
    };
}
