//! Each command of the `tidings` binary against a prepared store (see `support::prepare`).

mod support;

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use support::{
    all_events, json_lines, ok, prepare, run_raw, runtime, tidings, CORRELATION, TRACEPARENT,
};
use tidings::store::{EventStore, SledEventStore};
use tidings::subscription::{parked_in_store, Subscriptions};
use tidings_cli::{EXIT_DAMAGED, EXIT_ERROR, EXIT_IN_USE, EXIT_NOT_FOUND, EXIT_USAGE};

fn prepared() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    prepare(dir.path());
    dir
}

/// The first column of each row of a table (headers dropped).
fn first_column(table: &str) -> Vec<String> {
    table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap_or("").to_owned())
        .collect()
}

fn checkpoint(dir: &Path, name: &str) -> Option<u64> {
    runtime().block_on(async {
        let store = SledEventStore::open(dir).unwrap();
        let c = store.load_checkpoint(name).await.unwrap();
        store.close().await;
        c
    })
}

#[test]
fn streams_lists_ids_categories_and_versions_as_a_table_and_as_json() {
    let dir = prepared();
    let table = ok(dir.path(), &["streams"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["STREAM", "CATEGORY", "VERSION", "LAST", "POSITION"]
    );
    assert!(
        lines[1..]
            .iter()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["order-2", "order", "2", "4"]),
        "{table}"
    );
    // Columns are aligned: every row's second column starts where the header's does.
    let at = lines[0].find("CATEGORY").unwrap();
    for l in &lines[1..] {
        assert_eq!(&l[at - 2..at], "  ", "misaligned row {l:?}");
        assert_ne!(&l[at..at + 1], " ", "misaligned row {l:?}");
    }
    let rows = json_lines(&ok(dir.path(), &["--json", "streams"]));
    let mut got: Vec<(String, String, u64, u64)> = rows
        .iter()
        .map(|r| {
            (
                r["stream_id"].as_str().unwrap().to_owned(),
                r["category"].as_str().unwrap().to_owned(),
                r["version"].as_u64().unwrap(),
                r["last_position"].as_u64().unwrap(),
            )
        })
        .collect();
    got.sort();
    let expected = [
        ("order-1", "order", 1, 1),
        ("order-2", "order", 2, 4),
        ("order-3", "order", 1, 3),
        ("payment-1", "payment", 2, 6),
    ]
    .map(|(s, c, v, p)| (s.to_owned(), c.to_owned(), v, p));
    assert_eq!(got, expected);
    let payments = json_lines(&ok(
        dir.path(),
        &["--json", "streams", "--category", "payment"],
    ));
    assert_eq!(payments.len(), 1);
    assert_eq!(
        json_lines(&ok(dir.path(), &["--json", "streams", "--limit", "2"])).len(),
        2
    );
}

#[test]
fn read_shows_one_stream_with_metadata_and_payloads_only_when_asked() {
    let dir = prepared();
    let table = ok(dir.path(), &["read", "order-2"]);
    assert_eq!(first_column(&table), ["2", "4"]);
    assert!(!table.contains("cents"), "no payload by default: {table}");
    assert!(table.contains("28 B"), "payload size shown: {table}");

    let with = ok(dir.path(), &["--payload", "read", "order-2"]);
    assert!(with.contains(r#"{"OrderPlaced":{"cents":13}}"#), "{with}");

    let rows = json_lines(&ok(
        dir.path(),
        &["--json", "--payload", "read", "payment-1"],
    ));
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["payload_encoding"], "base64");
    assert_eq!(rows[0]["payload"], "AAH/");
    assert_eq!(rows[1]["payload_encoding"], "json");
    assert_eq!(rows[1]["payload"]["note"], "a b");
    assert_eq!(rows[1]["correlation_id"], CORRELATION);
    assert_eq!(rows[1]["schema_version"], 3);
    assert_eq!(rows[1]["metadata"]["tenant"], "acme");
    assert_eq!(rows[1]["metadata"]["traceparent"], TRACEPARENT);
    assert!(rows[0].get("metadata").is_none(), "no metadata, no field");
    let no_payload = json_lines(&ok(dir.path(), &["--json", "read", "payment-1"]));
    assert!(no_payload[0].get("payload").is_none());
    assert_eq!(no_payload[0]["payload_size"], 3);

    let from = json_lines(&ok(
        dir.path(),
        &["--json", "read", "order-2", "--from", "2"],
    ));
    assert_eq!(from.len(), 1);
    assert_eq!(from[0]["position"], 4);

    let missing = tidings(dir.path(), &["read", "order-404"]);
    assert_eq!(missing.code, i32::from(EXIT_NOT_FOUND), "{missing:?}");
    assert!(missing.stderr.contains("order-404"), "{missing:?}");
}

#[test]
fn log_reads_the_global_log_from_a_position_with_a_limit_and_filters() {
    let dir = prepared();
    assert_eq!(
        first_column(&ok(dir.path(), &["log"])),
        ["1", "2", "3", "4", "5", "6"]
    );
    assert_eq!(
        first_column(&ok(dir.path(), &["log", "--from", "3", "--limit", "2"])),
        ["3", "4"]
    );
    assert_eq!(
        first_column(&ok(dir.path(), &["log", "--category", "payment"])),
        ["5", "6"]
    );
    assert_eq!(
        first_column(&ok(dir.path(), &["log", "--type", "Note", "--type", "Raw"])),
        ["5", "6"]
    );
    assert_eq!(
        first_column(&ok(dir.path(), &["log", "--from", "7"])),
        Vec::<String>::new()
    );
}

#[test]
fn tail_prints_from_a_position_and_stops_at_the_head_when_idle_or_at_its_limit() {
    let dir = prepared();
    let rows = json_lines(&ok(
        dir.path(),
        &["--json", "tail", "--from", "4", "--until-idle"],
    ));
    let positions: Vec<u64> = rows
        .iter()
        .map(|r| r["position"].as_u64().unwrap())
        .collect();
    assert_eq!(positions, [4, 5, 6]);
    let rows = json_lines(&ok(
        dir.path(),
        &["--json", "tail", "--from", "1", "--limit", "2"],
    ));
    assert_eq!(rows.len(), 2);
    // From the default (after the head) there is nothing new.
    assert!(json_lines(&ok(dir.path(), &["--json", "tail", "--until-idle"])).is_empty());
}

#[test]
fn tail_follows_events_appended_while_it_waits_and_stops_at_its_limit() {
    let dir = prepared();
    let out = runtime().block_on(async {
        let store = SledEventStore::open(dir.path()).unwrap();
        let shared: Arc<dyn EventStore> = Arc::new(store.clone());
        let subscriptions = Subscriptions::new(shared.clone());
        let cli = <tidings_cli::Cli as clap::Parser>::parse_from([
            "tidings", "--json", "tail", "--limit", "3",
        ]);
        let writer = store.clone();
        let appender = tokio::spawn(async move {
            // Each append waits for the tail to be waiting at the head first.
            for i in 0..3u64 {
                let mut watch = writer.watch_head();
                tokio::task::yield_now().await;
                let data = tidings::store::EventData::new("Later", format!("{i}").into_bytes());
                writer
                    .append("later-1", tidings::store::ExpectedVersion::Any, vec![data])
                    .await
                    .unwrap();
                watch.changed().await.unwrap();
            }
        });
        let registry = tidings_cli::Registry::new();
        let mut out = Vec::new();
        let code = tidings_cli::execute_on(&cli, &shared, &subscriptions, &registry, &mut out)
            .await
            .unwrap();
        appender.await.unwrap();
        store.close().await;
        assert_eq!(code, 0);
        String::from_utf8(out).unwrap()
    });
    let positions: Vec<u64> = json_lines(&out)
        .iter()
        .map(|r| r["position"].as_u64().unwrap())
        .collect();
    assert_eq!(
        positions,
        [7, 8, 9],
        "tail starts after the head and follows"
    );
}

#[test]
fn tail_without_a_limit_exits_cleanly_on_ctrl_c() {
    let dir = prepared();
    let mut child = support::spawn(dir.path(), &["tail", "--from", "1"]);
    // Wait until it has printed the existing events (so it is following), then interrupt it.
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    for _ in 0..7 {
        std::io::BufRead::read_line(&mut stdout, &mut seen).unwrap();
    }
    assert_eq!(first_column(&seen), ["1", "2", "3", "4", "5", "6"]);
    assert_eq!(
        support::interrupt(child),
        Some(0),
        "tail ends with 0 on Ctrl-C"
    );
}

#[test]
fn stats_counts_events_streams_subscriptions_and_bytes_on_disk() {
    let dir = prepared();
    let stats = &json_lines(&ok(dir.path(), &["--json", "stats"]))[0];
    assert_eq!(stats["events"], 6);
    assert_eq!(stats["head"], 6);
    assert_eq!(stats["streams"], 4);
    assert_eq!(stats["categories"], 2);
    assert_eq!(stats["subscriptions"], 2);
    let on_disk: u64 = walk_bytes(dir.path());
    let reported = stats["disk_bytes"].as_u64().unwrap();
    assert!(reported > 0);
    // The store only grows while it is open, so a walk after the run sees at least as much.
    assert!(reported <= on_disk + 4096, "{reported} vs {on_disk}");
    let table = ok(dir.path(), &["stats"]);
    assert!(
        table.contains("streams") && table.contains("disk"),
        "{table}"
    );
}

fn walk_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                walk_bytes(&e.path())
            } else {
                m.len()
            }
        })
        .sum()
}

#[test]
fn subscriptions_shows_checkpoint_lag_state_and_parked_count() {
    let dir = prepared();
    let rows = json_lines(&ok(dir.path(), &["--json", "subscriptions"]));
    assert_eq!(rows.len(), 2);
    let orders = rows.iter().find(|r| r["name"] == "orders").unwrap();
    assert_eq!(orders["checkpoint"], 6);
    assert_eq!(orders["lag"], 0);
    assert_eq!(orders["parked"], 2);
    assert_eq!(orders["parked_streams"], 1);
    assert_eq!(orders["state"], "stopped");
    assert_eq!(
        orders["holder"],
        serde_json::Value::Null,
        "no leases on the embedded store"
    );
    assert_eq!(orders["partition_of"], serde_json::Value::Null);
    let reporting = rows.iter().find(|r| r["name"] == "reporting").unwrap();
    assert_eq!(reporting["checkpoint"], 2);
    assert_eq!(reporting["lag"], 4);
    assert_eq!(reporting["state"], "-");
    let table = ok(dir.path(), &["subscriptions"]);
    assert_eq!(first_column(&table), ["orders", "reporting"]);
    assert!(table.contains("2 in 1 stream"), "{table}");
}

#[test]
fn parked_lists_a_subscriptions_parked_events_in_position_order() {
    let dir = prepared();
    let table = ok(dir.path(), &["parked", "orders"]);
    assert_eq!(first_column(&table), ["2", "4"]);
    assert!(table.contains("poison order"), "{table}");
    let rows = json_lines(&ok(dir.path(), &["--json", "parked", "orders"]));
    assert_eq!(rows[1]["stream_id"], "order-2");
    assert!(ok(dir.path(), &["parked", "reporting"]).lines().count() == 1);
    assert_eq!(
        tidings(dir.path(), &["parked", "nobody"]).code,
        i32::from(EXIT_NOT_FOUND)
    );
}

#[test]
fn skip_parked_drops_one_event_and_says_so() {
    let dir = prepared();
    let said = ok(dir.path(), &["skip-parked", "orders", "2"]);
    assert!(
        said.contains("position 2") && said.contains("1 events still parked"),
        "{said}"
    );
    assert_eq!(first_column(&ok(dir.path(), &["parked", "orders"])), ["4"]);
    let again = tidings(dir.path(), &["skip-parked", "orders", "2"]);
    assert_eq!(again.code, i32::from(EXIT_NOT_FOUND), "{again:?}");
    assert!(
        again.stderr.contains("no event parked at position 2"),
        "{again:?}"
    );
}

#[test]
fn replay_parked_records_a_replay_that_the_subscription_carries_out_when_it_starts() {
    let dir = prepared();
    let said = ok(
        dir.path(),
        &["replay-parked", "orders", "--stream", "order-2"],
    );
    assert!(
        said.contains("order-2") && said.contains("next starts"),
        "{said}"
    );
    let none = tidings(
        dir.path(),
        &["replay-parked", "orders", "--stream", "order-1"],
    );
    assert_eq!(none.code, i32::from(EXIT_NOT_FOUND), "{none:?}");

    // The fixed handler starts: the recorded replay handles the parked events, in order.
    actix::System::new().block_on(async {
        let store = Arc::new(SledEventStore::open(dir.path()).unwrap());
        let subscriptions = Subscriptions::new(store.clone());
        let fixed = support::Orders(Arc::new(AtomicBool::new(false)));
        let handle = subscriptions.start_with(fixed, support::config()).unwrap();
        let mut rounds = 0;
        while !parked_in_store(&*store, "orders").await.unwrap().is_empty() {
            rounds += 1;
            assert!(rounds < 6000, "the recorded replay never ran");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        handle.stop().await;
        let count: u64 =
            serde_json::from_slice(&store.load_state("orders", b"count").await.unwrap().unwrap())
                .unwrap();
        assert_eq!(
            count, 4,
            "two orders handled at first, the two parked ones on replay"
        );
        store.close().await;
    });
    assert_eq!(ok(dir.path(), &["parked", "orders"]).lines().count(), 1);
}

#[test]
fn reset_moves_a_checkpoint_to_the_beginning_end_a_position_or_a_time_and_says_how() {
    let dir = prepared();
    let said = ok(dir.path(), &["reset", "orders", "--to", "beginning"]);
    assert!(said.contains("checkpoint 6 -> 0"), "{said}");
    assert_eq!(checkpoint(dir.path(), "orders"), Some(0));

    ok(dir.path(), &["reset", "orders", "--to", "end"]);
    assert_eq!(checkpoint(dir.path(), "orders"), Some(6));

    let json = &json_lines(&ok(dir.path(), &["--json", "reset", "orders", "--to", "4"]))[0];
    assert_eq!(json["previous_checkpoint"], 6);
    assert_eq!(
        json["checkpoint"], 3,
        "the next event handled is position 4"
    );
    assert_eq!(checkpoint(dir.path(), "orders"), Some(3));

    // A time: the first event recorded at or after it is the next one handled.
    let events = all_events(dir.path());
    let t = tidings_cli_time(events[4].timestamp_micros);
    ok(dir.path(), &["reset", "orders", "--to", &t]);
    let expected = events
        .iter()
        .find(|e| e.timestamp_micros >= events[4].timestamp_micros)
        .unwrap()
        .position
        - 1;
    assert_eq!(checkpoint(dir.path(), "orders"), Some(expected));

    let cleared = ok(
        dir.path(),
        &["reset", "orders", "--to", "beginning", "--clear-state"],
    );
    assert!(cleared.contains("state was deleted"), "{cleared}");
    assert_eq!(
        first_column(&ok(dir.path(), &["parked", "orders"])),
        ["2", "4"]
    );

    let unknown = tidings(dir.path(), &["reset", "ordres", "--to", "end"]);
    assert_eq!(unknown.code, i32::from(EXIT_NOT_FOUND), "{unknown:?}");
    assert_eq!(
        checkpoint(dir.path(), "ordres"),
        None,
        "a typo creates nothing"
    );
    let bad = tidings(dir.path(), &["reset", "orders", "--to", "tomorrow"]);
    assert_eq!(bad.code, i32::from(EXIT_USAGE), "{bad:?}");
}

/// `micros` as RFC 3339 with an offset of +02:00, to check that offsets are honoured.
fn tidings_cli_time(micros: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
        .unwrap()
        .to_offset(time::UtcOffset::from_hms(2, 0, 0).unwrap());
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// The red team's reproduction (issue 16): commits of checkpoints and state that sled drops from
/// the tail of its data file used to leave a store that `verify` called healthy.
#[test]
fn verify_exits_3_naming_checkpoints_and_state_that_sled_dropped() {
    let dir = prepared();
    runtime().block_on(async {
        let store = SledEventStore::open(dir.path()).unwrap();
        let head = store.head();
        let mut expected = store.load_checkpoint("projector").await.unwrap();
        for round in 0..200u32 {
            let state = vec![tidings::store::StateWrite {
                key: b"count".to_vec(),
                value: Some(round.to_be_bytes().to_vec()),
            }];
            store
                .commit_checkpoint("projector", expected, head, state)
                .await
                .unwrap();
            expected = Some(head);
        }
        store.close().await;
    });
    // sled may have grown its file to the end of a segment with zeros: cut the last 4 KiB of
    // what it wrote.
    let db = dir.path().join("db");
    let image = std::fs::read(&db).unwrap();
    let end = image.iter().rposition(|b| *b != 0).unwrap() + 1;
    std::fs::write(&db, &image[..end - 4096]).unwrap();
    let verify = tidings(dir.path(), &["verify"]);
    assert_eq!(verify.code, i32::from(EXIT_DAMAGED), "{verify:?}");
    for words in ["are lost", "checkpoints", "consumer state", "tidings.head"] {
        assert!(verify.stderr.contains(words), "{words}: {verify:?}");
    }
    let listed = tidings(dir.path(), &["subscriptions"]);
    assert_eq!(listed.code, i32::from(EXIT_DAMAGED), "{listed:?}");
}

#[test]
fn verify_exits_0_on_a_healthy_store_and_3_naming_the_position_on_a_damaged_one() {
    let dir = prepared();
    let healthy = tidings(dir.path(), &["verify"]);
    assert_eq!(healthy.code, 0, "{healthy:?}");
    assert!(healthy.stdout.contains("no damage found"), "{healthy:?}");

    // Flip the last payload byte of the event at position 3, in the event log's segment file
    // (one append each, so a later group follows it: damage, not a torn tail).
    let payload = runtime().block_on(async {
        let store = SledEventStore::open(dir.path()).unwrap();
        let page = store
            .read_all(3, 1, &tidings::store::Filter::all())
            .await
            .unwrap();
        store.close().await;
        page.events[0].payload.clone()
    });
    let segment = std::fs::read_dir(dir.path().join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "seg"))
        .expect("a segment file");
    let mut bytes = std::fs::read(&segment).unwrap();
    let at = bytes
        .windows(payload.len())
        .position(|w| w == &payload[..])
        .expect("the payload in the segment")
        + payload.len()
        - 1;
    bytes[at] ^= 0x40;
    std::fs::write(&segment, bytes).unwrap();
    let damaged = tidings(dir.path(), &["verify"]);
    assert_eq!(damaged.code, i32::from(EXIT_DAMAGED), "{damaged:?}");
    assert!(damaged.stdout.contains("DAMAGE FOUND"), "{damaged:?}");
    assert!(damaged.stdout.contains("position 3"), "{damaged:?}");
    let json = &json_lines(&tidings(dir.path(), &["--json", "verify"]).stdout)[0];
    assert_eq!(json["ok"], false);
    // Reads that meet the damage stop with the same exit code and name the position.
    let read = tidings(dir.path(), &["log"]);
    assert_eq!(read.code, i32::from(EXIT_DAMAGED), "{read:?}");
    assert!(read.stderr.contains("position 3"), "{read:?}");
    assert_eq!(
        first_column(&read.stdout),
        ["1", "2"],
        "the events before the damage are printed"
    );
    let export = tidings(dir.path(), &["export"]);
    assert_eq!(export.code, i32::from(EXIT_DAMAGED), "{export:?}");
    assert_eq!(
        json_lines(&export.stdout).len(),
        2,
        "exported up to the damage"
    );
    // The rest can be salvaged from after the damaged position.
    let rest = json_lines(&ok(dir.path(), &["export", "--from", "4", "--events-only"]));
    assert_eq!(rest.len(), 3);
}

#[test]
fn a_store_open_in_another_process_is_a_clear_error_naming_the_path() {
    let dir = prepared();
    // Held by this test process.
    let held = SledEventStore::open(dir.path()).unwrap();
    for args in [
        &["streams"][..],
        &["verify"],
        &["reset", "orders", "--to", "end"],
    ] {
        let run = tidings(dir.path(), args);
        assert_eq!(run.code, i32::from(EXIT_IN_USE), "{args:?}: {run:?}");
        assert!(
            run.stderr.contains(&dir.path().display().to_string()) && run.stderr.contains("in use"),
            "{run:?}"
        );
        assert!(!run.stderr.contains("panicked"), "{run:?}");
    }
    drop(held);

    // Held by another `tidings` process (a tail that follows until interrupted).
    let mut tail = std::process::Command::new(support::TIDINGS)
        .args(["--store", dir.path().to_str().unwrap(), "tail"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut header = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(tail.stdout.take().unwrap()),
        &mut header,
    )
    .unwrap();
    let run = tidings(dir.path(), &["stats"]);
    tail.kill().unwrap();
    tail.wait().unwrap();
    assert_eq!(run.code, i32::from(EXIT_IN_USE), "{run:?}");
    assert!(run.stderr.contains("in use by another process"), "{run:?}");
}

#[test]
fn a_missing_store_is_not_created_and_a_missing_store_option_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing-here");
    let run = tidings(&missing, &["streams"]);
    assert_eq!(run.code, i32::from(EXIT_NOT_FOUND), "{run:?}");
    assert!(run.stderr.contains("nothing-here"), "{run:?}");
    assert!(!missing.exists(), "a read command created a store");
    let run = run_raw(&["streams"], None);
    assert_eq!(run.code, i32::from(EXIT_USAGE), "{run:?}");
    assert!(run.stderr.contains("--store"), "{run:?}");
    let run = run_raw(&["--store", "x", "no-such-command"], None);
    assert_eq!(run.code, i32::from(EXIT_USAGE), "{run:?}");
}

#[test]
fn export_then_import_reproduces_the_stores_events_exactly() {
    let dir = prepared();
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("backup.jsonl");
    let said = ok(dir.path(), &["export", "-o", file.to_str().unwrap()]);
    assert!(said.contains("exported 6 events"), "{said}");
    assert!(said.contains("2 checkpoints"), "{said}");
    let text = std::fs::read_to_string(&file).unwrap();
    let lines = json_lines(&text);
    let kinds: Vec<&str> = lines.iter().map(|l| l["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds[..6], ["event"; 6]);
    assert_eq!(kinds[6], "checkpoint");
    assert!(kinds[7..]
        .iter()
        .all(|k| *k == "state" || *k == "checkpoint"));
    assert_eq!(lines[4]["payload_encoding"], "base64");
    assert_eq!(lines[5]["payload_encoding"], "json");
    assert!(
        text.contains(r#""payload":{"note": "a b",  "n":1}"#),
        "a JSON payload is kept verbatim"
    );
    // Metadata is written only for the event that has some, so exports of events without it
    // are what they were before metadata existed.
    assert_eq!(lines[5]["metadata"]["tenant"], "acme");
    assert_eq!(lines[5]["metadata"]["traceparent"], TRACEPARENT);
    assert_eq!(text.matches("\"metadata\"").count(), 1, "{text}");

    let copy = work.path().join("copy");
    let said = ok(&copy, &["import", file.to_str().unwrap()]);
    assert!(said.contains("imported 6 events"), "{said}");
    assert_eq!(
        all_events(&copy),
        all_events(dir.path()),
        "the events, exactly"
    );
    assert_eq!(
        consumers(&copy),
        consumers(dir.path()),
        "checkpoints and consumer state, exactly"
    );
    assert_eq!(
        ok(&copy, &["parked", "orders"]),
        ok(dir.path(), &["parked", "orders"])
    );
    assert_eq!(
        ok(&copy, &["subscriptions"]),
        ok(dir.path(), &["subscriptions"])
    );
    // And the copy exports to the same bytes (payloads, ids, timestamps, metadata).
    let again = work.path().join("again.jsonl");
    ok(&copy, &["export", "-o", again.to_str().unwrap()]);
    assert_eq!(std::fs::read(&again).unwrap(), text.as_bytes());
    assert_eq!(tidings(&copy, &["verify"]).code, 0);
    // Standard output works too (the summary goes to standard error).
    let run = tidings(dir.path(), &["export"]);
    assert_eq!(run.stdout, text);
    assert!(run.stderr.contains("exported 6 events"), "{run:?}");
    // Import from standard input.
    let piped = work.path().join("piped");
    let run = run_raw(
        &["--store", piped.to_str().unwrap(), "import", "-"],
        Some(text.as_bytes()),
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(all_events(&piped), all_events(dir.path()));
}

#[test]
fn import_refuses_a_non_empty_store_and_bad_lines_and_resumes_an_interrupted_import() {
    let dir = prepared();
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("backup.jsonl");
    ok(dir.path(), &["export", "-o", file.to_str().unwrap()]);
    let text = std::fs::read_to_string(&file).unwrap();

    let run = tidings(dir.path(), &["import", file.to_str().unwrap()]);
    assert_eq!(run.code, i32::from(EXIT_ERROR), "{run:?}");
    assert!(run.stderr.contains("not empty"), "{run:?}");
    assert_eq!(all_events(dir.path()).len(), 6, "nothing was added");

    // A damaged line (payload size that does not match) is refused with its line number.
    let broken = text.replacen(r#""payload_size":3"#, r#""payload_size":4"#, 1);
    let bad_file = work.path().join("bad.jsonl");
    std::fs::write(&bad_file, &broken).unwrap();
    let target = work.path().join("target");
    let run = tidings(&target, &["import", bad_file.to_str().unwrap()]);
    assert_eq!(run.code, i32::from(EXIT_ERROR), "{run:?}");
    assert!(run.stderr.contains("bad.jsonl:5"), "{run:?}");
    // An event the store finds invalid (an empty stream id) names the lines of its batch.
    let empty_id = work.path().join("empty-id.jsonl");
    std::fs::write(
        &empty_id,
        text.replacen(r#""stream_id":"order-1""#, r#""stream_id":"""#, 1),
    )
    .unwrap();
    let run = tidings(
        &work.path().join("t3"),
        &["import", empty_id.to_str().unwrap()],
    );
    assert_eq!(run.code, i32::from(EXIT_ERROR), "{run:?}");
    assert!(
        run.stderr.contains("lines 1..=6") && run.stderr.contains("stream id"),
        "{run:?}"
    );
    // Output of `--payload` (decoded payloads) is not a backup.
    let decoded = work.path().join("decoded.jsonl");
    std::fs::write(
        &decoded,
        text.replacen(
            r#""payload_encoding":"json""#,
            r#""payload_encoding":"decoded""#,
            1,
        ),
    )
    .unwrap();
    let run = tidings(
        &work.path().join("t2"),
        &["import", decoded.to_str().unwrap()],
    );
    assert_eq!(run.code, i32::from(EXIT_ERROR), "{run:?}");

    // An import cut short after three lines, then resumed with the whole file.
    let partial = work.path().join("partial.jsonl");
    let first_three: String = text.lines().take(3).map(|l| format!("{l}\n")).collect();
    std::fs::write(&partial, first_three).unwrap();
    let resumed = work.path().join("resumed");
    ok(&resumed, &["import", partial.to_str().unwrap()]);
    let said = ok(&resumed, &["import", "--resume", file.to_str().unwrap()]);
    assert!(
        said.contains("imported 3 events") && said.contains("skipped 3"),
        "{said}"
    );
    assert_eq!(all_events(&resumed), all_events(dir.path()));
    assert_eq!(consumers(&resumed), consumers(dir.path()));
    // Resuming a finished import again changes nothing.
    ok(&resumed, &["import", "--resume", file.to_str().unwrap()]);
    assert_eq!(consumers(&resumed), consumers(dir.path()));

    // `--events-only` leaves checkpoints and state out.
    let events_only = work.path().join("events-only.jsonl");
    ok(
        dir.path(),
        &[
            "export",
            "--events-only",
            "-o",
            events_only.to_str().unwrap(),
        ],
    );
    let only = work.path().join("only");
    ok(&only, &["import", events_only.to_str().unwrap()]);
    assert!(consumers(&only).is_empty());
    assert_eq!(all_events(&only), all_events(dir.path()));

    // A resume over a different log is refused.
    let other = work.path().join("other.jsonl");
    std::fs::write(&other, text.replacen("order-1", "order-9", 1)).unwrap();
    let run = tidings(&resumed, &["import", "--resume", other.to_str().unwrap()]);
    assert_eq!(run.code, i32::from(EXIT_ERROR), "{run:?}");
    assert!(run.stderr.contains("not the same log"), "{run:?}");

    // A directory holding something else is not turned into a store.
    let junk = work.path().join("junk");
    std::fs::create_dir(&junk).unwrap();
    std::fs::write(junk.join("notes.txt"), "x").unwrap();
    let run = tidings(&junk, &["import", file.to_str().unwrap()]);
    assert_eq!(run.code, i32::from(EXIT_ERROR), "{run:?}");
}

#[test]
fn an_embedding_application_registers_its_event_types_and_payloads_print_decoded() {
    let dir = prepared();
    let out = runtime().block_on(async {
        let store = SledEventStore::open(dir.path()).unwrap();
        // An OrderPlaced whose payload the application's type does not decode.
        let bad = tidings::store::EventData::new(
            "OrderPlaced",
            br#"{"OrderPlaced":{"cents":"x"}}"#.to_vec(),
        );
        store
            .append(
                "order-9",
                tidings::store::ExpectedVersion::NoStream,
                vec![bad],
            )
            .await
            .unwrap();
        let shared: Arc<dyn EventStore> = Arc::new(store.clone());
        let subscriptions = Subscriptions::new(shared.clone());
        let registry = tidings_cli::Registry::new().register::<support::ShopEvent>();
        assert_eq!(registry.event_types().collect::<Vec<_>>(), ["OrderPlaced"]);
        let cli = <tidings_cli::Cli as clap::Parser>::parse_from([
            "shop admin",
            "--json",
            "--payload",
            "log",
        ]);
        let mut out = Vec::new();
        tidings_cli::execute_on(&cli, &shared, &subscriptions, &registry, &mut out)
            .await
            .unwrap();
        store.close().await;
        String::from_utf8(out).unwrap()
    });
    let rows = json_lines(&out);
    assert_eq!(rows.len(), 7);
    assert_eq!(rows[0]["payload_encoding"], "decoded");
    assert_eq!(
        rows[0]["payload"],
        serde_json::json!({"OrderPlaced": {"cents": 100}})
    );
    // Types the application did not register print as before.
    assert_eq!(rows[4]["payload_encoding"], "base64");
    assert_eq!(rows[5]["payload_encoding"], "json");
    // A registered type that does not decode says why, and still shows the bytes.
    assert_eq!(rows[6]["payload_encoding"], "json");
    assert!(
        rows[6]["payload_error"]
            .as_str()
            .unwrap()
            .contains("invalid type"),
        "{}",
        rows[6]
    );
}

/// A consumer's name, checkpoint and whole state.
type Consumer = (String, u64, Vec<(Vec<u8>, Vec<u8>)>);

/// Every checkpoint of the store at `dir` with its consumer's whole state.
fn consumers(dir: &Path) -> Vec<Consumer> {
    runtime().block_on(async {
        let store = SledEventStore::open(dir).unwrap();
        let mut out = Vec::new();
        for c in store.list_checkpoints(None, 1000).await.unwrap() {
            let state = store.scan_state(&c.name, b"", b"", 100_000).await.unwrap();
            out.push((c.name, c.position, state));
        }
        store.close().await;
        out
    })
}

#[test]
fn dry_runs_of_reset_skip_and_replay_show_what_would_change_and_change_nothing() {
    let dir = prepared();
    let before = consumers(dir.path());
    let parked_before = json_lines(&ok(dir.path(), &["--json", "parked", "orders"]));

    let said = ok(dir.path(), &["reset", "orders", "--to", "3", "--dry-run"]);
    assert!(said.starts_with("dry run, nothing changed"), "{said}");
    assert!(said.contains("checkpoint 6 -> 2"), "{said}");
    assert!(
        said.contains("positions 3 to 6 would be handled again"),
        "{said}"
    );
    let json = &json_lines(&ok(
        dir.path(),
        &[
            "--json",
            "reset",
            "orders",
            "--to",
            "beginning",
            "--clear-state",
            "--dry-run",
        ],
    ))[0];
    assert_eq!(json["dry_run"], true);
    assert_eq!(json["previous_checkpoint"], 6);
    assert_eq!(json["checkpoint"], 0);
    assert_eq!(json["handled_again"], 6);
    // The handler's one state entry (its count), not the parked events or the status.
    assert_eq!(json["state_entries_deleted"], 1);
    let json = &json_lines(&ok(
        dir.path(),
        &["--json", "reset", "reporting", "--to", "end", "--dry-run"],
    ))[0];
    assert_eq!(
        (json["skipped"].as_u64(), json["checkpoint"].as_u64()),
        (Some(4), Some(6))
    );

    let said = ok(dir.path(), &["skip-parked", "orders", "2", "--dry-run"]);
    assert!(
        said.contains("position 2 (OrderPlaced of stream \"order-2\")"),
        "{said}"
    );
    assert!(
        said.contains("1 events would stay parked, 1 of them in its stream"),
        "{said}"
    );
    let json = &json_lines(&ok(
        dir.path(),
        &["--json", "skip-parked", "orders", "4", "--dry-run"],
    ))[0];
    assert_eq!(json["still_parked_in_stream"], 1);
    let missing = tidings(dir.path(), &["skip-parked", "orders", "3", "--dry-run"]);
    assert_eq!(missing.code, i32::from(EXIT_NOT_FOUND), "{missing:?}");

    let json = &json_lines(&ok(
        dir.path(),
        &["--json", "replay-parked", "orders", "--dry-run"],
    ))[0];
    assert_eq!(json["stream_id"], "order-2");
    assert_eq!(json["applied"], "next_start");
    let positions: Vec<u64> = json["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["position"].as_u64().unwrap())
        .collect();
    assert_eq!(positions, [2, 4]);
    let said = ok(dir.path(), &["replay-parked", "orders", "--dry-run"]);
    assert!(
        said.contains("2 parked events would be handled again"),
        "{said}"
    );
    assert!(said.contains("when it next starts"), "{said}");

    // Nothing changed: checkpoints, state and parked events are as they were.
    assert_eq!(consumers(dir.path()), before);
    assert_eq!(
        json_lines(&ok(dir.path(), &["--json", "parked", "orders"])),
        parked_before
    );
}

#[test]
fn subscriptions_watch_lists_again_at_each_interval_until_ctrl_c() {
    let dir = prepared();
    let mut child = support::spawn(
        dir.path(),
        &["subscriptions", "--watch", "--interval", "0.2"],
    );
    // Three listings (each: a line with the time and head, the table's header, two rows).
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    while seen.matches("NAME").count() < 3 {
        let read = std::io::BufRead::read_line(&mut stdout, &mut seen).unwrap();
        assert!(read > 0, "watch ended early: {seen}");
    }
    assert_eq!(
        seen.matches("head 6  (every 0.2 s; Ctrl-C stops)").count(),
        3,
        "{seen}"
    );
    assert!(
        seen.lines()
            .any(|l| l.starts_with("reporting") && l.contains(" 4 ")),
        "{seen}"
    );
    assert_eq!(
        support::interrupt(child),
        Some(0),
        "watch ends with 0 on Ctrl-C"
    );

    let bad = tidings(dir.path(), &["subscriptions", "--watch", "--interval", "0"]);
    assert_eq!(bad.code, i32::from(EXIT_USAGE), "{bad:?}");
}
