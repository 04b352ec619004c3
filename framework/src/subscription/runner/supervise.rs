//! The life of a subscription's loop: take the lease, run, restart after a panic, wait for an
//! unavailable store, stand by again when the lease is lost.

use tracing::{error, info, info_span, warn, Instrument};

use super::lease::Taken;
use super::{Fault, Runner, MAX_UNAVAILABLE_BACKOFF, UNAVAILABLE_PAUSE};
use crate::store::StoreError;
use crate::subscription::failure::subscription_status_from_store;
use crate::subscription::handler::EventHandler;
use crate::subscription::status::SubscriptionState;

/// How a run that held the lease ended.
pub(super) enum Ended {
    /// Stopped or failed: the state to show once the lease is given up.
    Final(SubscriptionState),
    /// The lease was lost (why): back to standby.
    LeaseLost(String),
}

impl<H: EventHandler> Runner<H> {
    /// Runs until stopped or failed; restarts after handler panics.
    pub async fn run(mut self) {
        let span = info_span!("subscription", name = %self.name);
        async move {
            let _guard = self.guard.clone().lock_owned().await;
            loop {
                match self.take_lease().await {
                    Taken::Held => {}
                    Taken::Stopped => {
                        self.status.update(|s| s.state = SubscriptionState::Stopped);
                        return;
                    }
                    Taken::Failed(reason) => {
                        error!(reason = %reason, "subscription failed");
                        self.status
                            .update(|s| s.state = SubscriptionState::Failed(reason));
                        return;
                    }
                }
                match self.run_holding().await {
                    Ended::Final(state) => {
                        // The lease first: whoever waits for the final state (a process about
                        // to exit after a stop) may rely on a standby taking over at once.
                        self.release_lease().await;
                        self.status.update(|s| s.state = state);
                        return;
                    }
                    Ended::LeaseLost(reason) => {
                        warn!(reason = %reason, "lost the subscription's lease; standing by");
                        self.lease = None;
                        self.status.update(|s| {
                            s.state = SubscriptionState::Standby;
                            s.holder = None;
                        });
                    }
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Runs while holding the lease (or on a store without leases), until it stops, fails or
    /// loses the lease. The final state is for the caller to show once the lease is given up.
    pub(super) async fn run_holding(&mut self) -> Ended {
        {
            // Attempts in a row that found the store unavailable (reset by a run that starts).
            let mut unavailable = 0u32;
            loop {
                match self.restore_counters().await {
                    Ok(()) => break,
                    Err(e) if e.is_transient() => {
                        if self.wait_for_store(&mut unavailable, &e.to_string()).await {
                            return Ended::Final(SubscriptionState::Stopped);
                        }
                    }
                    Err(e) => {
                        let reason = format!("store error: {e}");
                        error!(reason = %reason, "subscription failed");
                        return Ended::Final(SubscriptionState::Failed(reason));
                    }
                }
            }
            // Panics restarted in this process: the limit and the backoff go by these (the
            // total in the status carries over from earlier processes).
            let mut restarts = 0u64;
            loop {
                let outcome = self.run_once_held().await;
                // However the run ended (dropped in the middle, too), the commit it sent last is
                // finished before anything reads the checkpoint again (or, the lease lost, left
                // to its fencing).
                self.settle_after_run(matches!(outcome, Err(Fault::LeaseLost(_))))
                    .await;
                if !matches!(outcome, Err(Fault::Unavailable(_))) {
                    unavailable = 0;
                }
                match outcome {
                    Err(Fault::LeaseLost(reason)) => return Ended::LeaseLost(reason),
                    Err(Fault::Unavailable(reason)) => {
                        if self.wait_for_store(&mut unavailable, &reason).await {
                            info!("subscription stopped while the store was unavailable");
                            return Ended::Final(SubscriptionState::Stopped);
                        }
                    }
                    Ok(()) => {
                        info!("subscription stopped");
                        return Ended::Final(SubscriptionState::Stopped);
                    }
                    Err(Fault::Panicked { position, message }) => {
                        restarts += 1;
                        self.status.update(|s| s.restarts += 1);
                        self.status.metrics().restarts.increment(1);
                        error!(position, restarts, panic = %message, "handler panicked; restarting from the checkpoint");
                        if restarts > self.config.max_restarts {
                            let reason = format!(
                                "handler panicked at position {position} ({message}); gave up after {} restarts",
                                self.config.max_restarts
                            );
                            let state = SubscriptionState::Failed(reason);
                            self.record_final(state.clone()).await;
                            return Ended::Final(state);
                        }
                        let backoff = self.config.restart_backoff * restarts.min(10) as u32;
                        if self.sleep_or_stop(backoff).await {
                            self.record_final(SubscriptionState::Stopped).await;
                            return Ended::Final(SubscriptionState::Stopped);
                        }
                    }
                    Err(Fault::Fatal(reason)) => {
                        error!(reason = %reason, "subscription failed");
                        return Ended::Final(SubscriptionState::Failed(reason));
                    }
                }
            }
        }
    }

    /// Reports the store unavailable and waits before the next attempt (a growing pause, up to
    /// [`MAX_UNAVAILABLE_BACKOFF`]); returns true if a stop was requested meanwhile. What was
    /// handled after the last commit is handled again from the checkpoint, as after a restart.
    pub(super) async fn wait_for_store(&mut self, attempts: &mut u32, reason: &str) -> bool {
        *attempts = attempts.saturating_add(1);
        if *attempts == 1 || attempts.is_power_of_two() {
            warn!(reason = %reason, attempts = *attempts, "the store is unavailable; retrying from the checkpoint");
        }
        let reason = reason.to_owned();
        self.status
            .update(|s| s.state = SubscriptionState::Unavailable(reason));
        // At least UNAVAILABLE_PAUSE per attempt, however small the restart backoff: a server
        // that is down must not be asked again in a tight loop.
        let backoff = self
            .config
            .restart_backoff
            .max(UNAVAILABLE_PAUSE)
            .saturating_mul(*attempts)
            .min(MAX_UNAVAILABLE_BACKOFF);
        self.sleep_or_stop(backoff).await
    }

    /// Carries the counters of the last status record over (handled events, retries and
    /// restarts are totals, not per process).
    pub(super) async fn restore_counters(&self) -> Result<(), StoreError> {
        let stored = match subscription_status_from_store(&*self.store, &self.name).await {
            Ok(stored) => stored,
            // The record is advisory (written by a newer version, say): start the totals anew.
            Err(e @ StoreError::Codec { .. }) => {
                let reason = crate::store::error_chain(&e);
                warn!(%reason, "the stored status record does not decode; totals start at 0");
                None
            }
            Err(e) => return Err(e),
        };
        if let Some(stored) = stored {
            self.status.update(|s| {
                s.events_handled = stored.events_handled;
                s.retries = stored.retries;
                s.restarts = stored.restarts;
            });
        }
        Ok(())
    }
}
