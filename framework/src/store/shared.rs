//! One way to hand a store to the parts of a program: [`IntoEventStore`].

use std::sync::Arc;

use super::EventStore;

/// What the framework's entry points accept as a store: a store by value (it is put behind an
/// `Arc`), an `Arc` of one, or an `Arc<dyn EventStore>`. Each becomes the shared
/// `Arc<dyn EventStore>` they keep.
///
/// Open the store once and pass clones of one `Arc` (or of the store: `SledEventStore` and
/// `PostgresEventStore` are handles, and their clones share one store):
///
/// ```
/// use std::sync::Arc;
/// use tidings::prelude::*;
///
/// fn wire<A: Aggregate>(store: SledEventStore) -> (AggregateRegistry<A>, Subscriptions) {
///     let store = Arc::new(store);
///     let registry = AggregateRegistry::<A>::start(store.clone(), AggregateConfig::default());
///     let subscriptions = Subscriptions::new(store);
///     (registry, subscriptions)
/// }
/// ```
pub trait IntoEventStore {
    /// The store, shared.
    fn into_event_store(self) -> Arc<dyn EventStore>;
}

impl<S: EventStore> IntoEventStore for S {
    fn into_event_store(self) -> Arc<dyn EventStore> {
        Arc::new(self)
    }
}

impl<S: EventStore> IntoEventStore for Arc<S> {
    fn into_event_store(self) -> Arc<dyn EventStore> {
        self
    }
}

impl IntoEventStore for Arc<dyn EventStore> {
    fn into_event_store(self) -> Arc<dyn EventStore> {
        self
    }
}
