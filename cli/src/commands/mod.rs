//! The commands, each over an open store.

mod admin;
mod read;
mod subscriptions;
mod transfer;

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use tidings::store::{EventStore, SledEventStore};
use tidings::subscription::Subscriptions;

use crate::error::CliError;
use crate::registry::Registry;
use crate::{Cli, Command};

/// Events read per page.
pub(crate) const PAGE: usize = 1000;

/// Opens the store named on the command line. Only `import` may create one.
pub(crate) fn open_store(cli: &Cli) -> Result<SledEventStore, CliError> {
    let path = cli.store.as_deref().ok_or(CliError::NoStoreGiven)?;
    let creating = matches!(cli.command, Command::Import { .. });
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

/// Runs the command; returns the exit code of a command that ran.
pub(crate) async fn run(
    cli: &Cli,
    store: &Arc<dyn EventStore>,
    subscriptions: &Subscriptions,
    registry: &Registry,
    out: &mut dyn Write,
) -> Result<u8, CliError> {
    let ctx = Ctx {
        store: &**store,
        json: cli.json,
        payload: cli.payload,
        registry,
    };
    let result = match &cli.command {
        Command::Streams { category, limit } => {
            read::streams(&ctx, out, category.as_deref(), *limit).await
        }
        Command::Read {
            stream,
            from,
            limit,
        } => read::read_stream(&ctx, out, stream, *from, *limit).await,
        Command::Log {
            from,
            limit,
            categories,
            event_types,
        } => read::log(&ctx, out, *from, *limit, categories, event_types).await,
        Command::Tail {
            from,
            limit,
            until_idle,
        } => read::tail(&ctx, out, *from, *limit, *until_idle).await,
        Command::Stats => admin::stats(&ctx, out, cli.store.as_deref()).await,
        Command::Verify => admin::verify(&ctx, out).await,
        Command::Subscriptions => subscriptions::list(&ctx, out, subscriptions).await,
        Command::Reset {
            name,
            to,
            clear_state,
        } => subscriptions::reset(&ctx, out, subscriptions, name, to, *clear_state).await,
        Command::Parked { name } => subscriptions::parked(&ctx, out, subscriptions, name).await,
        Command::ReplayParked { name, stream } => {
            subscriptions::replay(&ctx, out, subscriptions, name, stream.as_deref()).await
        }
        Command::SkipParked { name, position } => {
            subscriptions::skip(&ctx, out, subscriptions, name, *position).await
        }
        Command::Export {
            output,
            from,
            to,
            events_only,
        } => transfer::export(&ctx, out, output.as_deref(), *from, *to, *events_only).await,
        Command::Import { input, resume } => transfer::import(&ctx, out, input, *resume).await,
    };
    out.flush()?;
    result
}

/// What every command gets.
pub(crate) struct Ctx<'a> {
    pub store: &'a dyn EventStore,
    pub json: bool,
    pub payload: bool,
    pub registry: &'a Registry,
}
