//! The registry of one aggregate type: routes commands by id to live instances, starts them on
//! demand, passivates idle ones and bounds how many stay in memory.

use std::collections::{BTreeMap, HashMap};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::actor::AggregateActor;
use super::load::stream_id;
use super::messages::{Execute, Idle, Lookup, Passivate, PassivateId, Query, Shutdown};
use super::{Aggregate, AggregateConfig, AggregateError, CommandEnvelope, CommandOutcome};
use crate::store::{EventStore, IntoEventStore};

/// Counters shared by a registry, its instances and its handles.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub live: AtomicUsize,
    pub registered: AtomicUsize,
    pub restarts: AtomicU64,
    pub passivations: AtomicU64,
    pub evictions: AtomicU64,
}

/// What a registry is doing, for tests and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RegistryStats {
    /// Aggregate actors in memory (including ones that are stopping).
    pub live_instances: usize,
    /// Instances the registry routes commands to (at most `max_instances`).
    pub registered: usize,
    /// Instances restarted because their code panicked.
    pub restarts: u64,
    /// Instances stopped for being idle (or on request).
    pub passivations: u64,
    /// Instances stopped to stay within `max_instances`.
    pub evictions: u64,
}

struct Entry<A: Aggregate> {
    addr: Addr<AggregateActor<A>>,
    generation: u64,
    tick: u64,
}

/// The actor behind an [`AggregateRegistry`].
pub(crate) struct RegistryActor<A: Aggregate> {
    store: Arc<dyn EventStore>,
    config: Arc<AggregateConfig>,
    counters: Arc<Counters>,
    entries: HashMap<String, Entry<A>>,
    /// Least recently used first: tick -> id.
    lru: BTreeMap<u64, String>,
    tick: u64,
    generation: u64,
}

impl<A: Aggregate> RegistryActor<A> {
    fn remove(&mut self, id: &str) -> Option<Entry<A>> {
        let entry = self.entries.remove(id)?;
        self.lru.remove(&entry.tick);
        self.counters
            .registered
            .store(self.entries.len(), Ordering::Relaxed);
        Some(entry)
    }
}

impl<A: Aggregate> Actor for RegistryActor<A> {
    type Context = Context<Self>;

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        for (_, entry) in self.entries.drain() {
            entry.addr.do_send(Passivate);
        }
        self.lru.clear();
        self.counters.registered.store(0, Ordering::Relaxed);
    }
}

impl<A: Aggregate> Handler<Lookup<A>> for RegistryActor<A> {
    type Result = MessageResult<Lookup<A>>;

    fn handle(&mut self, msg: Lookup<A>, ctx: &mut Self::Context) -> Self::Result {
        self.tick += 1;
        let tick = self.tick;
        if let Some(entry) = self.entries.get_mut(&msg.id) {
            if entry.addr.connected() {
                self.lru.remove(&entry.tick);
                entry.tick = tick;
                self.lru.insert(tick, msg.id);
                return MessageResult(entry.addr.clone());
            }
            self.remove(&msg.id);
        }
        while self.entries.len() >= self.config.max_instances {
            let Some((_, oldest)) = self.lru.pop_first() else {
                break;
            };
            if let Some(entry) = self.entries.remove(&oldest) {
                entry.addr.do_send(Passivate);
                self.counters.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.generation += 1;
        let actor = AggregateActor::new(
            msg.id.clone(),
            self.generation,
            self.store.clone(),
            self.config.clone(),
            ctx.address().downgrade(),
            self.counters.clone(),
        );
        let addr = Supervisor::start(move |_| actor);
        self.entries.insert(
            msg.id.clone(),
            Entry {
                addr: addr.clone(),
                generation: self.generation,
                tick,
            },
        );
        self.lru.insert(tick, msg.id);
        self.counters
            .registered
            .store(self.entries.len(), Ordering::Relaxed);
        MessageResult(addr)
    }
}

impl<A: Aggregate> Handler<Idle<A>> for RegistryActor<A> {
    type Result = ();

    fn handle(&mut self, msg: Idle<A>, _ctx: &mut Self::Context) {
        if self
            .entries
            .get(&msg.id)
            .is_some_and(|e| e.generation == msg.generation)
        {
            self.remove(&msg.id);
        }
        // Registered or not (a replaced or evicted instance), an idle instance stops. Were a
        // command to reach it meanwhile, its supervisor restarts it to answer that command.
        msg.addr.do_send(Passivate);
        self.counters.passivations.fetch_add(1, Ordering::Relaxed);
    }
}

impl<A: Aggregate> Handler<PassivateId> for RegistryActor<A> {
    type Result = bool;

    fn handle(&mut self, msg: PassivateId, _ctx: &mut Self::Context) -> bool {
        match self.remove(&msg.id) {
            Some(entry) => {
                entry.addr.do_send(Passivate);
                self.counters.passivations.fetch_add(1, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }
}

impl<A: Aggregate> Handler<Shutdown> for RegistryActor<A> {
    type Result = ();

    fn handle(&mut self, _msg: Shutdown, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

/// The registry of aggregate type `A`: a cheap, cloneable handle that routes commands by
/// aggregate id to one actix actor per live instance.
///
/// Instances start on demand, load their latest snapshot and the events after it, answer a
/// command whose id they already recorded with the original outcome, stop after
/// [`idle_timeout`](AggregateConfig::idle_timeout), and at most
/// [`max_instances`](AggregateConfig::max_instances) stay in memory (the least recently used
/// is stopped first). Must be started inside a running actix `System`; every instance runs on
/// the arbiter the registry was started on (their store I/O is asynchronous and does not block
/// it).
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use tidings::aggregate::{Aggregate, AggregateConfig, AggregateRegistry, CommandEnvelope};
/// use tidings::store::SledEventStore;
/// use tidings::DomainEvent;
///
/// #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, DomainEvent)]
/// enum CounterEvent {
///     Incremented { by: u64 },
/// }
///
/// #[derive(Default, Serialize, Deserialize)]
/// struct Counter {
///     value: u64,
/// }
///
/// impl Aggregate for Counter {
///     const CATEGORY: &'static str = "counter";
///     type Command = u64;
///     type Event = CounterEvent;
///     type Error = tidings::aggregate::NeverRejected;
///
///     fn handle(&self, by: u64) -> Result<Vec<CounterEvent>, Self::Error> {
///         Ok(vec![CounterEvent::Incremented { by }])
///     }
///
///     fn apply(&mut self, event: &CounterEvent) {
///         let CounterEvent::Incremented { by } = event;
///         self.value += by;
///     }
/// }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # actix::System::new().block_on(async {
/// let dir = tempfile::tempdir()?;
/// let store = SledEventStore::open(dir.path())?;
/// let counters = AggregateRegistry::<Counter>::start(store, AggregateConfig::default());
///
/// let command = CommandEnvelope::new(5);
/// let first = counters.execute("c1", command.clone()).await?;
/// // The same command id again: answered from history, nothing recorded.
/// let again = counters.execute("c1", command).await?;
/// assert!(again.duplicate);
/// assert_eq!(first.recorded, again.recorded);
///
/// assert_eq!(counters.query("c1", |c| c.value).await?, 5);
/// counters.shutdown().await;
/// # Ok(())
/// # })
/// # }
/// ```
pub struct AggregateRegistry<A: Aggregate> {
    addr: Addr<RegistryActor<A>>,
    counters: Arc<Counters>,
}

impl<A: Aggregate> Clone for AggregateRegistry<A> {
    fn clone(&self) -> Self {
        AggregateRegistry {
            addr: self.addr.clone(),
            counters: self.counters.clone(),
        }
    }
}

impl<A: Aggregate> std::fmt::Debug for AggregateRegistry<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AggregateRegistry")
            .field("aggregate", &A::CATEGORY)
            .field("stats", &self.stats())
            .finish()
    }
}

impl<A: Aggregate> AggregateRegistry<A> {
    /// Starts the registry on the current actix arbiter, over `store` (a store, an `Arc` of
    /// one or an `Arc<dyn EventStore>`: see [`IntoEventStore`]).
    pub fn start(store: impl IntoEventStore, config: AggregateConfig) -> Self {
        let store = store.into_event_store();
        let counters = Arc::new(Counters::default());
        let actor = RegistryActor::<A> {
            store,
            config: Arc::new(config),
            counters: counters.clone(),
            entries: HashMap::new(),
            lru: BTreeMap::new(),
            tick: 0,
            generation: 0,
        };
        AggregateRegistry {
            addr: actor.start(),
            counters,
        }
    }

    async fn instance(
        &self,
        id: &str,
    ) -> Result<Addr<AggregateActor<A>>, AggregateError<A::Error>> {
        stream_id::<A>(id)?;
        self.addr
            .send(Lookup {
                id: id.to_owned(),
                _marker: PhantomData,
            })
            .await
            .map_err(|_| AggregateError::Unavailable)
    }

    /// Sends a command to aggregate `id` and waits for its outcome.
    ///
    /// Commands to one aggregate are decided one at a time, in the order they reach its actor.
    /// Every decision is remembered under the command id, while it is in the
    /// [`dedup_window`](AggregateConfig::dedup_window): the same id sent again is answered as
    /// the first time, without deciding again — the original outcome with `duplicate: true`, or
    /// the same [`AggregateError::Rejected`] refusal — whatever changed in the aggregate since.
    /// A refusal or an acceptance with no events costs one record in the stream for that.
    pub async fn execute(
        &self,
        id: &str,
        envelope: CommandEnvelope<A::Command>,
    ) -> Result<CommandOutcome, AggregateError<A::Error>> {
        self.send(id, envelope, true).await
    }

    /// Sends a new command (a fresh command id, no metadata) to aggregate `id`.
    ///
    /// Nobody can send this id again, so a refusal or an acceptance with no events is not
    /// recorded (unlike [`execute`](Self::execute)); a retry of the same request is a new
    /// command. Use `execute` with an id carried by the request when retries must be safe.
    pub async fn execute_fresh(
        &self,
        id: &str,
        command: A::Command,
    ) -> Result<CommandOutcome, AggregateError<A::Error>> {
        self.send(id, CommandEnvelope::new(command), false).await
    }

    async fn send(
        &self,
        id: &str,
        envelope: CommandEnvelope<A::Command>,
        remember: bool,
    ) -> Result<CommandOutcome, AggregateError<A::Error>> {
        let addr = self.instance(id).await?;
        addr.send(Execute { envelope, remember })
            .await
            .map_err(|_| AggregateError::Unavailable)?
    }

    /// Runs `f` on the current state of aggregate `id` (loading it if needed), between its
    /// commands.
    pub async fn query<R: Send + 'static>(
        &self,
        id: &str,
        f: impl FnOnce(&A) -> R + Send + 'static,
    ) -> Result<R, AggregateError<A::Error>> {
        self.query_versioned(id, move |state, _| f(state)).await
    }

    /// Like [`query`](Self::query), also passing the stream version the state includes.
    pub async fn query_versioned<R: Send + 'static>(
        &self,
        id: &str,
        f: impl FnOnce(&A, u64) -> R + Send + 'static,
    ) -> Result<R, AggregateError<A::Error>> {
        let addr = self.instance(id).await?;
        addr.send(Query { f: Box::new(f) })
            .await
            .map_err(|_| AggregateError::Unavailable)?
    }

    /// Stops the instance of `id` now, if it is in memory (as the idle timeout would). Returns
    /// whether one was running.
    pub async fn passivate(&self, id: &str) -> bool {
        self.addr
            .send(PassivateId { id: id.to_owned() })
            .await
            .unwrap_or(false)
    }

    /// Counters of instances, restarts, passivations and evictions.
    pub fn stats(&self) -> RegistryStats {
        let c = &self.counters;
        RegistryStats {
            live_instances: c.live.load(Ordering::Relaxed),
            registered: c.registered.load(Ordering::Relaxed),
            restarts: c.restarts.load(Ordering::Relaxed),
            passivations: c.passivations.load(Ordering::Relaxed),
            evictions: c.evictions.load(Ordering::Relaxed),
        }
    }

    /// Stops the registry and every instance, and waits (up to 5 seconds) until no instance is
    /// left in memory, so that the store they share can be closed. Later commands through any
    /// clone of this handle fail with [`AggregateError::Unavailable`].
    pub async fn shutdown(&self) {
        let _ = self.addr.send(Shutdown).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.counters.live.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            actix::clock::sleep(Duration::from_millis(2)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::aggregate::messages::{Passivate, Query};
    use crate::aggregate::NeverRejected;
    use crate::DomainEvent;

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, DomainEvent)]
    enum Bumped {
        By { n: u64 },
    }

    #[derive(Default, Serialize, Deserialize)]
    struct Bump(u64);

    impl Aggregate for Bump {
        const CATEGORY: &'static str = "bump";
        type Command = u64;
        type Event = Bumped;
        type Error = NeverRejected;

        fn handle(&self, n: u64) -> Result<Vec<Bumped>, NeverRejected> {
            Ok(vec![Bumped::By { n }])
        }

        fn apply(&mut self, event: &Bumped) {
            let Bumped::By { n } = event;
            self.0 += n;
        }
    }

    /// A caller that still holds an instance's address when the registry stops it makes its
    /// supervisor restart it (to answer that caller); once the last address is dropped the
    /// restarted instance stops again, instead of living on, unregistered, until its idle
    /// timeout (5 minutes by default): the cause of `aggregate_scale`'s 501–503 live instances
    /// under load.
    #[actix::test]
    async fn an_instance_restarted_after_it_was_stopped_stops_once_no_address_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::SledEventStore::open(dir.path()).unwrap();
        let bumps = AggregateRegistry::<Bump>::start(store, AggregateConfig::default());
        bumps.execute_fresh("a", 2).await.unwrap();
        let addr = bumps.instance("a").await.unwrap();
        assert!(bumps.passivate("a").await);
        // Behind the Passivate in its mailbox: answered by the restarted instance.
        let query = Query::<Bump, u64> {
            f: Box::new(|b: &Bump, _| b.0),
        };
        assert_eq!(addr.send(query).await.unwrap().unwrap(), 2);
        assert_eq!(bumps.stats().registered, 0);
        assert_eq!(bumps.stats().live_instances, 1, "restarted to answer");
        drop(addr);
        let deadline = Instant::now() + Duration::from_secs(10);
        while bumps.stats().live_instances > 0 {
            assert!(
                Instant::now() < deadline,
                "the unregistered instance lives on: {:?}",
                bumps.stats()
            );
            actix::clock::sleep(Duration::from_millis(5)).await;
        }
        // A Passivate to a running instance that nobody else holds stops it at once too.
        let addr = bumps.instance("b").await.unwrap();
        addr.do_send(Passivate);
        drop(addr);
        bumps.shutdown().await;
        assert_eq!(bumps.stats().live_instances, 0);
    }
}
