//! `subscriptions`, `reset`, `parked`, `replay-parked` and `skip-parked`.

use std::io::Write;

use serde::Serialize;
use tidings::store::{LeaseInfo, StoreError};
use tidings::subscription::{
    parked_in_store, subscription_status_from_store, InboxProgress, ParkedEvent, Partition,
    ResetTo, SubscriptionState, SubscriptionStatus, Subscriptions,
};

use super::Ctx;
use crate::error::{CliError, EXIT_OK};
use crate::output::{json_line, parse_rfc3339, printable, rfc3339, rfc3339_micros, Rows};
use crate::progress::Progress;
use crate::ResetTarget;

/// Checkpoints listed per page.
const PAGE: usize = 1000;

#[derive(Serialize)]
struct SubscriptionLine {
    name: String,
    checkpoint: u64,
    head: u64,
    lag: u64,
    state: String,
    running: bool,
    parked: u64,
    parked_streams: u64,
    /// Set for a broker inbox: where it is in the broker's stream; its lag is the broker's
    /// count of messages it has not acknowledged.
    #[serde(skip_serializing_if = "Option::is_none")]
    inbox: Option<InboxProgress>,
    /// The process that holds the subscription's lease now (a store with leases), if any.
    holder: Option<HolderLine>,
    /// Set for a partition of a distributed subscription: which one, among how many.
    partition_of: Option<Partition>,
}

/// Who holds a subscription's lease.
#[derive(Serialize)]
struct HolderLine {
    host: String,
    pid: u32,
    /// The lease's generation (the holder's fencing token).
    generation: u64,
    /// Since when it holds the lease (RFC 3339).
    since: String,
}

impl HolderLine {
    fn new(lease: &LeaseInfo) -> Self {
        HolderLine {
            host: lease.holder.host.clone(),
            pid: lease.holder.pid,
            generation: lease.generation,
            since: rfc3339_micros(lease.acquired_micros),
        }
    }
}

/// The holder of subscription `name`'s lease: the store's lease while it is held (any
/// process), else the lease of a loop that runs here. `None` on a store without leases.
async fn holder_of(
    ctx: &Ctx<'_>,
    name: &str,
    live: Option<&SubscriptionStatus>,
) -> Result<Option<HolderLine>, CliError> {
    match ctx.store.load_lease(name).await {
        Ok(Some(lease)) if lease.held => return Ok(Some(HolderLine::new(&lease))),
        Ok(_) | Err(StoreError::Unsupported(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let running_here = live
        .filter(|s| s.state != SubscriptionState::Standby)
        .and_then(|s| s.holder.as_ref());
    Ok(running_here.map(HolderLine::new))
}

/// How a state reads in the table: the live state of a subscription running in this process,
/// else the recorded one. On a `shared` store (PostgreSQL) a recorded running state may be that
/// of a loop in another process; on the embedded store, which one process opens, it is that of a
/// process that ended without a stop.
fn state_text(
    live: Option<&SubscriptionStatus>,
    stored: Option<&SubscriptionStatus>,
    shared: bool,
) -> String {
    if let Some(s) = live {
        return describe(&s.state);
    }
    match stored.map(|s| &s.state) {
        None => "-".into(),
        Some(s) if !recorded_running(s) => describe(s),
        Some(s) if shared => format!("last recorded: {}", describe(s)),
        Some(s) => format!("not running (last recorded: {})", describe(s)),
    }
}

/// Whether a recorded state is that of a running loop (not a final `Stopped` or `Failed`).
fn recorded_running(state: &SubscriptionState) -> bool {
    !matches!(
        state,
        SubscriptionState::Stopped | SubscriptionState::Failed(_)
    )
}

/// On a store that other processes share, refuses (unless `force`) to change a subscription
/// that does not run here but whose last recorded state says it runs: it may run in another
/// process, whose loop would fail on the changed checkpoint or go on with a stale parked list.
pub(super) async fn ensure_not_running_elsewhere(
    ctx: &Ctx<'_>,
    subscriptions: &Subscriptions,
    name: &str,
    force: bool,
) -> Result<(), CliError> {
    if force || !ctx.shared() {
        return Ok(());
    }
    if subscriptions.get(name).is_some_and(|h| !h.is_finished()) {
        return Ok(()); // running here: the framework decides, through its loop
    }
    // On a store with leases the framework knows who runs it: an operation on parked events
    // goes to the process that holds the lease, and a reset is refused while one does.
    match ctx.store.load_lease(name).await {
        Err(StoreError::Unsupported(_)) => {}
        Ok(_) => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    match subscription_status_from_store(ctx.store, name).await? {
        Some(stored) if recorded_running(&stored.state) => Err(CliError::MaybeRunning {
            name: name.to_owned(),
            state: describe(&stored.state),
        }),
        _ => Ok(()),
    }
}

/// The state of a broker inbox: its recorded state, then where it is in the broker's stream.
fn inbox_text(state: &str, inbox: &InboxProgress) -> String {
    let mut text = format!(
        "{state} (inbox of broker stream {}, last sequence {}",
        inbox.broker_stream, inbox.last_sequence
    );
    match inbox.pending {
        Some(p) => text.push_str(&format!(", {p} pending")),
        None => text.push_str(", pending unknown"),
    }
    if let Some(e) = &inbox.last_error {
        text.push_str(&format!(", last error: {e}"));
    }
    text.push(')');
    text
}

pub(super) fn describe(state: &SubscriptionState) -> String {
    match state {
        SubscriptionState::Starting => "starting".into(),
        SubscriptionState::CatchingUp => "catching up".into(),
        SubscriptionState::Live => "live".into(),
        SubscriptionState::Stopped => "stopped".into(),
        SubscriptionState::Failed(why) => format!("failed: {why}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// `subscriptions`: every stored checkpoint with lag, state and parked count.
pub(crate) async fn list(
    ctx: &Ctx<'_>,
    out: &mut dyn Write,
    subscriptions: &Subscriptions,
) -> Result<u8, CliError> {
    let head = ctx.store.head();
    let mut rows = Rows::new(
        ctx.json,
        out,
        &["NAME", "CHECKPOINT", "HEAD", "LAG", "PARKED", "STATE"],
    );
    let mut after: Option<String> = None;
    loop {
        let page = ctx.store.list_checkpoints(after.as_deref(), PAGE).await?;
        for c in &page {
            let stored = subscription_status_from_store(ctx.store, &c.name).await?;
            let live = subscriptions
                .get(&c.name)
                .filter(|h| !h.is_finished())
                .map(|h| h.status());
            let parked = parked_in_store(ctx.store, &c.name).await?;
            let mut streams: Vec<&str> = parked.iter().map(|p| p.stream_id.as_str()).collect();
            streams.sort_unstable();
            streams.dedup();
            let checkpoint = live.as_ref().map_or(c.position, |s| s.checkpoint);
            let inbox = stored.as_ref().and_then(|s| s.inbox.clone());
            let mut state = state_text(live.as_ref(), stored.as_ref(), ctx.shared());
            if let Some(i) = &inbox {
                state = inbox_text(&state, i);
            }
            let holder = holder_of(ctx, &c.name, live.as_ref()).await?;
            if let Some(h) = &holder {
                state.push_str(&format!(" (held by {} pid {})", h.host, h.pid));
            }
            let partition_of = live
                .as_ref()
                .or(stored.as_ref())
                .and_then(|s| s.partition_of);
            let line = SubscriptionLine {
                name: c.name.clone(),
                checkpoint,
                head,
                lag: match &inbox {
                    // An inbox reads no log: its lag is the broker's.
                    Some(i) => i.pending.unwrap_or(0),
                    None => head.saturating_sub(checkpoint),
                },
                state,
                running: live.is_some(),
                parked: parked.len() as u64,
                parked_streams: streams.len() as u64,
                inbox,
                holder,
                partition_of,
            };
            rows.row(
                || {
                    vec![
                        line.name.clone(),
                        line.checkpoint.to_string(),
                        line.head.to_string(),
                        line.lag.to_string(),
                        if line.parked == 0 {
                            "0".into()
                        } else {
                            format!(
                                "{} in {} stream{}",
                                line.parked,
                                line.parked_streams,
                                if line.parked_streams == 1 { "" } else { "s" }
                            )
                        },
                        line.state.clone(),
                    ]
                },
                || &line,
            )?;
        }
        match page.last() {
            Some(last) if page.len() == PAGE => after = Some(last.name.clone()),
            _ => break,
        }
    }
    rows.finish()?;
    Ok(EXIT_OK)
}

/// `subscriptions --watch`: the listing again every `every` until Ctrl-C or SIGTERM (exit 0).
/// On a terminal each listing replaces the last one; otherwise (and with `--json`) they follow
/// one another, a table headed by the time and the head.
pub(crate) async fn watch(
    ctx: &Ctx<'_>,
    out: &mut dyn Write,
    subscriptions: &Subscriptions,
    every: std::time::Duration,
) -> Result<u8, CliError> {
    use std::io::IsTerminal;
    let mut interrupt = super::read::Interrupt::listen()?;
    let in_place = !ctx.json && std::io::stdout().is_terminal();
    let mut first = true;
    loop {
        if in_place {
            // Cursor home, clear the screen.
            write!(out, "\x1b[H\x1b[2J")?;
        } else if !first && !ctx.json {
            writeln!(out)?;
        }
        if !ctx.json {
            writeln!(
                out,
                "{}  head {}  (every {:.1} s; Ctrl-C stops)",
                rfc3339(std::time::SystemTime::now()),
                ctx.store.head(),
                every.as_secs_f64()
            )?;
        }
        list(ctx, out, subscriptions).await?;
        out.flush()?;
        first = false;
        tokio::select! {
            _ = interrupt.wait() => return Ok(EXIT_OK),
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// The stored checkpoint of `name`, or a not-found error that says how to list names.
pub(super) async fn checkpoint_of(ctx: &Ctx<'_>, name: &str) -> Result<u64, CliError> {
    ctx.store.load_checkpoint(name).await?.ok_or_else(|| {
        CliError::NotFound(format!(
            "no subscription named {name:?} in this store (`subscriptions` lists them)"
        ))
    })
}

/// The framework's [`ResetTo`] for a target given on the command line.
pub(super) fn reset_to(to: &ResetTarget) -> Result<ResetTo, CliError> {
    Ok(match to {
        ResetTarget::Beginning => ResetTo::Beginning,
        ResetTarget::End => ResetTo::End,
        ResetTarget::Position(p) => ResetTo::Position(*p),
        ResetTarget::Time(t) => ResetTo::Timestamp(
            parse_rfc3339(t).ok_or_else(|| CliError::Invalid(format!("bad time {t:?}")))?,
        ),
    })
}

#[derive(Serialize)]
struct ResetLine<'a> {
    name: &'a str,
    previous_checkpoint: u64,
    checkpoint: u64,
    next_position: u64,
    head: u64,
    state_cleared: bool,
}

/// What `reset` is asked to do.
pub(crate) struct ResetHow<'a> {
    pub to: &'a ResetTarget,
    pub clear_state: bool,
    pub force: bool,
}

/// `reset NAME --to ...`: moves a stopped subscription's checkpoint.
pub(crate) async fn reset(
    ctx: &Ctx<'_>,
    out: &mut dyn Write,
    subscriptions: &Subscriptions,
    name: &str,
    how: ResetHow<'_>,
) -> Result<u8, CliError> {
    let ResetHow {
        to,
        clear_state,
        force,
    } = how;
    let previous = checkpoint_of(ctx, name).await?;
    ensure_not_running_elsewhere(ctx, subscriptions, name, force).await?;
    let target = reset_to(to)?;
    let checkpoint = subscriptions.reset(name, target, clear_state).await?;
    let line = ResetLine {
        name,
        previous_checkpoint: previous,
        checkpoint,
        next_position: checkpoint + 1,
        head: ctx.store.head(),
        state_cleared: clear_state,
    };
    if ctx.json {
        json_line(out, &line)?;
    } else {
        let text = format!(
            "reset subscription {name:?}: checkpoint {previous} -> {checkpoint} (head {}); \
             when it starts, the first event it handles is at position {} or later{}{}",
            line.head,
            line.next_position,
            if checkpoint == line.head && matches!(to, ResetTarget::Time(_)) {
                " (no event was recorded at or after that time: nothing to reprocess)"
            } else {
                ""
            },
            if clear_state {
                "; its handler state was deleted (parked events kept)"
            } else {
                "; its handler state was kept"
            }
        );
        writeln!(out, "{}", printable(&text))?;
    }
    Ok(EXIT_OK)
}

#[derive(Serialize)]
struct ParkedLine<'a> {
    position: u64,
    stream_id: &'a str,
    event_type: &'a str,
    parked_at: String,
    reason: &'a str,
}

/// `parked NAME`: the subscription's parked events in position order.
pub(crate) async fn parked(
    ctx: &Ctx<'_>,
    out: &mut dyn Write,
    subscriptions: &Subscriptions,
    name: &str,
) -> Result<u8, CliError> {
    checkpoint_of(ctx, name).await?;
    let parked = subscriptions.parked(name).await?;
    let mut rows = Rows::new(
        ctx.json,
        out,
        &["POSITION", "STREAM", "TYPE", "PARKED AT", "REASON"],
    );
    for p in &parked {
        let line = ParkedLine {
            position: p.position,
            stream_id: &p.stream_id,
            event_type: &p.event_type,
            parked_at: rfc3339(p.parked_at),
            reason: &p.reason,
        };
        rows.row(
            || {
                vec![
                    line.position.to_string(),
                    line.stream_id.to_owned(),
                    line.event_type.to_owned(),
                    line.parked_at.clone(),
                    line.reason.to_owned(),
                ]
            },
            || &line,
        )?;
    }
    rows.finish()?;
    Ok(EXIT_OK)
}

#[derive(Serialize)]
struct ReplayLine<'a> {
    name: &'a str,
    stream_id: &'a str,
    handled: u64,
    still_parked: u64,
    deferred: bool,
}

/// The streams whose parked events `replay-parked NAME [--stream S]` replays (a dry run
/// previews), in the order of their first parked event; none is `NotFound` saying so.
pub(super) fn parked_streams<'a>(
    parked: &'a [ParkedEvent],
    name: &str,
    stream: Option<&str>,
) -> Result<Vec<&'a str>, CliError> {
    let mut streams: Vec<&str> = Vec::new();
    for p in parked {
        if stream.is_none_or(|s| s == p.stream_id) && !streams.contains(&p.stream_id.as_str()) {
            streams.push(&p.stream_id);
        }
    }
    if streams.is_empty() {
        return Err(CliError::NotFound(match stream {
            Some(s) => format!("subscription {name:?} has no parked events in stream {s:?}"),
            None => format!("subscription {name:?} has no parked events"),
        }));
    }
    Ok(streams)
}

/// `replay-parked NAME [--stream S]`: handles parked events again, stream by stream.
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
    let is_inbox = subscription_status_from_store(ctx.store, name)
        .await?
        .is_some_and(|s| s.inbox.is_some());
    let progress = Progress::count("replaying parked streams", streams.len() as u64);
    for (i, s) in streams.into_iter().enumerate() {
        progress.message(format!("replaying the parked events of {}", printable(s)));
        let outcome = subscriptions.replay_parked(name, s).await?;
        progress.set(i as u64 + 1);
        // Each stream's line printed with the bar lifted, so that the two never mix.
        progress.suspend(|| -> Result<(), CliError> {
        let line = ReplayLine {
            name,
            stream_id: s,
            handled: outcome.handled,
            still_parked: outcome.still_parked,
            deferred: outcome.deferred,
        };
        if ctx.json {
            json_line(out, &line)?;
        } else if outcome.deferred && is_inbox {
            writeln!(
                out,
                "{}",
                printable(&format!(
                    "subject {s:?}: recorded a replay of its {} parked messages; inbox {name:?} \
                     applies it, in order, at its next look (every status interval) while it \
                     runs, or when it next starts",
                    outcome.still_parked
                ))
            )?;
        } else if outcome.deferred && ctx.shared() {
            writeln!(
                out,
                "{}",
                printable(&format!(
                    "stream {s:?}: recorded a replay of its {} parked events; subscription \
                     {name:?} is not running (no process holds it), so they are handled, in \
                     order, when it next starts",
                    outcome.still_parked
                ))
            )?;
        } else if outcome.deferred {
            writeln!(
                out,
                "{}",
                printable(&format!("stream {s:?}: recorded a replay of its {} parked events; subscription {name:?} \
                 is not running here, so they are handled, in order, when it next starts",
                outcome.still_parked
            ))
            )?;
        } else {
            writeln!(
                out,
                "{}",
                printable(&format!(
                    "stream {s:?}: handled {} parked events; {} still parked",
                    outcome.handled, outcome.still_parked
                ))
            )?;
        }
        Ok(())
        })?;
    }
    Ok(EXIT_OK)
}

#[derive(Serialize)]
struct SkipLine<'a> {
    name: &'a str,
    position: u64,
    stream_id: &'a str,
    event_type: &'a str,
    still_parked: u64,
}

/// The event parked at `position` (what `skip-parked NAME POS` drops, or its dry run
/// previews).
pub(super) fn parked_at<'a>(
    parked: &'a [ParkedEvent],
    name: &str,
    position: u64,
) -> Result<&'a ParkedEvent, CliError> {
    parked
        .iter()
        .find(|p| p.position == position)
        .ok_or_else(|| not_parked_at(name, position))
}

fn not_parked_at(name: &str, position: u64) -> CliError {
    CliError::NotFound(format!(
        "subscription {name:?} has no event parked at position {position}"
    ))
}

/// `skip-parked NAME POS`: drops one parked event.
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
    if !subscriptions.skip_parked(name, position).await? {
        return Err(not_parked_at(name, position));
    }
    let still_parked = parked_in_store(ctx.store, name).await?.len() as u64;
    let line = SkipLine {
        name,
        position,
        stream_id: &entry.stream_id,
        event_type: &entry.event_type,
        still_parked,
    };
    if ctx.json {
        json_line(out, &line)?;
    } else {
        writeln!(
            out,
            "{}",
            printable(&format!(
                "skipped the parked event at position {position} ({} of stream {:?}) of \
             subscription {name:?}: it will never be handled; {still_parked} events still parked",
                entry.event_type, entry.stream_id
            ))
        )?;
    }
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: &str) -> SubscriptionStatus {
        serde_json::from_str(&format!(
            r#"{{"name":"s","state":{state},"checkpoint":1,"handled_up_to":1,"head":2,
                "events_handled":1,"restarts":0}}"#
        ))
        .unwrap()
    }

    #[test]
    fn a_recorded_running_state_of_a_subscription_not_running_here_says_so() {
        let live = status(r#""Live""#);
        assert_eq!(
            state_text(None, Some(&live), false),
            "not running (last recorded: live)"
        );
        assert_eq!(state_text(Some(&live), Some(&live), false), "live");
        assert_eq!(
            state_text(None, Some(&status(r#""Stopped""#)), false),
            "stopped"
        );
        assert_eq!(
            state_text(None, Some(&status(r#"{"Failed":"boom"}"#)), false),
            "failed: boom"
        );
        assert_eq!(state_text(None, None, false), "-");
    }

    #[test]
    fn an_inbox_shows_where_it_is_in_the_brokers_stream() {
        let stored: SubscriptionStatus = serde_json::from_str(
            r#"{"name":"in","state":"Parked","checkpoint":3,"handled_up_to":3,"head":3,
                "events_handled":2,"restarts":0,"inbox":{"broker_stream":"PAY",
                "last_sequence":7,"pending":2,"duplicates":0,"last_error":null}}"#,
        )
        .unwrap();
        let inbox = stored.inbox.clone().unwrap();
        assert_eq!(stored.lag(), 2);
        assert_eq!(
            inbox_text(&state_text(None, Some(&stored), true), &inbox),
            "last recorded: parked (inbox of broker stream PAY, last sequence 7, 2 pending)"
        );
    }

    #[test]
    fn on_a_shared_store_a_recorded_running_state_may_be_another_processs() {
        let live = status(r#""Live""#);
        assert_eq!(state_text(None, Some(&live), true), "last recorded: live");
        assert_eq!(
            state_text(None, Some(&status(r#""Stopped""#)), true),
            "stopped"
        );
        assert!(recorded_running(&status(r#"{"Unavailable":"x"}"#).state));
        assert!(!recorded_running(&status(r#"{"Failed":"x"}"#).state));
    }
}
