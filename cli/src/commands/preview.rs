//! `--dry-run` of `reset`, `replay-parked` and `skip-parked`: what the command would change,
//! worked out by the same checks and the same framework code, with nothing written.

use std::io::Write;

use serde::Serialize;
use tidings::store::StoreError;
use tidings::subscription::Subscriptions;

use super::subscriptions::{
    checkpoint_of, ensure_not_running_elsewhere, parked_at, parked_streams, reset_to, ResetHow,
};
use super::Ctx;
use crate::error::{CliError, EXIT_OK};
use crate::output::{json_line, printable};
use crate::ResetTarget;

#[derive(Serialize)]
struct ResetPreviewLine<'a> {
    name: &'a str,
    dry_run: bool,
    previous_checkpoint: u64,
    checkpoint: u64,
    next_position: u64,
    head: u64,
    /// Positions that would be handled again (the checkpoint moves back).
    handled_again: u64,
    /// Positions that would never be handled (the checkpoint moves forward).
    skipped: u64,
    state_cleared: bool,
    state_entries_deleted: u64,
}

/// `reset NAME --to ... --dry-run`.
pub(crate) async fn reset(
    ctx: &Ctx<'_>,
    out: &mut dyn Write,
    subscriptions: &Subscriptions,
    name: &str,
    how: ResetHow<'_>,
) -> Result<u8, CliError> {
    checkpoint_of(ctx, name).await?;
    ensure_not_running_elsewhere(ctx, subscriptions, name, how.force).await?;
    let preview = subscriptions
        .reset_preview(name, reset_to(how.to)?, how.clear_state)
        .await?
        .ok_or_else(|| CliError::NotFound(format!("no subscription named {name:?}")))?;
    let line = ResetPreviewLine {
        name,
        dry_run: true,
        previous_checkpoint: preview.previous_checkpoint,
        checkpoint: preview.checkpoint,
        next_position: preview.checkpoint + 1,
        head: preview.head,
        handled_again: preview.handled_again(),
        skipped: preview.skipped(),
        state_cleared: how.clear_state,
        state_entries_deleted: preview.state_entries_deleted,
    };
    if ctx.json {
        json_line(out, &line)?;
        return Ok(EXIT_OK);
    }
    let moves = if line.handled_again > 0 {
        format!(
            "positions {} to {} would be handled again",
            line.next_position, line.previous_checkpoint
        )
    } else if line.skipped > 0 {
        format!(
            "positions {} to {} would never be handled",
            line.previous_checkpoint + 1,
            line.checkpoint
        )
    } else {
        "the checkpoint would not move".into()
    };
    let text = format!(
        "dry run, nothing changed: reset subscription {name:?} would move its checkpoint {} -> {} \
         (head {}): {moves}{}; {}",
        line.previous_checkpoint,
        line.checkpoint,
        line.head,
        if line.checkpoint == line.head && matches!(how.to, ResetTarget::Time(_)) {
            " (no event was recorded at or after that time)"
        } else {
            ""
        },
        if how.clear_state {
            format!(
                "{} entries of its handler state would be deleted (parked events kept)",
                line.state_entries_deleted
            )
        } else {
            "its handler state would be kept".into()
        }
    );
    writeln!(out, "{}", printable(&text))?;
    Ok(EXIT_OK)
}

/// Where a replay or a skip would be carried out.
async fn where_applied(
    ctx: &Ctx<'_>,
    subscriptions: &Subscriptions,
    name: &str,
) -> Result<(&'static str, Option<String>), CliError> {
    if subscriptions.get(name).is_some_and(|h| !h.is_finished()) {
        return Ok(("here", None));
    }
    match ctx.store.load_lease(name).await {
        Ok(Some(info)) if info.held => Ok(("holder", Some(info.holder.to_string()))),
        Ok(_) | Err(StoreError::Unsupported(_)) => Ok(("next_start", None)),
        Err(e) => Err(e.into()),
    }
}

#[derive(Serialize)]
struct ParkedRef<'a> {
    position: u64,
    event_type: &'a str,
}

#[derive(Serialize)]
struct ReplayPreviewLine<'a> {
    name: &'a str,
    dry_run: bool,
    stream_id: &'a str,
    /// The parked events that would be handled again, in this order.
    events: Vec<ParkedRef<'a>>,
    /// `here` (the subscription runs in this process), `holder` (the process that holds its
    /// lease), or `next_start` (recorded, handled when it next starts).
    applied: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    holder: Option<String>,
}

/// `replay-parked NAME [--stream S] --dry-run`.
pub(crate) async fn replay(
    ctx: &Ctx<'_>,
    out: &mut dyn Write,
    subscriptions: &Subscriptions,
    name: &str,
    stream: Option<&str>,
) -> Result<u8, CliError> {
    checkpoint_of(ctx, name).await?;
    let parked = subscriptions.parked(name).await?;
    let streams = parked_streams(&parked, name, stream)?;
    let (applied, holder) = where_applied(ctx, subscriptions, name).await?;
    for s in streams {
        let events: Vec<ParkedRef<'_>> = parked
            .iter()
            .filter(|p| p.stream_id == s)
            .map(|p| ParkedRef {
                position: p.position,
                event_type: &p.event_type,
            })
            .collect();
        if ctx.json {
            let line = ReplayPreviewLine {
                name,
                dry_run: true,
                stream_id: s,
                events,
                applied,
                holder: holder.clone(),
            };
            json_line(out, &line)?;
            continue;
        }
        let list: Vec<String> = events
            .iter()
            .map(|e| format!("{} ({})", e.position, e.event_type))
            .collect();
        let when = match (applied, &holder) {
            ("here", _) => "now, by the subscription running in this process".to_owned(),
            (_, Some(h)) => format!("by the process that runs it ({h})"),
            _ => "when it next starts (it is not running)".to_owned(),
        };
        let text = format!(
            "dry run, nothing changed: stream {s:?} of subscription {name:?}: {} parked events \
             would be handled again, in this order, {when}, stopping at the first that fails \
             again: {}",
            events.len(),
            list.join(", ")
        );
        writeln!(out, "{}", printable(&text))?;
    }
    Ok(EXIT_OK)
}

#[derive(Serialize)]
struct SkipPreviewLine<'a> {
    name: &'a str,
    dry_run: bool,
    position: u64,
    stream_id: &'a str,
    event_type: &'a str,
    /// Events that would stay parked, in all streams.
    still_parked: u64,
    /// Of those, the events of the same stream (still held until replayed or skipped).
    still_parked_in_stream: u64,
    applied: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    holder: Option<String>,
}

/// `skip-parked NAME POS --dry-run`.
pub(crate) async fn skip(
    ctx: &Ctx<'_>,
    out: &mut dyn Write,
    subscriptions: &Subscriptions,
    name: &str,
    position: u64,
    force: bool,
) -> Result<u8, CliError> {
    checkpoint_of(ctx, name).await?;
    ensure_not_running_elsewhere(ctx, subscriptions, name, force).await?;
    let parked = subscriptions.parked(name).await?;
    let entry = parked_at(&parked, name, position)?;
    let (applied, holder) = where_applied(ctx, subscriptions, name).await?;
    let line = SkipPreviewLine {
        name,
        dry_run: true,
        position,
        stream_id: &entry.stream_id,
        event_type: &entry.event_type,
        still_parked: parked.len() as u64 - 1,
        still_parked_in_stream: parked
            .iter()
            .filter(|p| p.stream_id == entry.stream_id && p.position != position)
            .count() as u64,
        applied,
        holder,
    };
    if ctx.json {
        json_line(out, &line)?;
        return Ok(EXIT_OK);
    }
    let text = format!(
        "dry run, nothing changed: the parked event at position {position} ({} of stream {:?}) \
         of subscription {name:?} would be dropped and never handled; {} events would stay \
         parked, {} of them in its stream ({})",
        entry.event_type,
        entry.stream_id,
        line.still_parked,
        line.still_parked_in_stream,
        if line.still_parked_in_stream > 0 {
            "held until they are replayed or skipped"
        } else {
            "the stream would no longer be parked"
        }
    );
    writeln!(out, "{}", printable(&text))?;
    Ok(EXIT_OK)
}
