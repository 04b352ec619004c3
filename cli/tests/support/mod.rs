//! A prepared store and a way to run the `tidings` binary on it.

#![allow(dead_code)]

pub mod pg;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tidings::store::{EventData, EventStore, ExpectedVersion, SledEventStore};
use tidings::subscription::{
    EventContext, FailurePolicy, HandleEvent, HandlerError, SubscriptionConfig, Subscriptions,
};
use tidings::{async_trait, DomainEvent, EventHandler};
use uuid::Uuid;

/// The binary under test.
pub const TIDINGS: &str = env!("CARGO_BIN_EXE_tidings");

/// The order value the `orders` handler fails on while it is broken.
pub const POISON: u64 = 13;

/// The fixture's event types.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, DomainEvent)]
pub enum ShopEvent {
    /// An order.
    OrderPlaced {
        /// Its value.
        cents: u64,
    },
}

/// Counts orders in its state; fails on [`POISON`] while `broken`.
#[derive(Clone, EventHandler)]
#[event_handler(name = "orders", events(ShopEvent))]
pub struct Orders(pub Arc<AtomicBool>);

#[async_trait]
impl HandleEvent<ShopEvent> for Orders {
    async fn handle(
        &mut self,
        event: ShopEvent,
        ctx: &mut EventContext<'_>,
    ) -> Result<(), HandlerError> {
        let ShopEvent::OrderPlaced { cents } = event;
        if cents == POISON && self.0.load(Ordering::SeqCst) {
            return Err("poison order".into());
        }
        let n: u64 = ctx.get_json(b"count").await?.unwrap_or(0);
        ctx.put_json(b"count", &(n + 1))?;
        Ok(())
    }
}

/// The failure policy of the fixture's subscription: park at once.
pub fn config() -> SubscriptionConfig {
    SubscriptionConfig::default().failure_policy(FailurePolicy::retry_then_park(
        0,
        Duration::from_millis(1),
        Duration::from_millis(1),
    ))
}

/// The correlation id of the `Note` event at position 6.
pub const CORRELATION: &str = "0190c0de-0000-7000-8000-000000000001";

/// The events of the fixture, one append (and so one log chunk) each:
///
/// | position | stream | type | payload |
/// |---|---|---|---|
/// | 1 | order-1 | OrderPlaced | 100 |
/// | 2 | order-2 | OrderPlaced | 13 (poison: parked) |
/// | 3 | order-3 | OrderPlaced | 300 |
/// | 4 | order-2 | OrderPlaced | 14 (parked behind 2) |
/// | 5 | payment-1 | Raw | bytes 00 01 ff (not JSON) |
/// | 6 | payment-1 | Note | `{"note": "a b",  "n":1}` (JSON with its own spacing), ids set |
///
/// The subscription `orders` has handled everything and parked 2 and 4 (checkpoint 6); a plain
/// consumer `reporting` has checkpoint 2.
/// The W3C traceparent the fixture's `Note` event carries in its metadata.
pub const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

pub fn prepare(dir: &Path) {
    actix::System::new().block_on(async {
        let store = Arc::new(SledEventStore::open(dir).expect("open the fixture store"));
        for (stream, cents) in [
            ("order-1", 100),
            ("order-2", POISON),
            ("order-3", 300),
            ("order-2", 14),
        ] {
            let data = ShopEvent::OrderPlaced { cents }.to_event_data().unwrap();
            store
                .append(stream, ExpectedVersion::Any, vec![data])
                .await
                .unwrap();
        }
        store
            .append(
                "payment-1",
                ExpectedVersion::NoStream,
                vec![EventData::new("Raw", vec![0u8, 1, 0xff])],
            )
            .await
            .unwrap();
        let note = EventData::new("Note", br#"{"note": "a b",  "n":1}"#.to_vec())
            .with_correlation_id(CORRELATION.parse().unwrap())
            .with_causation_id(Uuid::now_v7())
            .with_schema_version(3)
            .with_metadata("tenant", "acme")
            .with_trace_context(TRACEPARENT, None)
            .unwrap();
        store
            .append("payment-1", ExpectedVersion::Exact(1), vec![note])
            .await
            .unwrap();

        let subscriptions = Subscriptions::new(store.clone());
        let handle = subscriptions
            .start_with(Orders(Arc::new(AtomicBool::new(true))), config())
            .unwrap();
        handle
            .wait_until_handled(6, std::time::Duration::from_secs(120))
            .await
            .unwrap();
        let status = handle.stop().await;
        assert_eq!(status.parked, 2, "the fixture parks two events: {status:?}");
        store.save_checkpoint("reporting", 2).await.unwrap();
        store.close().await;
    });
}

/// What a run of the binary gave.
#[derive(Debug)]
pub struct Run {
    /// Exit code.
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs `tidings --store DIR ARGS...`, failing the test if it does not end within a minute
/// (a hang is a bug, not slowness).
pub fn tidings(dir: &Path, args: &[&str]) -> Run {
    let mut all = vec!["--store", dir.to_str().unwrap()];
    all.extend_from_slice(args);
    run_raw(&all, None)
}

/// Runs the binary with exactly `args` (and `stdin`, if any).
pub fn run_raw(args: &[&str], stdin: Option<&[u8]>) -> Run {
    let mut cmd = Command::new(TIDINGS);
    cmd.args(args)
        .env_remove("TIDINGS_STORE")
        .env_remove("TIDINGS_SCHEMA")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    let mut child = cmd.spawn().expect("spawn tidings");
    if let Some(input) = stdin {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("tidings {args:?} did not finish within a minute");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Starts `tidings --store DIR ARGS...` with its output piped, for a test that reads it while
/// it runs (and ends it with [`interrupt`]).
pub fn spawn(dir: &Path, args: &[&str]) -> std::process::Child {
    Command::new(TIDINGS)
        .arg("--store")
        .arg(dir)
        .args(args)
        .env_remove("TIDINGS_STORE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tidings")
}

/// Sends `child` Ctrl-C (SIGINT, with the `kill` command: the workspace forbids unsafe code)
/// and returns its exit code.
pub fn interrupt(mut child: std::process::Child) -> Option<i32> {
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(sent.success(), "kill -INT {}", child.id());
    child.wait().expect("wait for tidings").code()
}

/// Runs and asserts exit code 0, returning standard output.
pub fn ok(dir: &Path, args: &[&str]) -> String {
    let run = tidings(dir, args);
    assert_eq!(run.code, 0, "tidings {args:?} failed: {run:?}");
    run.stdout
}

/// Parses JSON lines.
pub fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

/// Every event of the store at `dir`, opened in this process.
pub fn all_events(dir: &Path) -> Vec<tidings::store::RecordedEvent> {
    runtime().block_on(async {
        let store = SledEventStore::open(dir).unwrap();
        let mut out = Vec::new();
        let mut from = 1;
        loop {
            let page = store
                .read_all(from, 100, &tidings::store::Filter::all())
                .await
                .unwrap();
            out.extend(page.events.iter().cloned());
            from = page.next_position;
            if page.is_end() {
                break;
            }
        }
        store.close().await;
        out
    })
}

/// A current-thread tokio runtime.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}
