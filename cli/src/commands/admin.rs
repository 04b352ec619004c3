//! `stats` and `verify`.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;

use serde::Serialize;
use tidings::store::Filter;

use super::{Ctx, PAGE};
use crate::error::{CliError, EXIT_DAMAGED, EXIT_OK};
use crate::location::{redact, Target};
use crate::output::{human_bytes, json_line, printable, rfc3339_micros, Table};
use crate::progress::Progress;

#[derive(Serialize)]
struct Stats {
    path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    schema: Option<String>,
    head: u64,
    events: u64,
    streams: u64,
    categories: u64,
    subscriptions: u64,
    first_event_at: Option<String>,
    last_event_at: Option<String>,
    disk_bytes: Option<u64>,
    files: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tables: Option<u64>,
}

/// `stats`: counts, head, times and bytes on disk (the directory's files, or the PostgreSQL
/// schema's tables with their indexes).
pub(crate) async fn stats(ctx: &Ctx<'_>, out: &mut dyn Write) -> Result<u8, CliError> {
    let head = ctx.store.head();
    let (mut streams, mut categories) = (0u64, BTreeSet::new());
    let mut after: Option<String> = None;
    loop {
        let page = ctx.store.list_streams(after.as_deref(), PAGE).await?;
        streams += page.len() as u64;
        for s in &page {
            if !categories.contains(&s.category) {
                categories.insert(s.category.clone());
            }
        }
        match page.last() {
            Some(last) if page.len() == PAGE => after = Some(last.stream_id.clone()),
            _ => break,
        }
    }
    let mut subscriptions = 0u64;
    let mut after: Option<String> = None;
    loop {
        let page = ctx.store.list_checkpoints(after.as_deref(), PAGE).await?;
        subscriptions += page.len() as u64;
        match page.last() {
            Some(last) if page.len() == PAGE => after = Some(last.name.clone()),
            _ => break,
        }
    }
    let time_at = |position: u64| async move {
        if position == 0 {
            return Ok::<_, CliError>(None);
        }
        let batch = ctx.store.read_all(position, 1, &Filter::all()).await?;
        Ok(batch
            .events
            .first()
            .map(|e| rfc3339_micros(e.timestamp_micros)))
    };
    let first_event_at = time_at(head.min(1)).await?;
    let last_event_at = time_at(head).await?;
    let mut stats = Stats {
        path: None,
        server: None,
        schema: None,
        head,
        events: head,
        streams,
        categories: categories.len() as u64,
        subscriptions,
        first_event_at,
        last_event_at,
        disk_bytes: None,
        files: None,
        tables: None,
    };
    match ctx.target {
        Some(Target::Directory(dir)) => {
            let (bytes, files) = disk_usage(dir)?;
            stats.path = Some(dir.display().to_string());
            (stats.disk_bytes, stats.files) = (Some(bytes), Some(files));
        }
        Some(Target::Postgres { url, schema }) => {
            let (bytes, tables) = crate::postgres::size(url, schema).await?;
            stats.server = Some(redact(url));
            stats.schema = Some(schema.to_owned());
            (stats.disk_bytes, stats.tables) = (Some(bytes), Some(tables));
        }
        None => {}
    }
    if ctx.json {
        json_line(out, &stats)?;
        return Ok(EXIT_OK);
    }
    let mut t = Table::new(out, &["STAT", "VALUE"]);
    let none = || "-".to_owned();
    if let Some(p) = &stats.path {
        t.row(vec!["store".into(), p.clone()])?;
    }
    if let (Some(server), Some(schema)) = (&stats.server, &stats.schema) {
        t.row(vec!["store".into(), format!("{server} (schema {schema})")])?;
    }
    t.row(vec!["events".into(), stats.events.to_string()])?;
    t.row(vec!["head".into(), stats.head.to_string()])?;
    t.row(vec!["streams".into(), stats.streams.to_string()])?;
    t.row(vec!["categories".into(), stats.categories.to_string()])?;
    t.row(vec![
        "subscriptions".into(),
        stats.subscriptions.to_string(),
    ])?;
    t.row(vec![
        "first event at".into(),
        stats.first_event_at.clone().unwrap_or_else(none),
    ])?;
    t.row(vec![
        "last event at".into(),
        stats.last_event_at.clone().unwrap_or_else(none),
    ])?;
    if let (Some(bytes), Some(files)) = (stats.disk_bytes, stats.files) {
        t.row(vec![
            "disk".into(),
            format!("{} in {files} files ({bytes} bytes)", human_bytes(bytes)),
        ])?;
    }
    if let (Some(bytes), Some(tables)) = (stats.disk_bytes, stats.tables) {
        t.row(vec![
            "disk".into(),
            format!(
                "{} in {tables} tables with their indexes ({bytes} bytes)",
                human_bytes(bytes)
            ),
        ])?;
    }
    t.finish()?;
    Ok(EXIT_OK)
}

/// The bytes of every file under `dir`, and how many files.
fn disk_usage(dir: &Path) -> std::io::Result<(u64, u64)> {
    let (mut bytes, mut files) = (0u64, 0u64);
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let meta = match entry.metadata() {
                Ok(m) => m,
                // A file sled removed between the listing and the stat.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if meta.is_dir() {
                pending.push(entry.path());
            } else {
                bytes += meta.len();
                files += 1;
            }
        }
    }
    Ok((bytes, files))
}

#[derive(Serialize)]
struct VerifyLine<'a> {
    ok: bool,
    head: u64,
    events_checked: u64,
    index_entries_checked: u64,
    problems: &'a [String],
}

/// `verify`: every record's checksum and the indexes; exit code [`EXIT_DAMAGED`] on damage.
pub(crate) async fn verify(ctx: &Ctx<'_>, out: &mut dyn Write) -> Result<u8, CliError> {
    let progress = Progress::spinner("verifying the store");
    let report = ctx.store.verify().await;
    drop(progress);
    let report = report?;
    if ctx.json {
        json_line(
            out,
            &VerifyLine {
                ok: report.is_ok(),
                head: report.head,
                events_checked: report.events_checked,
                index_entries_checked: report.index_entries_checked,
                problems: &report.problems,
            },
        )?;
    } else {
        writeln!(
            out,
            "checked {} events and {} stream-index entries up to position {}",
            report.events_checked, report.index_entries_checked, report.head
        )?;
        if report.is_ok() {
            writeln!(out, "no damage found")?;
        } else {
            writeln!(out, "DAMAGE FOUND: {} problems", report.problems.len())?;
            for p in &report.problems {
                writeln!(out, "  {}", printable(p))?;
            }
        }
    }
    Ok(if report.is_ok() {
        EXIT_OK
    } else {
        EXIT_DAMAGED
    })
}
