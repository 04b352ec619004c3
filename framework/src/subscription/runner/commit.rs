//! Committing the checkpoint with the handler's state and the status record, fenced by the
//! lease while the loop holds one.

use std::time::Instant;

use tracing::{debug, warn};

use super::{Fault, Runner, CACHE_ENTRIES};
use crate::store::StoreError;
use crate::subscription::failure::{status_write, RESERVED_PREFIX};
use crate::subscription::handler::{drain, EventHandler, StateBatch};
use crate::subscription::status::SubscriptionState;

impl<H: EventHandler> Runner<H> {
    /// Writes the status record at this instance's last committed checkpoint (fenced by it, so
    /// that a zombie instance cannot overwrite the status of a newer one), for a run that ended
    /// without a commit of its own. Best effort: the status in memory is the authority.
    pub(super) async fn record_final(&self, state: SubscriptionState) {
        let mut status = self.status.get();
        status.state = state;
        let current = status.checkpoint;
        let record = status_write(&status);
        if let Err(e) = self
            .commit_to_store(Some(current), current, vec![record])
            .await
        {
            warn!(error = %e, "could not record the final status");
        }
    }

    /// Commits the checkpoint and state writes: fenced by the lease while this loop holds one.
    pub(super) async fn commit_to_store(
        &self,
        expected: Option<u64>,
        position: u64,
        writes: Vec<crate::store::StateWrite>,
    ) -> Result<(), StoreError> {
        match &self.lease {
            Some(lease) => {
                self.store
                    .commit_checkpoint_fenced(lease, &self.name, expected, position, writes)
                    .await
            }
            None => {
                self.store
                    .commit_checkpoint(&self.name, expected, position, writes)
                    .await
            }
        }
    }

    /// Commits on a stop request. The status cell says "stopped" only once this commit is done
    /// and the lease is given up (whoever waits for the stop relies on the checkpoint being
    /// saved, and may exit at once); the record says it now.
    pub(super) async fn commit_stopped(
        &mut self,
        committed: &mut Committed,
        checkpoint: u64,
        pending: &mut StateBatch,
    ) -> Result<(), Fault> {
        let state = Some(SubscriptionState::Stopped);
        self.commit_forced(committed, checkpoint, pending, state)
            .await
    }

    /// Commits the progress before a failing event with the `Failed` state, and returns the
    /// fault that ends the run.
    pub(super) async fn fail_at(
        &mut self,
        committed: &mut Committed,
        checkpoint: u64,
        pending: &mut StateBatch,
        reason: String,
    ) -> Fault {
        let state = Some(SubscriptionState::Failed(reason.clone()));
        match self
            .commit_forced(committed, checkpoint, pending, state)
            .await
        {
            Ok(()) => Fault::Fatal(reason),
            Err(fault) => fault,
        }
    }

    /// Commits the checkpoint with the pending state, if anything moved.
    pub(super) async fn commit(
        &mut self,
        committed: &mut Committed,
        checkpoint: u64,
        pending: &mut StateBatch,
    ) -> Result<(), Fault> {
        if checkpoint == committed.position && pending.is_empty() && committed.expected.is_some() {
            committed.at = Instant::now();
            return Ok(());
        }
        self.commit_forced(committed, checkpoint, pending, None)
            .await
    }

    /// Commits the checkpoint with the pending state and the status record.
    pub(super) async fn commit_forced(
        &mut self,
        committed: &mut Committed,
        checkpoint: u64,
        pending: &mut StateBatch,
        state: Option<SubscriptionState>,
    ) -> Result<(), Fault> {
        if committed.expected.is_none() && checkpoint > self.store.head() && pending.is_empty() {
            // A new subscription that starts beyond the head (`StartFrom::Position`): nothing
            // to record until the head reaches its start.
            committed.at = Instant::now();
            return Ok(());
        }
        let mut status = self.status.get();
        status.checkpoint = checkpoint;
        if let Some(state) = state {
            status.state = state;
        }
        let record = status_write(&status);
        pending.insert(record.key, record.value);
        let writes = drain(pending);
        let cached: Vec<(Vec<u8>, Option<Vec<u8>>)> = writes
            .iter()
            .filter(|w| !w.key.starts_with(RESERVED_PREFIX))
            .map(|w| (w.key.clone(), w.value.clone()))
            .collect();
        match self
            .commit_to_store(committed.expected, checkpoint, writes)
            .await
        {
            Ok(()) => {
                if self.cache.len() + cached.len() > CACHE_ENTRIES {
                    self.cache.clear();
                }
                self.cache.extend(cached);
                debug!(checkpoint, "checkpoint committed");
                *committed = Committed {
                    expected: Some(checkpoint),
                    position: checkpoint,
                    at: Instant::now(),
                };
                self.status.update(|s| s.checkpoint = checkpoint);
                Ok(())
            }
            Err(StoreError::CheckpointConflict { actual, .. }) => Err(Fault::Fatal(format!(
                "another instance moved the checkpoint (to {actual:?}); this one stops"
            ))),
            Err(e) => Err(e.into()),
        }
    }
}

/// The last commit: what the stored checkpoint is, and when it was written.
pub(super) struct Committed {
    pub expected: Option<u64>,
    pub position: u64,
    pub at: Instant,
}
