//! UI tests: the compile errors of misusing the derives, with their spans, pinned in
//! `tests/ui/*.stderr`, and programs that must compile in `tests/pass/`.
//!
//! Compiler messages change between releases, so the `.stderr` files hold for one compiler
//! only: [`PINNED`]. On any other compiler the test is skipped with a message. After a compiler
//! upgrade, re-bless with `TRYBUILD=overwrite cargo test -p tidings-macros --test ui`, read the
//! diff, and raise [`PINNED`].

use std::io::Write;
use std::process::Command;

/// The `rustc` release the `.stderr` files were generated with.
const PINNED: &str = "1.95.0";

/// The version of the compiler cargo uses (`$RUSTC`, else `rustc`), e.g. `1.95.0`.
fn rustc_version() -> Result<String, String> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let output = Command::new(&rustc)
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run `{} --version`: {e}", rustc.to_string_lossy()))?;
    if !output.status.success() {
        return Err(format!(
            "`{} --version` failed: {}",
            rustc.to_string_lossy(),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    // "rustc 1.95.0 (59807616e 2026-04-14)" -> "1.95.0"
    text.split_whitespace()
        .nth(1)
        .map(str::to_owned)
        .ok_or_else(|| format!("unexpected `rustc --version` output: {text:?}"))
}

/// Says why the test did nothing. Written to stderr directly, not with `eprintln!`, so that the
/// test harness does not capture it: a passing test's captured output is never shown.
fn skipped(why: &str) {
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED the UI tests of tidings-macros: {why}"
    );
}

#[test]
fn ui() {
    match rustc_version() {
        Ok(version) if version == PINNED => {}
        Ok(version) => {
            return skipped(&format!(
                "their .stderr files were made with rustc {PINNED}, and this is rustc {version}, \
                 whose messages may differ. To run them, re-bless with `TRYBUILD=overwrite cargo \
                 test -p tidings-macros --test ui`, check the diff, and set PINNED in \
                 macros/tests/ui.rs to {version:?}."
            ));
        }
        Err(e) => return skipped(&e),
    }
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
    t.pass("tests/pass/*.rs");
}
