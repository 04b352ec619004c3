//! W4 (end-to-end latency: command → event → handler) and W5 (aggregate commands over 10 000
//! aggregates, against cqrs-es with its in-memory store).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tidings::aggregate::{AggregateConfig, AggregateRegistry};
use tidings::store::{EventStore, SledEventStore};
use tidings::subscription::{EventContext, HandleEvent, HandlerError, Subscriptions};
use tidings::{async_trait, EventHandler};
use tokio::sync::mpsc;

use crate::baseline;
use crate::domain::{note, now_nanos, Add, Counter, CounterEvent, CqCounter};
use crate::report::{quantile, Better, Row, Target};
use crate::w12::runtime;
use crate::Settings;

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Sends each event's command-to-handler latency (µs) to the benchmark.
#[derive(EventHandler)]
#[event_handler(name = "bench-e2e", events(CounterEvent))]
pub struct EndToEnd {
    tx: mpsc::UnboundedSender<f64>,
}

#[async_trait]
impl HandleEvent<CounterEvent> for EndToEnd {
    async fn handle(
        &mut self,
        event: CounterEvent,
        _ctx: &mut EventContext<'_>,
    ) -> Result<(), HandlerError> {
        let CounterEvent::Added { sent_nanos, .. } = event;
        let _ = self.tx.send((now_nanos() - sent_nanos) as f64 / 1000.0);
        Ok(())
    }
}

/// W4: one command at a time to 100 aggregates; the time from sending the command until a
/// subscription's handler holds its event, p50/p99, beside raw `fdatasync` sampled between the
/// commands.
pub fn w4(s: &Settings, rows: &mut Vec<Row>) -> Result<(), String> {
    let n = if s.quick { 100 } else { 2_000 };
    let warmup = 20;
    let dir = s.tempdir()?;
    let store = Arc::new(SledEventStore::open(dir.path()).map_err(err)?);
    let raw_dir = s.tempdir()?;
    let mut probe = baseline::file::FsyncProbe::create(raw_dir.path()).map_err(err)?;
    let (e2e, ack, raw) = actix::System::new().block_on(async move {
        let shared: Arc<dyn EventStore> = store.clone();
        let registry =
            AggregateRegistry::<Counter>::start(shared.clone(), AggregateConfig::default());
        let subscriptions = Subscriptions::new(shared);
        let (tx, mut rx) = mpsc::unbounded_channel();
        subscriptions.start(EndToEnd { tx }).map_err(err)?;
        let (mut e2e, mut ack, mut raw) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..warmup + n {
            let sent = now_nanos();
            registry
                .execute_fresh(
                    &format!("{}", i % 100),
                    Add {
                        n: 1,
                        sent_nanos: sent,
                        note: note(),
                    },
                )
                .await
                .map_err(err)?;
            let acked = (now_nanos() - sent) as f64 / 1000.0;
            let seen = tokio::time::timeout(Duration::from_secs(30), rx.recv())
                .await
                .map_err(|_| "W4: the handler did not see the event within 30 s".to_string())?
                .ok_or("W4: the subscription stopped")?;
            // The disk's floor, sampled between commands (interleaved, same moments of the disk).
            let floor = probe.sample().map_err(err)?;
            if i >= warmup {
                e2e.push(seen);
                ack.push(acked);
                raw.push(floor);
            }
        }
        subscriptions.stop_all().await;
        registry.shutdown().await;
        Ok::<_, String>((e2e, ack, raw))
    })?;
    let q = |mut xs: Vec<f64>| {
        xs.sort_by(|a, b| a.total_cmp(b));
        (quantile(&xs, 0.5), quantile(&xs, 0.99))
    };
    let (e2e, ack, raw) = (q(e2e), q(ack), q(raw));
    s.log(format_args!("W4 e2e p50 {:.0} p99 {:.0} µs; command ack p50 {:.0} p99 {:.0}; raw fdatasync p50 {:.0} p99 {:.0}", e2e.0, e2e.1, ack.0, ack.1, raw.0, raw.1));
    let case = |what: &str| format!("{n} commands one at a time, {what}");
    rows.push(Row::vs(
        "W4",
        case("command → handler p50"),
        "µs",
        Better::Lower,
        e2e.0,
        "raw fdatasync",
        raw.0,
        Target::None,
    ));
    rows.push(Row::vs(
        "W4",
        case("command → handler p99"),
        "µs",
        Better::Lower,
        e2e.1,
        "raw fdatasync",
        raw.1,
        Target::RatioAtMost(2.0),
    ));
    rows.push(Row::vs(
        "W4",
        case("command → acknowledged p99"),
        "µs",
        Better::Lower,
        ack.1,
        "raw fdatasync",
        raw.1,
        Target::None,
    ));
    Ok(())
}

/// The aggregate a W5 command goes to: a fixed permutation of 10 000 ids.
fn aggregate_of(k: u64) -> String {
    format!("{}", k.wrapping_mul(2_654_435_761) % 10_000)
}

/// W5: commands over 10 000 aggregates from 256 concurrent tasks, through tidings' registry
/// (durable), in three configurations; and cqrs-es with `MemStore` (in memory, one task).
pub fn w5(s: &Settings, rows: &mut Vec<Row>) -> Result<(), String> {
    let commands: u64 = if s.quick { 2_000 } else { 200_000 };
    let tasks = 256u64;
    let configs = [
        (
            "tidings, all 10k resident, snapshot every 100 (defaults)",
            AggregateConfig::default(),
        ),
        (
            "tidings, 1k resident (LRU), no snapshots",
            AggregateConfig::default()
                .max_instances(1000)
                .snapshot_every(None),
        ),
        (
            "tidings, 1k resident (LRU), snapshot every 10",
            AggregateConfig::default()
                .max_instances(1000)
                .snapshot_every(Some(10)),
        ),
    ];
    let mut figures = Vec::new();
    for (name, config) in configs {
        let dir = s.tempdir()?;
        let store = SledEventStore::open(dir.path()).map_err(err)?;
        let rate = actix::System::new().block_on(async move {
            let registry = AggregateRegistry::<Counter>::start(store, config);
            let start = Instant::now();
            let handles: Vec<_> = (0..tasks)
                .map(|w| {
                    let registry = registry.clone();
                    actix::spawn(async move {
                        let mut k = w;
                        while k < commands {
                            registry
                                .execute_fresh(
                                    &aggregate_of(k),
                                    Add {
                                        n: 1,
                                        sent_nanos: 0,
                                        note: note(),
                                    },
                                )
                                .await
                                .map_err(err)?;
                            k += tasks;
                        }
                        Ok::<_, String>(())
                    })
                })
                .collect();
            for h in handles {
                h.await.map_err(err)??;
            }
            let rate = commands as f64 / start.elapsed().as_secs_f64();
            let stats = registry.stats();
            registry.shutdown().await;
            Ok::<_, String>((rate, stats))
        })?;
        s.log(format_args!(
            "W5 {name}: {:.0} commands/s ({:?})",
            rate.0, rate.1
        ));
        figures.push((name, rate.0));
    }

    let cq = cqrs_in_child(commands)?;
    s.log(format_args!("W5 cqrs-es MemStore: {cq:.0} commands/s"));
    for (name, rate) in figures {
        rows.push(Row::vs(
            "W5",
            format!("{commands} commands, 256 tasks; {name}"),
            "commands/s",
            Better::Higher,
            rate,
            "cqrs-es MemStore",
            cq,
            Target::RatioAtLeast(1.0),
        ));
    }
    Ok(())
}

/// The hidden subcommand that runs cqrs-es: `__cqrs <commands>`.
pub const CQRS_CHILD: &str = "__cqrs";

/// cqrs-es 0.5's `MemStore` prints two lines to stdout per command ("loading: ...",
/// "storing: ..."), so it runs in a child process whose stdout is `/dev/null`; its figure comes
/// back on stderr.
fn cqrs_in_child(commands: u64) -> Result<f64, String> {
    let exe = std::env::current_exe().map_err(err)?;
    let out = std::process::Command::new(exe)
        .args([CQRS_CHILD, &commands.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
        .map_err(err)?;
    let text = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!("the cqrs-es child failed ({}): {text}", out.status));
    }
    text.lines()
        .find_map(|l| l.strip_prefix("commands/s "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("the cqrs-es child printed {text:?}"))
}

/// Runs in the child: `commands` commands over 10 000 aggregates, one at a time, through
/// `CqrsFramework` with `MemStore` (it has no concurrency check, so concurrent tasks would lose
/// events; one task is its correct and fastest use on one thread).
pub fn cqrs_child(args: &[String]) -> Result<(), String> {
    let [commands] = args else {
        return Err(format!("usage: {CQRS_CHILD} <commands>"));
    };
    let commands: u64 = commands
        .parse()
        .map_err(|_| format!("not a number: {commands:?}"))?;
    let rt = runtime()?;
    let rate = rt.block_on(async {
        let cqrs = cqrs_es::CqrsFramework::new(
            cqrs_es::mem_store::MemStore::<CqCounter>::default(),
            vec![],
            (),
        );
        let start = Instant::now();
        for k in 0..commands {
            cqrs.execute(
                &aggregate_of(k),
                Add {
                    n: 1,
                    sent_nanos: 0,
                    note: note(),
                },
            )
            .await
            .map_err(err)?;
        }
        Ok::<_, String>(commands as f64 / start.elapsed().as_secs_f64())
    })?;
    eprintln!("commands/s {rate}");
    Ok(())
}
