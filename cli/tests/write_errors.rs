//! The CLI on a full disk (issue 16): `tidings import` of large events past a file size limit
//! used to hang without a word; it must end in bounded time with an error that says the disk is
//! full. The limit is set with the `prlimit` command (no `unsafe` `setrlimit` here), through
//! `sh -c` so that SIGXFSZ is ignored and the write fails with `EFBIG`, as it fails with
//! `ENOSPC` on a full disk.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{runtime, tidings, TIDINGS};
use tidings::store::{EventData, EventStore, ExpectedVersion, SledEventStore};
use tidings_cli::EXIT_OK;

#[test]
fn import_of_large_events_onto_a_full_disk_fails_in_bounded_time_saying_so() {
    let source = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let store = SledEventStore::open(source.path()).unwrap();
        for version in 0..40 {
            let event = EventData::new("Big", vec![b'x'; 300 * 1024]);
            store
                .append("big-1", ExpectedVersion::Exact(version), vec![event])
                .await
                .unwrap();
        }
        store.close().await;
    });
    let target = tempfile::tempdir().unwrap();
    let file = target.path().join("export.jsonl");
    let export = tidings(source.path(), &["export", "-o", file.to_str().unwrap()]);
    assert_eq!(export.code, i32::from(EXIT_OK), "{export:?}");

    let store = target.path().join("store");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("trap '' XFSZ; exec prlimit --fsize=600000 \"$@\"")
        .arg("sh")
        .arg(TIDINGS)
        .arg("--store")
        .arg(&store)
        .arg("import")
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("tidings import onto a full disk still running after a minute: it hung");
        }
        // Polled: `Child` has no wait with a timeout.
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("the disk is full"), "{stderr}");
    println!(
        "import onto a full disk ended in {:.1?}: {}",
        started.elapsed(),
        stderr.trim()
    );
}
