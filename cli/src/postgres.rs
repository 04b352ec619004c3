//! Opening a store on a PostgreSQL server: a look at the schema first (opening a store creates
//! one, and only `import` may), then the store itself through tidings.

use std::time::Duration;

use tidings::store::{PostgresConfig, PostgresEventStore, StoreError};
use tokio_postgres::NoTls;

use crate::error::CliError;
use crate::location::redact;

/// How long connecting may take before the server counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections the CLI's store may hold for requests (it makes one at a time; the application
/// sharing the server keeps the rest).
const POOL_SIZE: usize = 2;

/// What a schema holds.
#[derive(Debug, PartialEq, Eq)]
enum Found {
    /// A tidings store.
    Store,
    /// No tables (or no schema).
    Nothing,
    /// Tables, but not a tidings store.
    Other,
}

/// Opens the store in `schema` on the server at `url`. Unless `creating`, a schema without a
/// store is [`CliError::NoPostgresStore`] and nothing is created.
pub(crate) async fn open(
    url: &str,
    schema: &str,
    creating: bool,
) -> Result<PostgresEventStore, CliError> {
    let found = {
        let client = connect(url).await?;
        look(&client, url, schema).await?
    };
    let missing = || CliError::NoPostgresStore {
        server: redact(url),
        schema: schema.to_owned(),
    };
    match (found, creating) {
        (Found::Store, _) | (Found::Nothing, true) => {}
        (Found::Nothing | Found::Other, false) => return Err(missing()),
        (Found::Other, true) => {
            return Err(CliError::Invalid(format!(
                "schema {schema:?} at {} holds tables but no tidings store: import into a new or \
                 empty schema",
                redact(url)
            )))
        }
    }
    PostgresConfig::new(url)
        .schema(schema)
        .pool_size(POOL_SIZE)
        .connect_timeout(CONNECT_TIMEOUT)
        .open()
        .await
        .map_err(|e| on_server(url, e))
}

/// The bytes the schema's tables take (with their indexes and TOAST), and how many tables.
pub(crate) async fn size(url: &str, schema: &str) -> Result<(u64, u64), CliError> {
    let client = connect(url).await?;
    let row = client
        .query_one(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint, count(*) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p')",
            &[&schema],
        )
        .await
        .map_err(|e| query_error(url, e))?;
    let (bytes, tables): (i64, i64) = (row.get(0), row.get(1));
    Ok((bytes.max(0) as u64, tables.max(0) as u64))
}

/// A store error met while opening: an unreachable server says which server.
fn on_server(url: &str, e: StoreError) -> CliError {
    match e {
        StoreError::Unavailable(reason) => CliError::Connect {
            server: redact(url),
            reason,
        },
        other => CliError::Store(other),
    }
}

/// What the schema holds: tidings' tables `migrations` and `events` make a store.
async fn look(client: &tokio_postgres::Client, url: &str, schema: &str) -> Result<Found, CliError> {
    let row = client
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE c.relname IN ('migrations', 'events')) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p')",
            &[&schema],
        )
        .await
        .map_err(|e| query_error(url, e))?;
    let (tables, ours): (i64, i64) = (row.get(0), row.get(1));
    Ok(match (tables, ours) {
        (0, _) => Found::Nothing,
        (_, 2) => Found::Store,
        _ => Found::Other,
    })
}

/// A plain connection, or a one-line error naming the server (never a wait past
/// [`CONNECT_TIMEOUT`]).
async fn connect(url: &str) -> Result<tokio_postgres::Client, CliError> {
    let server = redact(url);
    let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
        CliError::Invalid(format!("bad PostgreSQL URL {server}: {}", full_message(&e)))
    })?;
    config.connect_timeout(CONNECT_TIMEOUT);
    if config.get_application_name().is_none() {
        config.application_name("tidings-cli");
    }
    // The driver's timeout is per address tried; this one bounds the whole attempt.
    let attempt = tokio::time::timeout(CONNECT_TIMEOUT, config.connect(NoTls)).await;
    let (client, connection) = match attempt {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => {
            return Err(CliError::Connect {
                server,
                reason: full_message(&e),
            })
        }
        Err(_) => {
            return Err(CliError::Connect {
                server,
                reason: format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
            })
        }
    };
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

fn query_error(url: &str, e: tokio_postgres::Error) -> CliError {
    if e.is_closed() {
        return CliError::Connect {
            server: redact(url),
            reason: full_message(&e),
        };
    }
    CliError::Invalid(format!(
        "PostgreSQL at {}: {}",
        redact(url),
        full_message(&e)
    ))
}

/// The driver's message with its causes (`error connecting to server: Connection refused`).
fn full_message(e: &tokio_postgres::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}
