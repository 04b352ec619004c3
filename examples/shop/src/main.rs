//! `shop_example`: the tidings shop on an embedded store.
//!
//! With no arguments it tells the story: orders flow, the stock service goes down, orders keep
//! coming and payments keep being verified while its lag grows, it comes back and catches up,
//! and a final report checks every invariant (the exit code is 1 if one fails). Subcommands
//! place orders, restock, show the status and check the invariants of an existing data
//! directory. `RUST_LOG=debug` (or `info`, `warn`, `tidings=debug`, ...) shows the tracing
//! logs on stderr; without it only errors are logged.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let mut cli = cli::Cli::parse();
    // The operations CLI runs its own runtime: outside actix.
    if let Some(cli::Command::Admin(args)) =
        cli.command.take_if(|c| matches!(c, cli::Command::Admin(_)))
    {
        return cli::admin(&cli.data_dir, args);
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    actix::System::new().block_on(async move {
        match cli.run().await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("shop_example: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
