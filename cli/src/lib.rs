//! The `tidings` operations CLI, also embeddable by an application.
//!
//! What `kafka-consumer-groups` and `kcat` are to Kafka: list streams and read them, follow the
//! log, see which subscriptions lag and what they parked, reset them, verify the store, and
//! export or import it as JSON lines. See `docs/operations.md` for every command.
//!
//! The store is a directory (the embedded store, which one process opens at a time) or a schema
//! on a PostgreSQL server (`--store postgres://user@host:port/db --schema NAME`), which the CLI
//! opens beside the running application.
//!
//! # Embedding
//!
//! An application runs the same commands with its event types registered, so that payloads
//! print as decoded JSON:
//!
//! ```no_run
//! # use serde::{Deserialize, Serialize};
//! # #[derive(Serialize, Deserialize, tidings::DomainEvent)]
//! # enum OrderEvent { OrderPlaced { cents: u64 } }
//! use std::process::ExitCode;
//! use tidings_cli::Registry;
//!
//! fn main() -> ExitCode {
//!     let registry = Registry::new().register::<OrderEvent>();
//!     // For example `myapp admin --store ./data streams`: pass what follows `admin`.
//!     let args = std::env::args_os().skip(2);
//!     tidings_cli::run(std::iter::once("myapp admin".into()).chain(args), &registry)
//! }
//! ```
//!
//! [`Cli`] is a clap `Parser` (so also `Args`): an application with its own clap interface can
//! nest it as a subcommand and call [`execute`]. A process that already has the store open
//! (and maybe its subscriptions running) calls [`execute_on`] with its own handles instead.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod commands;
#[cfg(feature = "console")]
pub mod console;
mod error;
mod location;
mod open;
mod output;
mod postgres;
mod progress;
mod registry;

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tidings::store::EventStore;
use tidings::subscription::Subscriptions;

pub use self::commands::MAX_IMPORT_LINE_LEN;
pub use self::error::{
    CliError, EXIT_DAMAGED, EXIT_ERROR, EXIT_IN_USE, EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE,
};
pub use self::location::StoreLocation;
pub use self::output::{EventLine, PayloadEncoding};
pub use self::registry::Registry;

/// The command line: a store (directory or PostgreSQL server), output options and one command.
#[derive(Debug, Parser)]
#[command(
    name = "tidings",
    version,
    about = "Operate a tidings event store: streams, subscriptions, parked events, verify, export and import",
    after_help = "Exit codes: 0 ok, 1 error, 2 usage, 3 damage found, 4 store (or, on PostgreSQL, \
                  subscription) in use by another process, 5 not found."
)]
pub struct Cli {
    /// The store: its directory, or a PostgreSQL server as `postgres://user@host:port/db` (or
    /// `postgresql://...`).
    #[arg(
        long,
        short = 's',
        env = "TIDINGS_STORE",
        global = true,
        value_name = "DIR|URL",
        hide_env_values = true,
        value_parser = location::StoreLocationParser
    )]
    pub store: Option<StoreLocation>,

    /// The PostgreSQL schema that holds the store (default `tidings`); only with a
    /// `postgres://` store.
    #[arg(
        long,
        env = "TIDINGS_SCHEMA",
        global = true,
        value_name = "NAME",
        value_parser = location::parse_schema
    )]
    pub schema: Option<String>,

    /// Output JSON (one object per line) instead of tables.
    #[arg(long, global = true)]
    pub json: bool,

    /// Show event payloads (as JSON: decoded by a registered type, the payload's own JSON, or
    /// base64).
    #[arg(long, global = true)]
    pub payload: bool,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Where `reset` moves a checkpoint: `beginning`, `end`, a position, or an RFC 3339 time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResetTarget {
    /// Before the first event.
    Beginning,
    /// At the head.
    End,
    /// The next event handled is the first at or after this position.
    Position(u64),
    /// The next event handled is the first recorded at or after this time (RFC 3339).
    Time(String),
}

impl std::str::FromStr for ResetTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "beginning" | "start" | "earliest" => Ok(ResetTarget::Beginning),
            "end" | "latest" => Ok(ResetTarget::End),
            _ if s.bytes().all(|b| b.is_ascii_digit()) => s
                .parse()
                .map(ResetTarget::Position)
                .map_err(|e| format!("position {s:?}: {e}")),
            _ if output::parse_rfc3339(s).is_some() => Ok(ResetTarget::Time(s.to_owned())),
            _ => Err(format!(
                "{s:?} is not `beginning`, `end`, a position or an RFC 3339 time \
                 (like 2026-11-25T14:00:00Z)"
            )),
        }
    }
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List streams with their versions and categories.
    Streams {
        /// Only streams of this category (the part of the id before the first '-').
        #[arg(long)]
        category: Option<String>,
        /// At most this many streams.
        #[arg(long)]
        limit: Option<u64>,
    },
    /// Read one stream's events in version order.
    Read {
        /// The stream id.
        stream: String,
        /// The first version to read.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// At most this many events.
        #[arg(long)]
        limit: Option<u64>,
    },
    /// Read the global log from a position.
    Log {
        /// The first position to read.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// At most this many events.
        #[arg(long)]
        limit: Option<u64>,
        /// Only events of these categories.
        #[arg(long = "category")]
        categories: Vec<String>,
        /// Only events of these types.
        #[arg(long = "type")]
        event_types: Vec<String>,
    },
    /// Follow the log: print events as they become durable, until Ctrl-C.
    Tail {
        /// Start at this position (default: after the head, only new events).
        #[arg(long)]
        from: Option<u64>,
        /// Stop after this many events.
        #[arg(long)]
        limit: Option<u64>,
        /// Stop once the head is reached instead of waiting for more.
        #[arg(long)]
        until_idle: bool,
    },
    /// Counts, head and bytes on disk.
    Stats,
    /// List subscriptions (stored checkpoints) with lag, state and parked count.
    Subscriptions {
        /// List them again every `--interval` until Ctrl-C (on a terminal, in place), to watch
        /// lag move.
        #[arg(long)]
        watch: bool,
        /// With `--watch`: seconds between two listings (0.1 to 3600).
        #[arg(long, default_value = "2", value_name = "SECONDS", value_parser = parse_interval)]
        interval: std::time::Duration,
    },
    /// Move a stopped subscription's checkpoint.
    Reset {
        /// The subscription's name.
        name: String,
        /// `beginning`, `end`, a position (the next event handled), or an RFC 3339 time.
        #[arg(long)]
        to: ResetTarget,
        /// Also delete the handler's state (not its parked events), in the same commit, so that
        /// an exactly-once projection is rebuilt from nothing.
        #[arg(long)]
        clear_state: bool,
        /// On a PostgreSQL store: reset even though the subscription's last recorded state says
        /// it runs (its process is gone). A loop that does run fails at its next commit.
        #[arg(long)]
        force: bool,
        /// Change nothing: show the checkpoint before and after, the events that would be
        /// handled again (or skipped), and the state entries that would be deleted.
        #[arg(long)]
        dry_run: bool,
    },
    /// List a subscription's parked events.
    Parked {
        /// The subscription's name.
        name: String,
    },
    /// Handle parked events again (all parked streams, or one).
    ReplayParked {
        /// The subscription's name.
        name: String,
        /// Only this stream's parked events.
        #[arg(long)]
        stream: Option<String>,
        /// Change nothing: show each parked event that would be handled again, in order, and
        /// where (here, in the process that runs the subscription, or when it next starts).
        #[arg(long)]
        dry_run: bool,
    },
    /// Drop one parked event: it is never handled.
    SkipParked {
        /// The subscription's name.
        name: String,
        /// The parked event's position.
        position: u64,
        /// On a PostgreSQL store: skip even though the subscription's last recorded state says
        /// it runs (its process is gone).
        #[arg(long)]
        force: bool,
        /// Change nothing: show the event that would be dropped and what would stay parked.
        #[arg(long)]
        dry_run: bool,
    },
    /// Check every record's checksum and the indexes; exit code 3 if damage is found.
    Verify,
    /// Write every event, then every checkpoint with its consumer's state, as JSON lines (a
    /// backup that does not depend on the storage format).
    Export {
        /// Write to this file instead of standard output.
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
        /// The first position to export.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// The last position to export (default: the head).
        #[arg(long)]
        to: Option<u64>,
        /// Only the events: leave out checkpoints and consumer state (which are exported only
        /// when the export reaches the head).
        #[arg(long)]
        events_only: bool,
    },
    /// Serve the web console (streams, subscriptions with lag over time, parked events,
    /// reset, Prometheus `/metrics`) until Ctrl-C.
    #[cfg(feature = "console")]
    Console {
        /// The address to listen on (this machine only, by default).
        #[arg(long, default_value = "127.0.0.1:9870")]
        bind: std::net::SocketAddr,
        /// The token that requests changing state (replay, skip, reset) must carry; without
        /// one, the console only reads. Prefer the environment variable: a command line is
        /// visible to other users of the machine.
        #[arg(long, env = "TIDINGS_CONSOLE_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// A host name the console answers to besides IP addresses and localhost (the name a
        /// proxy in front of it forwards); repeat for more. Others are refused (DNS rebinding).
        #[arg(long = "allow-host", value_name = "NAME")]
        allow_hosts: Vec<String>,
    },
    /// Import JSON lines written by `export` into an empty store (or continue one).
    Import {
        /// The file to read (`-` for standard input).
        input: PathBuf,
        /// Continue an interrupted import: lines already in the store are checked to be the
        /// same events and skipped.
        #[arg(long)]
        resume: bool,
    },
}

/// A `--interval` in seconds (fractions allowed), from 0.1 s to an hour.
fn parse_interval(s: &str) -> Result<std::time::Duration, String> {
    match s.parse::<f64>() {
        Ok(secs) if (0.1..=3600.0).contains(&secs) => Ok(std::time::Duration::from_secs_f64(secs)),
        _ => Err(format!("{s:?} is not a number of seconds from 0.1 to 3600")),
    }
}

/// Parses `args` (the first is the program name, as in `std::env::args_os`), runs the command
/// with `registry`, prints errors on standard error, and returns the exit code.
pub fn run<I, T>(args: I, registry: &Registry) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    match Cli::try_parse_from(args) {
        Ok(cli) => execute(cli, registry),
        Err(e) => {
            let _ = e.print();
            ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { EXIT_OK })
        }
    }
}

/// Runs a parsed command line: opens the store, runs the command, prints the outcome, and
/// returns the exit code.
pub fn execute(cli: Cli, registry: &Registry) -> ExitCode {
    #[cfg(feature = "console")]
    if let Command::Console {
        bind,
        token,
        allow_hosts,
    } = &cli.command
    {
        return match console::serve(&cli, registry, *bind, token.clone(), allow_hosts) {
            Ok(code) => ExitCode::from(code),
            Err(e) => report(&e),
        };
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return report(&CliError::Io(e)),
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let result = runtime.block_on(async {
        let store = open::open_store(&cli).await?;
        let code = {
            let handle = store.handle();
            let subscriptions = Subscriptions::new(handle.clone());
            commands::run(&cli, &handle, &subscriptions, registry, &mut out).await
        };
        store.close().await;
        code
    });
    let _ = out.flush();
    match result {
        Ok(code) => ExitCode::from(code),
        // The reader went away (`tidings log | head`): not an error of ours.
        Err(CliError::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::from(EXIT_OK)
        }
        Err(e) => report(&e),
    }
}

/// Runs `cli`'s command on a store this process already has open, writing to `out`; returns
/// the exit code ([`EXIT_OK`], or [`EXIT_DAMAGED`] when `verify` finds damage).
///
/// `cli.store` is not opened; when it names a PostgreSQL server, the commands treat `store` as
/// one that other processes share (a subscription recorded as running and not running here may
/// be running elsewhere: `reset` and `skip-parked` refuse it without `--force`). Pass the
/// application's own [`Subscriptions`], so that operations on a running subscription go through
/// its loop (a replay runs at once, a reset is refused while it runs).
pub async fn execute_on(
    cli: &Cli,
    store: &Arc<dyn EventStore>,
    subscriptions: &Subscriptions,
    registry: &Registry,
    out: &mut dyn Write,
) -> Result<u8, CliError> {
    commands::run(cli, store, subscriptions, registry, out).await
}

/// Prints `e` on standard error and returns its exit code.
fn report(e: &CliError) -> ExitCode {
    // Store errors quote stream ids, names and types: shown safe for a terminal.
    // With its sources (an engine's or a codec's own error), each once: a source whose text the
    // message already quotes is not repeated.
    let mut text = e.to_string();
    let mut next = std::error::Error::source(e);
    while let Some(source) = next {
        let more = source.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        next = source.source();
    }
    eprintln!("tidings: {}", output::printable(&text));
    ExitCode::from(e.exit_code())
}
