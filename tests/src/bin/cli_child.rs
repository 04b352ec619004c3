//! The `tidings` ops CLI as a process of its own, for tests that check what another process
//! sees in a store (for example an inbox's status record and parked messages).

use std::process::ExitCode;

fn main() -> ExitCode {
    tidings_cli::run(std::env::args_os(), &tidings_cli::Registry::new())
}
