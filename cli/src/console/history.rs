//! The lag history: a ring of samples, bounded in samples and in subscriptions.

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;

/// Samples kept (five minutes at one a second).
pub const MAX_SAMPLES: usize = 300;

/// Subscriptions sampled at most (the first by name); the others are counted, not kept.
pub const MAX_SUBSCRIPTIONS: usize = 500;

/// One subscription's values, one per sample time (`None` before it appeared or after it
/// went).
#[derive(Default)]
struct Series {
    checkpoint: VecDeque<Option<u64>>,
    lag: VecDeque<Option<u64>>,
}

/// The samples: at most [`MAX_SAMPLES`] × [`MAX_SUBSCRIPTIONS`] pairs of numbers.
#[derive(Default)]
pub(crate) struct History {
    times_ms: VecDeque<u64>,
    heads: VecDeque<u64>,
    series: BTreeMap<String, Series>,
    /// Whether the last sample left subscriptions out (more than [`MAX_SUBSCRIPTIONS`]).
    truncated: bool,
    /// Why the last sample failed, until one succeeds.
    error: Option<String>,
}

impl History {
    /// Adds a sample taken at `at_ms` (Unix milliseconds): the head, and each subscription's
    /// checkpoint and lag.
    pub fn push(&mut self, at_ms: u64, head: u64, rows: Vec<(String, u64, u64)>, truncated: bool) {
        if self.times_ms.len() == MAX_SAMPLES {
            self.times_ms.pop_front();
            self.heads.pop_front();
            for s in self.series.values_mut() {
                s.checkpoint.pop_front();
                s.lag.pop_front();
            }
        }
        let earlier = self.times_ms.len();
        self.times_ms.push_back(at_ms);
        self.heads.push_back(head);
        let mut seen = BTreeMap::new();
        for (name, checkpoint, lag) in rows {
            seen.insert(name, (checkpoint, lag));
        }
        for (name, s) in self.series.iter_mut() {
            let value = seen.remove(name);
            s.checkpoint.push_back(value.map(|v| v.0));
            s.lag.push_back(value.map(|v| v.1));
        }
        let mut left_out = truncated;
        for (name, (checkpoint, lag)) in seen {
            if self.series.len() >= MAX_SUBSCRIPTIONS {
                left_out = true;
                break;
            }
            let mut s = Series::default();
            s.checkpoint.extend(std::iter::repeat_n(None, earlier));
            s.lag.extend(std::iter::repeat_n(None, earlier));
            s.checkpoint.push_back(Some(checkpoint));
            s.lag.push_back(Some(lag));
            self.series.insert(name, s);
        }
        // A subscription gone from every kept sample (deleted) makes room for others.
        self.series.retain(|_, s| s.lag.iter().any(Option::is_some));
        self.truncated = left_out;
        self.error = None;
    }

    /// Records that a sample failed.
    pub fn failed(&mut self, error: String) {
        self.error = Some(error);
    }

    /// Whether `name` has values in the history.
    pub fn knows(&self, name: &str) -> bool {
        self.series.contains_key(name)
    }

    /// The history as JSON: every subscription's series, or only `only`'s.
    pub fn view(&self, only: Option<&str>, interval_ms: u64) -> HistoryView<'_> {
        HistoryView {
            interval_ms,
            capacity: MAX_SAMPLES,
            max_subscriptions: MAX_SUBSCRIPTIONS,
            truncated: self.truncated,
            error: self.error.as_deref(),
            times_ms: &self.times_ms,
            head: &self.heads,
            subscriptions: self
                .series
                .iter()
                .filter(|(name, _)| only.is_none_or(|o| o == name.as_str()))
                .map(|(name, s)| SeriesView {
                    name,
                    checkpoint: &s.checkpoint,
                    lag: &s.lag,
                })
                .collect(),
        }
    }
}

/// The history endpoint's answer.
#[derive(Serialize)]
pub(crate) struct HistoryView<'a> {
    interval_ms: u64,
    capacity: usize,
    max_subscriptions: usize,
    truncated: bool,
    error: Option<&'a str>,
    times_ms: &'a VecDeque<u64>,
    head: &'a VecDeque<u64>,
    subscriptions: Vec<SeriesView<'a>>,
}

#[derive(Serialize)]
struct SeriesView<'a> {
    name: &'a str,
    checkpoint: &'a VecDeque<Option<u64>>,
    lag: &'a VecDeque<Option<u64>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_last_samples_and_at_most_so_many_subscriptions() {
        let mut h = History::default();
        for t in 0..(MAX_SAMPLES as u64 + 20) {
            let rows = (0..MAX_SUBSCRIPTIONS + 3)
                .map(|i| (format!("s{i:04}"), t, 7))
                .collect();
            h.push(t, t, rows, false);
        }
        assert_eq!(h.times_ms.len(), MAX_SAMPLES);
        assert_eq!(h.times_ms.front(), Some(&20));
        assert_eq!(h.series.len(), MAX_SUBSCRIPTIONS);
        assert!(h.truncated);
        assert!(h.series.values().all(|s| s.lag.len() == MAX_SAMPLES));
        assert!(h.knows("s0000") && !h.knows(&format!("s{:04}", MAX_SUBSCRIPTIONS)));
    }

    #[test]
    fn a_subscription_that_appears_later_is_padded_and_one_that_goes_is_dropped() {
        let mut h = History::default();
        h.push(1, 10, vec![("a".into(), 5, 5)], false);
        h.push(2, 11, vec![("a".into(), 6, 5), ("b".into(), 11, 0)], false);
        let view = serde_json::to_value(h.view(None, 1000)).unwrap();
        assert_eq!(view["subscriptions"][1]["name"], "b");
        assert_eq!(
            view["subscriptions"][1]["lag"],
            serde_json::json!([null, 0])
        );
        for t in 3..(MAX_SAMPLES as u64 + 5) {
            h.push(t, 11, vec![("b".into(), 11, 0)], false);
        }
        assert!(!h.knows("a") && h.knows("b"));
        let only = serde_json::to_value(h.view(Some("b"), 1000)).unwrap();
        assert_eq!(only["subscriptions"].as_array().unwrap().len(), 1);
    }
}
