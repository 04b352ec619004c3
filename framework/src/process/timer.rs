//! The deadline timer: turns due deadlines of a process manager into `$tidings.DeadlineDue`
//! records that its subscription then handles.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tracing::warn;

use super::{DeadlineDue, ProcessManager, DEADLINE_DUE_TYPE, DEADLINE_PREFIX};
use crate::store::{EventData, EventStore, ExpectedVersion, IntoEventStore};

/// How many index entries one scan reads at a time.
const SCAN_PAGE: usize = 256;

/// Fires the deadlines of one process manager.
///
/// It reads the deadlines the process manager's subscription has **committed** (a deadline set
/// by an event is seen after the checkpoint commit that holds it), and appends one
/// `$tidings.DeadlineDue` record for each that is due, to a stream of the instance's own
/// (`$deadlines-{uuid}`, so that a parked record holds back only that instance). The
/// subscription sends the deadline's command when it handles that record, and removes the
/// deadline in the same commit: so a deadline fires once, also when a record is appended twice
/// (a timer restarted before the subscription handled the first, or timers in two processes).
/// Deadlines fire late by at most `poll` after they are committed, and never early.
#[derive(Debug)]
pub struct DeadlineTimer;

/// A running [`DeadlineTimer`].
#[derive(Debug)]
pub struct DeadlineTimerHandle {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    fired: Arc<AtomicU64>,
}

impl DeadlineTimerHandle {
    /// How many `$tidings.DeadlineDue` records this timer appended.
    pub fn fired(&self) -> u64 {
        self.fired.load(Ordering::Relaxed)
    }

    /// Stops the timer and waits for it.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        let _ = self.task.await;
    }
}

impl DeadlineTimer {
    /// Starts the timer of process manager `P` on `store`, looking for newly committed
    /// deadlines every `poll` (and waking at the next due time it knows). Must be called inside
    /// a tokio runtime (an actix `System` is one).
    ///
    /// It fires the deadlines of the subscription named `P::NAME`; for one started under a name
    /// of its own, use [`start_named`](Self::start_named).
    pub fn start<P: ProcessManager>(
        store: impl IntoEventStore,
        poll: Duration,
    ) -> DeadlineTimerHandle {
        Self::start_named(P::NAME, store, poll)
    }

    /// Starts the timer of the process manager that runs as subscription `name` (see
    /// [`SubscriptionConfig::name`](crate::subscription::SubscriptionConfig::name)), as
    /// [`start`](Self::start) does.
    pub fn start_named(
        name: impl AsRef<str>,
        store: impl IntoEventStore,
        poll: Duration,
    ) -> DeadlineTimerHandle {
        let name = name.as_ref().to_owned();
        let store = store.into_event_store();
        let (stop, mut stop_rx) = watch::channel(false);
        let fired = Arc::new(AtomicU64::new(0));
        let count = fired.clone();
        let task = tokio::spawn(async move {
            // Keys appended by this run and still in the index (handled ones leave it).
            let mut sent: HashSet<Vec<u8>> = HashSet::new();
            loop {
                let next = match fire_due(&*store, &name, &mut sent, &count).await {
                    Ok(next) => next,
                    Err(e) => {
                        warn!(process = %name, error = %e, "deadline timer: the store failed; trying again");
                        None
                    }
                };
                let wait = next
                    .map(|at| Duration::from_micros(at.saturating_sub(now_micros())))
                    .map_or(poll, |until| until.min(poll));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop_rx.changed() => return,
                }
                if *stop_rx.borrow() {
                    return;
                }
            }
        });
        DeadlineTimerHandle { stop, task, fired }
    }
}

/// The stream of instance `instance`'s due records: one per instance, so that a due record
/// parked after its command kept failing holds back only that instance's deadlines.
pub(crate) fn deadline_stream(process: &str, instance: &str) -> String {
    let key = format!("{process}\0{instance}");
    format!(
        "$deadlines-{}",
        uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, key.as_bytes())
    )
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_micros() as u64
}

/// `(due, instance, name)` of an index key `d/{due:020}/{instance}\0{name}`.
fn parse_key(key: &[u8]) -> Option<(u64, String, String)> {
    let rest = key.strip_prefix(DEADLINE_PREFIX)?;
    let text = std::str::from_utf8(rest).ok()?;
    let (at, rest) = text.split_once('/')?;
    let (instance, name) = rest.split_once('\0')?;
    Some((at.parse().ok()?, instance.to_owned(), name.to_owned()))
}

/// Appends a due record for each due deadline not sent yet; returns the next due time.
async fn fire_due(
    store: &dyn EventStore,
    process: &str,
    sent: &mut HashSet<Vec<u8>>,
    fired: &AtomicU64,
) -> Result<Option<u64>, crate::store::StoreError> {
    let now = now_micros();
    let mut from = DEADLINE_PREFIX.to_vec();
    let mut still_due = HashSet::new();
    loop {
        let page = store
            .scan_state(process, DEADLINE_PREFIX, &from, SCAN_PAGE)
            .await?;
        let full = crate::store::state_page_is_full(&page, SCAN_PAGE);
        for (key, _) in &page {
            let Some((at, instance, name)) = parse_key(key) else {
                continue;
            };
            if at > now {
                sent.retain(|k| still_due.contains(k));
                return Ok(Some(at));
            }
            still_due.insert(key.clone());
            if sent.contains(key) {
                continue;
            }
            let due = DeadlineDue {
                process: process.to_owned(),
                instance,
                name,
                at,
            };
            let payload = serde_json::to_vec(&due).expect("a deadline record encodes");
            store
                .append(
                    &deadline_stream(process, &due.instance),
                    ExpectedVersion::Any,
                    vec![EventData::new(DEADLINE_DUE_TYPE, payload)],
                )
                .await?;
            fired.fetch_add(1, Ordering::Relaxed);
            sent.insert(key.clone());
        }
        match page.last() {
            Some((last, _)) if full => {
                from = last.clone();
                from.push(0);
            }
            _ => break,
        }
    }
    sent.retain(|k| still_due.contains(k));
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_keys_parse_back() {
        let key = super::super::deadline_key(42, "t-1/x", "expire");
        assert_eq!(
            parse_key(&key),
            Some((42, "t-1/x".to_owned(), "expire".to_owned()))
        );
        assert_eq!(parse_key(b"d/notanumber/a\0b"), None);
        assert_eq!(parse_key(b"i/a"), None);
    }
}
