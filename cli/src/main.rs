//! The `tidings` binary: the operations CLI with no application event types registered.

use std::process::ExitCode;

fn main() -> ExitCode {
    tidings_cli::run(std::env::args_os(), &tidings_cli::Registry::new())
}
