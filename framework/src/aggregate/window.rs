//! The idempotence window: which command ids an aggregate has decided lately, and how.
//!
//! Derived from the stream alone: every recorded event carries its command's id as causation
//! id, and a decision that recorded no domain event (a refusal, or an acceptance that changed
//! nothing) is kept as a framework record of its own ([`REFUSED_TYPE`], [`UNCHANGED_TYPE`]) with
//! the command's id as causation id. So the window is rebuilt by reading the stream's last
//! events, and survives restarts of the actor and of the store.

use std::collections::{HashMap, VecDeque};

use uuid::Uuid;

use super::Recorded;
use crate::store::RecordedEvent;

/// The event type of the record that remembers a refused command in its aggregate's stream.
///
/// Its payload is JSON: `{"error": <the aggregate's Error as JSON>, "message": "<its Display>"}`;
/// its causation id is the command's id. Aggregates do not apply it and the derived
/// `EventHandler`s never receive it (they read only the types they list).
pub const REFUSED_TYPE: &str = "$tidings.CommandRefused";

/// The event type of the record that remembers a command accepted with no events (its `handle`
/// returned an empty list), so that sending it again does not decide again. Its payload is `{}`.
pub const UNCHANGED_TYPE: &str = "$tidings.CommandChangedNothing";

/// Whether `event_type` is one of the framework's own records ([`REFUSED_TYPE`],
/// [`UNCHANGED_TYPE`]): event types starting with `$tidings.` belong to the framework.
pub fn is_framework_record(event_type: &str) -> bool {
    event_type.starts_with("$tidings.")
}

/// How an aggregate decided a command it remembers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Decision {
    /// Accepted: the command recorded these events.
    Recorded(Recorded),
    /// Accepted with no events; remembered by an [`UNCHANGED_TYPE`] record at this stream
    /// version.
    Unchanged {
        /// The stream version of the record.
        version: u64,
    },
    /// Refused; remembered (with the refusal) by a [`REFUSED_TYPE`] record at this stream
    /// version.
    Refused {
        /// The stream version of the record.
        version: u64,
    },
}

impl Decision {
    /// The events the command recorded: `None` for a refusal or an acceptance with no events.
    pub fn recorded(&self) -> Option<Recorded> {
        match self {
            Decision::Recorded(r) => Some(*r),
            Decision::Unchanged { .. } | Decision::Refused { .. } => None,
        }
    }

    /// The stream version the decision's first record has: its place in the window.
    pub fn first_version(&self) -> u64 {
        match self {
            Decision::Recorded(r) => r.first_version,
            Decision::Unchanged { version } | Decision::Refused { version } => *version,
        }
    }
}

/// The command ids whose first record is among the last `size` events of a stream, each with
/// how it was decided.
///
/// A causation id that appears again later in the stream, apart from its first run of events,
/// keeps its first outcome (only the actor's own appends count as a command's outcome, and the
/// actor never records an id twice while it is in the window).
#[derive(Clone, Debug, Default)]
pub struct ProcessedCommands {
    size: u64,
    by_id: HashMap<Uuid, Decision>,
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

    /// How `command_id` was decided, if it is in the window.
    pub fn get(&self, command_id: &Uuid) -> Option<Decision> {
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

    /// The remembered command ids with their decisions, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (Uuid, Decision)> + '_ {
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
        if is_framework_record(&event.event_type) {
            // A decision that recorded no domain event: one record, never a run.
            self.open = None;
            let decision = match event.event_type.as_str() {
                REFUSED_TYPE => Decision::Refused {
                    version: event.stream_version,
                },
                UNCHANGED_TYPE => Decision::Unchanged {
                    version: event.stream_version,
                },
                _ => return,
            };
            if !self.by_id.contains_key(&id) {
                self.insert(id, decision);
            }
            return;
        }
        if self.open == Some(id) {
            if let Some(Decision::Recorded(r)) = self.by_id.get_mut(&id) {
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
            Decision::Recorded(Recorded {
                first_version: event.stream_version,
                last_version: event.stream_version,
                first_position: event.position,
                last_position: event.position,
            }),
        );
        self.open = Some(id);
    }

    /// Remembers the decision of a command the actor just recorded.
    pub(crate) fn record(&mut self, command_id: Uuid, decision: Decision) {
        if self.size == 0 {
            return;
        }
        self.open = None;
        if !self.by_id.contains_key(&command_id) {
            self.insert(command_id, decision);
        }
    }

    fn insert(&mut self, id: Uuid, decision: Decision) {
        self.by_id.insert(id, decision);
        self.order.push_back(id);
    }

    /// Forgets the ids whose first event is no longer among the last `size` events of a stream
    /// at `version`.
    pub(crate) fn evict(&mut self, version: u64) {
        let oldest_kept = (version + 1).saturating_sub(self.size);
        while let Some(id) = self.order.front() {
            if self.by_id[id].first_version() >= oldest_kept {
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
            payload: Default::default(),
            metadata: Default::default(),
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
        let Some(Decision::Recorded(ra)) = w.get(&a) else {
            panic!("{:?}", w.get(&a))
        };
        assert_eq!(ra.first_version, 1);
        assert_eq!(ra.last_version, 2);
        assert_eq!(ra.last_position, 20);
        assert!(matches!(w.get(&b), Some(Decision::Recorded(r)) if r.event_count() == 1));
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
    fn refusals_and_unchanged_decisions_are_one_record_each_and_leave_the_window_like_events() {
        let (a, refused, unchanged) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let mut refusal = ev(2, Some(refused));
        refusal.event_type = REFUSED_TYPE.into();
        let mut nothing = ev(3, Some(unchanged));
        nothing.event_type = UNCHANGED_TYPE.into();
        let mut w = ProcessedCommands::new(3);
        for e in [ev(1, Some(a)), refusal, nothing, ev(4, Some(a))] {
            w.observe(&e);
        }
        assert_eq!(w.get(&refused), Some(Decision::Refused { version: 2 }));
        assert_eq!(w.get(&unchanged), Some(Decision::Unchanged { version: 3 }));
        // The event at 4 is a later run of `a`, not part of its outcome.
        assert!(matches!(w.get(&a), Some(Decision::Recorded(r)) if r.last_version == 1));
        w.evict(4);
        assert_eq!(w.get(&a), None);
        assert_eq!(w.len(), 2);
        w.evict(5);
        assert_eq!(w.get(&refused), None);
        assert!(is_framework_record(REFUSED_TYPE) && !is_framework_record("Deposited"));
    }

    #[test]
    fn size_zero_remembers_nothing() {
        let mut w = ProcessedCommands::new(0);
        w.observe(&ev(1, Some(Uuid::now_v7())));
        w.record(
            Uuid::now_v7(),
            Decision::Recorded(Recorded {
                first_version: 2,
                last_version: 2,
                first_position: 2,
                last_position: 2,
            }),
        );
        assert!(w.is_empty());
        assert_eq!(ProcessedCommands::lookback_start(0, 5), 6);
    }
}
