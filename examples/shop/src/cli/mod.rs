//! The command line of `shop_example`: one variant of `Command` per subcommand, each run by its
//! own function. Adding a subcommand is adding a variant and a line in `Cli::run`.
//!
//! It lives in the library so that other programs can run it as the binary does ([`main_from`]):
//! the tests' child process does, and the story's service processes are then that program too.

mod commands;
mod console;
mod nats;
mod processes;
mod report;
mod serve;
mod story;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tidings::store::{EventStore, PostgresConfig};

/// A failure of a subcommand, reported on stderr (exit code 1).
pub(crate) type CliError = Box<dyn std::error::Error>;

/// The schema `--store postgres://...` uses unless `--schema` says otherwise.
const DEFAULT_SCHEMA: &str = "shop";

/// The tidings shop: order, payment and stock react to each other's events.
#[derive(Debug, Parser)]
#[command(name = "shop_example", version, about, long_about = None)]
pub(crate) struct Cli {
    /// The directory of the shop's event store (created if missing), unless --store is given.
    #[arg(long, global = true, value_name = "DIR", default_value = "shop-data")]
    data_dir: PathBuf,

    /// Keep the shop's events in PostgreSQL instead (postgres://user@host/db): every service
    /// can then run as a program of its own (`serve`), and `story` runs them so.
    #[arg(long, global = true, value_name = "URL")]
    store: Option<String>,

    /// The PostgreSQL schema of the shop's tables (with --store).
    #[arg(long, global = true, value_name = "NAME", default_value = DEFAULT_SCHEMA)]
    schema: String,

    /// Publish the shop's events to NATS JetStream (nats://host:port) while the story runs:
    /// an outbox relay publishes each event once, in order, to `shop.<category>.<event type>`
    /// of the stream SHOP (created if missing). `watch-nats` shows what arrived.
    #[arg(long, global = true, value_name = "URL")]
    publish: Option<String>,

    /// The JetStream stream that --publish fills (created if missing, taking the subjects
    /// `<--nats-prefix>.>`).
    #[arg(long, global = true, value_name = "NAME", default_value = nats::STREAM)]
    nats_stream: String,

    /// The subjects' first token with --publish: events go to `<prefix>.<category>.<event type>`.
    #[arg(long, global = true, value_name = "PREFIX", default_value = nats::PREFIX)]
    nats_prefix: String,

    /// What to do; without a subcommand, `story`.
    #[command(subcommand)]
    command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Tell the story (the default): orders flow, the stock service goes down and comes back,
    /// and every invariant is checked. Reuses the data directory's store unless --fresh. With
    /// --store postgres://..., each service runs as a process of its own: the stock process
    /// is killed with SIGKILL, started again, and a standby takes over from it.
    Story(story::StoryArgs),
    /// Run one service until SIGTERM or SIGINT (needs --store postgres://...). Any number of
    /// copies may run: one holds the service's subscription, the others stand by.
    Serve(serve::ServeArgs),
    /// Place an order, run the services until it is decided, and show its outcome.
    PlaceOrder(commands::PlaceOrderArgs),
    /// Restock the warehouse (lines like widget=10), then run the services until they are idle.
    Restock(commands::RestockArgs),
    /// Show orders, stock, money and the services' progress, as the store has them (read only).
    Status(commands::StatusArgs),
    /// Run the services until they have caught up, then check every invariant (exit code 1 if
    /// one fails).
    Check(commands::CheckArgs),
    /// The tidings operations CLI on the shop's store, with the shop's event types registered
    /// so that payloads print as JSON: `admin streams`, `admin read order-o-000001 --payload`,
    /// `admin subscriptions`, `admin parked payments`, ... (`admin --help` lists them). On the
    /// embedded store, run it while no other shop_example process has the store open.
    #[command(disable_help_flag = true)]
    Admin(AdminArgs),
    /// Print the messages on the NATS JetStream stream that `--publish` fills (SHOP), one line
    /// each: sequence, subject, position, stream, version, payload.
    WatchNats(nats::WatchArgs),
}

/// The arguments of `admin`: a `tidings` command line without the program name.
#[derive(Debug, clap::Args)]
struct AdminArgs {
    /// The tidings command and its arguments.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    args: Vec<OsString>,
}

/// Where the shop's events are: the embedded store in a directory, or a PostgreSQL schema.
#[derive(Clone, Debug)]
pub(crate) enum Location {
    /// `--data-dir DIR` (the default).
    Sled(PathBuf),
    /// `--store postgres://... --schema NAME`.
    Postgres {
        /// The server's URL.
        url: String,
        /// The schema.
        schema: String,
    },
}

impl Location {
    fn of(cli: &Cli) -> Result<Location, CliError> {
        let Some(url) = &cli.store else {
            return Ok(Location::Sled(cli.data_dir.clone()));
        };
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(format!(
                "--store takes a PostgreSQL URL (postgres://user@host/db), not {url:?}; the \
                 embedded store is --data-dir DIR"
            )
            .into());
        }
        tidings::store::validate_postgres_schema(&cli.schema)?;
        Ok(Location::Postgres {
            url: url.clone(),
            schema: cli.schema.clone(),
        })
    }

    /// How the location reads in messages (a URL's password hidden).
    pub(crate) fn describe(&self) -> String {
        match self {
            Location::Sled(dir) => dir.display().to_string(),
            Location::Postgres { url, schema } => {
                format!("schema {schema} of {}", hide_password(url))
            }
        }
    }
}

/// `url` with a password replaced by `***`.
fn hide_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((user_info, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match user_info.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// Opens the PostgreSQL store of a shop process with `connections` connections for requests
/// (each process of the story has its own: a handful each keeps the server's limit far away).
pub(crate) async fn open_postgres(
    url: &str,
    schema: &str,
    connections: usize,
) -> Result<Arc<dyn EventStore>, CliError> {
    let store = PostgresConfig::new(url)
        .schema(schema)
        .pool_size(connections)
        .poll_interval(std::time::Duration::from_millis(100))
        .open()
        .await?;
    Ok(Arc::new(store))
}

/// The shop's event types, for the operations CLI and the console to decode payloads.
pub(crate) fn registry() -> tidings_cli::Registry {
    tidings_cli::Registry::new()
        .register::<crate::order::OrderEvent>()
        .register::<crate::payment::PaymentEvent>()
        .register::<crate::stock::StockEvent>()
}

/// Runs `shop_example admin ...`: the tidings CLI over the shop's store (`--store` as given,
/// with `--schema` for a PostgreSQL URL, or `--data-dir`; unless the arguments after `admin`
/// name a store), with the shop's event types registered. It runs its own runtime, so it is
/// called outside actix.
fn admin(cli: &Cli, args: AdminArgs) -> ExitCode {
    let registry = registry();
    let has_store = args
        .args
        .iter()
        .any(|a| a == "--store" || a == "-s" || a.to_string_lossy().starts_with("--store="));
    let mut argv: Vec<OsString> = vec!["shop_example admin".into()];
    if !has_store {
        match &cli.store {
            Some(store) => {
                argv.extend(["--store".into(), store.into()]);
                if store.starts_with("postgres://") || store.starts_with("postgresql://") {
                    argv.extend(["--schema".into(), (&cli.schema).into()]);
                }
            }
            None => argv.extend(["--store".into(), cli.data_dir.as_os_str().to_owned()]),
        }
    }
    argv.extend(args.args);
    tidings_cli::run(argv, &registry)
}

impl Cli {
    /// Runs the chosen subcommand.
    async fn run(mut self, location: Location) -> Result<ExitCode, CliError> {
        match self
            .command
            .take()
            .unwrap_or_else(|| Command::Story(Default::default()))
        {
            Command::Story(mut args) => {
                args.publish = self.publish.map(|url| nats::Publish {
                    url,
                    stream: self.nats_stream,
                    prefix: self.nats_prefix,
                });
                story::run(&location, args).await
            }
            Command::Serve(args) => serve::run(&location, args).await,
            Command::PlaceOrder(args) => commands::place_order(&location, args).await,
            Command::Restock(args) => commands::restock(&location, args).await,
            Command::Status(args) => commands::status(&location, args).await,
            Command::Check(args) => commands::check(&location, args).await,
            Command::Admin(_) => Err("admin runs outside actix (see main_from)".into()),
            Command::WatchNats(args) => nats::watch(args).await,
        }
    }
}

/// The `shop_example` program: parses the process's arguments and runs the subcommand.
pub fn main() -> ExitCode {
    main_from(std::env::args_os())
}

/// The `shop_example` program on the given arguments (the first is the program's name):
/// parses them (printing help or a usage error and exiting as clap does), sets up the
/// tracing logs (`RUST_LOG`), and runs the subcommand inside an actix `System`. Returns the
/// exit code: 1 when the subcommand failed (its error on stderr) or an invariant failed.
pub fn main_from<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let mut cli = Cli::parse_from(args);
    // The operations CLI runs its own runtime: outside actix.
    if let Some(Command::Admin(args)) = cli.command.take_if(|c| matches!(c, Command::Admin(_))) {
        return admin(&cli, args);
    }
    let location = match Location::of(&cli) {
        Ok(location) => location,
        Err(e) => {
            eprintln!("shop_example: {e}");
            return ExitCode::FAILURE;
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    // A program that set up its own subscriber keeps it.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    actix::System::new().block_on(async move {
        match cli.run(location).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("shop_example: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
