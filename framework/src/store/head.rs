//! A watch on the durable head of a store.

use tokio::sync::watch;

use super::{Result, StoreError};

/// Follows the durable head of a store: the position of the last durable event.
///
/// Cheap to clone; each clone wakes independently. Made by
/// [`EventStore::watch_head`](super::EventStore::watch_head).
#[derive(Clone, Debug)]
pub struct HeadWatch {
    rx: watch::Receiver<u64>,
}

impl HeadWatch {
    /// Wraps the receiving side of a watch channel that a backend updates after each durable
    /// commit.
    pub fn new(rx: watch::Receiver<u64>) -> Self {
        HeadWatch { rx }
    }

    /// The durable head now.
    pub fn current(&self) -> u64 {
        *self.rx.borrow()
    }

    /// Waits until the head changes after the watch was made or last woke from `changed` or
    /// `wait_for` (not [`current`](HeadWatch::current)), and returns the new head.
    ///
    /// Fails with [`StoreError::Closed`] once the store is closed.
    pub async fn changed(&mut self) -> Result<u64> {
        self.rx.changed().await.map_err(|_| StoreError::Closed)?;
        Ok(*self.rx.borrow_and_update())
    }

    /// Waits until the head is at least `position`, and returns the head.
    pub async fn wait_for(&mut self, position: u64) -> Result<u64> {
        let head = self
            .rx
            .wait_for(|h| *h >= position)
            .await
            .map_err(|_| StoreError::Closed)?;
        Ok(*head)
    }
}
