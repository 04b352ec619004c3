//! The process that `tests/tests/shop.rs` kills with SIGKILL while the shop runs in it.
//!
//! `shop_child DIR CYCLE` opens the shop in `DIR`, starts its four services (which first catch
//! up on whatever earlier, killed runs left behind), restocks the warehouse, and places orders
//! `c<CYCLE>-<n>`, four at a time, printing `ACK <order id>` (flushed) for each order whose
//! `OrderPlaced` the store acknowledged. It prints `STARTED` once the services run. The services
//! commit their checkpoints often (every [`COMMIT_EVERY`] events or [`COMMIT_INTERVAL`]) so that
//! kills land between handled events and the commits that cover them, and redelivered events
//! are common. Whenever the number of commands answered from history grows (reactions repeated
//! for a redelivered event) it prints `REPEATS <total in this run>`. If a service fails it prints `FAILED <reason>` and exits with status 3; it stops
//! by itself after [`MAX_RUN`] (printing `DONE`).
//!
//! With any other arguments it is the `shop_example` program itself
//! ([`shop_example::cli::main_from`]): `shop_child story --store postgres://... --fresh`,
//! `shop_child serve --service stock --store ...`. `tests/tests/shop_postgres.rs` runs it so
//! (the tests crate cannot name the `shop_example` binary), and the story's service processes,
//! started from the current executable, are then this program too.

use std::path::Path;
use std::time::{Duration, Instant};

use shop_example::catalog::Line;
use shop_example::{Service, Shop, ShopConfig, ShopError};
use tidings::subscription::{SubscriptionConfig, SubscriptionState};
use tidings_tests::support::{die, say};

/// The child stops by itself after this long.
const MAX_RUN: Duration = Duration::from_secs(20);
/// Services commit after this many events...
const COMMIT_EVERY: u64 = 8;
/// ...or after this long.
const COMMIT_INTERVAL: Duration = Duration::from_millis(20);

/// Order number `n`: a mix that is declined (over the card limit), competes for scarce gadgets
/// (confirmed or out of stock, then refunded), or is plentiful.
pub fn order_lines(n: u64) -> Vec<Line> {
    match n % 5 {
        0 => vec![Line::new("gadget", 4)],
        1 => vec![Line::new("gadget", 1), Line::new("widget", 1)],
        2 => vec![Line::new("doohickey", 1 + (n % 3) as u32)],
        _ => vec![Line::new("widget", 1), Line::new("gizmo", 2)],
    }
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match (args.get(1), args.get(2).and_then(|c| c.parse::<u64>().ok())) {
        (Some(dir), Some(cycle)) if args.len() == 3 => {
            actix::System::new().block_on(run(Path::new(dir), cycle));
            std::process::ExitCode::SUCCESS
        }
        _ if args.len() > 1 => shop_example::cli::main_from(&args),
        _ => die(&"usage: shop_child DIR CYCLE, or shop_child <shop_example arguments>"),
    }
}

async fn place(shop: &Shop, cycle: u64, n: u64) -> Result<String, ShopError> {
    let id = format!("c{cycle}-{n}");
    let customer = ["ada", "grace", "ken"][(n % 3) as usize];
    match shop.place_order(&id, customer, order_lines(n)).await {
        Ok(_) => Ok(id),
        Err(e) => die(&format!("placing {id}: {e}")),
    }
}

async fn run(dir: &Path, cycle: u64) {
    let deadline = Instant::now() + MAX_RUN;
    let config = ShopConfig::default().subscription(
        SubscriptionConfig::default()
            .commit_every(COMMIT_EVERY)
            .commit_interval(COMMIT_INTERVAL),
    );
    let shop = Shop::open(dir, config).unwrap_or_else(|e| die(&e));
    shop.start_all().unwrap_or_else(|e| die(&e));
    say(format_args!("STARTED"));
    let restock = vec![
        Line::new("widget", 20),
        Line::new("gizmo", 40),
        Line::new("gadget", 3),
        Line::new("doohickey", 6),
    ];
    shop.restock(restock).await.unwrap_or_else(|e| die(&e));
    let (mut n, mut repeats) = (0, 0);
    while Instant::now() < deadline {
        let placed = tokio::join!(
            place(&shop, cycle, n),
            place(&shop, cycle, n + 1),
            place(&shop, cycle, n + 2),
            place(&shop, cycle, n + 3),
        );
        for id in [placed.0, placed.1, placed.2, placed.3] {
            say(format_args!("ACK {}", id.unwrap_or_else(|e| die(&e))));
        }
        n += 4;
        if shop.repeated_commands() > repeats {
            repeats = shop.repeated_commands();
            say(format_args!("REPEATS {repeats}"));
        }
        for service in Service::ALL {
            if let Some(SubscriptionState::Failed(reason)) = shop.status(service).map(|s| s.state) {
                say(format_args!("FAILED {} {reason}", service.name()));
                std::process::exit(3);
            }
        }
        // Leave the services some room, so that a kill finds them at every stage.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    shop.shutdown().await;
    say(format_args!("DONE"));
}
