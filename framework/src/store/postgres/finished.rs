//! The transactions of this process that are known to have finished, so that an append whose
//! commit overlapped another of this process's commits is answered as soon as that one ends,
//! without reading the read horizon from the server (decision 57).
//!
//! The append functions return, with their transaction id, a snapshot taken after it, from
//! which the store works out the **older** transactions still running when the id was taken
//! (`ops::older_than`; migration 7's functions returned that list themselves). Every older
//! transaction not listed had finished by then, and no transaction can take an older id later,
//! so the append's events are below every reader's horizon once each listed transaction has
//! finished. With two committers, the other committer's transaction is often the one listed: it
//! was in its commit (its WAL flush) when this one took its id. This process sees that commit
//! end (the function's answer comes after the commit), records its transaction id here, and wakes
//! the appends that wait for it. A listed transaction this process does not know (another
//! process's, or one of its own whose id it never learned, such as a failed append) is never
//! recorded: those appends fall back to reading the horizon, as before.
//!
//! Only transactions that have finished are recorded, so a wrong answer cannot come from here:
//! at worst an append waits for the horizon read it would have made anyway.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use tokio::sync::watch;

/// How many finished transaction ids are remembered (the newest). An append needs the ids of
/// the few transactions that overlapped its own; one forgotten only costs a horizon read.
const REMEMBERED: usize = 4096;

/// This process's finished transactions (see the module's documentation).
pub(super) struct Finished {
    recent: Mutex<Recent>,
    /// Counts the writes that ended, to wake the appends waiting for some.
    ended: watch::Sender<u64>,
    /// How many of this process's writes (appends, notifications) are running now.
    running: AtomicUsize,
}

#[derive(Default)]
struct Recent {
    order: VecDeque<u64>,
    ids: HashSet<u64>,
}

impl Finished {
    pub(super) fn new() -> Self {
        Finished {
            recent: Mutex::new(Recent::default()),
            ended: watch::channel(0).0,
            running: AtomicUsize::new(0),
        }
    }

    /// Marks a write as running, from before its statement is sent until the guard is dropped
    /// (after its answer came back, commit included).
    pub(super) fn start(&self) -> Running<'_> {
        self.running.fetch_add(1, Ordering::SeqCst);
        Running {
            finished: self,
            xid: None,
        }
    }

    /// Whether every transaction in `xids` is known to have finished.
    pub(super) fn all(&self, xids: &[u64]) -> bool {
        if xids.is_empty() {
            return true;
        }
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        xids.iter().all(|x| recent.ids.contains(x))
    }

    /// Whether a write of this process is running now (one that may be among those an append
    /// waits for).
    pub(super) fn any_running(&self) -> bool {
        self.running.load(Ordering::SeqCst) > 0
    }

    /// Wakes up each time a write of this process ends.
    pub(super) fn subscribe(&self) -> watch::Receiver<u64> {
        self.ended.subscribe()
    }

    fn record(&self, xid: u64) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.ids.insert(xid) {
            recent.order.push_back(xid);
            if recent.order.len() > REMEMBERED {
                if let Some(old) = recent.order.pop_front() {
                    recent.ids.remove(&old);
                }
            }
        }
    }
}

/// A write of this process that is running (see [`Finished::start`]).
pub(super) struct Running<'a> {
    finished: &'a Finished,
    xid: Option<u64>,
}

impl Running<'_> {
    /// The write's transaction finished (committed or rolled back) as `xid`: recorded when the
    /// guard is dropped.
    pub(super) fn finished_as(&mut self, xid: u64) {
        self.xid = Some(xid);
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if let Some(xid) = self.xid {
            self.finished.record(xid);
        }
        self.finished.running.fetch_sub(1, Ordering::SeqCst);
        self.finished.ended.send_modify(|n| *n = n.wrapping_add(1));
    }
}

#[cfg(test)]
mod tests {
    use super::{Finished, REMEMBERED};

    #[test]
    fn only_recorded_transactions_count_as_finished_and_the_oldest_are_forgotten() {
        let f = Finished::new();
        let mut ended = f.subscribe();
        assert!(f.all(&[]));
        {
            let mut running = f.start();
            assert!(f.any_running());
            running.finished_as(7);
            assert!(!f.all(&[7]), "recorded only once the write has ended");
        }
        assert!(!f.any_running());
        assert!(ended.has_changed().unwrap());
        ended.mark_unchanged();
        assert!(f.all(&[7]));
        assert!(!f.all(&[7, 8]));
        drop(f.start()); // a write whose id was never learned: it only wakes the waiters
        assert!(ended.has_changed().unwrap());
        assert!(!f.all(&[8]));
        for xid in 100..100 + REMEMBERED as u64 {
            f.start().finished_as(xid);
        }
        assert!(!f.all(&[7]), "the oldest is forgotten");
        assert!(f.all(&[100 + REMEMBERED as u64 - 1]));
    }
}
