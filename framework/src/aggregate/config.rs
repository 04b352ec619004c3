//! Settings of an aggregate registry.

use std::time::Duration;

/// Settings of an [`AggregateRegistry`](super::AggregateRegistry) (and of [`load`](super::load)).
///
/// ```
/// use std::time::Duration;
/// use tidings::aggregate::AggregateConfig;
///
/// let config = AggregateConfig::default()
///     .snapshot_every(Some(50))
///     .idle_timeout(Some(Duration::from_secs(60)))
///     .max_instances(1_000);
/// assert_eq!(config.dedup_window, 1_000);
/// ```
///
/// The setters return the changed settings: calling one without using its result changes
/// nothing, and is a warning (here made an error):
///
/// ```compile_fail
/// #![deny(unused_must_use)]
/// let config = tidings::aggregate::AggregateConfig::default();
/// config.snapshot_every(Some(5));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AggregateConfig {
    /// The idempotence window, in records: a command id is remembered while the **first**
    /// record it wrote (its first event, or its one refusal or empty-acceptance record) is among
    /// the last `dedup_window` records of the aggregate's stream. Default 1 000. 0 turns
    /// idempotence off (and refusals are then not recorded). Loading reads up to this many
    /// records before a snapshot to rebuild the window.
    pub dedup_window: u64,
    /// Save a snapshot once this many events were recorded since the last one (`None`: never).
    /// Default `Some(100)`. Existing snapshots are used for loading either way.
    pub snapshot_every: Option<u64>,
    /// Stop an instance that has had no command for this long (`None`: never). Default 5
    /// minutes. It is checked every quarter of the timeout, so an idle instance stops between
    /// 1 and 1.25 times the timeout after its last message. Its state is rebuilt from the store
    /// on its next command.
    pub idle_timeout: Option<Duration>,
    /// The most instances kept in memory per registry; starting one more first stops the least
    /// recently used. Default 10 000.
    pub max_instances: usize,
    /// How many times a command is decided again after its append met a newer stream version,
    /// before [`AggregateError::Conflict`](super::AggregateError::Conflict). Default 3.
    pub conflict_retries: u32,
    /// Events per read when loading a stream. Default 500.
    pub read_page: usize,
}

impl Default for AggregateConfig {
    fn default() -> Self {
        AggregateConfig {
            dedup_window: 1_000,
            snapshot_every: Some(100),
            idle_timeout: Some(Duration::from_secs(300)),
            max_instances: 10_000,
            conflict_retries: 3,
            read_page: 500,
        }
    }
}

impl AggregateConfig {
    /// Sets the idempotence window, in events (0: off).
    #[must_use]
    pub fn dedup_window(mut self, events: u64) -> Self {
        self.dedup_window = events;
        self
    }

    /// Sets how many events between snapshots (`None`: no snapshots are saved).
    #[must_use]
    pub fn snapshot_every(mut self, events: Option<u64>) -> Self {
        self.snapshot_every = events.map(|n| n.max(1));
        self
    }

    /// Sets the idle timeout after which an instance is stopped (`None`: never).
    #[must_use]
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Sets the most instances kept in memory (at least 1).
    #[must_use]
    pub fn max_instances(mut self, instances: usize) -> Self {
        self.max_instances = instances.max(1);
        self
    }

    /// Sets how many times a conflicting command is decided again.
    #[must_use]
    pub fn conflict_retries(mut self, retries: u32) -> Self {
        self.conflict_retries = retries;
        self
    }

    /// Sets the page size of stream reads (at least 1).
    #[must_use]
    pub fn read_page(mut self, events: usize) -> Self {
        self.read_page = events.max(1);
        self
    }
}
