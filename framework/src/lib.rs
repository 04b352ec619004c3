#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(missing_debug_implementations)]
#![warn(clippy::return_self_not_must_use)]

// Lets the derive macros' `::tidings::...` paths resolve inside this crate's own tests too.
extern crate self as tidings;

pub mod aggregate;
#[cfg(feature = "nats")]
pub mod broker;
mod event;
pub mod metrics;
mod panic;
pub mod process;
pub mod store;
pub mod subscription;
pub mod trace;

pub use async_trait::async_trait;
pub use event::{DomainEvent, EventDecodeError, UpcastError};
pub use tidings_macros::{DomainEvent, EventHandler, ProcessManager};

/// The names most programs need: `use tidings::prelude::*;`.
///
/// Aggregates and their registry, domain events (trait and derive), the store (the trait, the
/// embedded store, [`IntoEventStore`](crate::store::IntoEventStore) to pass it around),
/// subscriptions (the registry, a handler's traits and derive, its context, settings, names
/// and waits), and `async_trait` for `HandleEvent` impls.
pub mod prelude {
    pub use crate::aggregate::{
        Aggregate, AggregateConfig, AggregateError, AggregateRegistry, CommandEnvelope,
        CommandOutcome,
    };
    pub use crate::store::{
        EventData, EventStore, ExpectedVersion, Filter, IntoEventStore, RecordedEvent,
        SledEventStore, StoreError,
    };
    pub use crate::subscription::{
        Among, EventContext, EventHandler, FailurePolicy, HandleEvent, HandlerError, StartFrom,
        SubscriptionConfig, SubscriptionHandle, SubscriptionName, Subscriptions,
    };
    pub use crate::{async_trait, DomainEvent, EventHandler, ProcessManager};
}

/// Paths used by code that the derive macros generate. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::event::DomainEvent;
    pub use crate::process::{
        handle_deadline as process_deadline, handle_event as process_event, DEADLINE_DUE_TYPE,
    };
    pub use crate::store::RecordedEvent;
    pub use crate::subscription::{
        EventContext, EventHandler, HandleEvent, HandlerFailure, StartFrom,
    };
    pub use async_trait::async_trait;
    pub use std::vec::Vec;
}

#[cfg(test)]
mod derive_tests {
    use serde::{Deserialize, Serialize};

    use crate::store::{EventStore, ExpectedVersion, SledEventStore};
    use crate::DomainEvent;

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, crate::DomainEvent)]
    #[domain_event(version = 2)]
    enum Order {
        Placed {
            cents: u64,
        },
        #[domain_event(name = "OrderCancelled")]
        Cancelled,
    }

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, crate::DomainEvent)]
    struct Restocked {
        sku: String,
        quantity: u32,
    }

    #[test]
    fn derived_event_types_and_versions() {
        assert_eq!(Order::EVENT_TYPES, &["Placed", "OrderCancelled"]);
        assert_eq!(Order::Cancelled.event_type(), "OrderCancelled");
        assert_eq!(Order::Placed { cents: 1 }.event_version(), 2);
        assert_eq!(Restocked::EVENT_TYPES, &["Restocked"]);
    }

    #[tokio::test]
    async fn a_domain_event_round_trips_through_the_store_and_a_wrong_payload_names_its_position() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledEventStore::open(dir.path()).unwrap();
        let events = vec![
            Order::Placed { cents: 1250 }.to_event_data().unwrap(),
            Order::Cancelled.to_event_data().unwrap(),
            crate::store::EventData::new("Placed", b"{\"Placed\":{\"cents\":\"x\"}}".to_vec())
                .with_schema_version(2),
        ];
        store
            .append("order-1", ExpectedVersion::NoStream, events)
            .await
            .unwrap();
        let read = store.read_stream("order-1", 1, 10).await.unwrap();
        assert_eq!(read[0].schema_version, 2);
        assert_eq!(
            Order::from_recorded(&read[0]).unwrap(),
            Order::Placed { cents: 1250 }
        );
        assert_eq!(Order::from_recorded(&read[1]).unwrap(), Order::Cancelled);
        let err = Order::from_recorded(&read[2]).unwrap_err();
        assert_eq!((err.position, err.event_type.as_str()), (3, "Placed"));
        // A type this Rust type does not know is an error too, not a skip.
        assert!(Restocked::from_recorded(&read[0]).is_err());
    }
}
