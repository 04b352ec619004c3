//! The idempotence window: which command ids an aggregate has recorded events for, lately.
//!
//! Derived from the stream alone: every recorded event carries its command's id as causation
//! id, so the window is rebuilt by reading the stream's last events, needs no storage of its own
//! and survives restarts of the actor and of the store.

use std::collections::{HashMap, VecDeque};

use uuid::Uuid;

use super::Recorded;
use crate::store::RecordedEvent;

/// The command ids whose first event is among the last `size` events of a stream, each with
/// the events it recorded.
///
/// A causation id that appears again later in the stream, apart from its first run of events,
/// keeps its first outcome (only the actor's own appends count as a command's outcome, and the
/// actor never records an id twice while it is in the window).
#[derive(Clone, Debug, Default)]
pub struct ProcessedCommands {
    size: u64,
    by_id: HashMap<Uuid, Recorded>,
    /// Ids in the order of their first event (the order they leave the window in).
    order: VecDeque<Uuid>,
    /// The causation id of the last observed event, while its run of events may continue.
    open: Option<Uuid>,
}

impl PartialEq for ProcessedCommands {
    fn eq(&self, other: &Self) -> bool {
        self.size == other.size && self.by_id == other.by_id && self.order == other.order
    }
}

impl ProcessedCommands {
    /// An empty window of `size` events.
    pub(crate) fn new(size: u64) -> Self {
        ProcessedCommands {
            size,
            ..Default::default()
        }
    }

    /// The outcome of `command_id`, if it is in the window.
    pub fn get(&self, command_id: &Uuid) -> Option<Recorded> {
        self.by_id.get(command_id).copied()
    }

    /// How many command ids are remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether no command id is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The remembered command ids with their outcomes, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (Uuid, Recorded)> + '_ {
        self.order.iter().map(|id| (*id, self.by_id[id]))
    }

    /// The window's size in events.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Takes a recorded event of the stream into account, in stream order.
    pub(crate) fn observe(&mut self, event: &RecordedEvent) {
        if self.size == 0 {
            return;
        }
        let Some(id) = event.causation_id else {
            self.open = None;
            return;
        };
        if self.open == Some(id) {
            if let Some(r) = self.by_id.get_mut(&id) {
                if r.last_version + 1 == event.stream_version {
                    r.last_version = event.stream_version;
                    r.last_position = event.position;
                    return;
                }
            }
        }
        if self.by_id.contains_key(&id) {
            // A later, separate run of the same id: the first one is the outcome.
            self.open = None;
            return;
        }
        self.insert(
            id,
            Recorded {
                first_version: event.stream_version,
                last_version: event.stream_version,
                first_position: event.position,
                last_position: event.position,
            },
        );
        self.open = Some(id);
    }

    /// Remembers the outcome of a command the actor just recorded.
    pub(crate) fn record(&mut self, command_id: Uuid, recorded: Recorded) {
        if self.size == 0 {
            return;
        }
        self.open = None;
        if !self.by_id.contains_key(&command_id) {
            self.insert(command_id, recorded);
        }
    }

    fn insert(&mut self, id: Uuid, recorded: Recorded) {
        self.by_id.insert(id, recorded);
        self.order.push_back(id);
    }

    /// Forgets the ids whose first event is no longer among the last `size` events of a stream
    /// at `version`.
    pub(crate) fn evict(&mut self, version: u64) {
        let oldest_kept = (version + 1).saturating_sub(self.size);
        while let Some(id) = self.order.front() {
            if self.by_id[id].first_version >= oldest_kept {
                break;
            }
            let id = self.order.pop_front().expect("front exists");
            self.by_id.remove(&id);
            if self.open == Some(id) {
                self.open = None;
            }
        }
    }

    /// The stream version to start reading at to rebuild the window of a stream whose state is
    /// known up to `version`: one event before the window, so that a command whose events
    /// straddle the window's start is recognised as starting before it.
    pub(crate) fn lookback_start(size: u64, version: u64) -> u64 {
        if size == 0 {
            version + 1
        } else {
            version.saturating_sub(size).max(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(version: u64, cause: Option<Uuid>) -> RecordedEvent {
        RecordedEvent {
            position: version * 10,
            stream_id: "a-1".into(),
            stream_version: version,
            category: "a".into(),
            event_type: "E".into(),
            schema_version: 1,
            event_id: Uuid::now_v7(),
            correlation_id: None,
            causation_id: cause,
            timestamp_micros: 0,
            payload: vec![],
        }
    }

    #[test]
    fn runs_of_one_causation_id_are_one_command_and_the_first_run_wins() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let mut w = ProcessedCommands::new(100);
        for e in [
            ev(1, Some(a)),
            ev(2, Some(a)),
            ev(3, None),
            ev(4, Some(b)),
            ev(5, Some(a)),
        ] {
            w.observe(&e);
        }
        assert_eq!(w.get(&a).unwrap().first_version, 1);
        assert_eq!(w.get(&a).unwrap().last_version, 2);
        assert_eq!(w.get(&a).unwrap().last_position, 20);
        assert_eq!(w.get(&b).unwrap().event_count(), 1);
        assert_eq!(w.len(), 2);
    }

    #[test]
    fn a_command_leaves_the_window_when_its_first_event_does() {
        let ids: Vec<Uuid> = (0..10).map(|_| Uuid::now_v7()).collect();
        let mut full = ProcessedCommands::new(4);
        let events: Vec<_> = (1..=10)
            .map(|v| ev(v, Some(ids[(v as usize - 1) / 2])))
            .collect();
        for e in &events {
            full.observe(e);
        }
        full.evict(10);
        // Window = versions 7..=10: commands starting at 7 and 9.
        assert_eq!(
            full.iter().map(|(id, _)| id).collect::<Vec<_>>(),
            vec![ids[3], ids[4]]
        );

        // Rebuilding from a lookback that starts mid-command gives the same window.
        for known in 0..=10u64 {
            let mut w = ProcessedCommands::new(4);
            let start = ProcessedCommands::lookback_start(4, known);
            for e in &events[start as usize - 1..] {
                w.observe(e);
            }
            w.evict(10);
            assert_eq!(w, full, "lookback from a state at version {known}");
        }
    }

    #[test]
    fn size_zero_remembers_nothing() {
        let mut w = ProcessedCommands::new(0);
        w.observe(&ev(1, Some(Uuid::now_v7())));
        w.record(
            Uuid::now_v7(),
            Recorded {
                first_version: 2,
                last_version: 2,
                first_position: 2,
                last_position: 2,
            },
        );
        assert!(w.is_empty());
        assert_eq!(ProcessedCommands::lookback_start(0, 5), 6);
    }
}
