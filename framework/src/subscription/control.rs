//! Operations on a subscription that runs in another process, sent through the store.
//!
//! On a store with leases (PostgreSQL) the process that holds a subscription's lease runs it;
//! any other process (the ops CLI, a standby) that asks to replay or skip its parked events
//! records a **request** in the subscription's state (`\0tidings/control/<id>`, committed at the
//! current checkpoint without moving it). The holder looks for requests between pages and while
//! it waits at the head, applies each, and in the **same commit** as the operation's effect
//! deletes the request and records its **reply** (`\0tidings/control-done/<id>`). So a request
//! is applied once (its effect and its removal are one transaction, fenced by the lease), and
//! never lost: until a holder applies it, it stays in the store, and the next holder applies it
//! when it takes over. The asking process reads the reply and deletes it.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::failure::{ControlError, ReplayOutcome};
use crate::store::{
    EventStore, Lease, LeaseAttempt, LeaseHolder, LeaseInfo, StateWrite, StoreError,
};

/// Requests waiting for the holder.
const REQUESTS: &[u8] = b"\0tidings/control/";
/// Replies waiting for the process that asked.
const REPLIES: &[u8] = b"\0tidings/control-done/";

/// The most replies kept for askers that never came back for them (oldest dropped first).
pub(crate) const MAX_REPLIES: usize = 64;

/// How often a holder looks for requests.
pub(crate) const POLL: Duration = Duration::from_millis(200);

/// How long an asker waits for the holder's reply before it reports the request as queued.
pub(crate) const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// How many times a request or a reply's removal is committed again when the holder's commit
/// came in between.
const COMMIT_ATTEMPTS: u32 = 100;

/// An operation for the holder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Operation {
    /// Replay a parked stream.
    Replay { stream: String },
    /// Skip one parked event.
    Skip { position: u64 },
}

/// A recorded request.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Request {
    pub operation: Operation,
    /// Who asked (host and pid), for the logs.
    pub by: String,
}

/// What the holder did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Reply {
    Replayed { handled: u64, still_parked: u64 },
    Skipped(bool),
    Failed(String),
}

impl Reply {
    pub fn replayed(outcome: &ReplayOutcome) -> Self {
        Reply::Replayed {
            handled: outcome.handled,
            still_parked: outcome.still_parked,
        }
    }
}

fn request_key(id: Uuid) -> Vec<u8> {
    let mut key = REQUESTS.to_vec();
    key.extend_from_slice(id.as_simple().to_string().as_bytes());
    key
}

fn reply_key(id: Uuid) -> Vec<u8> {
    let mut key = REPLIES.to_vec();
    key.extend_from_slice(id.as_simple().to_string().as_bytes());
    key
}

fn id_of(key: &[u8], prefix: &[u8]) -> Option<Uuid> {
    Uuid::try_parse_ascii(key.strip_prefix(prefix)?).ok()
}

/// The writes that settle request `id` with `reply`: committed with the operation's effect.
pub(crate) fn settle(id: Uuid, reply: &Reply) -> [StateWrite; 2] {
    [
        StateWrite {
            key: request_key(id),
            value: None,
        },
        StateWrite {
            key: reply_key(id),
            value: Some(serde_json::to_vec(reply).expect("a reply encodes")),
        },
    ]
}

/// The requests waiting for subscription `name`, oldest first (ids are time-ordered). A record
/// that does not decode is settled with a failure reply rather than blocking the others.
pub(crate) async fn requests(
    store: &dyn EventStore,
    name: &str,
) -> Result<Vec<(Uuid, Result<Request, String>)>, StoreError> {
    let page = store.scan_state(name, REQUESTS, REQUESTS, 64).await?;
    Ok(page
        .into_iter()
        .filter_map(|(key, value)| {
            let id = id_of(&key, REQUESTS)?;
            let request = serde_json::from_slice(&value)
                .map_err(|e| format!("the request record does not decode: {e}"));
            Some((id, request))
        })
        .collect())
}

/// Deletions of the oldest replies beyond [`MAX_REPLIES`] (askers that never came back), of
/// those whose asker has stopped waiting for them (older than twice [`REPLY_TIMEOUT`]).
pub(crate) async fn prune_replies(
    store: &dyn EventStore,
    name: &str,
) -> Result<Vec<StateWrite>, StoreError> {
    let page = store
        .scan_state(name, REPLIES, REPLIES, 4 * MAX_REPLIES)
        .await?;
    let excess = page.len().saturating_sub(MAX_REPLIES);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let stale = |key: &[u8]| {
        id_of(key, REPLIES)
            .and_then(|id| id.get_timestamp())
            .map(|t| {
                let (secs, nanos) = t.to_unix();
                now.saturating_sub(Duration::new(secs, nanos)) > 2 * REPLY_TIMEOUT
            })
            .unwrap_or(true)
    };
    Ok(page
        .into_iter()
        .take(excess)
        .filter(|(key, _)| stale(key))
        .map(|(key, _)| StateWrite { key, value: None })
        .collect())
}

/// Commits `writes` to subscription `name`'s state at its current checkpoint (which stays
/// where it is), again when a commit of the running holder came in between.
async fn commit_beside(
    store: &dyn EventStore,
    name: &str,
    writes: Vec<StateWrite>,
) -> Result<(), StoreError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        // Never creates the checkpoint: a subscription that has not recorded where it starts
        // would find one at 0 (see `send`, which waits for it).
        let Some(at) = store.load_checkpoint(name).await? else {
            return Err(StoreError::InvalidInput(format!(
                "subscription {name:?} has not recorded where it starts yet"
            )));
        };
        match store
            .commit_checkpoint(name, Some(at), at, writes.clone())
            .await
        {
            Err(StoreError::CheckpointConflict { .. }) if attempt < COMMIT_ATTEMPTS => continue,
            other => return other,
        }
    }
}

/// The lease of subscription `name` when a process holds it now (not expired by the store's
/// clock); `None` on a store without leases, or when nobody holds it.
pub(crate) async fn holder_elsewhere(
    store: &dyn EventStore,
    name: &str,
) -> Result<Option<LeaseInfo>, StoreError> {
    match store.load_lease(name).await {
        Ok(Some(info)) if info.held => Ok(Some(info)),
        Ok(_) | Err(StoreError::Unsupported(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// How long an operation on a stopped subscription's stored state holds its lease at most (it
/// gives it up when done; this bounds a process that dies meanwhile).
const OPERATION_LEASE: Duration = Duration::from_secs(10);

/// Takes subscription `name`'s lease for an operation on its stored state from this process,
/// so that no process starts running it meanwhile and the operation's commit is fenced:
/// `Ok(None)` on a store without leases, [`ControlError::RunningElsewhere`] when a process
/// holds it.
pub(crate) async fn lease_for_operation(
    store: &dyn EventStore,
    name: &str,
) -> Result<Option<Lease>, ControlError> {
    let holder = LeaseHolder::this_process();
    match store.acquire_lease(name, &holder, OPERATION_LEASE).await {
        Ok(LeaseAttempt::Acquired(lease)) => Ok(Some(lease)),
        Ok(LeaseAttempt::HeldBy(info)) => Err(ControlError::RunningElsewhere {
            name: name.to_owned(),
            holder: info.holder.to_string(),
        }),
        Err(StoreError::Unsupported(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Gives back a lease taken by [`lease_for_operation`].
pub(crate) async fn release(store: &dyn EventStore, lease: Option<Lease>) {
    if let Some(lease) = lease {
        if let Err(e) = store.release_lease(&lease).await {
            tracing::warn!(error = %e, "could not give an operation's lease back; it expires");
        }
    }
}

/// Sends `operation` to the process that holds subscription `name` and waits for its reply (up
/// to [`REPLY_TIMEOUT`]). Without a reply by then the request stays recorded, to be applied by
/// the holder (or by the next one), and the error says so.
pub(crate) async fn send(
    store: &dyn EventStore,
    name: &str,
    holder: &LeaseInfo,
    operation: Operation,
) -> Result<Reply, ControlError> {
    let id = Uuid::now_v7();
    let me = crate::store::LeaseHolder::this_process();
    let request = Request {
        operation,
        by: me.to_string(),
    };
    let write = StateWrite {
        key: request_key(id),
        value: Some(serde_json::to_vec(&request).expect("a request encodes")),
    };
    let deadline = tokio::time::Instant::now() + REPLY_TIMEOUT;
    // A holder that has just started records its checkpoint first: wait for it.
    while store.load_checkpoint(name).await?.is_none() {
        if tokio::time::Instant::now() >= deadline {
            return Err(ControlError::Failed(format!(
                "subscription {name:?} runs in {} but has not recorded where it starts yet",
                holder.holder
            )));
        }
        tokio::time::sleep(POLL).await;
    }
    commit_beside(store, name, vec![write]).await?;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(bytes) = store.load_state(name, &reply_key(id)).await? {
            let reply: Reply = serde_json::from_slice(&bytes)
                .map_err(|e| StoreError::codec("control reply", e))?;
            let delete = StateWrite {
                key: reply_key(id),
                value: None,
            };
            if let Err(e) = commit_beside(store, name, vec![delete]).await {
                tracing::debug!(error = %e, "could not delete a control reply; the holder prunes it");
            }
            return Ok(reply);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ControlError::Queued {
                holder: holder.holder.to_string(),
                request: id.to_string(),
            });
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::super::failure::RESERVED_PREFIX;
    use super::*;

    #[test]
    fn keys_are_reserved_and_round_trip_their_ids() {
        let id = Uuid::now_v7();
        assert!(request_key(id).starts_with(RESERVED_PREFIX));
        assert!(reply_key(id).starts_with(RESERVED_PREFIX));
        assert_eq!(id_of(&request_key(id), REQUESTS), Some(id));
        assert_eq!(id_of(&reply_key(id), REPLIES), Some(id));
        assert!(!reply_key(id).starts_with(REQUESTS));
    }

    #[test]
    fn later_requests_sort_after_earlier_ones() {
        let a = Uuid::now_v7();
        let b = Uuid::now_v7();
        assert!(request_key(a) < request_key(b));
    }
}
