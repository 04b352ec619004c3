//! Follows the durable head of a schema that other processes write to as well.
//!
//! A dedicated connection `LISTEN`s on the schema's channel. Each process that appends
//! `NOTIFY`s it with the highest position it committed ([`announce`]): after the commits, in a
//! transaction of its own, and coalesced (while one notification is on its way, later appends
//! only raise the position the next one carries). A `NOTIFY` inside the append's transaction
//! would hold a database-wide lock from that commit to the end of its WAL flush, so that every
//! append of the server waited for every other.
//!
//! A notification is only a wake-up: the head is read from the table, below the read horizon.
//! When a notification names a position the horizon does not cover yet (an older transaction
//! still runs), the head is read again quickly with a growing pause, which grows up to a second
//! (or the poll interval, if shorter) while the head does not move (a transaction outside tidings holding the horizon
//! back for long makes each read scan every row above it); without any notification it is read
//! every poll interval, which covers lost notifications and a lost connection. The connection
//! is made again when it breaks.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::poll_fn;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_postgres::{AsyncMessage, NoTls};

use super::errors::pg_error;
use super::{ops, Shared};
use crate::store::Result;

/// The shortest and longest pause between reads while a notified position is not readable yet
/// and the head still moves.
const FAST_POLL: (Duration, Duration) = (Duration::from_millis(1), Duration::from_millis(50));

/// The longest pause between reads while a notified position stays unreadable (a transaction
/// elsewhere holds the horizon back): each read then scans the rows above the horizon, so the
/// reads slow down, but never to more than this (nor more than the poll interval).
const STUCK_POLL: Duration = Duration::from_secs(1);

/// Sends a notification each time this process committed positions past the last one sent,
/// until the store is dropped (its runtime stops this task). A notification that cannot be sent
/// is sent again after a pause that grows up to [`RECONNECT_MAX`].
pub async fn announce(shared: Arc<Shared>) {
    let mut appended = shared.appended.subscribe();
    // Its transaction id is recorded once it has committed, for appends whose commits
    // overlapped it ([`super::finished`]).
    let sql = "SELECT set_config('synchronous_commit', 'off', true), pg_notify($1, $2), \
               pg_current_xact_id()::text";
    let mut sent = 0u64;
    let mut failures = 0u32;
    loop {
        let position = *appended.borrow_and_update();
        if shared.head.strong_count() == 0 {
            return;
        }
        if position <= sent {
            if appended.changed().await.is_err() {
                return;
            }
            continue;
        }
        // The notification's own transaction commits without waiting for its WAL flush: it is
        // only a wake-up. It names this store, so that this process's own listener does not
        // read the head for it (its appends move the head themselves).
        let payload = format!("{position} {}", shared.instance);
        let result = match shared.client().await {
            Ok(client) => {
                let mut running = shared.finished.start();
                let sent = ops::one(&client, sql, &[&shared.keys.channel, &payload]).await;
                if let Some(xid) = sent
                    .as_ref()
                    .ok()
                    .and_then(|row| row.get::<_, &str>(2).parse().ok())
                {
                    running.finished_as(xid);
                }
                sent
            }
            Err(e) => Err(e),
        };
        let pause = match result {
            Ok(_) => {
                sent = position;
                failures = 0;
                // Appends meanwhile are announced together by the next one: at most one
                // notification per interval (each is a transaction, and wakes every listener).
                shared.config.notify_interval
            }
            Err(e) => {
                // Sent again until it goes through (with the newest position by then): a
                // listener whose poll interval is long would otherwise hear of this append
                // only when this process appends again.
                failures = failures.saturating_add(1);
                tracing::debug!(error = %e, position, failures, "could not send a notification");
                reconnect_pause(failures, RECONNECT_MAX).max(shared.config.notify_interval)
            }
        };
        tokio::time::sleep(pause).await;
    }
}

/// The position a notification names, unless this store sent it (`None` then).
fn notified_position(payload: &str, own: &str) -> Option<u64> {
    let mut parts = payload.split(' ');
    let position = parts.next()?.parse().ok()?;
    match parts.next() {
        Some(sender) if sender == own => None,
        _ => Some(position),
    }
}

/// Follows the head until the store is dropped (its runtime stops this task).
pub async fn track(shared: Arc<Shared>) {
    let mut failures = 0u32;
    loop {
        if shared.head.strong_count() == 0 {
            return;
        }
        let began = Instant::now();
        match follow(&shared).await {
            Ok(()) => return,
            Err(e) => {
                if began.elapsed() >= RECONNECT_MAX {
                    // It listened for a while: a new outage, not the same one going on.
                    failures = 0;
                }
                failures = failures.saturating_add(1);
                if failures == 1 || failures.is_power_of_two() {
                    tracing::warn!(
                        schema = %shared.config.schema,
                        error = %e,
                        failures,
                        "lost the notification connection; polling the head and reconnecting"
                    );
                }
                // Keep the head moving by polling while the listener is down.
                if let Ok(client) = shared.client().await {
                    if let Ok(head) = ops::read_head(&client, &shared.sql).await {
                        shared.bump_head(head);
                    }
                }
                // Reconnect soon: notifications sent while no connection listens are lost, so
                // waiting a whole poll interval (an hour, for some) would leave this process
                // deaf that long after every blip of the server.
                tokio::time::sleep(reconnect_pause(failures, shared.config.poll_interval)).await;
            }
        }
    }
}

/// The longest pause between two attempts to listen again.
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// The pause before attempt `failures` (1, 2, ...) to listen again: 50 ms doubling, at most
/// [`RECONNECT_MAX`] and at most the poll interval.
fn reconnect_pause(failures: u32, poll_interval: Duration) -> Duration {
    let doubled =
        Duration::from_millis(50).saturating_mul(1u32 << failures.saturating_sub(1).min(10));
    doubled.min(RECONNECT_MAX).min(poll_interval)
}

/// One listening connection's life: returns `Ok` when the store is gone, an error when the
/// connection broke.
async fn follow(shared: &Shared) -> Result<()> {
    let (client, mut connection) = shared.pg.connect(NoTls).await.map_err(pg_error)?;
    let (notify_tx, mut notify_rx) = mpsc::unbounded_channel::<u64>();
    let own = shared.instance.clone();
    // The connection task hands every notification over and ends when the connection does.
    let driver = tokio::spawn(async move {
        loop {
            match poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    let Some(position) = notified_position(n.payload(), &own) else {
                        continue;
                    };
                    if notify_tx.send(position).is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            }
        }
    });
    let result = listen(shared, &client, &mut notify_rx).await;
    drop(client);
    driver.abort();
    result
}

async fn listen(
    shared: &Shared,
    client: &tokio_postgres::Client,
    notifications: &mut mpsc::UnboundedReceiver<u64>,
) -> Result<()> {
    client
        .batch_execute(&format!("LISTEN \"{}\"", shared.keys.channel))
        .await
        .map_err(pg_error)?;
    let head_sql = &shared.sql;
    // Everything appended before LISTEN took effect is covered by these reads: what is readable
    // already moves the head now, and what is committed but not readable yet (an older
    // transaction holds the horizon below it) is a target, as if it had been notified: its
    // notification may have been sent before this connection listened.
    let mut head = ops::read_head(client, head_sql).await?;
    shared.bump_head(head);
    let mut target = head.max(ops::read_committed_head(client, head_sql).await?);
    let mut pause = FAST_POLL.0;
    // How long the pause may grow to while a notified position is not readable yet: the fast
    // poll's ceiling while the head moves, up to the poll interval while it does not.
    let mut ceiling = FAST_POLL.1;
    let mut last_read = Instant::now();
    loop {
        if shared.head.strong_count() == 0 {
            return Ok(());
        }
        let wait = if target > head {
            pause
        } else {
            shared.config.poll_interval
        };
        tokio::select! {
            notified = notifications.recv() => match notified {
                Some(position) => {
                    target = target.max(position);
                    // Take every notification already queued before reading once.
                    while let Ok(position) = notifications.try_recv() {
                        target = target.max(position);
                    }
                    // While the horizon is stuck, notifications do not shorten the pause.
                    let stuck = ceiling > FAST_POLL.1 && target > head;
                    if stuck && Instant::now() < last_read + pause {
                        continue;
                    }
                }
                None => {
                    return Err(crate::store::StoreError::Unavailable(
                        "the notification connection closed".into(),
                    ))
                }
            },
            _ = tokio::time::sleep_until(last_read + wait) => {}
        }
        let before = head;
        head = ops::read_head(client, head_sql).await?;
        last_read = Instant::now();
        shared.bump_head(head);
        if head >= target {
            target = head;
            pause = FAST_POLL.0;
            ceiling = FAST_POLL.1;
        } else {
            ceiling = if head == before {
                (ceiling * 2).min(shared.config.poll_interval.clamp(FAST_POLL.1, STUCK_POLL))
            } else {
                FAST_POLL.1
            };
            pause = (pause * 2).min(ceiling);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{notified_position, reconnect_pause, RECONNECT_MAX};
    use std::time::Duration;

    #[test]
    fn the_listener_reconnects_soon_whatever_the_poll_interval() {
        let hour = Duration::from_secs(3600);
        assert_eq!(reconnect_pause(1, hour), Duration::from_millis(50));
        assert_eq!(reconnect_pause(2, hour), Duration::from_millis(100));
        assert_eq!(reconnect_pause(40, hour), RECONNECT_MAX);
        assert_eq!(
            reconnect_pause(40, Duration::from_millis(200)),
            Duration::from_millis(200)
        );
    }

    #[test]
    fn own_notifications_are_skipped_and_others_read() {
        assert_eq!(notified_position("42 abc", "abc"), None);
        assert_eq!(notified_position("42 abc", "def"), Some(42));
        assert_eq!(notified_position("42", "def"), Some(42));
        assert_eq!(notified_position("x", "def"), None);
    }
}
