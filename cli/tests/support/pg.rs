//! The PostgreSQL test server: where it is, a schema of a test's own that is dropped afterwards,
//! and a loud skip when there is no server.
//!
//! The server is `TIDINGS_TEST_POSTGRES_URL` (default `postgres://root@127.0.0.1:5432/test`).
//! When it cannot be reached a test prints a loud message and passes, unless
//! `TIDINGS_REQUIRE_POSTGRES=1`, in which case it fails. (The same settings as `tidings-tests`,
//! which the CLI cannot depend on: it depends on the CLI through the shop.)

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tidings::store::{PostgresConfig, PostgresEventStore};

use super::{run_raw, Run};

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

/// Runs `work` on a current-thread runtime of its own, on a thread of its own.
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

/// Runs `sql` on the test server.
pub fn execute(sql: &str) -> Result<(), String> {
    let sql = sql.to_owned();
    blocking(async move {
        let url = url();
        let connecting = tokio_postgres::connect(&url, tokio_postgres::NoTls);
        let (client, connection) = tokio::time::timeout(Duration::from_secs(10), connecting)
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client.batch_execute(&sql).await.map_err(|e| e.to_string())
    })
}

/// Whether the schema exists on the test server.
pub fn schema_exists(name: &str) -> bool {
    let sql = format!(
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = '{name}') THEN \
         RAISE EXCEPTION 'no schema'; END IF; END $$"
    );
    execute(&sql).is_ok()
}

/// Whether the server answers; when it does not, prints a loud message, and panics if
/// [`required`].
pub fn available(test: &str) -> bool {
    match execute("SELECT 1") {
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
    /// A new, unique schema name (not created), or `None` (after a loud message) when the
    /// server is not reachable.
    pub fn fresh(test: &str) -> Option<Schema> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        if !available(test) {
            return None;
        }
        let unique = uuid::Uuid::new_v4().simple().to_string();
        let name = format!(
            "cli_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            &unique[..8]
        );
        let schema = Schema { name };
        schema.drop_now();
        Some(schema)
    }

    /// The schema's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Opens a store in this schema (creating it), panicking if it does not open.
    pub fn open(&self) -> PostgresEventStore {
        PostgresConfig::new(url())
            .schema(self.name.clone())
            .open_blocking()
            .unwrap_or_else(|e| panic!("open a PostgreSQL store in {}: {e}", self.name))
    }

    /// Runs `tidings --store URL --schema NAME ARGS...`.
    pub fn tidings(&self, args: &[&str]) -> Run {
        let url = url();
        let mut all = vec!["--store", url.as_str(), "--schema", self.name.as_str()];
        all.extend_from_slice(args);
        run_raw(&all, None)
    }

    /// Runs and asserts exit code 0, returning standard output.
    pub fn ok(&self, args: &[&str]) -> String {
        let run = self.tidings(args);
        assert_eq!(run.code, 0, "tidings {args:?} failed: {run:?}");
        run.stdout
    }

    fn drop_now(&self) {
        let sql = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name);
        if let Err(e) = execute(&sql) {
            eprintln!("could not drop test schema {}: {e}", self.name);
        }
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        self.drop_now();
    }
}
