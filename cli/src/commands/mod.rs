//! The commands, each over an open store.

mod admin;
mod preview;
mod read;
mod subscriptions;
mod transfer;

pub use self::transfer::MAX_IMPORT_LINE_LEN;

use std::io::Write;
use std::sync::Arc;

use tidings::store::EventStore;
use tidings::subscription::Subscriptions;

use crate::error::CliError;
use crate::location::Target;
use crate::registry::Registry;
use crate::{Cli, Command};

/// Events read per page.
pub(crate) const PAGE: usize = 1000;

/// Runs the command; returns the exit code of a command that ran.
pub(crate) async fn run(
    cli: &Cli,
    store: &Arc<dyn EventStore>,
    subscriptions: &Subscriptions,
    registry: &Registry,
    out: &mut dyn Write,
) -> Result<u8, CliError> {
    let target = cli
        .store
        .as_ref()
        .map(|s| Target::new(s, cli.schema.as_deref()));
    let ctx = Ctx {
        store: &**store,
        json: cli.json,
        payload: cli.payload,
        registry,
        target,
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
        Command::Stats => admin::stats(&ctx, out).await,
        Command::Verify => admin::verify(&ctx, out).await,
        Command::Subscriptions { watch: false, .. } => {
            subscriptions::list(&ctx, out, subscriptions).await
        }
        Command::Subscriptions {
            watch: true,
            interval,
        } => subscriptions::watch(&ctx, out, subscriptions, *interval).await,
        Command::Reset {
            name,
            to,
            clear_state,
            force,
            dry_run,
        } => {
            let how = subscriptions::ResetHow {
                to,
                clear_state: *clear_state,
                force: *force,
            };
            if *dry_run {
                preview::reset(&ctx, out, subscriptions, name, how).await
            } else {
                subscriptions::reset(&ctx, out, subscriptions, name, how).await
            }
        }
        Command::Parked { name } => subscriptions::parked(&ctx, out, subscriptions, name).await,
        Command::ReplayParked {
            name,
            stream,
            dry_run: false,
        } => subscriptions::replay(&ctx, out, subscriptions, name, stream.as_deref()).await,
        Command::ReplayParked {
            name,
            stream,
            dry_run: true,
        } => preview::replay(&ctx, out, subscriptions, name, stream.as_deref()).await,
        Command::SkipParked {
            name,
            position,
            force,
            dry_run: false,
        } => subscriptions::skip(&ctx, out, subscriptions, name, *position, *force).await,
        Command::SkipParked {
            name,
            position,
            force,
            dry_run: true,
        } => preview::skip(&ctx, out, subscriptions, name, *position, *force).await,
        Command::Export {
            output,
            from,
            to,
            events_only,
        } => transfer::export(&ctx, out, output.as_deref(), *from, *to, *events_only).await,
        Command::Import { input, resume } => transfer::import(&ctx, out, input, *resume).await,
        #[cfg(feature = "console")]
        Command::Console { .. } => Err(CliError::Usage(
            "`console` serves the web console from `tidings_cli::run` or `execute`; a process              with the store open mounts `tidings_cli::console::Console` instead"
                .into(),
        )),
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
    /// The store named on the command line (none when embedded without `--store`).
    pub target: Option<Target<'a>>,
}

impl Ctx<'_> {
    /// Whether other processes may use the store at the same time (a PostgreSQL store), so that
    /// a subscription recorded as running and not running here may be running elsewhere.
    pub fn shared(&self) -> bool {
        self.target.is_some_and(|t| t.is_shared())
    }
}
