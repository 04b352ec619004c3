//! Event and aggregate types shared by the framework's own integration tests (each test file is
//! a binary of its own: `mod support;`).
#![allow(dead_code)]

use serde::{Deserialize, Serialize};
use tidings::aggregate::Aggregate;
use tidings::DomainEvent;

/// A numbered event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, DomainEvent)]
pub struct Ping {
    pub n: u64,
}

/// What a [`Tally`] records.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, DomainEvent)]
pub enum TallyEvent {
    Added { by: u64 },
}

/// A [`Tally`]'s refusal of 0.
#[derive(Debug, thiserror::Error, Serialize, Deserialize)]
#[error("nothing to add")]
pub struct NothingToAdd;

/// Adds what it is told; refuses 0.
#[derive(Default, Serialize, Deserialize)]
pub struct Tally {
    pub total: u64,
}

impl Aggregate for Tally {
    const CATEGORY: &'static str = "tally";
    type Command = u64;
    type Event = TallyEvent;
    type Error = NothingToAdd;

    fn handle(&self, by: u64) -> Result<Vec<TallyEvent>, NothingToAdd> {
        if by == 0 {
            return Err(NothingToAdd);
        }
        Ok(vec![TallyEvent::Added { by }])
    }

    fn apply(&mut self, event: &TallyEvent) {
        let TallyEvent::Added { by } = event;
        self.total += by;
    }
}
