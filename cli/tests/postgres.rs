//! The `tidings` binary on a PostgreSQL store, beside an application (this test process) that
//! writes to it and runs a subscription on it at the same time.
//!
//! Needs the test server (see `support::pg`): without one these tests skip loudly, or fail with
//! `TIDINGS_REQUIRE_POSTGRES=1`. The error tests that need no server always run.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::pg::{self, Schema};
use support::{config, json_lines, ok, prepare, run_raw, Orders, ShopEvent, POISON};
use tidings::store::{EventStore, ExpectedVersion};
use tidings::subscription::{DistributedConfig, Subscriptions};
use tidings::DomainEvent;
use tidings_cli::{EXIT_IN_USE, EXIT_NOT_FOUND, EXIT_USAGE};

/// How long a condition may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(60);

/// Waits until `check` gives a value (it is asked again at once, or after a few milliseconds
/// when it is cheap), failing the test after [`PATIENCE`].
fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Appends the `i`th event (from 0) the application appends: an order of `i + 1` cents to one
/// of four streams; the event at position [`POISON`] is the poison one.
async fn append_order(store: &dyn EventStore, i: u64) {
    let data = ShopEvent::OrderPlaced { cents: i + 1 }
        .to_event_data()
        .unwrap();
    store
        .append(
            &format!("order-{}", i % 4),
            ExpectedVersion::Any,
            vec![data],
        )
        .await
        .unwrap();
}

/// The `orders` row of `subscriptions --json`, if there is one.
fn orders_row(schema: &Schema) -> Option<Value> {
    json_lines(&schema.ok(&["--json", "subscriptions"]))
        .into_iter()
        .find(|r| r["name"] == "orders")
}

#[test]
fn every_read_command_works_while_another_process_writes_and_runs_a_subscription() {
    let Some(schema) = Schema::fresh("cli read commands on PostgreSQL") else {
        return;
    };
    let store = schema.open();
    let (stop, appended) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let app = {
        let (stop, appended) = (stop.clone(), appended.clone());
        std::thread::spawn(move || {
            actix::System::new().block_on(async move {
                let store: Arc<dyn EventStore> = Arc::new(store);
                let subscriptions = Subscriptions::new(store.clone());
                let broken = Arc::new(AtomicBool::new(true));
                let handle = subscriptions.start_with(Orders(broken), config()).unwrap();
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    append_order(&*store, i).await;
                    i += 1;
                    appended.store(i, Ordering::SeqCst);
                }
                handle.stop().await;
            });
        })
    };
    wait_for("40 events appended", || {
        (appended.load(Ordering::SeqCst) >= 40).then_some(())
    });

    let streams = json_lines(&schema.ok(&["--json", "streams"]));
    let mut ids: Vec<&str> = streams
        .iter()
        .map(|r| r["stream_id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["order-0", "order-1", "order-2", "order-3"]);
    assert!(streams.iter().all(|r| r["version"].as_u64().unwrap() >= 10));

    let log = json_lines(&schema.ok(&["--json", "log", "--limit", "10"]));
    let positions: Vec<u64> = log
        .iter()
        .map(|r| r["position"].as_u64().unwrap())
        .collect();
    assert_eq!(positions, (1..=10).collect::<Vec<_>>());
    let read = json_lines(&schema.ok(&["--json", "read", "order-1", "--limit", "5"]));
    let versions: Vec<u64> = read
        .iter()
        .map(|r| r["stream_version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [1, 2, 3, 4, 5]);

    let verify = schema.ok(&["verify"]);
    assert!(verify.contains("no damage found"), "{verify}");

    // `tail` from after the head follows the other process's appends (woken by NOTIFY).
    let tail = json_lines(&schema.ok(&["--json", "tail", "--limit", "5"]));
    assert_eq!(tail.len(), 5);
    assert!(tail[0]["position"].as_u64().unwrap() > 40);

    // The subscription's committed checkpoint, lag and parked events, from the database.
    let row = wait_for("the subscription to commit past its poison event", || {
        orders_row(&schema).filter(|r| r["checkpoint"].as_u64() > Some(POISON + 10))
    });
    let (checkpoint, head) = (
        row["checkpoint"].as_u64().unwrap(),
        row["head"].as_u64().unwrap(),
    );
    assert!(head >= checkpoint, "{row}");
    assert_eq!(row["lag"].as_u64().unwrap(), head - checkpoint, "{row}");
    assert!(row["parked"].as_u64().unwrap() >= 1, "{row}");
    assert_eq!(row["parked_streams"], 1, "{row}");
    assert_eq!(row["running"], false, "not in the CLI's process: {row}");
    let state = row["state"].as_str().unwrap();
    assert!(state.starts_with("last recorded: "), "{row}");
    assert!(
        state.ends_with(&format!(" pid {})", std::process::id())),
        "the holder shows: {row}"
    );
    assert_eq!(row["holder"]["pid"], std::process::id(), "{row}");
    assert_eq!(row["partition_of"], Value::Null, "{row}");
    let table = schema.ok(&["subscriptions"]);
    assert!(
        table.lines().nth(1).unwrap().starts_with("orders "),
        "{table}"
    );

    let parked = json_lines(&schema.ok(&["--json", "parked", "orders"]));
    assert_eq!(parked[0]["position"], POISON);
    assert!(
        parked.iter().all(|p| p["stream_id"] == "order-0"),
        "{parked:?}"
    );

    let stats = &json_lines(&schema.ok(&["--json", "stats"]))[0];
    assert!(stats["head"].as_u64().unwrap() >= head, "{stats}");
    assert_eq!(stats["streams"], 4);
    assert_eq!(stats["categories"], 1);
    assert_eq!(stats["subscriptions"], 1);
    assert_eq!(stats["schema"], schema.name());
    assert_eq!(stats["server"], pg::url());
    assert!(stats["disk_bytes"].as_u64().unwrap() > 0, "{stats}");
    assert!(stats["tables"].as_u64().unwrap() >= 5, "{stats}");
    let table = schema.ok(&["stats"]);
    assert!(
        table.contains(&format!("(schema {})", schema.name())),
        "{table}"
    );
    assert!(table.contains("tables with their indexes"), "{table}");

    stop.store(true, Ordering::SeqCst);
    app.join().unwrap();
    let row = orders_row(&schema).unwrap();
    assert_eq!(row["state"], "stopped", "{row}");
}

/// What the test asks of the application.
enum Ask {
    /// Stop the subscription (the process and its store stay up).
    StopSubscription,
    /// Start the subscription again, with its handler fixed.
    StartFixed,
    /// End without stopping the subscription, as a killed process would.
    Vanish,
}

/// A distributed subscription run by the application: `subscriptions` lists each partition as a
/// subscription of its own, with the partition it is and the process that holds it.
#[test]
fn the_partitions_of_a_distributed_subscription_show_with_their_holder() {
    let Some(schema) = Schema::fresh("cli distributed subscription on PostgreSQL") else {
        return;
    };
    let store = schema.open();
    let stop = Arc::new(AtomicBool::new(false));
    let app = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            actix::System::new().block_on(async move {
                let store: Arc<dyn EventStore> = Arc::new(store);
                for i in 0..8 {
                    append_order(&*store, i).await;
                }
                let subscriptions = Subscriptions::new(store.clone());
                let broken = Arc::new(AtomicBool::new(false));
                let handle = subscriptions
                    .start_distributed(Orders(broken), config(), DistributedConfig::new(2))
                    .unwrap();
                while !stop.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                handle.stop().await;
            });
        })
    };
    let rows = wait_for("both partitions held and at the head", || {
        let rows = json_lines(&schema.ok(&["--json", "subscriptions"]));
        let ready = rows.len() == 2
            && rows
                .iter()
                .all(|r| r["checkpoint"] == 8 && r["holder"].is_object());
        ready.then_some(rows)
    });
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["orders.p00of2", "orders.p01of2"]);
    for (index, row) in rows.iter().enumerate() {
        assert_eq!(row["partition_of"]["index"], index, "{row}");
        assert_eq!(row["partition_of"]["count"], 2, "{row}");
        assert_eq!(row["holder"]["pid"], std::process::id(), "{row}");
        assert!(row["holder"]["generation"].as_u64().unwrap() >= 1, "{row}");
    }
    let table = schema.ok(&["subscriptions"]);
    assert!(
        table.contains(&format!(
            "(held by {} pid {})",
            rows[0]["holder"]["host"].as_str().unwrap(),
            std::process::id()
        )),
        "{table}"
    );
    stop.store(true, Ordering::SeqCst);
    app.join().unwrap();
    // Stopped: the leases were given up, so no holder shows.
    let rows = json_lines(&schema.ok(&["--json", "subscriptions"]));
    assert!(rows.iter().all(|r| r["holder"].is_null()), "{rows:?}");
    assert!(!schema.ok(&["subscriptions"]).contains("held by"));
}

#[test]
fn changing_a_subscription_is_refused_while_another_process_may_run_it() {
    let Some(schema) = Schema::fresh("cli subscription commands on PostgreSQL") else {
        return;
    };
    let store = schema.open();
    let (asks, asked) = tokio::sync::mpsc::unbounded_channel::<Ask>();
    let (done, answers) = mpsc::channel::<()>();
    let app = std::thread::spawn(move || {
        actix::System::new().block_on(async move {
            let mut asked = asked;
            let store: Arc<dyn EventStore> = Arc::new(store);
            for i in 0..20 {
                append_order(&*store, i).await;
            }
            let subscriptions = Subscriptions::new(store.clone());
            let broken = Arc::new(AtomicBool::new(true));
            let mut handle = subscriptions
                .start_with(Orders(broken.clone()), config())
                .unwrap();
            while let Some(ask) = asked.recv().await {
                match ask {
                    Ask::StopSubscription => {
                        handle.stop().await;
                    }
                    Ask::StartFixed => {
                        broken.store(false, Ordering::SeqCst);
                        handle = subscriptions
                            .start_with(Orders(broken.clone()), config())
                            .unwrap();
                    }
                    Ask::Vanish => break,
                }
                done.send(()).unwrap();
            }
        });
    });
    let ask = |what: Ask| {
        asks.send(what).unwrap();
        answers
            .recv_timeout(PATIENCE)
            .expect("the application answers");
    };
    // Positions 13 and 17 are order-0's fourth and fifth events: 13 fails, 17 waits behind it.
    let row = wait_for("the subscription to handle all 20 events", || {
        orders_row(&schema).filter(|r| r["checkpoint"] == 20 && r["parked"] == 2)
    });
    assert_eq!(
        row["state"],
        format!(
            "last recorded: parked (held by {} pid {})",
            row["holder"]["host"].as_str().unwrap(),
            std::process::id()
        ),
        "{row}"
    );

    // A reset needs the subscription stopped, and the application runs it (it holds its
    // lease): refused, naming the process.
    let run = schema.tidings(&["reset", "orders", "--to", "beginning"]);
    assert_eq!(run.code, i32::from(EXIT_IN_USE), "{run:?}");
    assert!(
        run.stderr.contains("runs in") && run.stderr.contains("stop it there first"),
        "{run:?}"
    );
    assert_eq!(
        orders_row(&schema).unwrap()["checkpoint"],
        20,
        "nothing moved"
    );
    // Operations on parked events go to the process that runs it, which applies them: the
    // replay fails again (the handler is still broken) and 13 stays parked with 17 behind it;
    // then 13 is skipped.
    let replay = schema.ok(&["replay-parked", "orders"]);
    assert!(
        replay.contains("handled 0 parked events; 2 still parked"),
        "{replay}"
    );
    let skipped = schema.ok(&["skip-parked", "orders", "13"]);
    assert!(skipped.contains("1 events still parked"), "{skipped}");

    // Stopped in the application (which keeps running): now the CLI may reset it.
    ask(Ask::StopSubscription);
    assert_eq!(orders_row(&schema).unwrap()["state"], "stopped");
    let replay = schema.ok(&["replay-parked", "orders"]);
    assert!(
        replay.contains("not running (no process holds it)"),
        "{replay}"
    );
    let reset = schema.ok(&["reset", "orders", "--to", "19"]);
    assert!(reset.contains("checkpoint 20 -> 18"), "{reset}");

    // Started again, fixed: the recorded replay handles 17, and 19 and 20 are handled again.
    ask(Ask::StartFixed);
    let row = wait_for("the replay and the catch-up", || {
        orders_row(&schema).filter(|r| r["checkpoint"] == 20 && r["parked"] == 0)
    });
    assert!(
        row["state"]
            .as_str()
            .unwrap()
            .starts_with("last recorded: "),
        "{row}"
    );

    // The process goes without stopping the subscription (as a killed one would): its lease is
    // no longer renewed, so a reset is refused until it expires, then accepted.
    ask_vanish(&asks, app);
    let run = schema.tidings(&["reset", "orders", "--to", "end"]);
    assert_eq!(run.code, i32::from(EXIT_IN_USE), "{run:?}");
    let reset = wait_for("the vanished process's lease to expire", || {
        let run = schema.tidings(&["reset", "orders", "--to", "beginning"]);
        (run.code == 0).then_some(run.stdout)
    });
    assert!(reset.contains("checkpoint 20 -> 0"), "{reset}");
}

/// Asks the application to go without stopping its subscription, and waits for its thread.
fn ask_vanish(asks: &tokio::sync::mpsc::UnboundedSender<Ask>, app: std::thread::JoinHandle<()>) {
    asks.send(Ask::Vanish).unwrap();
    app.join().unwrap();
}

#[test]
fn an_export_of_an_embedded_store_imports_into_postgres_and_exports_the_same_bytes() {
    let Some(schema) = Schema::fresh("cli export and import on PostgreSQL") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sled_dir = dir.path().join("sled");
    prepare(&sled_dir);
    let (from_sled, from_pg) = (dir.path().join("sled.jsonl"), dir.path().join("pg.jsonl"));
    ok(&sled_dir, &["export", "-o", from_sled.to_str().unwrap()]);

    assert!(!pg::schema_exists(schema.name()));
    let imported = schema.ok(&["--json", "import", from_sled.to_str().unwrap()]);
    let summary = &json_lines(&imported)[0];
    assert_eq!(summary["imported"], 6, "{imported}");
    assert_eq!(summary["checkpoints"], 2, "{imported}");
    schema.ok(&["export", "-o", from_pg.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(&from_pg).unwrap(),
        std::fs::read_to_string(&from_sled).unwrap(),
        "the PostgreSQL store exports the same lines as the embedded one"
    );

    let rows = json_lines(&schema.ok(&["--json", "subscriptions"]));
    let orders = rows.iter().find(|r| r["name"] == "orders").unwrap();
    assert_eq!(
        (&orders["checkpoint"], &orders["parked"], &orders["state"]),
        (&Value::from(6), &Value::from(2), &Value::from("stopped"))
    );
    let reporting = rows.iter().find(|r| r["name"] == "reporting").unwrap();
    assert_eq!(
        (&reporting["checkpoint"], &reporting["state"]),
        (&Value::from(2), &Value::from("-"))
    );
    assert!(schema.ok(&["verify"]).contains("no damage found"));

    let again = schema.tidings(&["import", from_sled.to_str().unwrap()]);
    assert_eq!(again.code, 1, "{again:?}");
    assert!(again.stderr.contains("not empty"), "{again:?}");
    let resumed = schema.ok(&["import", "--resume", from_sled.to_str().unwrap()]);
    assert!(
        resumed.contains("skipped 6 already in the store"),
        "{resumed}"
    );
}

#[test]
fn commands_other_than_import_never_create_a_schema_and_import_refuses_a_foreign_one() {
    let Some(schema) = Schema::fresh("cli missing schema on PostgreSQL") else {
        return;
    };
    for args in [
        &["stats"][..],
        &["streams"],
        &["subscriptions"],
        &["verify"],
    ] {
        let run = schema.tidings(args);
        assert_eq!(run.code, i32::from(EXIT_NOT_FOUND), "{args:?}: {run:?}");
        assert!(
            run.stderr
                .contains(&format!("no tidings store in schema \"{}\"", schema.name())),
            "{run:?}"
        );
    }
    assert!(!pg::schema_exists(schema.name()), "nothing was created");

    let name = schema.name();
    pg::execute(&format!(
        "CREATE SCHEMA {name}; CREATE TABLE {name}.other (x int)"
    ))
    .unwrap();
    let run = schema.tidings(&["streams"]);
    assert_eq!(run.code, i32::from(EXIT_NOT_FOUND), "{run:?}");
    let run = run_raw(
        &["--store", &pg::url(), "--schema", name, "import", "-"],
        Some(b""),
    );
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("holds tables but no tidings store"),
        "{run:?}"
    );
}

#[test]
fn an_unreachable_server_is_a_one_line_error_at_once_that_hides_the_password() {
    for url in [
        "postgres://root:s3cret@127.0.0.1:1/test",
        "postgresql://root:s3cret@127.0.0.1:1/test",
    ] {
        for args in [&["stats"][..], &["subscriptions"], &["import", "-"]] {
            let started = Instant::now();
            let mut all = vec!["--store", url];
            all.extend_from_slice(args);
            let run = run_raw(&all, Some(b""));
            assert_eq!(run.code, 1, "{all:?}: {run:?}");
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{all:?}: {run:?}"
            );
            assert_eq!(run.stderr.lines().count(), 1, "one line: {run:?}");
            assert!(
                run.stderr
                    .starts_with("tidings: cannot connect to PostgreSQL at postgres")
                    && run.stderr.contains("root:***@127.0.0.1:1/test"),
                "{run:?}"
            );
            assert!(!run.stderr.contains("s3cret"), "{run:?}");
            assert!(run.stdout.is_empty(), "{run:?}");
        }
    }
}

#[test]
fn a_bad_schema_name_and_a_schema_for_a_directory_are_usage_errors() {
    for bad in ["Tidings", "shop-1", "1shop", "x\"y", ""] {
        let run = run_raw(&["--store", &pg::url(), "--schema", bad, "streams"], None);
        assert_eq!(run.code, i32::from(EXIT_USAGE), "{bad:?}: {run:?}");
        assert!(
            run.stderr.contains("schema name is 1 to 48 of a-z"),
            "{run:?}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    prepare(dir.path());
    let run = run_raw(
        &[
            "--store",
            dir.path().to_str().unwrap(),
            "--schema",
            "shop",
            "streams",
        ],
        None,
    );
    assert_eq!(run.code, i32::from(EXIT_USAGE), "{run:?}");
    assert!(run.stderr.contains("names a PostgreSQL schema"), "{run:?}");
}
