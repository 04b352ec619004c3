//! `export` to JSON lines and `import` from them.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use serde::Serialize;
use tidings::store::{Filter, RecordedEvent, StoreError};

use super::{Ctx, PAGE};
use crate::error::{CliError, EXIT_OK};
use crate::output::{decode_base64, exact_payload, json_line, EventLine, PayloadEncoding};

/// An import is sent to the store in batches of at most this many events...
const IMPORT_BATCH_EVENTS: usize = 1000;
/// ...or this many payload bytes.
const IMPORT_BATCH_BYTES: usize = 4 * 1024 * 1024;

#[derive(Serialize)]
struct ExportSummary {
    exported: u64,
    first_position: Option<u64>,
    last_position: Option<u64>,
    output: Option<String>,
}

/// `export`: every event from `from` to `to` (the head by default), one JSON object per line,
/// payloads verbatim (JSON) or base64. Written to a file, it is fsynced before the summary.
pub(crate) async fn export(
    ctx: &Ctx<'_>,
    out: &mut dyn Write,
    output: Option<&Path>,
    from: u64,
    to: Option<u64>,
) -> Result<u8, CliError> {
    let head = ctx.store.head();
    let last = to.unwrap_or(head).min(head);
    let mut file = match output {
        Some(p) => Some(BufWriter::new(File::create(p)?)),
        None => None,
    };
    let mut next = from.max(1);
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
            let line = EventLine::new(e, Some(exact_payload(&e.payload)));
            match file.as_mut() {
                Some(f) => json_line(f, &line)?,
                None => json_line(out, &line)?,
            }
            first.get_or_insert(e.position);
            exported += 1;
        }
        if batch.next_position <= next {
            break;
        }
        next = batch.next_position;
    }
    let summary = ExportSummary {
        exported,
        first_position: first,
        last_position: first.map(|f| f + exported - 1),
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
                    "exported {exported} events{} to {}",
                    range_text(&summary),
                    p.display()
                )?;
            }
        }
        // On standard output the events are the output; the summary goes to standard error.
        _ => eprintln!("exported {exported} events{}", range_text(&summary)),
    }
    Ok(EXIT_OK)
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
    head: u64,
}

/// Turns one line written by `export` into the event it describes.
fn parse_line(text: &str) -> Result<RecordedEvent, String> {
    let line: EventLine = serde_json::from_str(text).map_err(|e| format!("not an event: {e}"))?;
    if line.kind != "event" {
        return Err(format!("unknown kind of line {:?}", line.kind));
    }
    let raw = line
        .payload
        .ok_or("no payload (was it written by `export`?)")?;
    let payload = match line.payload_encoding {
        Some(PayloadEncoding::Json) => raw.get().as_bytes().to_vec(),
        Some(PayloadEncoding::Base64) => {
            let s: String = serde_json::from_str(raw.get())
                .map_err(|_| "a base64 payload must be a JSON string".to_owned())?;
            decode_base64(&s)?
        }
        Some(PayloadEncoding::Decoded) => {
            return Err(
                "the payload was decoded and encoded again (output of `--payload`, \
                        not of `export`): its bytes are not the stored ones"
                    .into(),
            )
        }
        None => return Err("no payload_encoding".into()),
    };
    if payload.len() != line.payload_size {
        return Err(format!(
            "payload has {} bytes, payload_size says {}",
            payload.len(),
            line.payload_size
        ));
    }
    Ok(RecordedEvent {
        position: line.position,
        stream_id: line.stream_id,
        stream_version: line.stream_version,
        category: line.category,
        event_type: line.event_type,
        schema_version: line.schema_version,
        event_id: line.event_id,
        correlation_id: line.correlation_id,
        causation_id: line.causation_id,
        timestamp_micros: line.timestamp_micros,
        payload,
    })
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
    let reader: Box<dyn BufRead> = if name == "-" {
        Box::new(BufReader::new(std::io::stdin()))
    } else {
        Box::new(BufReader::new(File::open(input).map_err(|e| {
            CliError::Invalid(format!("cannot read {name}: {e}"))
        })?))
    };
    let bad = |line: u64, reason: String| CliError::BadImport {
        file: name.clone(),
        line,
        reason,
    };
    let (mut imported, mut skipped) = (0u64, 0u64);
    let mut batch = Batch::default();
    for (i, text) in reader.lines().enumerate() {
        let number = i as u64 + 1;
        let text = text?;
        if text.trim().is_empty() {
            continue;
        }
        let event = parse_line(&text).map_err(|r| bad(number, r))?;
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
        batch.bytes += event.payload.len();
        batch.events.push(event);
        batch.lines.push(number);
        if batch.events.len() >= IMPORT_BATCH_EVENTS || batch.bytes >= IMPORT_BATCH_BYTES {
            imported += flush(ctx, &mut batch, imported, &bad).await?;
        }
    }
    imported += flush(ctx, &mut batch, imported, &bad).await?;
    let summary = ImportSummary {
        imported,
        skipped_already_present: skipped,
        head: ctx.store.head(),
    };
    if ctx.json {
        json_line(out, &summary)?;
    } else {
        writeln!(
            out,
            "imported {imported} events from {name}{}; the store's head is now {}",
            if skipped > 0 {
                format!(" (skipped {skipped} already in the store)")
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
        Err(StoreError::InvalidInput(reason)) => Err(bad(line_of(first_position), reason + &note)),
        Err(e) => Err(e.into()),
    }
}
