//! `streams`, `read`, `log` and `tail`.

use std::io::Write;

use serde::Serialize;
use tidings::store::{stream_page_is_full, Filter, RecordedEvent, StoreError};

use super::{Ctx, PAGE};
use crate::error::{CliError, EXIT_OK};
use crate::output::{
    human_bytes, json_line, rfc3339_micros, shown_payload, EventLine, Rows, Table,
};

/// Prints events as table rows or JSON lines.
pub(crate) struct EventPrinter<'a> {
    table: Option<Table<'a>>,
    json_out: Option<&'a mut dyn Write>,
    payload: bool,
    count: u64,
}

const EVENT_HEADERS: [&str; 6] = ["POSITION", "STREAM", "VERSION", "TYPE", "TIME", "SIZE"];

impl<'a> EventPrinter<'a> {
    pub fn new(ctx: &Ctx<'_>, out: &'a mut dyn Write) -> Self {
        if ctx.json {
            return EventPrinter {
                table: None,
                json_out: Some(out),
                payload: ctx.payload,
                count: 0,
            };
        }
        let mut headers = EVENT_HEADERS.to_vec();
        if ctx.payload {
            headers.push("PAYLOAD");
        }
        EventPrinter {
            table: Some(Table::new(out, &headers)),
            json_out: None,
            payload: ctx.payload,
            count: 0,
        }
    }

    /// Prints each row as it comes (for `tail`), with columns wide enough for typical values.
    pub fn immediate(mut self) -> Result<Self, CliError> {
        if let Some(t) = self.table.take() {
            self.table = Some(t.immediate(&[8, 24, 7, 20, 27, 8])?);
        }
        Ok(self)
    }

    pub fn print(&mut self, ctx: &Ctx<'_>, e: &RecordedEvent) -> Result<(), CliError> {
        self.count += 1;
        let shown = self.payload.then(|| shown_payload(ctx.registry, e));
        if let Some(out) = self.json_out.as_deref_mut() {
            let mut line = EventLine::new(e, None);
            if let Some((enc, raw, error)) = shown {
                line.payload_encoding = Some(enc);
                line.payload = Some(raw);
                line.payload_error = error;
            }
            json_line(out, &line)?;
            return Ok(());
        }
        let table = self.table.as_mut().expect("a table when not JSON");
        let mut row = vec![
            e.position.to_string(),
            e.stream_id.to_string(),
            e.stream_version.to_string(),
            e.event_type.to_string(),
            rfc3339_micros(e.timestamp_micros),
            human_bytes(e.payload.len() as u64),
        ];
        if let Some((enc, raw, error)) = shown {
            let mut cell = match enc {
                crate::PayloadEncoding::Base64 => {
                    format!("base64:{}", raw.get().trim_matches('"'))
                }
                _ => raw.get().to_owned(),
            };
            if let Some(error) = error {
                cell = format!("(does not decode: {error}) {cell}");
            }
            row.push(cell);
        }
        table.row(row)?;
        Ok(())
    }

    /// Flushes a table; returns how many events were printed.
    pub fn finish(self) -> Result<u64, CliError> {
        if let Some(t) = self.table {
            t.finish()?;
        } else if let Some(out) = self.json_out {
            out.flush()?;
        }
        Ok(self.count)
    }

    pub fn flush(&mut self) -> Result<(), CliError> {
        if let Some(t) = self.table.as_mut() {
            t.flush()?;
        } else if let Some(out) = self.json_out.as_deref_mut() {
            out.flush()?;
        }
        Ok(())
    }
}

#[derive(Serialize)]
struct StreamLine<'a> {
    stream_id: &'a str,
    category: &'a str,
    version: u64,
    last_position: u64,
}

/// `streams`: every stream (of a category) with its version.
pub(crate) async fn streams(
    ctx: &Ctx<'_>,
    out: &mut dyn Write,
    category: Option<&str>,
    limit: Option<u64>,
) -> Result<u8, CliError> {
    let limit = limit.unwrap_or(u64::MAX);
    let mut rows = Rows::new(
        ctx.json,
        out,
        &["STREAM", "CATEGORY", "VERSION", "LAST POSITION"],
    );
    let mut after: Option<String> = None;
    let mut shown = 0u64;
    'pages: loop {
        let page = ctx.store.list_streams(after.as_deref(), PAGE).await?;
        for s in &page {
            if category.is_some_and(|c| c != s.category) {
                continue;
            }
            if shown >= limit {
                break 'pages;
            }
            shown += 1;
            rows.row(
                || {
                    vec![
                        s.stream_id.clone(),
                        s.category.clone(),
                        s.version.to_string(),
                        s.last_position.to_string(),
                    ]
                },
                || StreamLine {
                    stream_id: &s.stream_id,
                    category: &s.category,
                    version: s.version,
                    last_position: s.last_position,
                },
            )?;
        }
        match page.last() {
            Some(last) if page.len() == PAGE => after = Some(last.stream_id.clone()),
            _ => break,
        }
    }
    rows.finish()?;
    Ok(EXIT_OK)
}

/// `read STREAM`: one stream's events from a version.
pub(crate) async fn read_stream(
    ctx: &Ctx<'_>,
    out: &mut dyn Write,
    stream: &str,
    from: u64,
    limit: Option<u64>,
) -> Result<u8, CliError> {
    let limit = limit.unwrap_or(u64::MAX);
    if ctx.store.stream_version(stream).await? == 0 {
        return Err(CliError::NotFound(format!(
            "stream {stream:?} has no events"
        )));
    }
    let mut printer = EventPrinter::new(ctx, out);
    let mut next = from.max(1);
    let mut printed = 0u64;
    let mut careful = false;
    while printed < limit {
        let want = if careful {
            1
        } else {
            (limit - printed).min(PAGE as u64) as usize
        };
        let page = match ctx.store.read_stream(stream, next, want).await {
            Ok(page) => page,
            Err(e) => {
                if one_by_one(&e, &mut careful) {
                    continue;
                }
                printer.finish()?;
                return Err(e.into());
            }
        };
        for e in &page {
            printer.print(ctx, e)?;
            next = e.stream_version + 1;
        }
        printed += page.len() as u64;
        // A page also ends at the store's byte budget: only one that is not full is the end.
        if !stream_page_is_full(&page, want) {
            break;
        }
    }
    printer.finish()?;
    Ok(EXIT_OK)
}

/// `log`: the global log from a position, optionally filtered.
pub(crate) async fn log(
    ctx: &Ctx<'_>,
    out: &mut dyn Write,
    from: u64,
    limit: Option<u64>,
    categories: &[String],
    event_types: &[String],
) -> Result<u8, CliError> {
    let mut filter = Filter::all();
    if !categories.is_empty() {
        filter = filter.categories(categories.iter().cloned());
    }
    if !event_types.is_empty() {
        filter = filter.event_types(event_types.iter().cloned());
    }
    let limit = limit.unwrap_or(u64::MAX);
    let mut printer = EventPrinter::new(ctx, out);
    let mut next = from.max(1);
    let mut printed = 0u64;
    let mut careful = false;
    while printed < limit {
        let want = if careful {
            1
        } else {
            (limit - printed).min(PAGE as u64) as usize
        };
        let batch = match ctx.store.read_all(next, want, &filter).await {
            Ok(batch) => batch,
            Err(e) => {
                if one_by_one(&e, &mut careful) {
                    continue;
                }
                printer.finish()?;
                return Err(e.into());
            }
        };
        for e in &batch.events {
            printer.print(ctx, e)?;
        }
        printed += batch.events.len() as u64;
        next = batch.next_position;
        if batch.is_end() {
            break;
        }
    }
    printer.finish()?;
    Ok(EXIT_OK)
}

/// `tail`: prints events as they become durable, until Ctrl-C (or `limit`, or the head with
/// `until_idle`).
pub(crate) async fn tail(
    ctx: &Ctx<'_>,
    out: &mut dyn Write,
    from: Option<u64>,
    limit: Option<u64>,
    until_idle: bool,
) -> Result<u8, CliError> {
    // Listening starts now, before anything is printed, so an early Ctrl-C is not missed.
    let mut interrupt = Interrupt::listen()?;
    let mut watch = ctx.store.watch_head();
    let mut next = from.unwrap_or_else(|| ctx.store.head() + 1).max(1);
    let limit = limit.unwrap_or(u64::MAX);
    let mut printer = EventPrinter::new(ctx, out).immediate()?;
    let mut printed = 0u64;
    let all = Filter::all();
    let mut careful = false;
    while printed < limit {
        let want = if careful {
            1
        } else {
            (limit - printed).min(PAGE as u64) as usize
        };
        let batch = match ctx.store.read_all(next, want, &all).await {
            Ok(batch) => batch,
            Err(e) => {
                if one_by_one(&e, &mut careful) {
                    continue;
                }
                printer.finish()?;
                return Err(e.into());
            }
        };
        for e in &batch.events {
            printer.print(ctx, e)?;
        }
        printed += batch.events.len() as u64;
        next = batch.next_position;
        printer.flush()?;
        if !batch.is_end() || printed >= limit {
            continue;
        }
        if until_idle {
            break;
        }
        tokio::select! {
            woke = watch.wait_for(next) => {
                if woke.is_err() {
                    break; // the store closed
                }
            }
            () = interrupt.wait() => break,
        }
    }
    printer.finish()?;
    Ok(EXIT_OK)
}

/// Ctrl-C (SIGINT) or SIGTERM, listened for from the moment it is made.
pub(crate) struct Interrupt {
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

impl Interrupt {
    #[cfg(unix)]
    pub fn listen() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Interrupt {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    #[cfg(not(unix))]
    pub fn listen() -> std::io::Result<Self> {
        Ok(Interrupt {})
    }

    #[cfg(unix)]
    pub async fn wait(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }

    #[cfg(not(unix))]
    pub async fn wait(&mut self) {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// After a page fails on damage, reads go on one event at a time, so that every event before the
/// damaged one is printed before the error: true to retry that way, false to give up.
pub(crate) fn one_by_one(e: &StoreError, careful: &mut bool) -> bool {
    let damaged = matches!(
        e,
        StoreError::Damaged { .. } | StoreError::DamagedMetadata { .. }
    );
    if damaged && !*careful {
        *careful = true;
        return true;
    }
    false
}
