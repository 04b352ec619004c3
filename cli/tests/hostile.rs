//! The CLI against hostile or broken stores, paths and inputs (issue 16, sections 4 and 5).

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};

use base64::Engine as _;
use support::{all_events, json_lines, ok, prepare, run_raw, runtime, tidings, Run, TIDINGS};
use tidings::store::{EventData, EventStore, ExpectedVersion, SledEventStore};
use tidings_cli::{EXIT_DAMAGED, EXIT_ERROR};

fn prepared() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    prepare(dir.path());
    dir
}

/// A stream id and an event type that clear the screen and set the terminal's title.
const EVIL_STREAM: &str = "order-x\u{1b}[2J\u{1b}]0;pwned\u{7}";
const EVIL_TYPE: &str = "Placed\u{1b}[31m\u{9b}1m\u{202e}";

#[test]
fn human_output_escapes_control_characters_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let store = SledEventStore::open(dir.path()).unwrap();
        store
            .append(
                EVIL_STREAM,
                ExpectedVersion::NoStream,
                vec![EventData::new(EVIL_TYPE, b"{}".to_vec())],
            )
            .await
            .unwrap();
        store.save_checkpoint("sub\u{1b}[2J", 1).await.unwrap();
        store.close().await;
    });
    let p = dir.path();
    for args in [
        &["streams"][..],
        &["log"],
        &["read", EVIL_STREAM],
        &["tail", "--from", "1", "--until-idle"],
        &["subscriptions"],
        &["log", "--payload"],
    ] {
        let out = ok(p, args);
        for bad in ['\u{1b}', '\u{7}', '\u{9b}', '\u{202e}'] {
            assert!(!out.contains(bad), "{args:?} printed {bad:?} raw: {out:?}");
        }
        assert!(out.contains("\\u{1b}"), "{args:?} shows the escape: {out}");
    }
    // Error messages quote store strings too.
    let run = tidings(p, &["parked", "sub\u{1b}[2J"]);
    assert!(!run.stderr.contains('\u{1b}'), "{run:?}");
    // JSON keeps the exact strings (escaped by JSON itself).
    let rows = json_lines(&ok(p, &["--json", "log"]));
    assert_eq!(rows[0]["stream_id"], EVIL_STREAM);
    assert_eq!(rows[0]["event_type"], EVIL_TYPE);
}

#[test]
fn an_export_into_the_store_directory_is_refused_and_the_store_survives() {
    let dir = prepared();
    let p = dir.path();
    let outside = tempfile::tempdir().unwrap();
    let to_db = outside.path().join("link-to-db");
    std::os::unix::fs::symlink(p.join("db"), &to_db).unwrap();
    let dangling = outside.path().join("link-into-store");
    std::os::unix::fs::symlink(p.join("new-file"), &dangling).unwrap();
    for target in [
        p.join("db"),
        p.join("conf"),
        p.join("backup.jsonl"),
        p.to_path_buf(),
        p.join("blobs/../db"),
        to_db,
        dangling,
    ] {
        let run = tidings(p, &["export", "-o", target.to_str().unwrap()]);
        assert_eq!(run.code, i32::from(EXIT_ERROR), "{target:?}: {run:?}");
        assert!(
            run.stderr.contains("inside the store's directory"),
            "{target:?}: {}",
            run.stderr
        );
    }
    assert!(!p.join("backup.jsonl").exists());
    assert!(!p.join("new-file").exists());
    assert_eq!(all_events(p).len(), 6, "the store was damaged");
    ok(p, &["verify"]);
}

#[test]
fn exports_and_new_store_directories_are_private() {
    let dir = prepared();
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("backup.jsonl");
    ok(dir.path(), &["export", "-o", file.to_str().unwrap()]);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&file), 0o600, "a new export");
    // An existing file keeps the mode its owner gave it.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
    ok(dir.path(), &["export", "-o", file.to_str().unwrap()]);
    assert_eq!(mode(&file), 0o640, "an existing export file");

    let copy = out.path().join("copy");
    ok(&copy, &["import", file.to_str().unwrap()]);
    assert_eq!(mode(&copy), 0o700, "a store directory made by import");
}

/// The export of the prepared store, with the state line under `key` given `value` (JSON).
fn export_with_state(dir: &Path, key: &[u8], value: &str) -> String {
    let export = ok(dir, &["export"]);
    let wanted = base64::engine::general_purpose::STANDARD.encode(key);
    let mut replaced = false;
    let lines: Vec<String> = export
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            if v["kind"] == "state" && v["key"] == wanted.as_str() {
                v["value_encoding"] = "json".into();
                v["value"] = serde_json::from_str(value).unwrap();
                replaced = true;
                return v.to_string();
            }
            l.to_owned() // payloads are verbatim: keep every other line's bytes
        })
        .collect();
    if !replaced {
        // No such key: add it to the first consumer (`orders`, whose state follows its line).
        let mut out = Vec::new();
        for l in lines {
            let is_orders = l.contains(r#""kind":"checkpoint""#) && l.contains(r#""orders""#);
            out.push(l);
            if is_orders {
                out.push(
                    serde_json::json!({"kind": "state", "name": "orders", "key": wanted,
                        "value_encoding": "json", "value": serde_json::from_str::<serde_json::Value>(value).unwrap()})
                    .to_string(),
                );
            }
        }
        return out.join("\n") + "\n";
    }
    lines.join("\n") + "\n"
}

#[test]
fn an_import_refuses_garbage_under_the_frameworks_reserved_keys_naming_the_line() {
    let dir = prepared();
    for (key, value, why) in [
        (&b"\0tidings/status"[..], r#""garbage""#, "status"),
        (
            b"\0tidings/parked/00000000000000000002",
            r#"{"x":1}"#,
            "parked event",
        ),
        (b"\0tidings/parked/2", r#"{"x":1}"#, "20 digits"),
        (b"\0tidings/whatever", "1", "reserved prefix"),
    ] {
        let input = export_with_state(dir.path(), key, value);
        let target = tempfile::tempdir().unwrap();
        let copy = target.path().join("copy");
        let run = run_raw(
            &["--store", copy.to_str().unwrap(), "import", "-"],
            Some(input.as_bytes()),
        );
        assert_eq!(run.code, i32::from(EXIT_ERROR), "{why}: {run:?}");
        assert!(
            run.stderr.contains("-:"),
            "{why}: names the line: {}",
            run.stderr
        );
        assert!(
            run.stderr.contains("tidings/"),
            "{why}: names the key: {}",
            run.stderr
        );
        assert!(run.stderr.contains(why), "{why}: {}", run.stderr);
        // What was imported before the bad line is usable: `subscriptions` works.
        let listed = tidings(&copy, &["subscriptions"]);
        assert_eq!(listed.code, 0, "{why}: {listed:?}");
    }
}

#[test]
fn reset_to_a_time_after_every_event_moves_to_the_head_and_says_nothing_is_left() {
    let dir = prepared();
    let out = ok(
        dir.path(),
        &["reset", "orders", "--to", "9999-12-31T23:59:59Z"],
    );
    assert!(out.contains("-> 6 (head 6)"), "{out}");
    assert!(out.contains("nothing to reprocess"), "{out}");
    let out = ok(
        dir.path(),
        &["reset", "orders", "--to", "1969-07-20T20:17:40Z"],
    );
    assert!(out.contains("-> 0 (head 6)"), "{out}");
}

/// Runs the binary as another user (nobody) when this process is root, else as itself.
fn as_someone_else(args: &[&str]) -> Run {
    let me = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1);
    let mut cmd = if me == 0 {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", TIDINGS]);
        c
    } else {
        Command::new(TIDINGS)
    };
    let out = cmd
        .args(args)
        .env_remove("TIDINGS_STORE")
        .stdin(Stdio::null())
        .output()
        .expect("run tidings (setpriv when root)");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn a_store_path_that_is_a_file_or_cannot_be_written_is_an_error_naming_it() {
    let parent = tempfile::tempdir().unwrap();
    let file = parent.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    for args in [&["stats"][..], &["import", "-"]] {
        let mut all = vec!["--store", file.to_str().unwrap()];
        all.extend_from_slice(args);
        let run = run_raw(&all, Some(b""));
        assert_eq!(run.code, i32::from(EXIT_ERROR), "{args:?}: {run:?}");
        assert!(run.stderr.contains(file.to_str().unwrap()), "{run:?}");
        assert!(run.stderr.contains("not a directory"), "{run:?}");
    }

    // A store that this user may read but not write (a read-only directory, another user's
    // store): every command needs to write its lock.
    let store = parent.path().join("store");
    prepare(&store);
    let set = |p: &Path, mode| std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode));
    set(parent.path(), 0o755).unwrap();
    for entry in std::fs::read_dir(&store).unwrap() {
        let path = entry.unwrap().path();
        set(&path, if path.is_dir() { 0o555 } else { 0o444 }).unwrap();
    }
    set(&store, 0o555).unwrap();
    let run = as_someone_else(&["--store", store.to_str().unwrap(), "stats"]);
    set(&store, 0o755).unwrap();
    assert_eq!(run.code, i32::from(EXIT_ERROR), "{run:?}");
    assert!(run.stderr.contains(store.to_str().unwrap()), "{run:?}");
    assert!(run.stderr.contains("ermission denied"), "{run:?}");
    assert!(
        run.stderr.contains("writes files in its directory"),
        "{run:?}"
    );
}

#[test]
fn damage_that_sled_finds_itself_exits_3_naming_what_is_damaged() {
    let dir = prepared();
    // sled's configuration file, no longer UTF-8 (sled: "created using a sled version earlier
    // than 0.29").
    std::fs::write(dir.path().join("conf"), b"segment_size: \xff\xfe\n\0\0\0\0").unwrap();
    let run = tidings(dir.path(), &["stats"]);
    assert_eq!(run.code, i32::from(EXIT_DAMAGED), "{run:?}");
    assert!(run.stderr.contains("conf"), "{run:?}");

    let dir = prepared();
    std::fs::remove_dir_all(dir.path().join("blobs")).unwrap();
    let run = tidings(dir.path(), &["verify"]);
    assert_eq!(run.code, i32::from(EXIT_DAMAGED), "{run:?}");
    assert!(run.stderr.contains("blobs"), "{run:?}");
    assert!(run.stderr.contains("missing"), "{run:?}");
}
