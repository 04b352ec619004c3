//! The shop as separate programs on PostgreSQL: each service runs in a process of its own
//! (`shop_example serve --service NAME --store postgres://...`, here run as
//! `shop_child serve ...`, which is the same program: `src/bin/shop_child.rs`).
//!
//! - **the story**: `story --store ... --fresh` runs end to end (it starts the services as
//!   child processes, kills the stock process with SIGKILL, starts it again, and a standby takes
//!   over from it), its invariants pass, and the store agrees.
//! - **SIGKILL of each service in turn**: the four services run as processes while this test
//!   places orders; each cycle kills one of them (payments, stock, fulfilment, view in turn)
//!   with SIGKILL while orders flow, and starts another, which stands by until the dead
//!   holder's lease expires, then takes over with a higher generation. At the end every
//!   invariant holds (nothing charged or reserved twice, one final state per order, the money
//!   and the read model agree), and every acknowledged order is in the log and decided.
//!   `TIDINGS_SHOP_PG_KILLS` (default 6) sets the number of kills.
//!
//! Needs the test server (`tidings_tests::pg`); skips loudly without one.

use std::cell::RefCell;
use std::process::Command;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use shop_example::catalog::Line;
use shop_example::invariants::{self, INVARIANTS};
use shop_example::view::{OutcomeView, ReadModel};
use shop_example::{Service, SharedShop, Shop, ShopConfig};
use tidings::store::EventStore;
use tidings::subscription::{subscription_status_from_store, SubscriptionState};
use tidings_tests::pg::{self, Schema};
use tidings_tests::support::{env_or, LineChild};

const CHILD: &str = env!("CARGO_BIN_EXE_shop_child");

/// The lease's time-to-live of the service processes in the kill test.
const TTL_MS: u64 = 600;

/// The longest a test waits for a condition that must come true.
const PATIENCE: Duration = Duration::from_secs(90);

#[test]
fn the_story_on_postgres_runs_each_service_as_a_process_and_its_invariants_pass() {
    let Some(schema) = Schema::fresh("shop_story_on_postgres") else {
        return;
    };
    let started = Instant::now();
    let out = Command::new(CHILD)
        .args(["story", "--fresh", "--orders", "12", "--store", &pg::url()])
        .args(["--schema", schema.name()])
        .env_remove("RUST_LOG")
        .output()
        .expect("run the story");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "story: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    for expected in [
        "service processes started: payments (pid",
        "3. The stock process is killed (SIGKILL)",
        "killed with SIGKILL; its last committed checkpoint is",
        "stock lag",
        "4. The stock process starts again",
        "caught up",
        "5. A second stock process stands by",
        "the standby took over",
        "every invariant holds.",
        "the service processes are stopped (SIGTERM)",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected:?} missing from:\n{stdout}"
        );
    }
    println!("{stdout}");
    println!("the story took {:?}", started.elapsed());

    // The store agrees: every invariant from the log, 24 orders of this run (12 + 3 rounds of 4
    // + 4 while the standby took over), and every service stopped politely at the head.
    let store = schema.open(|c| c.pool_size(2));
    pg::blocking(async {
        let checks = invariants::check(&store).await.expect("check the store");
        assert!(shop_example::all_pass(&checks), "{checks:#?}");
        let model = ReadModel::load(&store).await.unwrap();
        assert_eq!(model.orders.len(), 12 + 12 + 4, "{:?}", model.totals);
        for service in Service::ALL {
            let status = subscription_status_from_store(&store, service.name())
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{} never ran", service.name()));
            assert_eq!(status.state, SubscriptionState::Stopped, "{status:?}");
            assert_eq!(status.checkpoint, store.head(), "{status:?}");
        }
        let lease = store.load_lease("stock").await.unwrap().expect("a lease");
        // Three stock processes held it in turn; on a loaded machine a holder may also miss a
        // renewal and hand over once more (fenced, so harmless): at least three generations.
        assert!(
            lease.generation >= 3,
            "three stock processes held it in turn: {lease:?}"
        );
    });
}

/// One `serve` process; killed (SIGKILL) when dropped, so that none outlives a failed test.
struct Served {
    service: Service,
    child: Option<LineChild>,
    pid: u32,
    lines: Vec<String>,
}

impl Served {
    fn spawn(service: Service, schema: &Schema) -> Served {
        let child = LineChild::spawn(
            Command::new(CHILD)
                .args(["serve", "--service", service.name()])
                .args(["--lease-ttl-ms", &TTL_MS.to_string()])
                .args(["--store", &pg::url(), "--schema", schema.name()])
                .env_remove("RUST_LOG"),
            "shop_child serve",
        );
        let pid = child.process.id();
        Served {
            service,
            child: Some(child),
            pid,
            lines: Vec::new(),
        }
    }

    /// Takes the lines it printed since the last call; panics if its service failed or it
    /// exited.
    fn pump(&mut self) {
        let child = self.child.as_mut().expect("running");
        while let Ok(line) = child.lines.try_recv() {
            assert!(
                !line.starts_with("FAILED"),
                "{} {}: {line}",
                self.service.name(),
                self.pid
            );
            self.lines.push(line);
        }
        if let Ok(Some(status)) = child.process.try_wait() {
            panic!(
                "{} process {} exited: {status}; printed {:?}",
                self.service.name(),
                self.pid,
                self.lines
            );
        }
    }

    /// The generation it last said it holds, if its last role is holding.
    fn holding(&mut self) -> Option<u64> {
        self.pump();
        let last = self
            .lines
            .iter()
            .rev()
            .find(|l| l.starts_with("HOLDING") || l.starts_with("STANDBY"))?;
        let words: Vec<&str> = last.split_whitespace().collect();
        match words.as_slice() {
            ["HOLDING", _, "generation", generation, ..] => generation.parse().ok(),
            _ => None,
        }
    }

    /// Whether it said it stands by (it found the dead holder's lease not expired yet).
    fn stood_by(&self) -> bool {
        self.lines.iter().any(|l| l.starts_with("STANDBY"))
    }

    /// Kills it with SIGKILL; returns the last `REPEATS` figure it printed.
    fn kill(mut self) -> u64 {
        let ended = self.child.take().expect("running").kill();
        self.lines.extend(ended.rest);
        repeats(&self.lines)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            child.kill();
        }
    }
}

/// The last `REPEATS <service> <n>` figure in `lines`.
fn repeats(lines: &[String]) -> u64 {
    lines
        .iter()
        .rev()
        .find_map(|l| {
            l.strip_prefix("REPEATS ")?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// Waits (at most [`PATIENCE`]) until `process` holds its service; returns the generation.
async fn wait_holding(process: &mut Served) -> u64 {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(generation) = process.holding() {
            return generation;
        }
        assert!(
            Instant::now() < deadline,
            "{} process {} never held; printed {:?}",
            process.service.name(),
            process.pid,
            process.lines
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Order number `n`: declined (over the card limit), scarce gadgets (confirmed, or out of
/// stock and refunded), or plentiful.
fn order_lines(n: u64) -> Vec<Line> {
    match n % 5 {
        0 => vec![Line::new("gadget", 4)],
        1 => vec![Line::new("gadget", 1), Line::new("widget", 1)],
        2 => vec![Line::new("doohickey", 1 + (n % 3) as u32)],
        _ => vec![Line::new("widget", 1), Line::new("gizmo", 2)],
    }
}

/// Places order `o-<n>`; returns its id once the store acknowledged it.
async fn place(shop: &SharedShop, n: u64) -> String {
    let id = format!("o-{n:06}");
    let customer = ["ada", "grace", "ken"][(n % 3) as usize];
    shop.place_order(&id, customer, order_lines(n))
        .await
        .unwrap_or_else(|e| panic!("placing {id}: {e}"));
    id
}

/// Places orders four at a time until `stop`, recording each acknowledged one in `acked`.
async fn place_orders(
    shop: Rc<SharedShop>,
    acked: Rc<RefCell<Vec<String>>>,
    stop: Rc<RefCell<bool>>,
) {
    let mut n = 0u64;
    while !*stop.borrow() {
        let placed = tokio::join!(
            place(&shop, n),
            place(&shop, n + 1),
            place(&shop, n + 2),
            place(&shop, n + 3),
        );
        acked
            .borrow_mut()
            .extend([placed.0, placed.1, placed.2, placed.3]);
        n += 4;
        // Leave the services some room, so that a kill finds them at every stage.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[actix::test]
async fn the_shop_as_separate_processes_survives_sigkill_of_each_service_in_turn() {
    let Some(schema) = Schema::fresh("shop_processes_killed") else {
        return;
    };
    let cycles = env_or("TIDINGS_SHOP_PG_KILLS", 6) as usize;
    let started = Instant::now();
    let store: Arc<dyn EventStore> = Arc::new(
        schema
            .config()
            .pool_size(6)
            .poll_interval(Duration::from_millis(100))
            .open()
            .await
            .expect("open the store"),
    );
    let shop = Rc::new(Shop::with_store(store.clone(), ShopConfig::default()));
    shop.restock(vec![
        Line::new("widget", 400),
        Line::new("gizmo", 800),
        Line::new("gadget", 30),
        Line::new("doohickey", 100),
    ])
    .await
    .expect("restock");
    let mut running: Vec<Served> = Service::ALL
        .iter()
        .map(|s| Served::spawn(*s, &schema))
        .collect();
    for process in &mut running {
        wait_holding(process).await;
    }

    let acked = Rc::new(RefCell::new(Vec::new()));
    let stop = Rc::new(RefCell::new(false));
    let placing = actix::spawn(place_orders(shop.clone(), acked.clone(), stop.clone()));
    let mut rng = rand::thread_rng();
    let (mut repeats, mut takeovers, mut stood_by) = (0, Vec::new(), 0);
    for cycle in 0..cycles {
        let victim = Service::ALL[cycle % Service::ALL.len()];
        // Kill it once a random number of further orders were acknowledged: while it reacts.
        let target = acked.borrow().len() + rng.gen_range(4..=32);
        let deadline = Instant::now() + PATIENCE;
        while acked.borrow().len() < target {
            assert!(!placing.is_finished(), "placing orders stopped");
            assert!(
                Instant::now() < deadline,
                "orders stopped being acknowledged"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let at = running
            .iter()
            .position(|p| p.service == victim)
            .expect("a process per service");
        let mut old = running.remove(at);
        let generation = old.holding().expect("the victim holds its service");
        repeats += old.kill();
        let killed = Instant::now();
        let mut new = Served::spawn(victim, &schema);
        let taken = wait_holding(&mut new).await;
        takeovers.push(killed.elapsed());
        assert!(
            taken > generation,
            "{}: generation {taken} after {generation}",
            victim.name()
        );
        stood_by += usize::from(new.stood_by());
        running.push(new);
    }
    *stop.borrow_mut() = true;
    placing.await.expect("placing orders");

    let head = shop
        .settle_committed(&Service::ALL, PATIENCE)
        .await
        .expect("the services catch up");
    let checks = invariants::check(&*store).await.expect("check the store");
    let failed: Vec<_> = checks.iter().filter(|c| !c.pass).collect();
    assert!(failed.is_empty(), "failed invariants: {failed:#?}");
    for name in ["no order is charged twice", "no order is reserved twice"] {
        assert!(
            INVARIANTS.contains(&name) && checks.iter().any(|c| c.name == name && c.pass),
            "{name}: {checks:#?}"
        );
    }
    let model = ReadModel::load(&*store).await.unwrap();
    let acked = acked.borrow();
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
    for process in running {
        repeats += process.kill();
    }
    takeovers.sort();
    println!(
        "{cycles} kills: {} acknowledged orders ({} confirmed, {} cancelled), head {head}, \
         {repeats} repeated reactions answered from history, takeovers {:?}..{:?} after the \
         kill ({stood_by} of them stood by first; lease {TTL_MS} ms), in {:?}",
        acked.len(),
        model.totals.confirmed,
        model.totals.cancelled(),
        takeovers.first().unwrap_or(&Duration::ZERO),
        takeovers.last().unwrap_or(&Duration::ZERO),
        started.elapsed()
    );
}
