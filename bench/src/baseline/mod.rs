//! The baselines, behind the same group commit as tidings' writer thread.
//!
//! Fairness: every append-based baseline runs behind [`GroupWriter`], a copy of the structure of
//! tidings' writer (`framework/src/store/sled/writer.rs`): callers send an append request over a
//! channel and wait for a one-shot reply; one OS thread blocks for a request, takes whatever else
//! is queued (up to the same `max_group` of 1024), checks each append against an in-memory cache
//! of stream heads, assigns positions, writes the whole group as one transaction / batch / write,
//! makes it durable with one sync, and only then replies. So with 1 writer every backend pays one
//! sync per append, and with 256 writers each pays one sync per group, exactly like tidings.
//!
//! The PostgreSQL baseline ([`postgres`]) is batched as tidings' `PostgresEventStore` is
//! instead: one transaction per append, from as many connections as the store gets.

pub mod file;
pub mod postgres;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn append(stream: &str, expected: Option<u64>, n: usize) -> Append {
        Append {
            stream: stream.into(),
            expected,
            events: (0..n).map(|_| ("T0", vec![1u8; 200])).collect(),
        }
    }

    /// Every backend assigns versions per stream across one group and across groups, and refuses
    /// an append whose expected version is wrong without failing the rest of its group.
    fn versions_and_checks(backend: &mut dyn Backend) {
        let group = [
            append("a", None, 2),
            append("b", None, 1),
            append("a", Some(2), 3),
        ];
        assert_eq!(backend.commit(&group).unwrap(), vec![Ok(2), Ok(1), Ok(5)]);
        let group = [append("a", Some(4), 1), append("a", Some(5), 1)];
        let out = backend.commit(&group).unwrap();
        assert!(out[0].is_err(), "{out:?}");
        assert_eq!(out[1], Ok(6));
    }

    #[test]
    fn sqlite_assigns_versions_and_positions_in_one_transaction_per_group() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = sqlite::SqliteWriter::new(sqlite::open(dir.path()).unwrap()).unwrap();
        versions_and_checks(&mut w);
        let conn = sqlite::open(dir.path()).unwrap();
        let a = sqlite::read_stream(&conn, "a").unwrap();
        assert_eq!(
            a.iter().map(|r| r.0).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5, 6]
        );
        assert_eq!(sqlite::scan(&conn, |t| t == "T0").unwrap(), 7);
        // A writer reopened on the store goes on from its last position and versions.
        let mut w = sqlite::SqliteWriter::new(conn).unwrap();
        assert_eq!(w.commit(&[append("a", Some(6), 1)]).unwrap(), vec![Ok(7)]);
    }

    #[test]
    fn raw_sled_writes_one_index_key_per_append_and_few_log_keys() {
        let dir = tempfile::tempdir().unwrap();
        let db = self::sled::open(dir.path()).unwrap();
        let mut w = self::sled::SledWriter::new(db.clone(), dir.path()).unwrap();
        versions_and_checks(&mut w);
        // 4 appends succeeded, in 2 groups (each group closes its chunk): 4 index keys, 2 log keys.
        assert_eq!(db.scan_prefix(b"S").count(), 4);
        assert_eq!(db.scan_prefix(b"L").count(), 2);
    }

    #[test]
    fn raw_file_appends_every_record() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = file::FileWriter::create(dir.path()).unwrap();
        let out = w
            .commit(&[append("a", None, 2), append("b", None, 1)])
            .unwrap();
        assert_eq!(out, vec![Ok(2), Ok(1)]);
        let len = std::fs::metadata(dir.path().join("log")).unwrap().len() as usize;
        let record = |s: &str| crate::data::record_overhead(s, "T0") + 200;
        assert_eq!(len, 2 * record("a") + record("b"));
    }

    #[tokio::test]
    async fn the_group_writer_answers_every_request() {
        let dir = tempfile::tempdir().unwrap();
        let w = std::sync::Arc::new(GroupWriter::start(
            file::FileWriter::create(dir.path()).unwrap(),
        ));
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let w = w.clone();
                tokio::spawn(async move { w.append(append(&format!("s{}", i % 5), None, 1)).await })
            })
            .collect();
        let mut versions = Vec::new();
        for t in tasks {
            versions.push(t.await.unwrap().unwrap());
        }
        versions.sort();
        // 5 streams, 10 appends each: every version 1..=10 five times.
        assert_eq!(
            versions,
            (1..=10).flat_map(|v| [v; 5]).collect::<Vec<u64>>()
        );
    }
}
