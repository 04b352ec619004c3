//! `shop_example`: the tidings shop, on an embedded store or on PostgreSQL.
//!
//! With no arguments it tells the story: orders flow, the stock service goes down, orders keep
//! coming and payments keep being verified while its lag grows, it comes back and catches up,
//! and a final report checks every invariant (the exit code is 1 if one fails). Subcommands
//! place orders, restock, show the status and check the invariants of an existing store.
//! With `--store postgres://...` each service can run as a program of its own (`serve`), and
//! the story runs them so, killing the stock process with SIGKILL. `RUST_LOG=debug` (or
//! `info`, `warn`, `tidings=debug`, ...) shows the tracing logs on stderr; without it only
//! errors are logged. The command line itself is [`shop_example::cli`].

use std::process::ExitCode;

fn main() -> ExitCode {
    shop_example::cli::main()
}
