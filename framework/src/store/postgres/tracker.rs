//! Follows the durable head of a schema that other processes write to as well.
//!
//! A dedicated connection `LISTEN`s on the schema's channel; each append `NOTIFY`s it with its
//! last position. A notification is only a wake-up: the head is read from the table, below the
//! read horizon. When a notification names a position the horizon does not cover yet (an older
//! transaction still runs), the head is read again quickly with a growing pause; without any
//! notification it is read every poll interval, which covers lost notifications and a lost
//! connection. The connection is made again when it breaks.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::poll_fn;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};

use super::errors::pg_error;
use super::{ops, Shared};
use crate::store::Result;

/// The shortest and longest pause between reads while a notified position is not readable yet.
const FAST_POLL: (Duration, Duration) = (Duration::from_millis(1), Duration::from_millis(50));

/// Follows the head until the store is dropped (its runtime stops this task).
pub async fn track(shared: Arc<Shared>) {
    let mut failures = 0u32;
    loop {
        if shared.head.strong_count() == 0 {
            return;
        }
        match follow(&shared).await {
            Ok(()) => return,
            Err(e) => {
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
                tokio::time::sleep(shared.config.poll_interval).await;
            }
        }
    }
}

/// One listening connection's life: returns `Ok` when the store is gone, an error when the
/// connection broke.
async fn follow(shared: &Shared) -> Result<()> {
    let (client, mut connection) = shared.pg.connect(NoTls).await.map_err(pg_error)?;
    let (notify_tx, mut notify_rx) = mpsc::unbounded_channel::<u64>();
    // The connection task hands every notification over and ends when the connection does.
    let driver = tokio::spawn(async move {
        loop {
            match poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    let position = n.payload().parse().unwrap_or(0);
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
    // Everything appended before LISTEN took effect is covered by this read.
    let mut head = ops::read_head(client, head_sql).await?;
    shared.bump_head(head);
    let mut target = head;
    let mut pause = FAST_POLL.0;
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
                    pause = FAST_POLL.0;
                }
                None => {
                    return Err(crate::store::StoreError::Unavailable(
                        "the notification connection closed".into(),
                    ))
                }
            },
            _ = tokio::time::sleep(wait) => {
                if target > head {
                    pause = (pause * 2).min(FAST_POLL.1);
                }
            }
        }
        head = ops::read_head(client, head_sql).await?;
        shared.bump_head(head);
        if head >= target {
            target = head;
        }
    }
}
