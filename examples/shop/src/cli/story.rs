//! The story: what `cargo run -p shop_example` tells, on the embedded store. With
//! `--store postgres://...` the same story runs each service as a process of its own
//! (`processes.rs`).

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::catalog::{Line, CATALOG};
use crate::gateway::SimulatedGateway;
use crate::invariants::INVARIANTS;
use crate::view::ReadModel;
use crate::{Service, SharedShop, Shop, ShopConfig};
use clap::Args;
use futures_util::future::join_all;

use super::report::{money_line, print_checks, stock_line, Outcomes};
use super::{CliError, Location};
use tidings::subscription::SubscriptionStatus;

/// How long the story waits for the services to catch up before it gives up.
pub(super) const SETTLE: Duration = Duration::from_secs(60);
/// Orders placed at the same time.
const CONCURRENCY: usize = 8;
const CUSTOMERS: &[&str] = &["ada", "grace", "edsger", "barbara", "ken", "margaret"];

#[derive(Debug, Args)]
pub struct StoryArgs {
    /// Delete the data directory's store (with --store: drop the schema) first and start from
    /// an empty shop.
    #[arg(long)]
    pub(super) fresh: bool,
    /// Orders placed while the stock service runs, and again while it is down.
    #[arg(long, default_value_t = 30)]
    pub(super) orders: u32,
    /// Seed of the random orders (default: the first order number).
    #[arg(long)]
    pub(super) seed: Option<u64>,
    /// Make the payment gateway fail the first N calls of every charge and refund (the payment
    /// service retries them with backoff). Embedded store only.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub(super) gateway_failures: u32,
    /// Serve the web console on ADDR (127.0.0.1:9870 when given without a value) while the
    /// story runs, print its address and token, and keep it running after the report until
    /// Ctrl-C, for a look at the services' lag over time, their parked events and the log.
    /// Embedded store only (on PostgreSQL, `tidings console --store ...` beside the story).
    #[arg(
        long,
        value_name = "ADDR",
        num_args = 0..=1,
        default_missing_value = "127.0.0.1:9870"
    )]
    pub(super) console: Option<std::net::SocketAddr>,
    /// Set from the global `--publish URL`: a NATS relay runs beside the services.
    #[arg(skip)]
    pub(super) publish: Option<super::nats::Publish>,
}

impl Default for StoryArgs {
    fn default() -> Self {
        StoryArgs {
            fresh: false,
            orders: 30,
            seed: None,
            gateway_failures: 0,
            console: None,
            publish: None,
        }
    }
}

/// A small deterministic generator (splitmix64): the same seed tells the same story.
pub(super) struct Rng(pub(super) u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One random order: 1 to 3 lines of 1 to 3 units.
fn random_order(rng: &mut Rng) -> (String, Vec<Line>) {
    let customer = CUSTOMERS[rng.below(CUSTOMERS.len() as u64) as usize].to_owned();
    let lines = (0..1 + rng.below(3))
        .map(|_| {
            let (sku, _) = CATALOG[rng.below(CATALOG.len() as u64) as usize];
            Line::new(sku, 1 + rng.below(3) as u32)
        })
        .collect();
    (customer, lines)
}

/// The story's state: the shop, the orders it placed, the clock.
pub(super) struct Story {
    pub(super) shop: SharedShop,
    pub(super) rng: Rng,
    pub(super) next: u64,
    pub(super) placed: Vec<String>,
    pub(super) started: Instant,
}

impl Story {
    pub(super) fn say(&self, text: &str) {
        println!("[{:>5.2}s] {text}", self.started.elapsed().as_secs_f64());
    }

    /// Places `n` orders, [`CONCURRENCY`] at a time.
    pub(super) async fn place(&mut self, n: u32) -> Result<(), CliError> {
        let mut orders = Vec::new();
        for _ in 0..n {
            let id = format!("o-{:06}", self.next);
            self.next += 1;
            let (customer, lines) = random_order(&mut self.rng);
            orders.push((id, customer, lines));
        }
        for chunk in orders.chunks(CONCURRENCY) {
            let placing = chunk
                .iter()
                .map(|(id, customer, lines)| self.shop.place_order(id, customer, lines.clone()));
            for result in join_all(placing).await {
                result?;
            }
            self.placed
                .extend(chunk.iter().map(|(id, _, _)| id.clone()));
        }
        Ok(())
    }

    /// The outcomes of this run's orders.
    pub(super) async fn outcomes(&self) -> Result<(Outcomes, ReadModel), CliError> {
        let model = self.shop.read_model().await?;
        let mine = self.placed.iter().filter_map(|id| model.orders.get(id));
        Ok((Outcomes::of(mine), model))
    }
}

/// Removes a previous store in `dir`, refusing to delete a directory that is not one.
fn wipe(dir: &Path) -> Result<(), CliError> {
    if !dir.exists() {
        return Ok(());
    }
    let is_store = dir.join("tidings.lock").exists() || dir.join("db").exists();
    let is_empty = std::fs::read_dir(dir)?.next().is_none();
    if !is_store && !is_empty {
        return Err(format!(
            "--fresh: {} is not a tidings store; not deleting it",
            dir.display()
        )
        .into());
    }
    std::fs::remove_dir_all(dir)?;
    Ok(())
}

pub async fn run(location: &Location, args: StoryArgs) -> Result<ExitCode, CliError> {
    match location {
        Location::Sled(dir) => run_embedded(dir, args).await,
        Location::Postgres { url, schema } => super::processes::run(url, schema, args).await,
    }
}

async fn run_embedded(dir: &Path, args: StoryArgs) -> Result<ExitCode, CliError> {
    if args.fresh {
        wipe(dir)?;
    }
    let gateway = SimulatedGateway::default().fail_first(args.gateway_failures);
    let shop = Shop::open(dir, ShopConfig::default().gateway(Arc::new(gateway)))?.into_shared();
    let head = shop.store().head();
    println!("tidings shop: order, payment and stock react to each other's events");
    if head == 0 {
        println!("the store is in {} (new)", dir.display());
    } else {
        println!(
            "the store is in {} ({head} events from earlier runs: this run adds to them; \
             `story --fresh` starts over)",
            dir.display()
        );
    }
    if head > 0 {
        // A store written by something else (an older version of this example, say) would stop
        // the services at its first unreadable event: say so now, with the way out.
        let checks = crate::invariants::check(&**shop.store()).await?;
        if let Some(c) = checks.iter().find(|c| !c.pass && c.name == INVARIANTS[0]) {
            shop.shutdown().await;
            return Err(format!(
                "{} holds events this shop cannot read ({}); run `story --fresh` to start over, \
                 or pick another --data-dir",
                dir.display(),
                c.detail
            )
            .into());
        }
    }
    let next = shop.next_order_number().await?;
    let mut story = Story {
        shop,
        rng: Rng(args.seed.unwrap_or(next)),
        next,
        placed: Vec::new(),
        started: Instant::now(),
    };
    let relay = match &args.publish {
        Some(to) => Some(super::nats::start_relay(&story.shop, to).await?),
        None => None,
    };
    let console = match args.console {
        Some(addr) => Some(super::console::start(&story.shop, addr)?),
        None => None,
    };
    let result = tell(&mut story, args.orders).await;
    if let (Some((_broker, relay)), Some(to)) = (&relay, &args.publish) {
        super::nats::finish_relay(&story.shop, relay, to).await;
    }
    if let Some(console) = console {
        console.linger().await;
    }
    let Story { shop, .. } = story;
    shop.shutdown().await;
    result
}

async fn tell(story: &mut Story, orders: u32) -> Result<ExitCode, CliError> {
    let restock: Vec<Line> = CATALOG
        .iter()
        .map(|(sku, _)| Line::new(*sku, orders.max(4) * 5 / 4))
        .collect();
    let shop = &story.shop;

    println!();
    println!("1. The shop opens");
    shop.restock(restock.clone()).await?;
    let restocked: Vec<String> = restock
        .iter()
        .map(|l| format!("{} +{}", l.sku, l.quantity))
        .collect();
    story.say(&format!(
        "the warehouse is restocked: {}",
        restocked.join(", ")
    ));
    shop.start_all()?;
    let names: Vec<&str> = Service::ALL.iter().map(|s| s.name()).collect();
    story.say(&format!("services started: {}", names.join(", ")));
    shop.settle(SETTLE).await?;

    println!();
    println!("2. Orders flow: each is charged, reserved, then confirmed or cancelled");
    story.place(orders).await?;
    story.shop.settle(SETTLE).await?;
    let (o, _) = story.outcomes().await?;
    story.say(&o.line());

    println!();
    println!("3. The stock service goes down; orders keep coming");
    let stopped = story
        .shop
        .stop(Service::Stock)
        .await
        .ok_or("the stock service was not running")?;
    story.say(&format!(
        "stock stopped at checkpoint {} (its progress is saved)",
        stopped.checkpoint
    ));
    let rounds = 3;
    for round in 0..rounds {
        let n = orders / rounds + u32::from(round < orders % rounds);
        story.place(n).await?;
        story.shop.settle(SETTLE).await?;
        let (o, model) = story.outcomes().await?;
        let lag = story.shop.lag(Service::Stock).await?;
        let paid = story.placed.iter().filter_map(|id| model.orders.get(id));
        let verified = paid
            .filter(|s| s.payment != crate::view::PaymentView::Pending)
            .count();
        story.say(&format!(
            "{} orders placed, {verified} charged or declined; {} paid orders wait for stock; stock lag {lag} events",
            o.placed, o.paid_waiting
        ));
    }

    println!();
    println!("4. The stock service comes back and catches up on every event it missed");
    let before = story.shop.lag(Service::Stock).await?;
    let caught_up = Instant::now();
    story.shop.start(Service::Stock)?;
    let mut lags = vec![before];
    loop {
        tokio::time::sleep(Duration::from_millis(25)).await;
        let lag = story.shop.lag(Service::Stock).await?;
        if lags.last() != Some(&lag) {
            lags.push(lag);
        }
        let s = story
            .shop
            .status(Service::Stock)
            .ok_or("stock is not running")?;
        if lag == 0 || story.shop.settle(Duration::ZERO).await.is_ok() {
            break;
        }
        if let tidings::subscription::SubscriptionState::Failed(reason) = s.state {
            return Err(format!("the stock service failed: {reason}").into());
        }
        if caught_up.elapsed() > SETTLE {
            return Err("the stock service did not catch up".into());
        }
    }
    story.shop.settle(SETTLE).await?;
    let mut lags: Vec<String> = lags.iter().map(u64::to_string).collect();
    if lags.len() > 7 {
        lags.splice(3..lags.len() - 3, ["…".to_owned()]);
    }
    story.say(&format!(
        "stock lag {} events, caught up in {} ms (each reservation is a new event, so the head moves too)",
        lags.join(" → "),
        caught_up.elapsed().as_millis()
    ));
    let (o, _) = story.outcomes().await?;
    story.say(&o.line());

    let statuses: Vec<SubscriptionStatus> = Service::ALL
        .iter()
        .filter_map(|s| story.shop.status(*s))
        .collect();
    report(story, &statuses, story.shop.repeated_commands()).await
}

/// The report: this run's outcomes (and the whole store's), stock, money, the services'
/// retries and parked events (`statuses`), the `repeats` answered from history, and every
/// invariant checked from the log. Exit code 1 if one fails.
pub(super) async fn report(
    story: &Story,
    statuses: &[SubscriptionStatus],
    repeats: u64,
) -> Result<ExitCode, CliError> {
    println!();
    println!("Report");
    let checks = story.shop.check().await?;
    let (mine, model) = story.outcomes().await?;
    let all = Outcomes::of(model.orders.values());
    println!("  this run:    {}", mine.line());
    if all.placed != mine.placed {
        println!("  whole store: {}", all.line());
    }
    println!("  stock:       {}", stock_line(&model));
    println!("  money:       {}", money_line(&model));
    for status in statuses {
        if status.parked > 0 || status.retries > 0 {
            println!(
                "  {}: {} retries, {} events parked",
                status.name, status.retries, status.parked
            );
        }
    }
    if repeats > 0 {
        println!("  {repeats} repeated reactions were answered from history");
    }
    let ok = print_checks(&checks);
    println!(
        "{}",
        if ok {
            "every invariant holds."
        } else {
            "AN INVARIANT FAILED."
        }
    );
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
