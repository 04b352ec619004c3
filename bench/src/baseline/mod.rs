//! The baselines, behind the same group commit as tidings' writer thread.
//!
//! Fairness: every append-based baseline runs behind [`GroupWriter`], a copy of the structure of
//! tidings' writer (`framework/src/store/sled/writer.rs`): callers send an append request over a
//! channel and wait for a one-shot reply; one OS thread blocks for a request, takes whatever else
//! is queued (up to the same `max_group` of 1024), checks each append against an in-memory cache
//! of stream heads, assigns positions, writes the whole group as one transaction / batch / write,
//! makes it durable with one sync, and only then replies. So with 1 writer every backend pays one
//! sync per append, and with 256 writers each pays one sync per group, exactly like tidings.

pub mod file;
pub mod sled;
pub mod sqlite;

use std::sync::mpsc;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

/// The most appends one group commit takes (tidings' default `max_group`).
pub const MAX_GROUP: usize = 1024;

/// One append: a stream and its events (type, payload).
pub struct Append {
    /// The stream id.
    pub stream: String,
    /// Expected version (`None`: any).
    pub expected: Option<u64>,
    /// The events: type name and payload bytes.
    pub events: Vec<(&'static str, Vec<u8>)>,
}

/// What a baseline did with one append.
pub type Outcome = Result<u64, String>;

/// A storage engine behind the group commit.
pub trait Backend: Send + 'static {
    /// Writes `group` durably as one unit; one outcome per append (its stream version, or why it
    /// was refused). An `Err` fails the whole group.
    fn commit(&mut self, group: &[Append]) -> Result<Vec<Outcome>, String>;
}

struct Request {
    append: Append,
    reply: oneshot::Sender<Outcome>,
}

/// A writer thread doing group commit over a [`Backend`].
pub struct GroupWriter {
    tx: Option<mpsc::Sender<Request>>,
    thread: Option<JoinHandle<()>>,
}

impl GroupWriter {
    /// Starts the writer thread.
    pub fn start<B: Backend>(mut backend: B) -> GroupWriter {
        let (tx, rx) = mpsc::channel::<Request>();
        let thread = std::thread::Builder::new()
            .name("baseline-writer".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut group = Vec::with_capacity(64);
                    group.push(first);
                    while group.len() < MAX_GROUP {
                        match rx.try_recv() {
                            Ok(r) => group.push(r),
                            Err(_) => break,
                        }
                    }
                    let (appends, replies): (Vec<Append>, Vec<_>) =
                        group.into_iter().map(|r| (r.append, r.reply)).unzip();
                    match backend.commit(&appends) {
                        Ok(outcomes) => {
                            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                                let _ = reply.send(outcome);
                            }
                        }
                        Err(e) => {
                            for reply in replies {
                                let _ = reply.send(Err(e.clone()));
                            }
                        }
                    }
                }
            })
            .expect("spawn the baseline writer");
        GroupWriter {
            tx: Some(tx),
            thread: Some(thread),
        }
    }

    /// Appends and waits until the append is durable.
    pub async fn append(&self, append: Append) -> Outcome {
        let (reply, answer) = oneshot::channel();
        self.tx
            .as_ref()
            .expect("open")
            .send(Request { append, reply })
            .map_err(|_| "the writer is gone".to_string())?;
        answer
            .await
            .map_err(|_| "the writer dropped the request".to_string())?
    }

    /// Stops the writer thread after the requests already sent.
    pub fn close(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for GroupWriter {
    fn drop(&mut self) {
        self.shutdown();
    }
}
