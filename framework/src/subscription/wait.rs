//! Waiting for subscriptions: read-your-writes after a command, and settling before a check or a
//! shutdown. Every wait is woken by the subscription's own status updates (no polling), ends at
//! a deadline with an error naming who is behind, and treats a subscription that stopped or
//! failed before getting there as an error.

use std::time::Duration;

use tokio::time::Instant;

use super::status::{SubscriptionState, SubscriptionStatus};
use super::SubscriptionHandle;
use crate::aggregate::CommandOutcome;
use crate::store::{EventStore, StoreError};

/// How often the stored checkpoint of a subscription that stands by here (another process holds
/// it) is read while waiting for it.
const STANDBY_POLL: Duration = Duration::from_millis(20);

/// Which subscriptions a wait is for.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Among {
    /// Every subscription started in this registry that has not been stopped on purpose.
    All,
    /// These subscriptions, by name: each must have been started in this registry.
    Named(Vec<String>),
}

impl Among {
    /// The subscriptions named `names`.
    ///
    /// ```
    /// use tidings::subscription::Among;
    /// assert_eq!(Among::named(["stock"]), Among::Named(vec!["stock".to_owned()]));
    /// ```
    pub fn named<I, S>(names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Among::Named(names.into_iter().map(Into::into).collect())
    }
}

/// Why a wait for subscriptions ended without them having handled the position.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WaitError {
    /// The deadline passed first. `behind` holds the status of each subscription that had not
    /// handled `position` yet (name, state, how far it got).
    #[error("waited {waited:?} for position {position}; still behind: {}", names(.behind))]
    Timeout {
        /// The position waited for.
        position: u64,
        /// How long the wait lasted.
        waited: Duration,
        /// The subscriptions that had not got there, with their status at the deadline.
        behind: Vec<SubscriptionStatus>,
    },
    /// The subscription failed (it stopped at an event it cannot get past) before handling
    /// `position`: it will not get there without an operator.
    #[error("subscription {name:?} failed before position {position}: {reason}")]
    Failed {
        /// The subscription.
        name: String,
        /// The position waited for.
        position: u64,
        /// Why it failed.
        reason: String,
    },
    /// The subscription was stopped before handling `position`.
    #[error("subscription {name:?} is stopped at position {handled_up_to}, before {position}")]
    Stopped {
        /// The subscription.
        name: String,
        /// The position waited for.
        position: u64,
        /// How far it got.
        handled_up_to: u64,
    },
    /// No subscription of that name was started in this registry.
    #[error("no subscription named {0:?} was started here")]
    NotStarted(String),
    /// Reading the stored checkpoint of a subscription that another process runs failed.
    #[error("reading the checkpoint of {name:?} failed")]
    Store {
        /// The subscription.
        name: String,
        /// What the store said.
        #[source]
        source: StoreError,
    },
}

fn names(behind: &[SubscriptionStatus]) -> String {
    let list: Vec<String> = behind
        .iter()
        .map(|s| format!("{} ({:?}, at {})", s.name, s.state, s.handled_up_to))
        .collect();
    list.join(", ")
}

/// The position to wait for after `outcome`: its last event (also when it was answered from
/// history), or 0 when it recorded none (nothing to wait for).
pub fn position_of(outcome: &CommandOutcome) -> u64 {
    outcome.recorded.map_or(0, |r| r.last_position)
}

/// Where one subscription stands against `position`.
#[derive(Debug, PartialEq, Eq)]
enum Standing {
    /// Handled and committed: its state in the store shows the event.
    Done,
    /// Handled, not committed yet: ask it to commit.
    Uncommitted,
    /// Not there yet; worth waiting.
    Behind,
    /// Another process runs it: its stored checkpoint tells.
    Standby,
}

fn standing(status: &SubscriptionStatus, position: u64) -> Result<Standing, WaitError> {
    match &status.state {
        _ if status.checkpoint >= position => Ok(Standing::Done),
        SubscriptionState::Standby => Ok(Standing::Standby),
        SubscriptionState::Failed(reason) => Err(WaitError::Failed {
            name: status.name.clone(),
            position,
            reason: reason.clone(),
        }),
        SubscriptionState::Stopped => Err(WaitError::Stopped {
            name: status.name.clone(),
            position,
            handled_up_to: status.handled_up_to,
        }),
        _ if status.handled_up_to >= position => Ok(Standing::Uncommitted),
        _ => Ok(Standing::Behind),
    }
}

/// Waits until `handle` has handled every event up to `position`, or `deadline`.
///
/// `Err(behind)` at the deadline carries its last status; other errors are final.
async fn wait_one(
    handle: &SubscriptionHandle,
    store: Option<&dyn EventStore>,
    position: u64,
    deadline: Instant,
) -> Result<Result<SubscriptionStatus, SubscriptionStatus>, WaitError> {
    let mut updates = handle.watch();
    loop {
        let status = updates.borrow_and_update().clone();
        let wake = match standing(&status, position)? {
            Standing::Done => return Ok(Ok(status)),
            Standing::Uncommitted => {
                // Handled: commit it now rather than wait up to `commit_interval`, so that
                // state kept through the context shows it when the wait returns.
                match tokio::time::timeout_at(deadline, handle.flush()).await {
                    Err(_) => return Ok(Err(status)),
                    Ok(Ok(())) => continue,
                    // The loop ended, changed hands or could not commit: look again once its
                    // status changes (or shortly), not in a tight loop.
                    Ok(_) => Some(Instant::now() + STANDBY_POLL),
                }
            }
            Standing::Behind => {
                if Instant::now() >= deadline {
                    return Ok(Err(status));
                }
                // Every update wakes this wait (one per page of a catch-up, more when it goes
                // slowly): each is looked at in place, without a copy or a new timer, until the
                // subscription is no longer merely behind. A closed channel, or the deadline,
                // sends it round the loop, where the last status decides.
                let moved =
                    updates.wait_for(|s| !matches!(standing(s, position), Ok(Standing::Behind)));
                let _ = tokio::time::timeout_at(deadline, moved).await;
                continue;
            }
            Standing::Standby => {
                if let Some(store) = store {
                    let read = store.load_checkpoint(&status.name);
                    let Ok(stored) = tokio::time::timeout_at(deadline, read).await else {
                        return Ok(Err(status));
                    };
                    let stored = stored.map_err(|source| WaitError::Store {
                        name: status.name.clone(),
                        source,
                    })?;
                    if stored.unwrap_or(0) >= position {
                        return Ok(Ok(status));
                    }
                }
                if Instant::now() >= deadline {
                    return Ok(Err(status));
                }
                Some(Instant::now() + STANDBY_POLL)
            }
        };
        let until = wake.map_or(deadline, |w| w.min(deadline));
        // Woken by the next status update, or by the deadline (or the standby's next look).
        // A closed channel means the subscription is gone: its last status decides.
        let _ = tokio::time::timeout_at(until, updates.changed()).await;
    }
}

/// Waits until each of `handles` has handled `position`; at the deadline, the error names every
/// one still behind.
pub(crate) async fn wait_all(
    handles: &[SubscriptionHandle],
    store: Option<&dyn EventStore>,
    position: u64,
    timeout: Duration,
) -> Result<(), WaitError> {
    let started = Instant::now();
    let deadline = started + timeout;
    let waits = handles
        .iter()
        .map(|h| wait_one(h, store, position, deadline));
    // The first final error (failed, stopped) ends the wait at once.
    let results = futures_util::future::try_join_all(waits).await?;
    let mut behind: Vec<SubscriptionStatus> = results.into_iter().filter_map(Result::err).collect();
    if behind.is_empty() {
        Ok(())
    } else {
        behind.sort_by(|a, b| a.name.cmp(&b.name));
        Err(WaitError::Timeout {
            position,
            waited: started.elapsed(),
            behind,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subscription::status::initial;

    #[test]
    fn behind_is_below_the_position_in_a_state_that_can_still_get_there() {
        let states = [
            SubscriptionState::Starting,
            SubscriptionState::CatchingUp,
            SubscriptionState::Live,
            SubscriptionState::Parked,
            SubscriptionState::Stopped,
            SubscriptionState::Failed("x".into()),
            SubscriptionState::Unavailable("y".into()),
            SubscriptionState::Standby,
        ];
        let mut behind = 0;
        for state in states {
            for checkpoint in 0..4 {
                for handled in checkpoint..5 {
                    let mut status = initial("s");
                    status.state = state.clone();
                    status.checkpoint = checkpoint;
                    status.handled_up_to = handled;
                    let expected = checkpoint < 3
                        && handled < 3
                        && !matches!(
                            state,
                            SubscriptionState::Standby
                                | SubscriptionState::Failed(_)
                                | SubscriptionState::Stopped
                        );
                    let by_standing = matches!(standing(&status, 3), Ok(Standing::Behind));
                    assert_eq!(by_standing, expected, "{status:?}");
                    behind += usize::from(by_standing);
                }
            }
        }
        assert!(behind > 0);
    }
}
