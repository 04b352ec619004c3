//! Helpers for tests against a PostgreSQL server: where it is, a schema of a test's own that is
//! dropped afterwards, and a loud skip when no server is there.
//!
//! The server is `TIDINGS_TEST_POSTGRES_URL` (default `postgres://root@127.0.0.1:5432/test`).
//! When it cannot be reached a test prints a loud message and passes, unless
//! `TIDINGS_REQUIRE_POSTGRES=1` (CI sets it), in which case it fails.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tidings::store::{EventStore, ExpectedVersion, PostgresConfig, PostgresEventStore};
use tidings::DomainEvent;

use crate::domain::OrderEvent;

/// The server used when `TIDINGS_TEST_POSTGRES_URL` is not set.
pub const DEFAULT_URL: &str = "postgres://root@127.0.0.1:5432/test";

/// The URL of the test server.
pub fn url() -> String {
    std::env::var("TIDINGS_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// Whether a missing server fails the test instead of skipping it.
pub fn required() -> bool {
    std::env::var("TIDINGS_REQUIRE_POSTGRES").is_ok_and(|v| v == "1")
}

/// Runs `work` on a current-thread runtime of its own, on a thread of its own (so that it can
/// be called from inside an async test as well as from plain code).
pub fn blocking<T: Send>(work: impl std::future::Future<Output = T> + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("build a tokio runtime")
                    .block_on(work)
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// A plain connection to the test server (its driver runs on the current runtime).
pub async fn connect() -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(&url(), tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Whether the server answers; when it does not, prints a loud message, and panics if
/// [`required`].
pub fn available(test: &str) -> bool {
    let reached = blocking(async {
        match tokio::time::timeout(Duration::from_secs(10), connect()).await {
            Ok(Ok(client)) => client.simple_query("SELECT 1").await.map(|_| ()),
            Ok(Err(e)) => Err(e),
            Err(_) => return Err("timed out".to_owned()),
        }
        .map_err(|e| e.to_string())
    });
    match reached {
        Ok(()) => true,
        Err(e) => {
            let message = format!(
                "PostgreSQL at {} is not reachable ({e}): test {test} SKIPPED. Start the server \
                 or set TIDINGS_TEST_POSTGRES_URL; set TIDINGS_REQUIRE_POSTGRES=1 to fail instead.",
                url()
            );
            if required() {
                panic!("{message}");
            }
            eprintln!("\n!!!!!!!! {message} !!!!!!!!\n");
            false
        }
    }
}

/// A schema of one test, dropped (with everything in it) when this guard is dropped.
#[derive(Debug)]
pub struct Schema {
    name: String,
}

impl Schema {
    /// A new, unique schema name (the schema itself is created by the store that opens it), or
    /// `None` (after a loud message) when the server is not reachable.
    pub fn fresh(test: &str) -> Option<Schema> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        if !available(test) {
            return None;
        }
        let name = format!(
            "t_{}_{}_{:x}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        );
        // Drop it first: a schema of an earlier run with the same name is stale.
        let schema = Schema { name };
        schema.drop_now();
        Some(schema)
    }

    /// The schema's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Store settings for this schema on the test server.
    pub fn config(&self) -> PostgresConfig {
        PostgresConfig::new(url()).schema(self.name.clone())
    }

    /// Opens a store in this schema with `config` applied, panicking if it does not open.
    pub fn open(
        &self,
        config: impl FnOnce(PostgresConfig) -> PostgresConfig,
    ) -> PostgresEventStore {
        config(self.config())
            .open_blocking()
            .unwrap_or_else(|e| panic!("open a PostgreSQL store in {}: {e}", self.name))
    }

    fn drop_now(&self) {
        let sql = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name);
        let result = blocking(async move {
            let client = connect().await?;
            client.batch_execute(&sql).await
        });
        if let Err(e) = result {
            eprintln!("could not drop test schema {}: {e}", self.name);
        }
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        self.drop_now();
    }
}

/// The local cluster (`version`, `name`) that serves the test URL's port, from `pg_lsclusters`,
/// if the test server is on this machine.
fn local_cluster() -> Result<(String, String), String> {
    let config: tokio_postgres::Config = url().parse().map_err(|e| format!("bad URL: {e}"))?;
    let local = config.get_hosts().iter().all(|h| match h {
        tokio_postgres::config::Host::Tcp(host) => host == "127.0.0.1" || host == "localhost",
        tokio_postgres::config::Host::Unix(_) => true,
    });
    if !local {
        return Err("the test server is not on this machine".into());
    }
    let port = config
        .get_ports()
        .first()
        .copied()
        .unwrap_or(5432)
        .to_string();
    let out = std::process::Command::new("pg_lsclusters")
        .arg("-h")
        .output()
        .map_err(|e| format!("pg_lsclusters: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|fields| fields.len() >= 4 && fields[2] == port && fields[3] == "online")
        .map(|fields| (fields[0].to_owned(), fields[1].to_owned()))
        .ok_or_else(|| format!("pg_lsclusters lists no online cluster on port {port}"))
}

/// Whether this test may restart the server (it is local and `pg_ctlcluster` manages it); when
/// not, prints a loud message, and panics if [`required`].
pub fn can_restart_server(test: &str) -> bool {
    if !available(test) {
        return false;
    }
    match local_cluster() {
        Ok(_) => true,
        Err(why) => {
            let message =
                format!("cannot restart the PostgreSQL test server ({why}): test {test} SKIPPED");
            if required() {
                panic!("{message}");
            }
            eprintln!("\n!!!!!!!! {message} !!!!!!!!\n");
            false
        }
    }
}

/// Restarts the local test server (`pg_ctlcluster VERSION NAME restart`, which returns once it
/// accepts connections again). Returns whether it succeeded.
pub fn restart_server() -> bool {
    let Ok((version, name)) = local_cluster() else {
        return false;
    };
    let status = std::process::Command::new("pg_ctlcluster")
        .args([version.as_str(), name.as_str(), "restart", "-m", "fast"])
        .status();
    match status {
        Ok(s) if s.success() => true,
        Ok(s) => {
            eprintln!("pg_ctlcluster {version} {name} restart: {s}");
            false
        }
        Err(e) => {
            eprintln!("pg_ctlcluster: {e}");
            false
        }
    }
}

/// Appends one `OrderPlaced` at a time, round robin over `streams` streams named
/// `{stream_prefix}{n}`, a millisecond apart, until `stop` (at most 200 000), in a thread with a
/// runtime of its own; the thread returns how many it appended. The load of the failover and
/// rebalancing tests.
pub fn start_writer(
    store: Arc<PostgresEventStore>,
    stop: Arc<AtomicBool>,
    streams: u64,
    stream_prefix: &'static str,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        blocking(async move {
            let mut appended = 0u64;
            while !stop.load(Ordering::Relaxed) && appended < 200_000 {
                let stream = format!("{stream_prefix}{}", appended % streams);
                let event = OrderEvent::OrderPlaced { cents: appended }
                    .to_event_data()
                    .unwrap();
                store
                    .append(&stream, ExpectedVersion::Any, vec![event])
                    .await
                    .expect("the writer's append");
                appended += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            appended
        })
    })
}

/// The state subscription `name` committed under `prefix`, keys `{prefix}{position}` with JSON
/// number values: position → value.
pub fn committed_state(store: &PostgresEventStore, name: &str, prefix: &str) -> BTreeMap<u64, u64> {
    blocking(async {
        let mut out = BTreeMap::new();
        let mut from = prefix.as_bytes().to_vec();
        loop {
            let page = store
                .scan_state(name, prefix.as_bytes(), &from, 1000)
                .await
                .unwrap();
            for (key, value) in &page {
                let position: u64 = std::str::from_utf8(&key[prefix.len()..])
                    .unwrap()
                    .parse()
                    .unwrap();
                out.insert(position, serde_json::from_slice(value).unwrap());
            }
            match page.last() {
                Some((key, _)) if page.len() == 1000 => {
                    from = key.clone();
                    from.push(0);
                }
                _ => return out,
            }
        }
    })
}
