//! Committing the checkpoint with the handler's state and the status record, fenced by the
//! lease while the loop holds one.

use std::time::Instant;

use tracing::{debug, warn};

use super::operations::fault_message;
use super::{Fault, Runner, CACHE_ENTRIES};
use crate::store::{StateWrite, StoreError};
use crate::subscription::failure::{commit_fenced, status_write, RESERVED_PREFIX};
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
        writes: Vec<StateWrite>,
    ) -> Result<(), StoreError> {
        commit_fenced(
            &*self.store,
            self.lease.as_ref(),
            &self.name,
            expected,
            position,
            writes,
        )
        .await
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

    /// Commits the checkpoint with the pending state, if anything moved, once the commit in
    /// flight (if any) is stored: when it returns, everything up to `checkpoint` is.
    pub(super) async fn commit(
        &mut self,
        committed: &mut Committed,
        checkpoint: u64,
        pending: &mut StateBatch,
    ) -> Result<(), Fault> {
        self.settle().await?;
        if committed.unchanged(checkpoint, pending) {
            committed.at = Instant::now();
            return Ok(());
        }
        self.commit_forced(committed, checkpoint, pending, None)
            .await
    }

    /// Like [`commit`](Self::commit), but returns once the commit is sent, while the store
    /// writes it: the loop goes on handling the next events meanwhile (the commit's sync costs
    /// as much as handling a thousand events). At most one commit is in flight: the next
    /// commit of any kind, a wait at the head and the end of the run wait for it first
    /// ([`settle`](Self::settle)), and only then does the status show its checkpoint. If it
    /// fails, the run ends with its fault and the next run begins from the stored checkpoint,
    /// so the events handled meanwhile are handled again with the state as stored, as after a
    /// crash.
    pub(super) async fn commit_pipelined(
        &mut self,
        committed: &mut Committed,
        checkpoint: u64,
        pending: &mut StateBatch,
    ) -> Result<(), Fault> {
        if committed.unchanged(checkpoint, pending) {
            committed.at = Instant::now();
            return Ok(());
        }
        let Some(writes) = self.prepare(committed, checkpoint, pending, None).await? else {
            return Ok(());
        };
        let store = self.store.clone();
        let lease = self.lease.clone();
        let name = self.name.clone();
        let expected = committed.expected;
        let task = tokio::spawn(async move {
            commit_fenced(&*store, lease.as_ref(), &name, expected, checkpoint, writes).await
        });
        self.in_flight = Some(InFlight {
            position: checkpoint,
            task,
        });
        *committed = Committed::at(checkpoint);
        Ok(())
    }

    /// Waits for the commit in flight, if any (see [`commit_pipelined`](Self::commit_pipelined)),
    /// and shows its checkpoint in the status once it is stored.
    ///
    /// Cancel-safe: the commit stays in flight until it has answered (a run dropped while it
    /// waits here leaves it for [`settle_after_run`](Self::settle_after_run)).
    pub(super) async fn settle(&mut self) -> Result<(), Fault> {
        // Every commit and the end of every run come through here: what the loop recorded
        // quietly is published before anything waits.
        self.status.publish();
        let Some(in_flight) = self.in_flight.as_mut() else {
            return Ok(());
        };
        let joined = (&mut in_flight.task).await;
        let position = in_flight.position;
        self.in_flight = None;
        let result = match joined {
            Ok(result) => result,
            Err(e) => {
                return Err(Fault::Fatal(format!(
                    "the commit of checkpoint {position} did not finish: {e}"
                )))
            }
        };
        self.committed_to(position, result)
    }

    /// At the end of a run, however it ended: waits for the commit in flight, so that the next
    /// run reads the checkpoint it leaves (its failure is the run's to report, or the run
    /// already ended with a fault of its own). After the lease was lost it does not wait: the
    /// commit is fenced by the lease (it cannot land after another holder took over), and a
    /// store slow enough to lose the lease must not hold the loop from standing by.
    pub(super) async fn settle_after_run(&mut self, lease_lost: bool) {
        if lease_lost {
            // Dropping the handle lets the commit finish (or be fenced) on its own.
            self.in_flight = None;
            return;
        }
        if let Err(fault) = self.settle().await {
            let reason = fault_message(&fault);
            warn!(reason = %reason, "a commit sent before the run ended failed");
        }
    }

    /// Commits the checkpoint with the pending state and the status record.
    pub(super) async fn commit_forced(
        &mut self,
        committed: &mut Committed,
        checkpoint: u64,
        pending: &mut StateBatch,
        state: Option<SubscriptionState>,
    ) -> Result<(), Fault> {
        let Some(writes) = self.prepare(committed, checkpoint, pending, state).await? else {
            return Ok(());
        };
        let result = self
            .commit_to_store(committed.expected, checkpoint, writes)
            .await;
        self.committed_to(checkpoint, result)?;
        *committed = Committed::at(checkpoint);
        Ok(())
    }

    /// Once the commit in flight (if any) is stored, the writes of a commit at `checkpoint`:
    /// what is pending (drained) and the status record; `None` when there is nothing to record
    /// yet. The handler's writes go to the cache now, before they are stored: until the commit
    /// is known to have failed, which ends the run (and the next run clears the cache), the
    /// handler reads them back as it wrote them.
    async fn prepare(
        &mut self,
        committed: &mut Committed,
        checkpoint: u64,
        pending: &mut StateBatch,
        state: Option<SubscriptionState>,
    ) -> Result<Option<Vec<StateWrite>>, Fault> {
        self.settle().await?;
        if committed.expected.is_none() && checkpoint > self.store.head() && pending.is_empty() {
            // A new subscription that starts beyond the head (`StartFrom::Position`): nothing
            // to record until the head reaches its start.
            committed.at = Instant::now();
            return Ok(None);
        }
        let mut status = self.status.get();
        status.checkpoint = checkpoint;
        if let Some(state) = state {
            status.state = state;
        }
        let record = status_write(&status);
        pending.insert(record.key, record.value);
        let writes = drain(pending);
        let cached = writes
            .iter()
            .filter(|w| !w.key.starts_with(RESERVED_PREFIX))
            .map(|w| (w.key.clone(), w.value.clone()));
        if self.cache.len() + writes.len() > CACHE_ENTRIES {
            self.cache.clear();
        }
        self.cache.extend(cached);
        Ok(Some(writes))
    }

    /// What a commit at `checkpoint` answered: shown in the status when stored.
    fn committed_to(
        &mut self,
        checkpoint: u64,
        result: Result<(), StoreError>,
    ) -> Result<(), Fault> {
        match result {
            Ok(()) => {
                debug!(checkpoint, "checkpoint committed");
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

/// A commit sent and not yet answered (see [`Runner::commit_pipelined`]).
pub(crate) struct InFlight {
    /// The checkpoint it stores.
    position: u64,
    task: tokio::task::JoinHandle<Result<(), StoreError>>,
}

/// The last commit: what the stored checkpoint is, and when it was written.
pub(super) struct Committed {
    pub expected: Option<u64>,
    pub position: u64,
    pub at: Instant,
}

impl Committed {
    /// A commit at `checkpoint`, made now.
    fn at(checkpoint: u64) -> Self {
        Committed {
            expected: Some(checkpoint),
            position: checkpoint,
            at: Instant::now(),
        }
    }

    /// Whether a commit at `checkpoint` with `pending` would store nothing new.
    fn unchanged(&self, checkpoint: u64, pending: &StateBatch) -> bool {
        checkpoint == self.position && pending.is_empty() && self.expected.is_some()
    }
}
