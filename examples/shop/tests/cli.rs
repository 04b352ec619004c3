//! The `shop_example` binary, run as a user would: the story (twice on one data directory, and
//! `--fresh`), the subcommands on the store it leaves, and bad input refused with nothing
//! recorded.

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_shop_example");

fn shop(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run shop_example")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs and expects exit code `code`; returns stdout.
fn expect(dir: &Path, args: &[&str], code: i32) -> String {
    let out = shop(dir, args);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(code),
        "shop_example {args:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    stdout + &stderr
}

/// The `placed` figure of the `orders:` line of `status`.
fn placed(dir: &Path) -> u64 {
    let status = expect(dir, &["status"], 0);
    let line = status
        .lines()
        .find(|l| l.starts_with("orders:"))
        .unwrap_or_else(|| panic!("no orders line in {status}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn the_story_passes_twice_on_one_store_and_the_subcommands_work_on_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("shop");

    let first = expect(&data, &["story", "--orders", "10"], 0);
    for phase in [
        "1. The shop opens",
        "2. Orders flow",
        "3. The stock service goes down",
        "4. The stock service comes back",
        "stock lag",
        "every invariant holds.",
    ] {
        assert!(first.contains(phase), "{phase:?} missing from:\n{first}");
    }
    assert_eq!(first.matches("  PASS  ").count(), 9, "{first}");
    assert!(!first.contains("FAIL"), "{first}");

    // Again on the same store: it adds to it and checks the whole of it.
    let second = expect(&data, &["story", "--orders", "10"], 0);
    assert!(second.contains("from earlier runs"), "{second}");
    assert!(
        second.contains("whole store: 40 placed"),
        "the second run does not report the whole store:\n{second}"
    );
    assert_eq!(placed(&data), 40);

    // Subcommands on the existing store.
    let restocked = expect(&data, &["restock", "widget=5", "gizmo=2"], 0);
    assert!(restocked.starts_with("stock: "), "{restocked}");
    let order = expect(
        &data,
        &["place-order", "--customer", "ada", "widget=2", "gizmo=1"],
        0,
    );
    assert!(
        order.starts_with("o-000041") && order.contains("confirmed"),
        "{order}"
    );
    assert_eq!(placed(&data), 41);
    let declined = expect(&data, &["place-order", "gadget=9"], 0);
    assert!(declined.contains("payment declined"), "{declined}");

    // Bad input: refused with a reason, nothing recorded.
    let again = expect(&data, &["place-order", "--id", "o-000041", "widget=1"], 1);
    assert!(again.contains("order already placed"), "{again}");
    let zero = expect(&data, &["place-order", "widget=0"], 2);
    assert!(zero.contains("quantity"), "{zero}");
    let unknown = expect(&data, &["restock", "sprocket=1"], 2);
    assert!(unknown.contains("unknown sku"), "{unknown}");
    assert_eq!(placed(&data), 42);

    let status = expect(&data, &["status", "--orders"], 0);
    for name in ["payments", "stock", "fulfilment", "shop-view"] {
        assert!(
            status.contains(&format!("  {name}")) && status.contains("Stopped"),
            "{status}"
        );
    }
    assert!(status.contains("o-000042"), "{status}");
    let check = expect(&data, &["check"], 0);
    assert_eq!(check.matches("  PASS  ").count(), 9, "{check}");

    // --fresh starts over.
    let fresh = expect(&data, &["story", "--fresh", "--orders", "10"], 0);
    assert!(fresh.contains("(new)"), "{fresh}");
    assert_eq!(placed(&data), 20);
}

#[test]
fn fresh_refuses_to_delete_a_directory_that_is_not_a_store() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "keep me").unwrap();
    let out = expect(dir.path(), &["story", "--fresh"], 1);
    assert!(out.contains("not a tidings store"), "{out}");
    assert!(dir.path().join("notes.txt").exists());
    let status = expect(&dir.path().join("missing"), &["status"], 1);
    assert!(status.contains("no shop store"), "{status}");
}

#[test]
fn a_store_with_events_the_shop_cannot_read_is_reported_with_the_way_out() {
    use tidings::store::{EventData, EventStore, ExpectedVersion, SledEventStore};

    let dir = tempfile::tempdir().unwrap();
    // What the first version of this example wrote: an `OrderPlaced` of another shape.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = SledEventStore::open(dir.path()).unwrap();
        let old = EventData::new("OrderPlaced", br#"{"sku":"widget","quantity":1}"#.to_vec());
        store
            .append("order-1.1", ExpectedVersion::NoStream, vec![old])
            .await
            .unwrap();
    });
    drop(runtime);
    let out = expect(dir.path(), &["story"], 1);
    assert!(
        out.contains("cannot read") && out.contains("story --fresh"),
        "{out}"
    );
    let fresh = expect(dir.path(), &["story", "--fresh", "--orders", "4"], 0);
    assert!(fresh.contains("every invariant holds."), "{fresh}");
}

#[test]
fn admin_runs_the_operations_cli_on_the_shop_store_with_payloads_decoded() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("shop");
    expect(&data, &["story", "--orders", "5"], 0);

    let subscriptions = expect(&data, &["admin", "subscriptions"], 0);
    for name in ["payments", "stock", "fulfilment", "shop-view"] {
        assert!(
            subscriptions.lines().any(|l| l.starts_with(name)),
            "{name} missing from:\n{subscriptions}"
        );
    }
    // The first order's stream, decoded by the shop's registered event types.
    let streams = expect(&data, &["admin", "--json", "streams"], 0);
    let order = streams
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["stream_id"].as_str().map(str::to_owned))
        .find(|s| s.starts_with("order-"))
        .unwrap_or_else(|| panic!("no order stream in:\n{streams}"));
    let read = expect(&data, &["admin", "--json", "--payload", "read", &order], 0);
    let first: serde_json::Value = serde_json::from_str(read.lines().next().unwrap()).unwrap();
    assert_eq!(first["event_type"], "OrderPlaced", "{read}");
    assert!(
        first["payload"]["OrderPlaced"]["order_id"].is_string(),
        "payload not decoded: {read}"
    );
    // `admin --help` is the operations CLI's help, and its usage errors are its own.
    assert!(expect(&data, &["admin", "--help"], 0).contains("verify"));
    expect(&data, &["admin", "no-such-command"], 2);
}

/// `GET path` on the console at `addr`: the status code and the body.
fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the console");
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, response)
}

#[test]
fn the_story_with_console_serves_it_and_keeps_it_up_until_ctrl_c() {
    use std::io::BufRead;
    use std::process::Stdio;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .arg("--data-dir")
        .arg(dir.path().join("shop"))
        .args([
            "story",
            "--fresh",
            "--orders",
            "6",
            "--console",
            "127.0.0.1:0",
        ])
        .env_remove("RUST_LOG")
        .env_remove("TIDINGS_CONSOLE_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run shop_example");
    let (tx, lines) = mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut wait_for = |what: &str| -> String {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    seen.push(line.clone());
                    if line.contains(what) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line with {what:?}; the story said:\n{}",
                    seen.join("\n")
                ),
            }
        }
    };
    // "console: http://127.0.0.1:PORT/ (token for replay, skip and reset: TOKEN)"
    let line = wait_for("console: http://");
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap()
        .to_owned();
    assert!(
        line.contains("token for replay, skip and reset: "),
        "{line}"
    );
    wait_for("The console stays up at");

    // After the report, with the services still running: every one caught up.
    let (status, body) = http_get(&addr, "/api/subscriptions");
    assert_eq!(status, 200, "{body}");
    for service in ["fulfilment", "payments", "stock", "shop-view"] {
        assert!(
            body.contains(&format!("\"name\":\"{service}\"")),
            "{service}: {body}"
        );
    }
    assert!(body.contains("\"lag\":0"), "{body}");
    // The log, decoded by the shop's own event types.
    let (status, body) = http_get(&addr, "/api/events?stream=order-o-000001");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("OrderPlaced"), "{body}");
    let (status, page) = http_get(&addr, "/");
    assert_eq!(status, 200);
    assert!(page.contains("<html"), "{page}");

    // Ctrl-C ends it, with the story's own exit code.
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        assert!(
            Instant::now() < deadline,
            "the story did not end after Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(code, Some(0), "{}", seen.join("\n"));
}
