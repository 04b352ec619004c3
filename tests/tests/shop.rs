//! End-to-end tests of the shop example (`examples/shop`): order, payment and stock aggregates
//! reacting to each other's events through durable subscriptions, with the invariants checked
//! from the event log (`shop_example::invariants`):
//!
//! - a normal run: every invariant holds, with the exact outcome counts the orders call for, and
//!   forged duplicate events are caught by the checks (so they can fail);
//! - the stock service stopped while orders are being placed: payments go on, stock's lag grows
//!   and orders wait (the "one final state" check fails meanwhile), then it catches up and every
//!   invariant holds;
//! - a flaky payment gateway: failed calls are retried with backoff and succeed; a gateway that
//!   is down makes the payment service park orders, which are replayed once it is back;
//! - the whole process (`src/bin/shop_child.rs`) killed with SIGKILL at random moments while it
//!   places orders, restarted each time (10 cycles; `TIDINGS_SHOP_CRASH_CYCLES` for more): after
//!   catching up every invariant holds, every acknowledged order is in the log, decided once.

use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use shop_example::catalog::Line;
use shop_example::gateway::SimulatedGateway;
use shop_example::invariants::INVARIANTS;
use shop_example::payment::PaymentEvent;
use shop_example::stock::StockEvent;
use shop_example::view::{OutcomeView, PaymentView};
use shop_example::{Check, Service, Shop, ShopConfig};
use tidings::store::{EventStore, ExpectedVersion};
use tidings::subscription::{FailurePolicy, SubscriptionConfig};
use tidings::DomainEvent;
use tidings_tests::support::{env_or, LineChild};

const CHILD: &str = env!("CARGO_BIN_EXE_shop_child");
const SETTLE: Duration = Duration::from_secs(30);

/// Order number `n` (the same mix as `shop_child`): every fifth is over the card limit
/// (declined), every fifth wants a scarce gadget (confirmed while they last, then out of stock
/// and refunded), the rest are plentiful.
fn order_lines(n: u64) -> Vec<Line> {
    match n % 5 {
        0 => vec![Line::new("gadget", 4)],
        1 => vec![Line::new("gadget", 1), Line::new("widget", 1)],
        2 => vec![Line::new("doohickey", 1 + (n % 3) as u32)],
        _ => vec![Line::new("widget", 1), Line::new("gizmo", 2)],
    }
}

/// Plenty of everything but gadgets (3).
fn restock() -> Vec<Line> {
    vec![
        Line::new("widget", 1_000),
        Line::new("gizmo", 1_000),
        Line::new("doohickey", 1_000),
        Line::new("gadget", 3),
    ]
}

/// Places orders `<prefix>-<n>` for `n` in `range`, four at a time.
async fn place(shop: &Shop, prefix: &str, range: std::ops::Range<u64>) {
    let one = |n: u64| async move {
        if n < range.end {
            let id = format!("{prefix}-{n}");
            shop.place_order(&id, "ada", order_lines(n))
                .await
                .unwrap_or_else(|e| panic!("placing {id}: {e}"));
        }
    };
    for n in range.clone().step_by(4) {
        tokio::join!(one(n), one(n + 1), one(n + 2), one(n + 3));
    }
}

fn verdict<'a>(checks: &'a [Check], name: &str) -> &'a Check {
    checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name:?} in {checks:#?}"))
}

fn assert_all_pass(checks: &[Check]) {
    assert_eq!(checks.len(), INVARIANTS.len());
    let failed: Vec<&Check> = checks.iter().filter(|c| !c.pass).collect();
    assert!(failed.is_empty(), "invariants failed: {failed:#?}");
}

fn fast_subscriptions() -> SubscriptionConfig {
    SubscriptionConfig::default()
        .commit_every(10)
        .commit_interval(Duration::from_millis(20))
}

#[actix::test]
async fn a_normal_run_keeps_every_invariant_and_forged_duplicates_are_caught() {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::open(dir.path(), ShopConfig::default()).unwrap();
    shop.restock(restock()).await.unwrap();
    shop.start_all().unwrap();
    place(&shop, "o", 0..40).await;
    shop.settle(SETTLE).await.unwrap();

    let checks = shop.check().await.unwrap();
    assert_all_pass(&checks);
    // 8 over the card limit; 8 want a gadget and 3 are in stock; 24 plentiful.
    let t = shop.read_model().await.unwrap().totals;
    assert_eq!(
        (
            t.placed,
            t.confirmed,
            t.cancelled_declined,
            t.cancelled_out_of_stock
        ),
        (40, 27, 8, 5)
    );
    assert_eq!(t.refunded_cents, 5 * (4_999 + 1_250));

    // A second charge and a second reservation for order o-3, written behind the aggregates'
    // backs: the checks read the log, so they see both.
    let charged = PaymentEvent::PaymentVerified {
        order_id: "o-3".into(),
        amount_cents: 1,
        reference: "forged".into(),
    };
    let reserved = StockEvent::StockReserved {
        order_id: "o-3".into(),
        items: vec![Line::new("widget", 1)],
    };
    let store = shop.store();
    store
        .append(
            "payment-o-3",
            ExpectedVersion::Any,
            vec![charged.to_event_data().unwrap()],
        )
        .await
        .unwrap();
    store
        .append(
            "stock-main",
            ExpectedVersion::Any,
            vec![reserved.to_event_data().unwrap()],
        )
        .await
        .unwrap();
    shop.settle(SETTLE).await.unwrap();
    let checks = shop.check().await.unwrap();
    for name in [
        "no order is charged twice",
        "no order is reserved twice",
        "money charged minus refunded equals the total of confirmed orders",
        "every confirmed order was paid and its items reserved",
    ] {
        let c = verdict(&checks, name);
        assert!(!c.pass, "{name} passed with a forged duplicate: {c:?}");
    }
    assert!(verdict(&checks, "no order is charged twice")
        .detail
        .contains("o-3"));
    shop.shutdown().await;
}

#[actix::test]
async fn the_stock_service_stopped_during_load_catches_up_and_every_invariant_holds() {
    let dir = tempfile::tempdir().unwrap();
    let config = ShopConfig::default().subscription(fast_subscriptions());
    let shop = Shop::open(dir.path(), config).unwrap();
    shop.restock(restock()).await.unwrap();
    shop.start_all().unwrap();
    place(&shop, "o", 0..12).await;

    // The stock service goes down while orders are being placed.
    let ((), stopped) = tokio::join!(place(&shop, "o", 12..52), shop.stop(Service::Stock));
    let stopped = stopped.expect("stock was running");
    shop.settle(SETTLE).await.unwrap();
    assert!(!shop.is_running(Service::Stock));

    // Payments went on: every order is charged or declined, but the paid ones wait for stock.
    let model = shop.read_model().await.unwrap();
    assert_eq!(model.totals.placed, 52);
    assert!(model
        .orders
        .values()
        .all(|s| s.payment != PaymentView::Pending));
    let waiting: Vec<&String> = model
        .orders
        .iter()
        .filter(|(_, s)| s.outcome == OutcomeView::Pending)
        .map(|(id, _)| id)
        .collect();
    assert!(
        !waiting.is_empty(),
        "no order waits for the stopped stock service"
    );
    assert!(waiting
        .iter()
        .all(|id| model.orders[*id].payment == PaymentView::Verified));
    let lag = shop.lag(Service::Stock).await.unwrap();
    assert!(lag > 0);
    assert_eq!(
        shop.store().load_checkpoint("stock").await.unwrap(),
        Some(stopped.checkpoint)
    );
    let checks = shop.check().await.unwrap();
    let one_final = verdict(&checks, "every order reaches exactly one final state");
    assert!(
        !one_final.pass,
        "orders wait, yet the check passed: {one_final:?}"
    );

    // It comes back and catches up on everything it missed.
    shop.start(Service::Stock).unwrap();
    shop.settle(SETTLE).await.unwrap();
    assert_all_pass(&shop.check().await.unwrap());
    let status = shop.status(Service::Stock).unwrap();
    assert!(status.events_handled >= waiting.len() as u64);
    let t = shop.read_model().await.unwrap().totals;
    assert_eq!((t.placed, t.pending()), (52, 0));
    // 3 gadgets: whoever came first got them, the other gadget orders were refunded.
    assert_eq!(t.cancelled_out_of_stock + 3, 52 / 5 + 1);
    shop.shutdown().await;
}

#[actix::test]
async fn a_flaky_gateway_is_retried_and_a_down_gateway_parks_orders_until_replayed() {
    let dir = tempfile::tempdir().unwrap();
    // Each charge and refund fails twice before it goes through.
    let gateway = Arc::new(SimulatedGateway::default().fail_first(2));
    let config = ShopConfig::default()
        .gateway(gateway.clone())
        .subscription(fast_subscriptions())
        .payments_failure_policy(FailurePolicy::retry_then_park(
            3,
            Duration::from_millis(1),
            Duration::from_millis(4),
        ));
    let shop = Shop::open(dir.path(), config).unwrap();
    shop.restock(restock()).await.unwrap();
    shop.start_all().unwrap();
    place(&shop, "flaky", 0..20).await;
    shop.settle(SETTLE).await.unwrap();
    assert_all_pass(&shop.check().await.unwrap());
    let payments = shop.status(Service::Payments).unwrap();
    let stats = gateway.stats();
    // 20 charges (4 declined: over the card limit) and 1 refund (4 gadget orders for 3
    // gadgets), each key failing twice first.
    assert_eq!((stats.charges, stats.refunds), (16, 1));
    assert_eq!(stats.failures, 2 * (20 + 1));
    assert_eq!(payments.retries, stats.failures);
    assert_eq!((payments.parked, stats.max_charges_per_order), (0, 1));

    // The gateway goes down: after 3 retries each order is parked (its stream waits, in
    // order), and the orders stay undecided.
    gateway.set_down(true);
    place(&shop, "down", 0..6).await;
    shop.settle(SETTLE).await.unwrap();
    let parked = shop.subscriptions().parked("payments").await.unwrap();
    let streams: BTreeSet<&str> = parked.iter().map(|p| p.stream_id.as_str()).collect();
    assert_eq!(
        streams,
        (0..6)
            .map(|n| format!("order-down-{n}"))
            .collect::<BTreeSet<_>>()
            .iter()
            .map(String::as_str)
            .collect()
    );
    assert!(parked[0].reason.contains("gateway is down"), "{parked:?}");
    let checks = shop.check().await.unwrap();
    assert!(!verdict(&checks, "every order reaches exactly one final state").pass);

    // It comes back; the operator replays the parked streams: eventually consistent.
    gateway.set_down(false);
    for stream in &streams {
        let outcome = shop
            .subscriptions()
            .replay_parked("payments", stream)
            .await
            .unwrap();
        assert_eq!((outcome.handled, outcome.still_parked), (1, 0), "{stream}");
    }
    shop.settle(SETTLE).await.unwrap();
    assert_all_pass(&shop.check().await.unwrap());
    assert_eq!(shop.status(Service::Payments).unwrap().parked, 0);
    assert_eq!(gateway.stats().max_charges_per_order, 1);
    assert_eq!(shop.read_model().await.unwrap().totals.placed, 26);
    shop.shutdown().await;
}

/// What one killed child did.
#[derive(Debug, Default)]
struct Run {
    started: bool,
    acked: Vec<String>,
    /// Commands answered from history (repeated reactions) in this run.
    repeats: u64,
    killed: bool,
    stderr: String,
}

/// Runs `shop_child` on `dir` and SIGKILLs it `after` its `STARTED` line.
fn run_child(dir: &Path, cycle: u64, after: Duration) -> Run {
    let child = LineChild::spawn(
        Command::new(CHILD).arg(dir).arg(cycle.to_string()),
        "shop_child",
    );
    let mut run = Run::default();
    let take = |run: &mut Run, line: String| match line.split_once(' ') {
        Some(("ACK", id)) => run.acked.push(id.to_owned()),
        Some(("REPEATS", n)) => run.repeats = n.parse().expect("a count"),
        None if line == "STARTED" => run.started = true,
        _ => panic!("unexpected line from shop_child: {line:?}"),
    };
    let give_up = Instant::now() + Duration::from_secs(20);
    let mut kill_at = None;
    loop {
        let now = Instant::now();
        if kill_at.is_some_and(|t| now >= t) || now >= give_up {
            break;
        }
        match child.lines.recv_timeout(Duration::from_millis(5)) {
            Ok(line) => {
                take(&mut run, line);
                if run.started && kill_at.is_none() {
                    kill_at = Some(Instant::now() + after);
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let ended = child.kill();
    run.killed = ended.status.signal() == Some(libc::SIGKILL);
    for line in ended.rest {
        take(&mut run, line);
    }
    run.stderr = ended.stderr;
    run
}

#[test]
fn the_shop_killed_at_random_moments_loses_no_acknowledged_order_and_does_nothing_twice() {
    let cycles = env_or("TIDINGS_SHOP_CRASH_CYCLES", 10);
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::thread_rng();
    let (mut acked, mut repeats) = (Vec::new(), 0);
    for cycle in 0..cycles {
        let after = Duration::from_millis(rng.gen_range(20..400));
        let run = run_child(dir.path(), cycle, after);
        assert!(
            run.started && run.killed,
            "cycle {cycle}: the child was not killed while running: {run:?}"
        );
        acked.extend(run.acked);
        repeats += run.repeats;
    }
    assert!(
        !acked.is_empty(),
        "no order was acknowledged in {cycles} cycles"
    );

    // Restart once more and let it catch up on everything the kills left behind.
    actix::System::new().block_on(async {
        let shop = Shop::open(dir.path(), ShopConfig::default()).unwrap();
        shop.start_all().unwrap();
        shop.settle(Duration::from_secs(60)).await.unwrap();
        assert_all_pass(&shop.check().await.unwrap());
        let model = shop.read_model().await.unwrap();
        let lost: Vec<&String> = acked
            .iter()
            .filter(|id| {
                model
                    .orders
                    .get(*id)
                    .is_none_or(|s| s.outcome == OutcomeView::Pending)
            })
            .collect();
        assert!(
            lost.is_empty(),
            "acknowledged orders lost or undecided: {lost:?}"
        );
        for id in acked.iter().take(50) {
            let placed = shop
                .store()
                .read_stream(&format!("order-{id}"), 1, 10)
                .await
                .unwrap();
            assert_eq!(placed[0].event_type, "OrderPlaced", "{id}");
        }
        repeats += shop.repeated_commands();
        println!(
            "{cycles} kills: {} acknowledged orders, {} in the log ({} confirmed, {} cancelled), \
             head {}, {repeats} repeated reactions answered from history",
            acked.len(),
            model.totals.placed,
            model.totals.confirmed,
            model.totals.cancelled(),
            shop.store().head()
        );
        // With commits every 8 events or 20 ms under load, a kill leaves handled but
        // uncommitted events behind: the next run reacts to them again, and the aggregates
        // answer from history. Several kills without one would mean the test tests nothing.
        if cycles >= 5 {
            assert!(
                repeats > 0,
                "{cycles} kills and no reaction was ever repeated"
            );
        }
        shop.shutdown().await;
    });
}
