//! The command line: one variant of [`Command`] per subcommand, each run by its own function.
//! Adding a subcommand is adding a variant and a line in [`Cli::run`].

mod commands;
mod report;
mod story;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// A failure of a subcommand, reported on stderr (exit code 1).
pub type CliError = Box<dyn std::error::Error>;

/// The tidings shop: order, payment and stock react to each other's events.
#[derive(Debug, Parser)]
#[command(name = "shop_example", version, about, long_about = None)]
pub struct Cli {
    /// The directory of the shop's event store (created if missing).
    #[arg(long, global = true, value_name = "DIR", default_value = "shop-data")]
    pub data_dir: PathBuf,

    /// What to do; without a subcommand, `story`.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Tell the story (the default): orders flow, the stock service goes down and comes back,
    /// and every invariant is checked. Reuses the data directory's store unless --fresh.
    Story(story::StoryArgs),
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
    /// `admin subscriptions`, `admin parked payments`, ... (`admin --help` lists them). Run it
    /// while no other shop_example process has the store open.
    #[command(disable_help_flag = true)]
    Admin(AdminArgs),
}

/// The arguments of `admin`: a `tidings` command line without the program name.
#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    /// The tidings command and its arguments.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    pub args: Vec<std::ffi::OsString>,
}

/// Runs `shop_example admin ...`: the tidings CLI over `dir` (unless `--store` is given), with
/// the shop's event types registered. It runs its own runtime, so it is called outside actix.
pub fn admin(dir: &std::path::Path, args: AdminArgs) -> ExitCode {
    let registry = tidings_cli::Registry::new()
        .register::<shop_example::order::OrderEvent>()
        .register::<shop_example::payment::PaymentEvent>()
        .register::<shop_example::stock::StockEvent>();
    let has_store = args
        .args
        .iter()
        .any(|a| a == "--store" || a == "-s" || a.to_string_lossy().starts_with("--store="));
    let mut argv: Vec<std::ffi::OsString> = vec!["shop_example admin".into()];
    if !has_store {
        argv.push("--store".into());
        argv.push(dir.as_os_str().to_owned());
    }
    argv.extend(args.args);
    tidings_cli::run(argv, &registry)
}

impl Cli {
    /// Runs the chosen subcommand.
    pub async fn run(self) -> Result<ExitCode, CliError> {
        let dir = self.data_dir;
        match self
            .command
            .unwrap_or_else(|| Command::Story(Default::default()))
        {
            Command::Story(args) => story::run(&dir, args).await,
            Command::PlaceOrder(args) => commands::place_order(&dir, args).await,
            Command::Restock(args) => commands::restock(&dir, args).await,
            Command::Status(args) => commands::status(&dir, args).await,
            Command::Check(args) => commands::check(&dir, args).await,
            Command::Admin(args) => Ok(admin(&dir, args)),
        }
    }
}
