//! Progress of export, import, verify and replay-parked on standard error: drawn when standard error is a
//! terminal (the binary runs under `script`, which gives it a pseudo-terminal), never when it
//! is a pipe, and not with `TIDINGS_PROGRESS=0`. What the commands print is the same either way.

mod support;

use std::path::Path;
use std::process::Command;

use support::{prepare, tidings, TIDINGS};

/// Runs `tidings --store DIR ARGS` under `script` (util-linux): its standard streams are a
/// pseudo-terminal whose output `script` copies to its own standard output. Returns that output
/// (standard output and standard error of the command, mixed, with the terminal's escapes).
fn on_a_terminal(dir: &Path, args: &[&str], progress_env: Option<&str>) -> String {
    // `script -c` runs a shell command line: every word single-quoted (paths may hold spaces).
    let quote = |w: &str| format!("'{}'", w.replace('\'', "'\\''"));
    let mut line = format!(
        "{} --store {}",
        quote(TIDINGS),
        quote(&dir.display().to_string())
    );
    for a in args {
        line.push(' ');
        line.push_str(&quote(a));
    }
    let mut cmd = Command::new("script");
    cmd.args(["-q", "-e", "-c", &line, "/dev/null"])
        .env("TERM", "xterm")
        .env("COLUMNS", "120")
        .env_remove("TIDINGS_STORE");
    match progress_env {
        Some(v) => cmd.env("TIDINGS_PROGRESS", v),
        None => cmd.env_remove("TIDINGS_PROGRESS"),
    };
    let out = cmd
        .output()
        .expect("`script` (util-linux) runs the command on a pseudo-terminal");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{line} failed: {text}");
    text
}

#[test]
fn export_import_and_verify_show_progress_only_on_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    prepare(&store);
    let file = dir.path().join("export.jsonl");
    let file = file.to_str().unwrap();

    let shown = on_a_terminal(&store, &["export", "--output", file], None);
    assert!(
        shown.contains("exporting"),
        "no progress on a terminal: {shown:?}"
    );
    assert!(shown.contains("events"), "{shown:?}");
    assert!(
        shown.contains("exported 6 events"),
        "the summary stays: {shown:?}"
    );

    let off = on_a_terminal(&store, &["export", "--output", file], Some("0"));
    assert!(!off.contains("exporting"), "TIDINGS_PROGRESS=0: {off:?}");
    assert!(off.contains("exported 6 events"), "{off:?}");

    let piped = tidings(&store, &["export", "--output", file]);
    assert_eq!(piped.code, 0, "{piped:?}");
    assert!(
        !piped.stderr.contains("exporting"),
        "drawn into a pipe: {piped:?}"
    );

    let verify = on_a_terminal(&store, &["verify"], None);
    assert!(verify.contains("verifying the store"), "{verify:?}");
    assert!(verify.contains("no damage found"), "{verify:?}");

    let target = dir.path().join("copy");
    let import = on_a_terminal(&target, &["import", file], None);
    assert!(import.contains("importing"), "{import:?}");
    let piped = tidings(&target, &["verify"]);
    assert!(
        !piped.stderr.contains("verifying"),
        "drawn into a pipe: {piped:?}"
    );

    // replay-parked: a bar over the parked streams, the stream's line printed beside it.
    let replay = on_a_terminal(&store, &["replay-parked", "orders"], None);
    assert!(replay.contains("replaying"), "{replay:?}");
    assert!(
        replay.contains("order-2"),
        "the stream's line stays: {replay:?}"
    );
}
