//! Opening the store named on the command line, on either backend.

use std::path::Path;
use std::sync::Arc;

use tidings::store::{EventStore, PostgresEventStore, SledEventStore, StoreError};

use crate::error::CliError;
use crate::location::Target;
use crate::{postgres, Cli, Command};

/// An open store of either backend.
pub(crate) enum OpenStore {
    /// The embedded store (this process holds its lock).
    Sled(SledEventStore),
    /// A schema on a PostgreSQL server (shared with other processes).
    Postgres(PostgresEventStore),
}

impl OpenStore {
    /// The store behind the trait every command uses.
    pub fn handle(&self) -> Arc<dyn EventStore> {
        match self {
            OpenStore::Sled(s) => Arc::new(s.clone()),
            OpenStore::Postgres(s) => Arc::new(s.clone()),
        }
    }

    /// Closes the store: the embedded one flushes and lets go of its lock; the PostgreSQL one
    /// closes its connections when its last handle goes.
    pub async fn close(self) {
        match self {
            OpenStore::Sled(s) => s.close().await,
            OpenStore::Postgres(s) => drop(s),
        }
    }
}

/// Opens the store named on the command line. Only `import` may create one.
pub(crate) async fn open_store(cli: &Cli) -> Result<OpenStore, CliError> {
    let location = cli.store.as_ref().ok_or(CliError::NoStoreGiven)?;
    let creating = matches!(cli.command, Command::Import { .. });
    match Target::new(location, cli.schema.as_deref()) {
        Target::Directory(path) => {
            if let Some(schema) = &cli.schema {
                return Err(CliError::Usage(format!(
                    "--schema {schema} (or TIDINGS_SCHEMA) names a PostgreSQL schema, but the \
                     store is the directory {}",
                    path.display()
                )));
            }
            open_directory(path, creating).map(OpenStore::Sled)
        }
        Target::Postgres { url, schema } => postgres::open(url, schema, creating)
            .await
            .map(OpenStore::Postgres),
    }
}

/// Opens the embedded store in `path`; unless `creating`, only if one is there.
fn open_directory(path: &Path, creating: bool) -> Result<SledEventStore, CliError> {
    let bad = |reason: String| {
        CliError::Store(StoreError::BadPath {
            path: path.to_path_buf(),
            reason,
        })
    };
    match std::fs::metadata(path) {
        Ok(meta) if !meta.is_dir() => {
            return Err(bad(
                "it is a file, not a directory: a store is a directory".into()
            ))
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(bad(e.to_string())),
    }
    match std::fs::metadata(path.join("db")) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(bad(format!("cannot look inside: {e}"))),
    }
    if !creating && !is_store(path) {
        return Err(CliError::NoStore(path.to_path_buf()));
    }
    if creating && path.is_dir() && !is_store(path) && std::fs::read_dir(path)?.next().is_some() {
        return Err(CliError::Invalid(format!(
            "{} is not empty and holds no tidings store: import into a new or empty directory",
            path.display()
        )));
    }
    Ok(SledEventStore::open(path)?)
}

/// Whether `path` holds a store (sled's data file is there).
fn is_store(path: &Path) -> bool {
    path.join("db").is_file()
}
