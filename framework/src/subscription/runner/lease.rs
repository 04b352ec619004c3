//! The subscription's lease: waiting for it as a standby, keeping it while running, giving it
//! up when done.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::{Command, Fault, Runner};
use crate::store::{EventStore, Lease, LeaseAttempt, StoreError};
use crate::subscription::failure::ControlError;
use crate::subscription::handler::EventHandler;
use crate::subscription::status::{StatusCell, SubscriptionState};

impl<H: EventHandler> Runner<H> {
    /// Waits as a standby until this loop holds the subscription's lease (at once on a store
    /// without leases). Operations sent to a standby are refused: the holder applies them.
    pub(super) async fn take_lease(&mut self) -> Taken {
        let ttl = self.config.lease_ttl;
        // A standby asks again ten times per time-to-live: it takes over at most a tenth of
        // it after the lease expires.
        let pause = ttl / 10;
        let mut unavailable = 0u32;
        let mut reported: Option<u64> = None;
        loop {
            if self.stop_requested() {
                return Taken::Stopped;
            }
            match self
                .store
                .acquire_lease(&self.name, &self.holder, ttl)
                .await
            {
                Ok(LeaseAttempt::Acquired(lease)) => {
                    info!(
                        generation = lease.generation,
                        "took the subscription's lease"
                    );
                    let info = lease.held_info(ttl);
                    self.status.update(|s| {
                        s.state = SubscriptionState::Starting;
                        s.holder = Some(info);
                    });
                    self.lease = Some(lease);
                    return Taken::Held;
                }
                Ok(LeaseAttempt::HeldBy(info)) => {
                    unavailable = 0;
                    if reported != Some(info.generation) {
                        info!(
                            holder = %info.holder,
                            generation = info.generation,
                            "another process runs the subscription; standing by"
                        );
                        reported = Some(info.generation);
                    }
                    let holder = info.holder.to_string();
                    self.status.update(|s| {
                        s.state = SubscriptionState::Standby;
                        s.holder = Some(info);
                    });
                    while let Ok(command) = self.commands.try_recv() {
                        refuse(command, &holder);
                    }
                    if self.sleep_or_stop(pause).await {
                        return Taken::Stopped;
                    }
                }
                Err(StoreError::Unsupported(_)) => {
                    self.lease = None;
                    return Taken::Held;
                }
                Err(e) if e.is_transient() => {
                    if self.wait_for_store(&mut unavailable, &e.to_string()).await {
                        return Taken::Stopped;
                    }
                }
                Err(e) => return Taken::Failed(format!("could not take the lease: {e}")),
            }
        }
    }

    /// Gives the lease up (so that a standby takes over at once), if this loop holds one.
    pub(super) async fn release_lease(&mut self) {
        if let Some(lease) = self.lease.take() {
            if let Err(e) = self.store.release_lease(&lease).await {
                warn!(error = %e, "could not give the lease up; a standby takes over when it expires");
            }
        }
    }

    /// One run of the loop while a task beside it renews the lease. When the lease is lost
    /// (a renewal finds it taken, or none succeeded for two thirds of its time-to-live, before
    /// it may expire), the loop stops at its next page or wait with [`Fault::LeaseLost`],
    /// committing nothing more; one that does not stop within a sixth of the time-to-live (a
    /// page of slow events) is dropped where it is, before the lease can expire on the store. Commits are fenced as well, so a loop that
    /// has not noticed yet cannot commit after a takeover.
    pub(super) async fn run_once_held(&mut self) -> Result<(), Fault> {
        let Some(lease) = self.lease.clone() else {
            return self.run_once().await;
        };
        let ttl = self.config.lease_ttl;
        // After a wait for the store, the lease may have expired meanwhile: renewed first, or
        // found taken (an expired lease that nobody took is renewed).
        let sent = tokio::time::Instant::now();
        if !self.store.renew_lease(&lease, ttl).await? {
            return Err(Fault::LeaseLost("another process took the lease".into()));
        }
        let (lost_tx, lost_rx) = watch::channel(None::<String>);
        self.lost = Some(lost_rx.clone());
        let keeper = actix::spawn(keep_lease(
            self.store.clone(),
            lease,
            ttl,
            sent,
            lost_tx,
            self.status.clone(),
        ));
        let outcome = tokio::select! {
            outcome = self.run_once() => outcome,
            // Dropped by `confirmed + 5/6 ttl` at the latest: gone, with a margin for the
            // scheduler, before the store's deadline (`confirmed + ttl` or later) lets a standby
            // take the lease.
            reason = backstop(lost_rx, ttl / 6) => Err(Fault::LeaseLost(reason)),
        };
        keeper.abort();
        self.lost = None;
        outcome
    }

    /// Why the lease was lost, once the renewing task said so.
    pub(super) fn lease_lost(&self) -> Option<String> {
        self.lost.as_ref().and_then(|l| l.borrow().clone())
    }
}

/// How waiting for the lease ended.
pub(super) enum Taken {
    /// The lease is this loop's (or the store has no leases): run.
    Held,
    /// A stop was requested while waiting.
    Stopped,
    /// The store refused the lease for good (the message says why).
    Failed(String),
}

/// Refuses an operation sent to a standby: the process that holds the lease applies it.
fn refuse(command: Command, holder: &str) {
    let error = || ControlError::Standby(holder.to_owned());
    match command {
        Command::Replay { reply, .. } => drop(reply.send(Err(error()))),
        Command::Skip { reply, .. } => drop(reply.send(Err(error()))),
        Command::Flush { reply } => drop(reply.send(Err(error()))),
    }
}

/// Renews `lease` every third of `ttl` until it is lost, then says why through `lost`. Lost
/// means: a renewal found it taken, or none succeeded for two thirds of `ttl`, counted from
/// when the last good one was sent (`confirmed`), so before the store's deadline can pass. The
/// status's lease shows the deadline of the last renewal.
async fn keep_lease(
    store: Arc<dyn EventStore>,
    lease: Lease,
    ttl: Duration,
    mut confirmed: tokio::time::Instant,
    lost: watch::Sender<Option<String>>,
    status: StatusCell,
) {
    let every = ttl / 3;
    let mut next = confirmed + every;
    loop {
        let deadline = confirmed + ttl * 2 / 3;
        tokio::time::sleep_until(next.min(deadline)).await;
        if tokio::time::Instant::now() >= deadline {
            let _ = lost.send(Some(format!(
                "could not renew the lease for {:?} (it may expire)",
                confirmed.elapsed()
            )));
            return;
        }
        let sent = tokio::time::Instant::now();
        next = sent + every;
        match tokio::time::timeout_at(deadline, store.renew_lease(&lease, ttl)).await {
            Ok(Ok(true)) => {
                confirmed = sent;
                let until = SystemTime::now() + ttl;
                status.update(|s| {
                    if let Some(holder) = s.holder.as_mut() {
                        holder.expires_micros = until
                            .duration_since(std::time::UNIX_EPOCH)
                            .map(|d| d.as_micros() as u64)
                            .unwrap_or(0);
                    }
                });
            }
            Ok(Ok(false)) => {
                let _ = lost.send(Some("another process took the lease".into()));
                return;
            }
            Ok(Err(e)) => debug!(error = %e, "could not renew the lease"),
            Err(_) => debug!("renewing the lease timed out"),
        }
    }
}

/// Once `lost` says the lease is gone, waits `grace` (for the loop to stop by itself), then
/// returns why.
async fn backstop(mut lost: watch::Receiver<Option<String>>, grace: Duration) -> String {
    let reason = match lost.wait_for(Option::is_some).await {
        Ok(reason) => reason.clone().unwrap_or_default(),
        // The renewing task is gone (aborted with the run): never.
        Err(_) => std::future::pending().await,
    };
    tokio::time::sleep(grace).await;
    reason
}
