//! Loading an aggregate from the store and deciding a command: the logic the actor runs, free of
//! actix, so that it can be used (and tested) on its own.

use std::panic::{catch_unwind, AssertUnwindSafe};

use tracing::{debug, warn};

use super::window::{is_framework_record, Decision, REFUSED_TYPE, UNCHANGED_TYPE};
use super::{
    Aggregate, AggregateConfig, AggregateError, CommandEnvelope, CommandOutcome, ProcessedCommands,
    Recorded,
};
use crate::event::DomainEvent;
use crate::store::{
    EventData, EventStore, ExpectedVersion, Snapshot, StoreError, MAX_STREAM_ID_LEN,
};

/// The stream id of aggregate `id` of type `A`: `"{A::CATEGORY}-{id}"`.
pub fn stream_id<A: Aggregate>(id: &str) -> Result<String, AggregateError<A::Error>> {
    if A::CATEGORY.is_empty() || A::CATEGORY.contains('-') {
        return Err(AggregateError::InvalidId(format!(
            "aggregate CATEGORY {:?} must be non-empty and contain no '-' (it is the stream category)",
            A::CATEGORY
        )));
    }
    if id.is_empty() {
        return Err(AggregateError::InvalidId(format!(
            "an id of a {} aggregate cannot be empty",
            A::CATEGORY
        )));
    }
    let stream = format!("{}-{id}", A::CATEGORY);
    if stream.len() > MAX_STREAM_ID_LEN {
        return Err(AggregateError::InvalidId(format!(
            "stream id of {} bytes exceeds {MAX_STREAM_ID_LEN}",
            stream.len()
        )));
    }
    Ok(stream)
}

/// An aggregate's state as loaded from the store, with its stream version and idempotence
/// window.
#[derive(Debug)]
#[non_exhaustive]
pub struct Loaded<A> {
    /// The aggregate's state after every event up to `version`.
    pub state: A,
    /// The stream version the state includes (0: no events).
    pub version: u64,
    /// The stream.
    pub stream: String,
    /// The snapshot version the state was loaded from, if a snapshot was used.
    pub from_snapshot: Option<u64>,
    /// The command ids remembered for idempotence.
    pub processed: ProcessedCommands,
    /// The version of the last snapshot saved or loaded (0: none).
    pub(crate) snapshot_version: u64,
}

/// Loads aggregate `id` of type `A`: the latest usable snapshot, then the events after it (and
/// the events of the idempotence window before it).
///
/// A snapshot is unusable, and ignored in favour of a full replay, when its schema version is
/// not [`Aggregate::SNAPSHOT_VERSION`], when it does not decode, or when it is ahead of the
/// stream.
pub async fn load<A: Aggregate>(
    store: &dyn EventStore,
    id: &str,
    config: &AggregateConfig,
) -> Result<Loaded<A>, AggregateError<A::Error>> {
    load_with(store, id, config, true).await
}

/// Loads aggregate `id` by replaying its whole stream, ignoring snapshots. [`load`] gives the
/// same result, faster.
pub async fn replay<A: Aggregate>(
    store: &dyn EventStore,
    id: &str,
    config: &AggregateConfig,
) -> Result<Loaded<A>, AggregateError<A::Error>> {
    load_with(store, id, config, false).await
}

async fn load_with<A: Aggregate>(
    store: &dyn EventStore,
    id: &str,
    config: &AggregateConfig,
    use_snapshot: bool,
) -> Result<Loaded<A>, AggregateError<A::Error>> {
    let stream = stream_id::<A>(id)?;
    if use_snapshot {
        if let Some(snapshot) = store.load_snapshot(&stream).await? {
            if let Some(state) = decode_snapshot::<A>(&stream, &snapshot) {
                let loaded = Loaded {
                    state,
                    version: snapshot.stream_version,
                    stream: stream.clone(),
                    from_snapshot: Some(snapshot.stream_version),
                    processed: ProcessedCommands::new(config.dedup_window),
                    snapshot_version: snapshot.stream_version,
                };
                match catch_up(store, loaded, config).await? {
                    Some(loaded) => {
                        crate::metrics::aggregate_loaded(A::CATEGORY, true);
                        return Ok(loaded);
                    }
                    None => warn!(
                        stream,
                        snapshot_version = snapshot.stream_version,
                        "snapshot is ahead of its stream; replaying the stream"
                    ),
                }
            }
        }
    }
    let loaded = Loaded {
        state: A::default(),
        version: 0,
        stream,
        from_snapshot: None,
        processed: ProcessedCommands::new(config.dedup_window),
        snapshot_version: 0,
    };
    let loaded = catch_up(store, loaded, config)
        .await?
        .expect("a replay from version 0 cannot be ahead of the stream");
    crate::metrics::aggregate_loaded(A::CATEGORY, false);
    Ok(loaded)
}

fn decode_snapshot<A: Aggregate>(stream: &str, snapshot: &Snapshot) -> Option<A> {
    if snapshot.schema_version != A::SNAPSHOT_VERSION {
        debug!(
            stream,
            found = snapshot.schema_version,
            current = A::SNAPSHOT_VERSION,
            "ignoring a snapshot of another schema version"
        );
        return None;
    }
    match serde_json::from_slice(&snapshot.payload) {
        Ok(state) => Some(state),
        Err(e) => {
            warn!(stream, error = %e, "ignoring a snapshot that does not decode");
            None
        }
    }
}

/// Reads the events after `loaded.version` (and the window's lookback before it), applying the
/// new ones. `None` when the stream ends before `loaded.version` (a snapshot ahead of its stream).
async fn catch_up<A: Aggregate>(
    store: &dyn EventStore,
    mut loaded: Loaded<A>,
    config: &AggregateConfig,
) -> Result<Option<Loaded<A>>, AggregateError<A::Error>> {
    let known = loaded.version;
    // Read at least the event at `known` itself, to check that the stream reaches it.
    let mut next = ProcessedCommands::lookback_start(config.dedup_window, known).min(known.max(1));
    let mut last_seen = 0;
    loop {
        let page = store
            .read_stream(&loaded.stream, next, config.read_page)
            .await?;
        // A page also ends at the store's byte budget: shorter than asked is not the end then.
        let full = crate::store::stream_page_is_full(&page, config.read_page);
        for event in &page {
            if event.stream_version > known && is_framework_record(&event.event_type) {
                // A remembered decision: part of the stream's versions, not of the state.
                loaded.version = event.stream_version;
            } else if event.stream_version > known {
                let decoded = A::Event::from_recorded(event)?;
                let stream = &loaded.stream;
                let state = &mut loaded.state;
                guard(stream, || state.apply(&decoded))?;
                loaded.version = event.stream_version;
            }
            loaded.processed.observe(event);
            last_seen = event.stream_version;
            next = event.stream_version + 1;
        }
        if !full {
            break;
        }
    }
    if known > 0 && last_seen < known {
        return Ok(None);
    }
    loaded.processed.evict(loaded.version);
    Ok(Some(loaded))
}

/// Runs user code, turning a panic into [`AggregateError::Panicked`].
pub(crate) fn guard<T, E>(stream: &str, f: impl FnOnce() -> T) -> Result<T, AggregateError<E>> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        let message = crate::panic::panic_message(&*payload);
        warn!(stream, message, "aggregate code panicked");
        AggregateError::Panicked {
            stream: stream.to_owned(),
            message,
        }
    })
}

/// What a decision records in the stream.
enum Outcome<E> {
    /// Accepted with events (already applied to the state).
    Events,
    /// Accepted with no events: an [`UNCHANGED_TYPE`] record.
    Unchanged,
    /// Refused: a [`REFUSED_TYPE`] record.
    Refused(E),
}

/// The payload of a [`REFUSED_TYPE`] record.
#[derive(serde::Serialize, serde::Deserialize)]
struct RefusalRecord<E> {
    error: E,
    message: String,
}

/// Decides `envelope` on the aggregate in `slot`, loading it first when the slot is empty, and
/// records the events. Leaves the slot empty when the state can no longer be trusted (after a
/// panic, a conflict or a failed append), so that the next command reloads it.
///
/// With `remember`, a refusal or an acceptance with no events is recorded too (one framework
/// record), so that the same command id gets the same answer when it is sent again.
pub(crate) async fn execute<A: Aggregate>(
    slot: &mut Option<Box<Loaded<A>>>,
    store: &dyn EventStore,
    config: &AggregateConfig,
    id: &str,
    envelope: CommandEnvelope<A::Command>,
    remember: bool,
) -> Result<CommandOutcome, AggregateError<A::Error>> {
    if slot.is_some() {
        crate::metrics::aggregate_state_hit(A::CATEGORY);
    }
    let mut from_history = false;
    let result = decide(
        slot,
        store,
        config,
        id,
        envelope,
        remember,
        &mut from_history,
    )
    .await;
    if from_history {
        crate::metrics::command_from_history(A::CATEGORY);
    }
    let outcome = crate::metrics::command_outcome(&result, from_history);
    crate::metrics::command(A::CATEGORY, outcome);
    result
}

/// [`execute`] without the metrics; sets `from_history` when the answer is a remembered one.
async fn decide<A: Aggregate>(
    slot: &mut Option<Box<Loaded<A>>>,
    store: &dyn EventStore,
    config: &AggregateConfig,
    id: &str,
    envelope: CommandEnvelope<A::Command>,
    remember: bool,
    from_history: &mut bool,
) -> Result<CommandOutcome, AggregateError<A::Error>> {
    let command_id = envelope.command_id;
    let correlation_id = envelope.effective_correlation_id();
    let metadata = envelope.metadata.clone();
    let remember = remember && config.dedup_window > 0;
    let mut attempts = 0u32;
    loop {
        if slot.is_none() {
            *slot = Some(Box::new(load::<A>(store, id, config).await?));
        }
        let loaded = slot.as_mut().expect("loaded just above");
        if let Some(decision) = loaded.processed.get(&command_id) {
            debug!(
                first_version = decision.first_version(),
                "duplicate command answered from history"
            );
            *from_history = true;
            return answer_from_history::<A>(store, &loaded.stream, command_id, decision).await;
        }
        attempts += 1;
        let command = envelope.command.clone();
        let decided = {
            let state = &loaded.state;
            guard(&loaded.stream, || state.handle(command))
        };
        let writes_nothing = !remember
            && match &decided {
                Ok(Ok(events)) => events.is_empty(),
                Ok(Err(_)) => true,
                Err(_) => false,
            };
        if writes_nothing && !current(store, loaded).await? {
            // Nothing is written, so no append can tell that this copy is stale (another process
            // wrote since): a refusal or a no-op decided on it would be wrong. Reload, decide again.
            *slot = None;
            if attempts > config.conflict_retries {
                return Err(AggregateError::Conflict {
                    stream: stream_id::<A>(id)?,
                    attempts,
                });
            }
            continue;
        }
        let (outcome, records) = match decided {
            Ok(Ok(events)) if events.is_empty() => {
                if !remember {
                    return Ok(CommandOutcome {
                        command_id,
                        recorded: None,
                        duplicate: false,
                    });
                }
                let record = EventData::new(UNCHANGED_TYPE, b"{}".to_vec());
                (Outcome::Unchanged, vec![record])
            }
            Ok(Ok(events)) => {
                let data = encode_events::<A>(&events)?;
                // Apply before appending: a panic in `apply` then records nothing. The state is
                // ahead of the store until the append succeeds; on any failure it is thrown away
                // and reloaded.
                let applied = {
                    let state = &mut loaded.state;
                    guard(&loaded.stream, || {
                        for event in &events {
                            state.apply(event);
                        }
                    })
                };
                if let Err(panicked) = applied {
                    *slot = None;
                    return Err(panicked);
                }
                (Outcome::Events, data)
            }
            Ok(Err(rejection)) => {
                if !remember {
                    return Err(AggregateError::Rejected(rejection));
                }
                let record = RefusalRecord {
                    message: rejection.to_string(),
                    error: rejection,
                };
                // An error value serde cannot encode is remembered by its text alone: sending
                // the id again then answers `RejectedBefore` with that text, never a new decision.
                let payload = serde_json::to_vec(&record).unwrap_or_else(|_| {
                    serde_json::json!({ "message": record.message })
                        .to_string()
                        .into_bytes()
                });
                let record_data = EventData::new(REFUSED_TYPE, payload);
                (Outcome::Refused(record.error), vec![record_data])
            }
            Err(panicked) => {
                *slot = None;
                return Err(panicked);
            }
        };
        let records = records
            .into_iter()
            .map(|d| {
                d.with_causation_id(command_id)
                    .with_correlation_id(correlation_id)
                    .with_metadata_map(metadata.clone())
            })
            .collect();
        let before = loaded.version;
        let stream = loaded.stream.clone();
        match store
            .append(&stream, ExpectedVersion::Exact(before), records)
            .await
        {
            Ok(result) => {
                loaded.version = result.stream_version;
                let version = result.stream_version;
                let decision = match &outcome {
                    Outcome::Events => Decision::Recorded(Recorded {
                        first_version: before + 1,
                        last_version: version,
                        first_position: result.first_position,
                        last_position: result.last_position,
                    }),
                    Outcome::Unchanged => Decision::Unchanged { version },
                    Outcome::Refused(_) => Decision::Refused { version },
                };
                loaded.processed.record(command_id, decision);
                loaded.processed.evict(loaded.version);
                maybe_snapshot(store, loaded, config).await;
                return match outcome {
                    Outcome::Refused(e) => Err(AggregateError::Rejected(e)),
                    Outcome::Events | Outcome::Unchanged => Ok(CommandOutcome {
                        command_id,
                        recorded: decision.recorded(),
                        duplicate: false,
                    }),
                };
            }
            Err(StoreError::WrongExpectedVersion { actual, .. }) => {
                *slot = None;
                if attempts > config.conflict_retries {
                    return Err(AggregateError::Conflict { stream, attempts });
                }
                debug!(
                    expected = before,
                    actual, attempts, "stream moved; reloading"
                );
            }
            Err(e) => {
                *slot = None;
                return Err(e.into());
            }
        }
    }
}

/// Whether the loaded copy is at the stream's durable version (no other writer moved it).
async fn current<A: Aggregate>(
    store: &dyn EventStore,
    loaded: &Loaded<A>,
) -> Result<bool, AggregateError<A::Error>> {
    Ok(store.stream_version(&loaded.stream).await? == loaded.version)
}

fn encode_events<A: Aggregate>(
    events: &[A::Event],
) -> Result<Vec<EventData>, AggregateError<A::Error>> {
    events
        .iter()
        .map(|event| {
            event.to_event_data().map_err(|e| AggregateError::Encode {
                event_type: event.event_type().to_owned(),
                reason: e.to_string(),
            })
        })
        .collect()
}

/// The answer to a command id the window remembers: its outcome, or its refusal read back from
/// its record.
async fn answer_from_history<A: Aggregate>(
    store: &dyn EventStore,
    stream: &str,
    command_id: uuid::Uuid,
    decision: Decision,
) -> Result<CommandOutcome, AggregateError<A::Error>> {
    let Decision::Refused { version } = decision else {
        return Ok(CommandOutcome {
            command_id,
            recorded: decision.recorded(),
            duplicate: true,
        });
    };
    let read = store.read_stream(stream, version, 1).await?;
    let record = read
        .first()
        .filter(|e| e.stream_version == version && e.event_type == REFUSED_TYPE)
        .ok_or_else(|| StoreError::DamagedMetadata {
            what: format!("the refusal of command {command_id} in {stream:?}"),
            reason: format!("no {REFUSED_TYPE} record at version {version}"),
        })?;
    match serde_json::from_slice::<RefusalRecord<A::Error>>(&record.payload) {
        Ok(refusal) => Err(AggregateError::Rejected(refusal.error)),
        Err(e) => {
            #[derive(serde::Deserialize)]
            struct Message {
                message: String,
            }
            let message = serde_json::from_slice::<Message>(&record.payload)
                .map(|m| m.message)
                .unwrap_or_else(|_| "(unreadable)".to_owned());
            Err(AggregateError::RejectedBefore {
                command_id,
                message,
                reason: e.to_string(),
            })
        }
    }
}

/// Saves a snapshot when `snapshot_every` events were recorded since the last one. A failure is
/// logged, not returned: the command's events are recorded, and a snapshot only speeds up loads.
async fn maybe_snapshot<A: Aggregate>(
    store: &dyn EventStore,
    loaded: &mut Loaded<A>,
    config: &AggregateConfig,
) {
    let Some(every) = config.snapshot_every else {
        return;
    };
    if loaded.version < loaded.snapshot_version + every {
        return;
    }
    let payload = match serde_json::to_vec(&loaded.state) {
        Ok(payload) => payload,
        Err(e) => {
            warn!(stream = loaded.stream, error = %e, "the state does not encode; no snapshot");
            return;
        }
    };
    let snapshot = Snapshot {
        stream_version: loaded.version,
        schema_version: A::SNAPSHOT_VERSION,
        payload,
    };
    match store.save_snapshot(&loaded.stream, snapshot).await {
        Ok(()) => {
            debug!(version = loaded.version, "snapshot saved");
            loaded.snapshot_version = loaded.version;
        }
        Err(e) => warn!(stream = loaded.stream, error = %e, "saving a snapshot failed"),
    }
}
