//! Metrics, recorded through the [`metrics`](https://docs.rs/metrics/0.24) facade.
//!
//! tidings records counters, gauges and histograms of its store, subscriptions and aggregates
//! (the table in `docs/metrics.md` lists every one) and exports none: the application installs
//! the recorder it wants (a Prometheus exporter, StatsD, its own) and tidings' metrics go there.
//! With no recorder installed, recording does nothing (a branch per call).
//!
//! Install the recorder **before** opening a store, starting subscriptions or aggregates: they
//! take their metric handles once, when they start, and keep them (so that the hot path never
//! looks a metric up by name); a store opened before the recorder was installed records nothing.
//! Call [`describe_metrics`] once after installing it to give each metric its unit and help text.
//!
//! Names follow Prometheus' conventions: the `tidings_` prefix, `_total` on counters, base units
//! (`_seconds`). Store metrics carry a `backend` label (`sled`, `postgres`), subscription metrics
//! a `subscription` label (the subscription's run-time name), aggregate metrics an `aggregate`
//! label (its [`CATEGORY`](crate::aggregate::Aggregate::CATEGORY)).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    Gauge, Histogram, Unit,
};

/// Events appended (acknowledged), by `backend`.
pub const STORE_EVENTS_APPENDED: &str = "tidings_store_events_appended_total";
/// Appends acknowledged, by `backend`.
pub const STORE_APPENDS: &str = "tidings_store_appends_total";
/// Time from an append's call to its answer, by `backend`.
pub const STORE_APPEND_DURATION: &str = "tidings_store_append_duration_seconds";
/// Appends per commit group, by `backend`.
pub const STORE_COMMIT_GROUP_APPENDS: &str = "tidings_store_commit_group_appends";
/// Events per commit group, by `backend`.
pub const STORE_COMMIT_GROUP_EVENTS: &str = "tidings_store_commit_group_events";
/// Time of the durable part of a commit, by `backend`.
pub const STORE_COMMIT_DURATION: &str = "tidings_store_commit_duration_seconds";
/// Events returned per stream read, by `backend`.
pub const STORE_STREAM_READ_EVENTS: &str = "tidings_store_stream_read_events";
/// Pages read from the whole log (`read_all`), by `backend`.
pub const STORE_READ_ALL_PAGES: &str = "tidings_store_read_all_pages_total";

/// Events handled, by `subscription`.
pub const SUBSCRIPTION_EVENTS_HANDLED: &str = "tidings_subscription_events_handled_total";
/// Retries of failed events, by `subscription`.
pub const SUBSCRIPTION_RETRIES: &str = "tidings_subscription_retries_total";
/// Events parked, by `subscription`.
pub const SUBSCRIPTION_EVENTS_PARKED: &str = "tidings_subscription_events_parked_total";
/// Parked events skipped (dropped by an operator), by `subscription`.
pub const SUBSCRIPTION_EVENTS_SKIPPED: &str = "tidings_subscription_events_skipped_total";
/// Restarts after a handler panic, by `subscription`.
pub const SUBSCRIPTION_RESTARTS: &str = "tidings_subscription_restarts_total";
/// Events between the head and the last position handled, by `subscription`.
pub const SUBSCRIPTION_LAG_EVENTS: &str = "tidings_subscription_lag_events";
/// Age of the oldest event not yet handled (0 when caught up), by `subscription`.
pub const SUBSCRIPTION_LAG_SECONDS: &str = "tidings_subscription_lag_seconds";
/// The last committed checkpoint, by `subscription`.
pub const SUBSCRIPTION_CHECKPOINT: &str = "tidings_subscription_checkpoint_position";

/// Aggregate instances in memory, by `aggregate`.
pub const AGGREGATE_INSTANCES_LIVE: &str = "tidings_aggregate_instances_live";
/// Commands decided, by `aggregate` and `outcome`.
pub const AGGREGATE_COMMANDS: &str = "tidings_aggregate_commands_total";
/// Commands answered from the remembered decisions, by `aggregate`.
pub const AGGREGATE_COMMANDS_FROM_HISTORY: &str = "tidings_aggregate_commands_from_history_total";
/// State loads from the store, by `aggregate` and `source` (`snapshot`, `events`).
pub const AGGREGATE_LOADS: &str = "tidings_aggregate_loads_total";
/// Commands and queries served by an instance's state in memory, by `aggregate`.
pub const AGGREGATE_STATE_HITS: &str = "tidings_aggregate_state_hits_total";

/// Describes every tidings metric (unit and help text) to the installed recorder. Call it once,
/// after installing the recorder; recording works without it.
pub fn describe_metrics() {
    describe_counter!(
        STORE_EVENTS_APPENDED,
        Unit::Count,
        "Events appended to the store (acknowledged: durable and readable)."
    );
    describe_counter!(
        STORE_APPENDS,
        Unit::Count,
        "Appends acknowledged by the store."
    );
    describe_histogram!(
        STORE_APPEND_DURATION,
        Unit::Seconds,
        "Time from an append's call to its answer (success or refusal)."
    );
    describe_histogram!(
        STORE_COMMIT_GROUP_APPENDS,
        Unit::Count,
        "Appends committed together (sled: one writer group; PostgreSQL: one committer batch)."
    );
    describe_histogram!(
        STORE_COMMIT_GROUP_EVENTS,
        Unit::Count,
        "Events committed together (sled: one writer group; PostgreSQL: one committer batch)."
    );
    describe_histogram!(
        STORE_COMMIT_DURATION,
        Unit::Seconds,
        "Durable part of a commit (sled: flush and fsync; PostgreSQL: the commit round trip)."
    );
    describe_histogram!(
        STORE_STREAM_READ_EVENTS,
        Unit::Count,
        "Events returned by one read of a stream."
    );
    describe_counter!(
        STORE_READ_ALL_PAGES,
        Unit::Count,
        "Pages read from the whole log (read_all calls)."
    );
    describe_counter!(
        SUBSCRIPTION_EVENTS_HANDLED,
        Unit::Count,
        "Events a subscription's handler handled."
    );
    describe_counter!(
        SUBSCRIPTION_RETRIES,
        Unit::Count,
        "Retries of events whose handling failed."
    );
    describe_counter!(
        SUBSCRIPTION_EVENTS_PARKED,
        Unit::Count,
        "Events parked (failed, or behind a parked event of their stream)."
    );
    describe_counter!(
        SUBSCRIPTION_EVENTS_SKIPPED,
        Unit::Count,
        "Parked events skipped (dropped) on request."
    );
    describe_counter!(
        SUBSCRIPTION_RESTARTS,
        Unit::Count,
        "Restarts from the checkpoint after a handler panic."
    );
    describe_gauge!(
        SUBSCRIPTION_LAG_EVENTS,
        Unit::Count,
        "Positions between the store's head and the last position handled."
    );
    describe_gauge!(
        SUBSCRIPTION_LAG_SECONDS,
        Unit::Seconds,
        "Age of the oldest event not yet handled; 0 when caught up."
    );
    describe_gauge!(
        SUBSCRIPTION_CHECKPOINT,
        Unit::Count,
        "The last committed checkpoint (a log position)."
    );
    describe_gauge!(
        AGGREGATE_INSTANCES_LIVE,
        Unit::Count,
        "Aggregate instances (actors) in memory."
    );
    describe_counter!(
        AGGREGATE_COMMANDS,
        Unit::Count,
        "Commands by outcome: accepted, rejected, duplicate (answered from history), failed."
    );
    describe_counter!(
        AGGREGATE_COMMANDS_FROM_HISTORY,
        Unit::Count,
        "Commands sent again and answered from the remembered decision."
    );
    describe_counter!(
        AGGREGATE_LOADS,
        Unit::Count,
        "Aggregate states loaded from the store, from a snapshot or from events only."
    );
    describe_counter!(
        AGGREGATE_STATE_HITS,
        Unit::Count,
        "Commands and queries served by the state already in memory (no load)."
    );
}

/// The store's metric handles, taken once when the store opens.
#[derive(Clone)]
pub(crate) struct StoreMetrics {
    events_appended: Counter,
    appends: Counter,
    append_duration: Histogram,
    group_appends: Histogram,
    group_events: Histogram,
    commit_duration: Histogram,
    stream_read_events: Histogram,
    read_all_pages: Counter,
}

impl std::fmt::Debug for StoreMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreMetrics")
    }
}

impl StoreMetrics {
    /// The handles of store `backend` ("sled", "postgres").
    pub fn new(backend: &'static str) -> Self {
        StoreMetrics {
            events_appended: counter!(STORE_EVENTS_APPENDED, "backend" => backend),
            appends: counter!(STORE_APPENDS, "backend" => backend),
            append_duration: histogram!(STORE_APPEND_DURATION, "backend" => backend),
            group_appends: histogram!(STORE_COMMIT_GROUP_APPENDS, "backend" => backend),
            group_events: histogram!(STORE_COMMIT_GROUP_EVENTS, "backend" => backend),
            commit_duration: histogram!(STORE_COMMIT_DURATION, "backend" => backend),
            stream_read_events: histogram!(STORE_STREAM_READ_EVENTS, "backend" => backend),
            read_all_pages: counter!(STORE_READ_ALL_PAGES, "backend" => backend),
        }
    }

    /// An append answered after `elapsed`, with `result`.
    pub fn appended(
        &self,
        elapsed: Duration,
        result: &crate::store::Result<crate::store::AppendResult>,
    ) {
        self.append_duration.record(elapsed.as_secs_f64());
        if let Ok(r) = result {
            self.appends.increment(1);
            self.events_appended
                .increment(r.last_position + 1 - r.first_position);
        }
    }

    /// A commit group of `appends` appends holding `events` events.
    pub fn group(&self, appends: usize, events: usize) {
        self.group_appends.record(appends as f64);
        self.group_events.record(events as f64);
    }

    /// The durable part of a commit took `elapsed`.
    pub fn committed(&self, elapsed: Duration) {
        self.commit_duration.record(elapsed.as_secs_f64());
    }

    /// A stream read returned `events` events.
    pub fn stream_read(&self, events: usize) {
        self.stream_read_events.record(events as f64);
    }

    /// A page of the whole log was read.
    pub fn read_all_page(&self) {
        self.read_all_pages.increment(1);
    }
}

/// A subscription's metric handles, taken once when it starts.
#[derive(Clone)]
pub(crate) struct SubscriptionMetrics {
    pub handled: Counter,
    pub retries: Counter,
    pub parked: Counter,
    pub skipped: Counter,
    pub restarts: Counter,
    lag_events: Gauge,
    lag_seconds: Gauge,
    checkpoint: Gauge,
}

impl std::fmt::Debug for SubscriptionMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SubscriptionMetrics")
    }
}

impl SubscriptionMetrics {
    /// The handles of subscription `name`.
    pub fn new(name: &str) -> Self {
        let name = name.to_owned();
        SubscriptionMetrics {
            handled: counter!(SUBSCRIPTION_EVENTS_HANDLED, "subscription" => name.clone()),
            retries: counter!(SUBSCRIPTION_RETRIES, "subscription" => name.clone()),
            parked: counter!(SUBSCRIPTION_EVENTS_PARKED, "subscription" => name.clone()),
            skipped: counter!(SUBSCRIPTION_EVENTS_SKIPPED, "subscription" => name.clone()),
            restarts: counter!(SUBSCRIPTION_RESTARTS, "subscription" => name.clone()),
            lag_events: gauge!(SUBSCRIPTION_LAG_EVENTS, "subscription" => name.clone()),
            lag_seconds: gauge!(SUBSCRIPTION_LAG_SECONDS, "subscription" => name.clone()),
            checkpoint: gauge!(SUBSCRIPTION_CHECKPOINT, "subscription" => name),
        }
    }

    /// The progress the status shows now.
    pub fn progress(&self, lag_events: u64, checkpoint: u64) {
        self.lag_events.set(lag_events as f64);
        self.checkpoint.set(checkpoint as f64);
    }

    /// The oldest event not yet handled was recorded at `timestamp_micros` (`None`: caught up).
    pub fn oldest_unhandled(&self, timestamp_micros: Option<u64>) {
        let seconds = match timestamp_micros {
            None => 0.0,
            Some(at) => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_micros() as u64);
                now.saturating_sub(at) as f64 / 1e6
            }
        };
        self.lag_seconds.set(seconds);
    }
}

/// How a command ended, for [`AGGREGATE_COMMANDS`]' `outcome` label.
pub(crate) fn command_outcome<E>(
    result: &Result<crate::aggregate::CommandOutcome, crate::aggregate::AggregateError<E>>,
    from_history: bool,
) -> &'static str {
    use crate::aggregate::AggregateError;
    match result {
        _ if from_history => "duplicate",
        Ok(o) if o.duplicate => "duplicate",
        Ok(_) => "accepted",
        Err(AggregateError::Rejected(_) | AggregateError::RejectedBefore { .. }) => "rejected",
        Err(_) => "failed",
    }
}

/// A command of aggregate category `aggregate` ended with `outcome`.
pub(crate) fn command(aggregate: &'static str, outcome: &'static str) {
    counter!(AGGREGATE_COMMANDS, "aggregate" => aggregate, "outcome" => outcome).increment(1);
}

/// A command of `aggregate` was answered from its remembered decision.
pub(crate) fn command_from_history(aggregate: &'static str) {
    counter!(AGGREGATE_COMMANDS_FROM_HISTORY, "aggregate" => aggregate).increment(1);
}

/// An instance of `aggregate` loaded its state, from a snapshot or not.
pub(crate) fn aggregate_loaded(aggregate: &'static str, from_snapshot: bool) {
    let source = if from_snapshot { "snapshot" } else { "events" };
    counter!(AGGREGATE_LOADS, "aggregate" => aggregate, "source" => source).increment(1);
}

/// An instance of `aggregate` served a message from its state in memory.
pub(crate) fn aggregate_state_hit(aggregate: &'static str) {
    counter!(AGGREGATE_STATE_HITS, "aggregate" => aggregate).increment(1);
}

/// The live instances of `aggregate` went up (`delta` 1) or down (-1).
pub(crate) fn aggregate_live(aggregate: &'static str, delta: f64) {
    gauge!(AGGREGATE_INSTANCES_LIVE, "aggregate" => aggregate).increment(delta);
}
