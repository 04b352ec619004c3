//! Distributed subscriptions: the partitions of one subscription spread over the processes that
//! run it, rebalanced when a process joins or leaves.
//!
//! Each partition is a subscription of its own, named `{name}.p{index}of{count}` (see
//! [`partition_name`]), with its own lease, checkpoint, state, status and parked events; its loop
//! handles only the events of the streams that [`partition_of`] maps to it, so each stream's
//! events are handled in order by one process at a time. Each process that runs the
//! subscription takes a **member lease** (`{name}/members/{slot}`, the lowest free slot); the
//! live member leases, in slot order, are the members, and partition `p` belongs to the member
//! at index `p % members`. Each process looks at the members every third of the lease's
//! time-to-live, starts the partitions it now owns (waiting as a standby while the previous owner
//! still holds one) and stops those it no longer owns (giving their leases up, so that the new
//! owner takes over at once). See `docs/deployment.md`, "Running copies of a service".

mod assign;
mod coordinator;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::actor::{StartError, SubscriptionHandle, Subscriptions};
use super::handler::EventHandler;
use super::name::{SubscriptionName, SubscriptionNameError};
use super::status::{SubscriptionState, SubscriptionStatus};
use super::wait::WaitError;
use super::SubscriptionConfig;
use crate::store::{EventStore, LeaseInfo, StoreError};

/// The most partitions a distributed subscription can have. Each partition reads the whole log
/// and keeps the events of its streams (decision 50 in `docs/decisions.md`), so the reads grow
/// with the partitions.
pub const MAX_PARTITIONS: u32 = 64;

/// The most processes that can be members of one distributed subscription at once (the slots
/// of its member leases).
pub const MAX_MEMBERS: u32 = 1000;

/// One partition of a distributed subscription: its index among `count`.
///
/// ```
/// use tidings::subscription::{partition_of, Partition};
/// let partition = Partition::new(2, 6).unwrap();
/// assert_eq!(partition.to_string(), "2 of 6");
/// assert_eq!(partition.owns("order-17"), partition_of("order-17", 6) == 2);
/// assert!(Partition::new(6, 6).is_none());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Partition {
    /// Its index, from 0.
    pub index: u32,
    /// How many partitions the subscription has.
    pub count: u32,
}

impl Partition {
    /// Partition `index` of `count`; `None` unless `index < count`.
    pub fn new(index: u32, count: u32) -> Option<Self> {
        (index < count).then_some(Partition { index, count })
    }

    /// Whether the events of `stream_id` belong to this partition.
    pub fn owns(&self, stream_id: &str) -> bool {
        partition_of(stream_id, self.count) == self.index
    }
}

impl std::fmt::Display for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} of {}", self.index, self.count)
    }
}

/// The partition of a stream's events among `partitions`: the FNV-1a hash of its id modulo
/// `partitions`, so it is the same in every run, process and version (0 when `partitions` is 0
/// or 1). The in-process partitions of
/// [`start_partitioned`](Subscriptions::start_partitioned) use it too.
///
/// ```
/// use tidings::subscription::partition_of;
/// let p = partition_of("order-17", 6);
/// assert!(p < 6);
/// assert_eq!(partition_of("order-17", 6), p); // stable
/// assert_eq!(partition_of("order-17", 1), 0);
/// ```
pub fn partition_of(stream_id: &str, partitions: u32) -> u32 {
    if partitions <= 1 {
        return 0;
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in stream_id.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % u64::from(partitions)) as u32
}

/// The name of partition `index` of `count` of the distributed subscription `name`:
/// `{name}.p{index}of{count}`, the index padded to two digits (so that the names sort in
/// partition order). An error when the result is longer than a name may be.
///
/// ```
/// use tidings::subscription::{partition_name, SubscriptionName};
/// let name = SubscriptionName::new("orders")?;
/// assert_eq!(partition_name(&name, 3, 6)?, "orders.p03of6");
/// # Ok::<(), tidings::subscription::SubscriptionNameError>(())
/// ```
pub fn partition_name(
    name: &SubscriptionName,
    index: u32,
    count: u32,
) -> Result<SubscriptionName, SubscriptionNameError> {
    SubscriptionName::new(format!("{name}.p{index:02}of{count}"))
}

/// Whether `name` has the shape [`partition_name`] gives (`BASE.pNNofM`, NN below M): a plain
/// subscription may not take it.
pub(crate) fn is_partition_name(name: &str) -> bool {
    let Some((base, tail)) = name.rsplit_once(".p") else {
        return false;
    };
    let Some((index, count)) = tail.split_once("of") else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    !base.is_empty()
        && digits(index)
        && digits(count)
        && matches!(
            (index.parse::<u32>(), count.parse::<u32>()),
            (Ok(i), Ok(n)) if i < n
        )
}

/// The prefix of the member leases of the distributed subscription `name`.
fn member_prefix(name: &SubscriptionName) -> String {
    format!("{name}/members/")
}

/// The member lease of `slot`: zero-padded, so that name order is slot order.
fn member_lease_name(name: &SubscriptionName, slot: u32) -> String {
    format!("{}{slot:03}", member_prefix(name))
}

/// The slot of a member lease, from its name.
fn slot_of(prefix: &str, lease: &str) -> Option<u32> {
    lease.strip_prefix(prefix)?.parse().ok()
}

/// Settings of a distributed subscription, beside its [`SubscriptionConfig`] (whose
/// `lease_ttl` is also the member leases' time-to-live).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DistributedConfig {
    /// How many partitions: 1 to [`MAX_PARTITIONS`]. Every process that runs the subscription
    /// must use the same number (each number is a different set of subscriptions).
    pub partitions: u32,
    /// How often a process renews its member lease, looks at the members and rebalances.
    /// Default `None`: a third of the lease's time-to-live.
    pub rebalance_interval: Option<Duration>,
}

impl DistributedConfig {
    /// `partitions` partitions, rebalanced every third of the lease's time-to-live.
    pub fn new(partitions: u32) -> Self {
        DistributedConfig {
            partitions,
            rebalance_interval: None,
        }
    }

    /// Sets how often a process looks at the members (at least 10 ms; at most a third of the
    /// lease's time-to-live is used, so that the member lease is renewed in time).
    #[must_use]
    pub fn rebalance_interval(mut self, interval: Duration) -> Self {
        self.rebalance_interval = Some(interval.max(Duration::from_millis(10)));
        self
    }
}

/// What a process last saw of a distributed subscription's members.
#[derive(Clone, Debug, Default)]
struct View {
    /// Its member slot (`None` on a store without leases, or before it has one).
    slot: Option<u32>,
    /// The live member leases, in slot order.
    members: Vec<LeaseInfo>,
    /// The partitions it owns.
    assigned: Vec<u32>,
}

/// What the process's coordinator and its handles share.
struct Shared {
    name: SubscriptionName,
    names: Vec<SubscriptionName>,
    store: Arc<dyn EventStore>,
    view: watch::Sender<View>,
    stop: watch::Sender<bool>,
    /// Set when the coordinator has ended (every partition stopped, the member lease given up).
    finished: watch::Sender<bool>,
    /// The last subscription started here for each partition.
    started: Mutex<BTreeMap<u32, SubscriptionHandle>>,
}

impl Shared {
    fn started(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, SubscriptionHandle>> {
        self.started.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A distributed subscription as this process runs it: made by
/// [`Subscriptions::start_distributed`].
#[derive(Clone)]
pub struct DistributedHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for DistributedHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let view = self.shared.view.borrow();
        f.debug_struct("DistributedHandle")
            .field("name", &self.shared.name)
            .field("partitions", &self.shared.names.len())
            .field("slot", &view.slot)
            .field("members", &view.members.len())
            .field("assigned", &view.assigned)
            .finish_non_exhaustive()
    }
}

impl DistributedHandle {
    /// The distributed subscription's name (its partitions' names start with it).
    pub fn name(&self) -> &SubscriptionName {
        &self.shared.name
    }

    /// How many partitions it has.
    pub fn partitions(&self) -> u32 {
        self.shared.names.len() as u32
    }

    /// The names of its partitions' subscriptions, in partition order.
    pub fn partition_names(&self) -> Vec<SubscriptionName> {
        self.shared.names.clone()
    }

    /// This process's member slot, as last seen; `None` on a store without leases (one process
    /// runs every partition), while it has none yet, and after [`stop`](Self::stop).
    pub fn slot(&self) -> Option<u32> {
        self.shared.view.borrow().slot
    }

    /// The live members (one lease per process), in slot order, as last seen; empty on a store
    /// without leases.
    pub fn members(&self) -> Vec<LeaseInfo> {
        self.shared.view.borrow().members.clone()
    }

    /// The partitions this process owns, as last seen: it runs them, or waits as a standby for
    /// their previous owner to give them up.
    pub fn assigned(&self) -> Vec<u32> {
        self.shared.view.borrow().assigned.clone()
    }

    /// The partitions whose loops run in this process now: past their start (holding their
    /// lease, on a store with leases), not standing by, not finished.
    pub fn running(&self) -> Vec<u32> {
        self.shared
            .started()
            .iter()
            .filter(|(_, h)| {
                !h.is_finished()
                    && !matches!(
                        h.status().state,
                        SubscriptionState::Standby | SubscriptionState::Starting
                    )
            })
            .map(|(p, _)| *p)
            .collect()
    }

    /// The status of each partition started in this process (running, standing by, or as it
    /// ended), in partition order.
    pub fn statuses(&self) -> Vec<SubscriptionStatus> {
        self.shared
            .started()
            .values()
            .map(SubscriptionHandle::status)
            .collect()
    }

    /// The stored checkpoint of every partition, whichever process runs it (`None`: it has
    /// not run yet), in partition order.
    pub async fn checkpoints(&self) -> Result<Vec<Option<u64>>, StoreError> {
        let mut out = Vec::with_capacity(self.shared.names.len());
        for name in &self.shared.names {
            out.push(self.shared.store.load_checkpoint(name).await?);
        }
        Ok(out)
    }

    /// Waits until every partition, in whichever process it runs, has committed its checkpoint
    /// at `position` or beyond (so its state in the store shows every event up to there), at
    /// most `timeout`. Reads the stored checkpoints (every 20 ms): the partitions that run
    /// elsewhere are seen only through the store. A partition behind whose stored status says it
    /// failed ends the wait at once with [`WaitError::Failed`]. At the deadline,
    /// [`WaitError::Timeout`] names the partitions behind with their stored status.
    pub async fn wait_until_handled(
        &self,
        position: u64,
        timeout: Duration,
    ) -> Result<(), WaitError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let store = &*self.shared.store;
        let failed = |name: &SubscriptionName| {
            let name = name.to_string();
            move |source| WaitError::Store { name, source }
        };
        loop {
            let mut checkpoints = Vec::with_capacity(self.shared.names.len());
            for name in &self.shared.names {
                checkpoints.push(store.load_checkpoint(name).await.map_err(failed(name))?);
            }
            let behind: Vec<usize> = checkpoints
                .iter()
                .enumerate()
                .filter(|(_, c)| c.unwrap_or(0) < position)
                .map(|(i, _)| i)
                .collect();
            if behind.is_empty() {
                return Ok(());
            }
            // A partition that failed will not get there without an operator: say so at once
            // (as `Subscriptions::wait_until_handled` does), wherever it runs.
            for &i in &behind {
                let name = &self.shared.names[i];
                let stored = super::subscription_status_from_store(store, name)
                    .await
                    .map_err(failed(name))?;
                if let Some(SubscriptionStatus {
                    state: SubscriptionState::Failed(reason),
                    ..
                }) = stored
                {
                    return Err(WaitError::Failed {
                        name: name.to_string(),
                        position,
                        reason,
                    });
                }
            }
            if tokio::time::Instant::now() >= deadline {
                let mut statuses = Vec::new();
                for i in behind {
                    let name = &self.shared.names[i];
                    let stored = super::subscription_status_from_store(store, name)
                        .await
                        .map_err(failed(name))?;
                    let mut status = stored.unwrap_or_else(|| super::status::initial(name));
                    status.checkpoint = checkpoints[i].unwrap_or(0);
                    statuses.push(status);
                }
                return Err(WaitError::Timeout {
                    position,
                    waited: timeout,
                    behind: statuses,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether it has stopped (every partition of this process stopped, its member lease
    /// given up).
    pub fn is_finished(&self) -> bool {
        *self.shared.finished.borrow()
    }

    /// Stops it in this process: gives the member lease up first (so that the other processes
    /// rebalance at their next look), then stops each partition that runs here after the event
    /// in hand, saving its checkpoint and giving its lease up (so that its new owner takes it
    /// at once). Returns when all that is done.
    pub async fn stop(&self) {
        self.shared.stop.send_replace(true);
        let mut finished = self.shared.finished.subscribe();
        let _ = finished.wait_for(|f| *f).await;
    }
}

impl Subscriptions {
    /// Starts `handler` as a **distributed** subscription: `distributed.partitions` partitions,
    /// spread over every process that starts it on the same store, rebalanced when a process
    /// joins or leaves. Each partition is a subscription of its own (named by
    /// [`partition_name`], with its own lease, checkpoint, state, status and parked events) that
    /// handles the events of the streams [`partition_of`] maps to it, in order.
    ///
    /// On a store without leases (the embedded store, which one process opens) every partition
    /// runs here. The partitions appear in [`statuses`](Self::statuses) and can be operated on
    /// by name like any subscription (parked events, waits); a partition stopped by name is
    /// started again at the next look while this process owns it: stop the whole with
    /// [`DistributedHandle::stop`] (or [`stop_all`](Self::stop_all)).
    ///
    /// Fails with [`StartError::Partitions`] for 0 or more than [`MAX_PARTITIONS`] partitions,
    /// [`StartError::NotPartitionable`] for a handler that cannot be partitioned (with more than
    /// one), [`StartError::InvalidName`] when a partition's name would be too long, and
    /// [`StartError::AlreadyRunning`] when it (or one of its partitions) runs here already.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use std::time::Duration;
    /// # use serde::{Deserialize, Serialize};
    /// # use tidings::store::{EventStore, ExpectedVersion, SledEventStore};
    /// # use tidings::subscription::{DistributedConfig, EventContext, HandleEvent, HandlerError, SubscriptionConfig, Subscriptions};
    /// # use tidings::{async_trait, DomainEvent, EventHandler};
    /// # #[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
    /// # enum OrderEvent { OrderPlaced { cents: u64 } }
    /// # #[derive(Clone, EventHandler)]
    /// # #[event_handler(name = "orders", events(OrderEvent))]
    /// # struct Orders;
    /// # #[async_trait]
    /// # impl HandleEvent<OrderEvent> for Orders {
    /// #     async fn handle(&mut self, _: OrderEvent, _: &mut EventContext<'_>) -> Result<(), HandlerError> { Ok(()) }
    /// # }
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// # actix::System::new().block_on(async {
    /// # let store: Arc<dyn EventStore> = Arc::new(SledEventStore::open(dir.path())?);
    /// # let subscriptions = Subscriptions::new(store.clone());
    /// let orders = subscriptions.start_distributed(
    ///     Orders,
    ///     SubscriptionConfig::default(),
    ///     DistributedConfig::new(6),
    /// )?;
    /// assert_eq!(orders.partition_names()[3], "orders.p03of6");
    /// # let placed = OrderEvent::OrderPlaced { cents: 5 }.to_event_data()?;
    /// # store.append("order-1", ExpectedVersion::NoStream, vec![placed]).await?;
    /// orders.wait_until_handled(store.head(), Duration::from_secs(30)).await?;
    /// assert_eq!(orders.assigned(), [0, 1, 2, 3, 4, 5]); // one process: all of them
    /// orders.stop().await;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })
    /// # }
    /// ```
    pub fn start_distributed<H: EventHandler + Clone>(
        &self,
        handler: H,
        config: SubscriptionConfig,
        distributed: DistributedConfig,
    ) -> Result<DistributedHandle, StartError> {
        let n = distributed.partitions;
        let name = Self::name_of::<H>(&config)?;
        if n == 0 || n > MAX_PARTITIONS {
            return Err(StartError::Partitions {
                name,
                requested: n,
                max: MAX_PARTITIONS,
            });
        }
        if n > 1 && !H::partitionable() {
            return Err(StartError::NotPartitionable(name));
        }
        let names = (0..n)
            .map(|p| partition_name(&name, p, n))
            .collect::<Result<Vec<_>, _>>()?;
        let mut registry = self.distributed();
        if registry.get(&name).is_some_and(|h| !h.is_finished()) {
            return Err(StartError::AlreadyRunning(name));
        }
        if let Some(running) = names.iter().find(|p| self.is_running(p)) {
            return Err(StartError::AlreadyRunning(running.clone()));
        }
        let ttl = config.lease_ttl;
        let interval = distributed
            .rebalance_interval
            .unwrap_or(ttl / 3)
            .min(ttl / 3);
        let shared = Arc::new(Shared {
            name: name.clone(),
            names,
            store: self.store().clone(),
            view: watch::channel(View::default()).0,
            stop: watch::channel(false).0,
            finished: watch::channel(false).0,
            started: Mutex::default(),
        });
        let coordinator = coordinator::Coordinator {
            shared: shared.clone(),
            subscriptions: self.clone(),
            handler,
            config,
            interval,
            holder: crate::store::LeaseHolder::this_process(),
        };
        actix::spawn(coordinator.run());
        let handle = DistributedHandle { shared };
        registry.insert(name, handle.clone());
        Ok(handle)
    }
}
