//! The loop each process runs for a distributed subscription: keep a member lease, look at the
//! members, start the partitions this process owns and stop the others.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use tracing::{error, info, info_span, warn, Instrument};

use super::{
    assign, member_lease_name, member_prefix, slot_of, Partition, Shared, View, MAX_MEMBERS,
};
use crate::store::{Lease, LeaseAttempt, LeaseHolder, LeaseInfo, StoreError};
use crate::subscription::actor::{SubscriptionHandle, Subscriptions};
use crate::subscription::handler::EventHandler;
use crate::subscription::status::SubscriptionState;
use crate::subscription::SubscriptionConfig;

/// One process's part in a distributed subscription.
pub(super) struct Coordinator<H> {
    pub shared: Arc<Shared>,
    pub subscriptions: Subscriptions,
    /// Cloned for each partition started here.
    pub handler: H,
    /// The partitions' settings (each gets its own name).
    pub config: SubscriptionConfig,
    /// How often it looks at the members.
    pub interval: Duration,
    /// This process as a member (its own instance id).
    pub holder: LeaseHolder,
}

/// Says the coordinator has ended when it is dropped, also when its task is dropped with the
/// actix system, so that nobody waits for it forever.
struct Finish(Arc<Shared>);

impl Drop for Finish {
    fn drop(&mut self) {
        self.0.finished.send_replace(true);
    }
}

impl<H: EventHandler + Clone> Coordinator<H> {
    /// Looks at the members and rebalances every `interval` until stopped, then leaves.
    pub async fn run(self) {
        let _finish = Finish(self.shared.clone());
        let span = info_span!("distributed", name = %self.shared.name);
        async move {
            let mut member: Option<Lease> = None;
            let mut previous: Option<BTreeSet<u32>> = None;
            let mut failures = 0u32;
            let mut stop = self.shared.stop.subscribe();
            while !*stop.borrow() {
                // Bounded, so that a store that does not answer cannot hold the partitions'
                // assignment (and the member lease's renewal) past the lease's time-to-live.
                let looked = tokio::time::timeout(self.config.lease_ttl, self.look(&mut member))
                    .await
                    .unwrap_or_else(|_| Err(StoreError::Unavailable("timed out".into())));
                match looked {
                    Ok(view) => {
                        failures = 0;
                        let assigned: BTreeSet<u32> = view.assigned.iter().copied().collect();
                        if previous.as_ref() != Some(&assigned) {
                            info!(
                                slot = ?view.slot,
                                members = view.members.len(),
                                assigned = ?view.assigned,
                                "partitions assigned to this process"
                            );
                        }
                        self.reconcile(&assigned, previous.as_ref());
                        previous = Some(assigned);
                        self.shared.view.send_replace(view);
                    }
                    Err(e) => {
                        // The partitions stay as they are: each keeps (or loses) its own lease.
                        failures = failures.saturating_add(1);
                        if failures == 1 || failures.is_power_of_two() {
                            warn!(error = %crate::store::error_chain(&e), failures, "could not look at the members; the partitions stay as they are");
                        }
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(self.interval) => {}
                    _ = stop.changed() => {}
                }
            }
            self.leave(member).await;
        }
        .instrument(span)
        .await
    }

    /// Renews this process's member lease (or takes a free slot), lists the live members and
    /// computes the partitions this process owns.
    async fn look(&self, member: &mut Option<Lease>) -> Result<View, StoreError> {
        let store = &*self.shared.store;
        let ttl = self.config.lease_ttl;
        let prefix = member_prefix(&self.shared.name);
        let everything = || View {
            slot: None,
            members: Vec::new(),
            assigned: (0..self.partitions()).collect(),
        };
        if let Some(lease) = member.as_ref() {
            if !store.renew_lease(lease, ttl).await? {
                warn!(
                    lease = %lease.name,
                    "another process took this process's member slot (its lease expired); \
                     joining again"
                );
                *member = None;
            }
        }
        let mut live: Vec<LeaseInfo> = match store.list_leases(&prefix, MAX_MEMBERS as usize).await
        {
            // No leases (one process opens the store), or no way to find the members: run every
            // partition here (each still under its own lease, if the store has leases).
            Err(StoreError::Unsupported(_)) => return Ok(everything()),
            listed => listed?
                .into_iter()
                .filter(|l| l.held && slot_of(&prefix, &l.name).is_some())
                .collect(),
        };
        if member.is_none() {
            *member = match self.join(&prefix, &live).await {
                Err(StoreError::Unsupported(_)) => return Ok(everything()),
                joined => joined?,
            };
        }
        let Some(lease) = member.as_ref() else {
            // Every slot is taken: a member without partitions until one is free.
            return Ok(View {
                slot: None,
                members: live,
                assigned: Vec::new(),
            });
        };
        if !live.iter().any(|l| l.name == lease.name) {
            live.push(lease.held_info(ttl));
            live.sort_by(|a, b| a.name.cmp(&b.name));
        }
        let index = live
            .iter()
            .position(|l| l.name == lease.name)
            .unwrap_or_default();
        Ok(View {
            slot: slot_of(&prefix, &lease.name),
            assigned: assign::owned(self.partitions(), live.len(), index),
            members: live,
        })
    }

    /// Takes the lowest free member slot; `None` when every slot is taken.
    async fn join(&self, prefix: &str, live: &[LeaseInfo]) -> Result<Option<Lease>, StoreError> {
        let taken: BTreeSet<u32> = live
            .iter()
            .filter_map(|l| slot_of(prefix, &l.name))
            .collect();
        for slot in (0..MAX_MEMBERS).filter(|s| !taken.contains(s)) {
            let name = member_lease_name(&self.shared.name, slot);
            match self
                .shared
                .store
                .acquire_lease(&name, &self.holder, self.config.lease_ttl)
                .await?
            {
                LeaseAttempt::Acquired(lease) => {
                    info!(slot, generation = lease.generation, "joined as a member");
                    return Ok(Some(lease));
                }
                // Taken meanwhile by another process: the next one.
                LeaseAttempt::HeldBy(_) => continue,
            }
        }
        warn!(
            max = MAX_MEMBERS,
            "every member slot is taken; this process runs no partition until one is free"
        );
        Ok(None)
    }

    /// Starts the partitions in `assigned` that do not run here, and asks those that run here
    /// but are not assigned to stop (each gives its lease up as it stops). A partition that
    /// failed here is not started again while it stays assigned (an operator must look at it:
    /// its status says why); one that is stopping is started again at a later look, once it
    /// has stopped.
    fn reconcile(&self, assigned: &BTreeSet<u32>, previous: Option<&BTreeSet<u32>>) {
        let mut started = self.shared.started();
        for p in 0..self.partitions() {
            let handle = started.get(&p);
            if !assigned.contains(&p) {
                if let Some(h) = handle.filter(|h| !h.is_finished()) {
                    info!(partition = p, "partition no longer owned; stopping it here");
                    h.request_stop();
                }
                continue;
            }
            let start = match handle {
                None => true,
                Some(h) if !h.is_finished() => false,
                Some(h) => match h.status().state {
                    SubscriptionState::Failed(_) => previous.is_none_or(|was| !was.contains(&p)),
                    _ => true,
                },
            };
            if start {
                match self.start_partition(p) {
                    Ok(h) => {
                        started.insert(p, h);
                    }
                    Err(e) => error!(partition = p, error = %e, "could not start the partition"),
                }
            }
        }
    }

    /// Starts partition `p` here: a subscription of its own under its name.
    fn start_partition(
        &self,
        p: u32,
    ) -> Result<SubscriptionHandle, crate::subscription::StartError> {
        let mut config = self.config.clone();
        config.name = Some(self.shared.names[p as usize].clone());
        let partition = Partition {
            index: p,
            count: self.partitions(),
        };
        self.subscriptions
            .launch(vec![self.handler.clone()], config, Some(partition))
    }

    /// Gives the member lease up (the others rebalance at their next look), then stops every
    /// partition that runs here and waits for each (each gives its lease up).
    async fn leave(&self, member: Option<Lease>) {
        if let Some(lease) = member {
            if let Err(e) = self.shared.store.release_lease(&lease).await {
                warn!(error = %e, "could not give the member lease up; the others rebalance when it expires");
            }
        }
        let handles: Vec<SubscriptionHandle> = self.shared.started().values().cloned().collect();
        for h in &handles {
            h.request_stop();
        }
        join_all(handles.iter().map(SubscriptionHandle::finished)).await;
        self.shared.view.send_replace(View::default());
        info!("distributed subscription stopped in this process");
    }

    fn partitions(&self) -> u32 {
        self.shared.names.len() as u32
    }
}
