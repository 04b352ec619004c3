//! `export` to JSON lines and `import` from them.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tidings::store::{
    metadata_bytes, state_entry_bytes, state_page_is_full, EventData, Filter, RecordedEvent,
    StateWrite, StoreError, MAX_APPEND_BYTES, MAX_METADATA_LEN, MAX_PAYLOAD_LEN,
};
use tidings::subscription::{ParkedEvent, SubscriptionStatus, RESERVED_PREFIX};

use super::{Ctx, PAGE};
use crate::error::{CliError, EXIT_OK};
use crate::location::Target;
use crate::output::{
    decode_base64, encode_base64, exact_payload, json_line, EventLine, PayloadEncoding,
};
use crate::progress::Progress;

/// An import is sent to the store in batches of at most this many events (or state entries)...
const IMPORT_BATCH_EVENTS: usize = 1000;
/// ...or about this many bytes of payloads (or of state keys and values): a batch is sent once
/// it holds them, so it holds less than this plus one event (within [`MAX_APPEND_BYTES`]).
const IMPORT_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// The longest line `import` reads, in bytes, newline excluded: checked as the line is read, so
/// a longer one (a file that is not an export, a line without an end) is refused without being
/// held. The longest line `export` writes is an event or state entry of
/// [`MAX_PAYLOAD_LEN`] bytes in base64, 11.2 MB.
pub const MAX_IMPORT_LINE_LEN: usize = 16 * 1024 * 1024;

// Metadata shares the event's MAX_PAYLOAD_LEN and is at most MAX_METADATA_LEN; written as JSON
// it takes at most 8 bytes per byte (`"k":"",` for a one-byte key, escapes of `"` and `\`).
const _: () = assert!(
    MAX_PAYLOAD_LEN.div_ceil(3) * 4 + 8 * MAX_METADATA_LEN + 64 * 1024 < MAX_IMPORT_LINE_LEN
);
const _: () = assert!(IMPORT_BATCH_BYTES + MAX_PAYLOAD_LEN + 64 * 1024 < MAX_APPEND_BYTES);

/// How reading one line of the input ended.
enum LineRead {
    /// A line is in the buffer (without its newline).
    Line,
    /// The input is over.
    End,
    /// The line is longer than the limit; what was read of it is dropped.
    TooLong,
}

/// Reads one line into `buf` (cleared first, newline dropped), refusing one longer than `max`
/// bytes before holding more than `max` bytes of it.
fn read_line_capped(
    reader: &mut dyn BufRead,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<LineRead> {
    buf.clear();
    loop {
        let available = match reader.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok(if buf.is_empty() {
                LineRead::End
            } else {
                LineRead::Line
            });
        }
        let (take, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (available.len(), false),
        };
        if buf.len() + take > max {
            return Ok(LineRead::TooLong);
        }
        buf.extend_from_slice(&available[..take]);
        reader.consume(take + usize::from(done));
        if done {
            return Ok(LineRead::Line);
        }
    }
}

#[derive(Serialize)]
struct ExportSummary {
    exported: u64,
    first_position: Option<u64>,
    last_position: Option<u64>,
    checkpoints: u64,
    state_entries: u64,
    output: Option<String>,
}

/// A consumer's checkpoint; its state follows as [`StateLine`]s.
#[derive(Serialize, Deserialize)]
struct CheckpointLine {
    kind: String,
    name: String,
    position: u64,
}

/// One entry of a consumer's state (key in base64, value as a payload is written).
#[derive(Serialize, Deserialize)]
struct StateLine {
    kind: String,
    name: String,
    key: String,
    value_encoding: PayloadEncoding,
    value: Box<RawValue>,
}

/// Just the kind of a line.
#[derive(Deserialize)]
struct Kind {
    kind: String,
}

/// Writes one line to the file, or to `out` when there is none.
fn emit(
    file: &mut Option<BufWriter<File>>,
    out: &mut dyn Write,
    line: &impl Serialize,
) -> std::io::Result<()> {
    match file.as_mut() {
        Some(f) => json_line(f, line),
        None => json_line(out, line),
    }
}

/// The bytes of a payload or value written with `encoding`.
fn decode_value(encoding: PayloadEncoding, raw: &RawValue) -> Result<Vec<u8>, String> {
    match encoding {
        PayloadEncoding::Json => Ok(raw.get().as_bytes().to_vec()),
        PayloadEncoding::Base64 => {
            let s: String = serde_json::from_str(raw.get())
                .map_err(|_| "a base64 value must be a JSON string".to_owned())?;
            decode_base64(&s)
        }
        PayloadEncoding::Decoded => Err("the payload was decoded and encoded again (output of \
             `--payload`, not of `export`): its bytes are not the stored ones"
            .into()),
    }
}

/// `export`: every event from `from` to `to` (the head by default), one JSON object per line,
/// payloads verbatim (JSON) or base64. Written to a file, it is fsynced before the summary.
pub(crate) async fn export(
    ctx: &Ctx<'_>,
    out: &mut dyn Write,
    output: Option<&Path>,
    from: u64,
    to: Option<u64>,
    events_only: bool,
) -> Result<u8, CliError> {
    let head = ctx.store.head();
    let last = to.unwrap_or(head).min(head);
    let mut file = match output {
        Some(p) => {
            refuse_output_in_store(ctx, p)?;
            Some(BufWriter::new(create_private(p)?))
        }
        None => None,
    };
    let mut next = from.max(1);
    let progress = Progress::positions("exporting", next, last);
    let (mut exported, mut first) = (0u64, None);
    let all = Filter::all();
    let mut careful = false;
    while next <= last {
        let want = if careful {
            1
        } else {
            (last - next + 1).min(PAGE as u64) as usize
        };
        let batch = match ctx.store.read_all(next, want, &all).await {
            Ok(batch) => batch,
            Err(e) => {
                if super::read::one_by_one(&e, &mut careful) {
                    continue;
                }
                // What was written stays (and is complete up to the damaged event): the error
                // names the position, from which `--from` can go on past it.
                if let Some(f) = file.as_mut() {
                    f.flush()?;
                }
                return Err(e.into());
            }
        };
        for e in &batch.events {
            emit(
                &mut file,
                out,
                &EventLine::new(e, Some(exact_payload(&e.payload))),
            )?;
            first.get_or_insert(e.position);
            exported += 1;
        }
        if batch.next_position <= next {
            break;
        }
        next = batch.next_position;
        progress.set(next.min(last + 1) - from.max(1));
    }
    // Checkpoints and consumer state refer to positions of the whole log: exported with it.
    let (mut checkpoints, mut state_entries) = (0u64, 0u64);
    if last == head && !events_only {
        progress.message("exporting checkpoints and state".into());
        let mut after: Option<String> = None;
        loop {
            let page = ctx.store.list_checkpoints(after.as_deref(), PAGE).await?;
            for c in &page {
                emit(
                    &mut file,
                    out,
                    &CheckpointLine {
                        kind: "checkpoint".into(),
                        name: c.name.clone(),
                        position: c.position,
                    },
                )?;
                checkpoints += 1;
                let mut from: Vec<u8> = Vec::new();
                loop {
                    let entries = ctx.store.scan_state(&c.name, b"", &from, PAGE).await?;
                    for (key, value) in &entries {
                        let (value_encoding, value) = exact_payload(value);
                        emit(
                            &mut file,
                            out,
                            &StateLine {
                                kind: "state".into(),
                                name: c.name.clone(),
                                key: encode_base64(key),
                                value_encoding,
                                value,
                            },
                        )?;
                        state_entries += 1;
                    }
                    match entries.last() {
                        Some((key, _)) if state_page_is_full(&entries, PAGE) => {
                            from = key.clone();
                            from.push(0);
                        }
                        _ => break,
                    }
                }
            }
            match page.last() {
                Some(last) if page.len() == PAGE => after = Some(last.name.clone()),
                _ => break,
            }
        }
    }
    drop(progress);
    let summary = ExportSummary {
        exported,
        first_position: first,
        last_position: first.map(|f| f + exported - 1),
        checkpoints,
        state_entries,
        output: output.map(|p| p.display().to_string()),
    };
    match (file, output) {
        (Some(f), Some(p)) => {
            let f = f.into_inner().map_err(|e| e.into_error())?;
            f.sync_all()?;
            if ctx.json {
                json_line(out, &summary)?;
            } else {
                writeln!(
                    out,
                    "exported {exported} events{}{} to {}",
                    range_text(&summary),
                    consumers_text(&summary),
                    p.display()
                )?;
            }
        }
        // On standard output the events are the output; the summary goes to standard error.
        _ => eprintln!(
            "exported {exported} events{}{}",
            range_text(&summary),
            consumers_text(&summary)
        ),
    }
    Ok(EXIT_OK)
}

/// Creates (or truncates) the export file; a new one is readable by its owner only (0600, as
/// the store's directory is 0700), an existing one keeps its mode.
fn create_private(path: &Path) -> Result<File, CliError> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| CliError::Invalid(format!("cannot write {}: {e}", path.display())))
}

/// Refuses an export file inside the store's own directory: it would truncate one of the
/// store's files (`-o STORE/db` destroyed the store). Symbolic links are followed, also one
/// whose target does not exist yet.
fn refuse_output_in_store(ctx: &Ctx<'_>, output: &Path) -> Result<(), CliError> {
    let Some(Target::Directory(dir)) = ctx.target else {
        return Ok(());
    };
    let Ok(store) = dir.canonicalize() else {
        return Ok(());
    };
    let Ok(lands) = landing_path(output) else {
        return Ok(()); // creating it fails and says why
    };
    if lands.starts_with(&store) {
        return Err(CliError::Invalid(format!(
            "the export file {} is inside the store's directory {}{}: writing it would \
             overwrite the store's own files. Write the export outside the store",
            output.display(),
            store.display(),
            if lands.as_path() == output {
                String::new()
            } else {
                format!(" (it leads to {})", lands.display())
            }
        )));
    }
    Ok(())
}

/// The absolute path that writing to `path` writes: symbolic links followed (also a dangling
/// one), the rest canonicalized.
fn landing_path(path: &Path) -> std::io::Result<PathBuf> {
    let mut path = path.to_path_buf();
    for _ in 0..40 {
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let target = std::fs::read_link(&path)?;
                path = match path.parent() {
                    Some(parent) => parent.join(target),
                    None => target,
                };
            }
            Ok(_) => return path.canonicalize(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let parent = match path.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p,
                    _ => Path::new("."),
                };
                let name = path.file_name().ok_or(e)?;
                return Ok(parent.canonicalize()?.join(name));
            }
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("too many levels of symbolic links"))
}

fn consumers_text(s: &ExportSummary) -> String {
    if s.checkpoints == 0 {
        return String::new();
    }
    format!(
        " and {} checkpoints with {} state entries",
        s.checkpoints, s.state_entries
    )
}

fn range_text(s: &ExportSummary) -> String {
    match (s.first_position, s.last_position) {
        (Some(a), Some(b)) => format!(" (positions {a}..={b})"),
        _ => String::new(),
    }
}

#[derive(Serialize)]
struct ImportSummary {
    imported: u64,
    skipped_already_present: u64,
    checkpoints: u64,
    state_entries: u64,
    head: u64,
}

/// A consumer being imported: its checkpoint, and state entries not yet committed.
struct Consumer {
    name: String,
    position: u64,
    /// The line of its checkpoint.
    line: u64,
    /// Whether its checkpoint is in the store already.
    committed: bool,
    writes: Vec<StateWrite>,
    /// The keys' and values' bytes in `writes`.
    bytes: usize,
}

/// Commits the consumer's checkpoint with the state entries read so far (fenced: the first
/// commit expects no checkpoint, the next ones the imported one).
async fn commit_part(
    ctx: &Ctx<'_>,
    c: &mut Consumer,
    bad: &impl Fn(u64, String) -> CliError,
) -> Result<(), CliError> {
    let expected = c.committed.then_some(c.position);
    let writes = std::mem::take(&mut c.writes);
    c.bytes = 0;
    match ctx
        .store
        .commit_checkpoint(&c.name, expected, c.position, writes)
        .await
    {
        Ok(()) => {
            c.committed = true;
            Ok(())
        }
        Err(StoreError::CheckpointConflict { actual, .. }) => Err(bad(
            c.line,
            format!(
                "checkpoint {:?} changed in the store during the import (now {actual:?})",
                c.name
            ),
        )),
        Err(StoreError::InvalidInput(reason)) => Err(bad(c.line, reason)),
        Err(e) => Err(e.into()),
    }
}

/// Commits what is left of a consumer (at least its checkpoint).
async fn commit(
    ctx: &Ctx<'_>,
    mut c: Consumer,
    bad: &impl Fn(u64, String) -> CliError,
) -> Result<(), CliError> {
    if !c.committed || !c.writes.is_empty() {
        commit_part(ctx, &mut c, bad).await?;
    }
    Ok(())
}

/// Checks a state entry under the framework's reserved prefix (decision 25): the parked events,
/// parked streams, pending replays and status record that the framework reads back. Garbage
/// there would make every later `subscriptions` (and the subscription itself) fail, so an
/// import refuses it. Other keys are the handler's own and are not looked into.
fn check_reserved_entry(key: &[u8], value: &[u8]) -> Result<(), String> {
    let Some(rest) = key.strip_prefix(RESERVED_PREFIX) else {
        return Ok(());
    };
    let stream_key = |stream: &[u8]| match std::str::from_utf8(stream) {
        Ok(s) if !s.is_empty() => Ok(()),
        _ => Err("the stream id in the key is empty or not UTF-8".to_owned()),
    };
    if rest == b"status" {
        serde_json::from_slice::<SubscriptionStatus>(value)
            .map(|_| ())
            .map_err(|e| format!("not a subscription status record: {e}"))
    } else if let Some(digits) = rest.strip_prefix(b"parked/") {
        let position = std::str::from_utf8(digits)
            .ok()
            .filter(|d| d.len() == 20 && d.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|d| d.parse::<u64>().ok())
            .ok_or("a parked event's key ends in its position, 20 digits")?;
        let parked: ParkedEvent =
            serde_json::from_slice(value).map_err(|e| format!("not a parked event record: {e}"))?;
        if parked.position != position {
            return Err(format!(
                "the record is of position {}, its key says {position}",
                parked.position
            ));
        }
        Ok(())
    } else if let Some(stream) = rest.strip_prefix(b"parked-streams/") {
        stream_key(stream)
    } else if let Some(stream) = rest.strip_prefix(b"replay/") {
        stream_key(stream)
    } else {
        Err("not a key the framework writes under its reserved prefix".into())
    }
}

/// Turns one line written by `export` into the event it describes.
fn parse_line(text: &str) -> Result<RecordedEvent, String> {
    let line: EventLine = serde_json::from_str(text).map_err(|e| format!("not an event: {e}"))?;
    let raw = line
        .payload
        .ok_or("no payload (was it written by `export`?)")?;
    let encoding = line.payload_encoding.ok_or("no payload_encoding")?;
    let payload = decode_value(encoding, &raw)?;
    if payload.len() != line.payload_size {
        return Err(format!(
            "payload has {} bytes, payload_size says {}",
            payload.len(),
            line.payload_size
        ));
    }
    let mut data = EventData::new(line.event_type, payload)
        .with_event_id(line.event_id)
        .with_schema_version(line.schema_version);
    if let Some(id) = line.correlation_id {
        data = data.with_correlation_id(id);
    }
    if let Some(id) = line.causation_id {
        data = data.with_causation_id(id);
    }
    let data = data.with_metadata_map(line.metadata);
    // The category as exported: the import checks that it matches the stream id.
    Ok(
        RecordedEvent::new(line.position, line.stream_id, line.stream_version, data)
            .with_category(line.category)
            .with_timestamp_micros(line.timestamp_micros),
    )
}

/// A batch of parsed events waiting to be imported, with their line numbers.
#[derive(Default)]
struct Batch {
    events: Vec<RecordedEvent>,
    lines: Vec<u64>,
    bytes: usize,
}

/// `import`: events from JSON lines written by `export`, into an empty store (or, with
/// `resume`, continuing one whose events so far are the input's first lines).
pub(crate) async fn import(
    ctx: &Ctx<'_>,
    out: &mut dyn Write,
    input: &Path,
    resume: bool,
) -> Result<u8, CliError> {
    let start_head = ctx.store.head();
    if start_head > 0 && !resume {
        return Err(CliError::Invalid(format!(
            "the store is not empty (head {start_head}): import into an empty store, or pass \
             --resume to continue an import whose first {start_head} events are already in"
        )));
    }
    let name = input.display().to_string();
    let (reader, progress): (Box<dyn BufRead>, Progress) = if name == "-" {
        let progress = Progress::bytes("importing", None);
        (
            Box::new(progress.wrap(BufReader::new(std::io::stdin()))),
            progress,
        )
    } else {
        let file =
            File::open(input).map_err(|e| CliError::Invalid(format!("cannot read {name}: {e}")))?;
        let size = file.metadata().ok().map(|m| m.len());
        let progress = Progress::bytes("importing", size);
        (Box::new(progress.wrap(BufReader::new(file))), progress)
    };
    let bad = |line: u64, reason: String| CliError::BadImport {
        file: name.clone(),
        line,
        reason,
    };
    let (mut imported, mut skipped) = (0u64, 0u64);
    let (mut checkpoints, mut state_entries) = (0u64, 0u64);
    let mut batch = Batch::default();
    let mut consumer: Option<Consumer> = None;
    let mut reader = reader;
    let mut buf = Vec::new();
    let mut number = 0u64;
    loop {
        number += 1;
        match read_line_capped(&mut *reader, &mut buf, MAX_IMPORT_LINE_LEN)? {
            LineRead::Line => {}
            LineRead::End => break,
            LineRead::TooLong => {
                return Err(bad(
                    number,
                    format!(
                        "the line is longer than {MAX_IMPORT_LINE_LEN} bytes (the longest line \
                         an export writes is about 11.2 MB): not a line of an export"
                    ),
                ))
            }
        }
        let text = std::str::from_utf8(&buf)
            .map_err(|e| bad(number, format!("the line is not UTF-8: {e}")))?;
        if text.trim().is_empty() {
            continue;
        }
        let kind: Kind = serde_json::from_str(text)
            .map_err(|e| bad(number, format!("not a line of an export: {e}")))?;
        match kind.kind.as_str() {
            "event" => {}
            "checkpoint" => {
                imported += flush(ctx, &mut batch, imported, &bad).await?;
                if let Some(c) = consumer.take() {
                    commit(ctx, c, &bad).await?;
                }
                let line: CheckpointLine = serde_json::from_str(text)
                    .map_err(|e| bad(number, format!("not a checkpoint: {e}")))?;
                let head = ctx.store.head();
                if line.position > head {
                    return Err(bad(
                        number,
                        format!(
                            "checkpoint {:?} at {} is past the log's head {head}",
                            line.name, line.position
                        ),
                    ));
                }
                let committed = match ctx.store.load_checkpoint(&line.name).await? {
                    None => false,
                    Some(p) if resume && p == line.position => true,
                    Some(p) => {
                        return Err(bad(
                            number,
                            format!(
                                "checkpoint {:?} is already in the store (at {p})",
                                line.name
                            ),
                        ))
                    }
                };
                checkpoints += 1;
                consumer = Some(Consumer {
                    name: line.name,
                    position: line.position,
                    line: number,
                    committed,
                    writes: Vec::new(),
                    bytes: 0,
                });
                continue;
            }
            "state" => {
                let line: StateLine = serde_json::from_str(text)
                    .map_err(|e| bad(number, format!("not a state entry: {e}")))?;
                let Some(c) = consumer.as_mut().filter(|c| c.name == line.name) else {
                    return Err(bad(
                        number,
                        format!(
                            "state of {:?} does not follow its checkpoint line",
                            line.name
                        ),
                    ));
                };
                let key = decode_base64(&line.key).map_err(|r| bad(number, r))?;
                let value =
                    decode_value(line.value_encoding, &line.value).map_err(|r| bad(number, r))?;
                check_reserved_entry(&key, &value).map_err(|r| {
                    bad(
                        number,
                        format!(
                            "state entry {:?} of {:?}: {r}",
                            String::from_utf8_lossy(&key),
                            line.name
                        ),
                    )
                })?;
                c.bytes += state_entry_bytes(&key, &value);
                c.writes.push(StateWrite {
                    key,
                    value: Some(value),
                });
                state_entries += 1;
                if c.writes.len() >= IMPORT_BATCH_EVENTS || c.bytes >= IMPORT_BATCH_BYTES {
                    commit_part(ctx, c, &bad).await?;
                }
                continue;
            }
            other => return Err(bad(number, format!("unknown kind of line {other:?}"))),
        }
        let event = parse_line(text).map_err(|r| bad(number, r))?;
        if resume && event.position <= start_head {
            let stored = ctx
                .store
                .read_all(event.position, 1, &Filter::all())
                .await?
                .events;
            if stored.first() != Some(&event) {
                return Err(bad(
                    number,
                    format!(
                        "the store's event at position {} is not this one: not the same log",
                        event.position
                    ),
                ));
            }
            skipped += 1;
            continue;
        }
        // What the store counts toward MAX_APPEND_BYTES.
        batch.bytes +=
            event.payload.len() + event.event_type.len() + metadata_bytes(&event.metadata);
        batch.events.push(event);
        batch.lines.push(number);
        if batch.events.len() >= IMPORT_BATCH_EVENTS || batch.bytes >= IMPORT_BATCH_BYTES {
            imported += flush(ctx, &mut batch, imported, &bad).await?;
        }
    }
    imported += flush(ctx, &mut batch, imported, &bad).await?;
    if let Some(c) = consumer.take() {
        commit(ctx, c, &bad).await?;
    }
    drop(progress);
    let summary = ImportSummary {
        imported,
        skipped_already_present: skipped,
        checkpoints,
        state_entries,
        head: ctx.store.head(),
    };
    if ctx.json {
        json_line(out, &summary)?;
    } else {
        writeln!(
            out,
            "imported {imported} events{}{} from {name}; the store's head is now {}",
            if skipped > 0 {
                format!(" (skipped {skipped} already in the store)")
            } else {
                String::new()
            },
            if checkpoints > 0 {
                format!(" and {checkpoints} checkpoints with {state_entries} state entries")
            } else {
                String::new()
            },
            summary.head
        )?;
    }
    Ok(EXIT_OK)
}

/// Imports what `batch` holds; a refusal names the input line of the event it is about.
async fn flush(
    ctx: &Ctx<'_>,
    batch: &mut Batch,
    imported_before: u64,
    bad: &impl Fn(u64, String) -> CliError,
) -> Result<u64, CliError> {
    let Some(first) = batch.events.first() else {
        return Ok(0);
    };
    let first_position = first.position;
    let n = batch.events.len() as u64;
    let events = std::mem::take(&mut batch.events);
    let lines = std::mem::take(&mut batch.lines);
    batch.bytes = 0;
    let line_of = |position: u64| {
        let i = position.saturating_sub(first_position) as usize;
        lines.get(i).or(lines.first()).copied().unwrap_or(0)
    };
    let note = format!(
        "; {imported_before} events were imported before this batch (they stay: fix the input \
         and run again with --resume)"
    );
    match ctx.store.import(events).await {
        Ok(_) => Ok(n),
        Err(StoreError::ImportRejected { position, reason }) => Err(bad(
            line_of(position),
            format!("event at position {position} refused: {reason}{note}"),
        )),
        // Not tied to one event by the store: name the batch's lines.
        Err(StoreError::InvalidInput(reason)) => Err(bad(
            line_of(first_position),
            format!(
                "an event of the lines {}..={} is invalid: {reason}{note}",
                line_of(first_position),
                line_of(first_position + n - 1)
            ),
        )),
        Err(e) => Err(e.into()),
    }
}
