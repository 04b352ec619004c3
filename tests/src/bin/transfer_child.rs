//! The process that `tests/tests/process_manager_crash.rs` kills with SIGKILL while the
//! transfer process manager (`tidings_tests::transfer`) moves money.
//!
//! - `transfer_child init DIR`: opens 8 accounts (`acc-0` .. `acc-7`) with 1 000 cents each,
//!   closes `acc-7` (so transfers to it fail and are refunded), prints `DONE` and exits.
//! - `transfer_child run DIR SEED COUNT`: starts the accounts, the transfers and the process
//!   manager (committing its checkpoint every 4 events, so that kills land between handled
//!   events and their commit), then requests COUNT transfers `t-SEED-<i>` between random
//!   accounts of random amounts (up to 800 cents: some more than the balance), printing `REQ <id>` (flushed)
//!   for each acknowledged request, then waits for every process to settle, prints `SETTLED`
//!   and exits. A failed subscription prints `FAILED <reason>` and exits with status 3.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use tidings::aggregate::{AggregateConfig, AggregateRegistry};
use tidings::store::SledEventStore;
use tidings::subscription::{SubscriptionConfig, Subscriptions};
use tidings_tests::support::{die, say};
use tidings_tests::transfer::{AccountCommand, TransferCommand, Transfers};

/// Accounts `acc-0` .. `acc-{ACCOUNTS - 1}`; the last is closed.
pub const ACCOUNTS: u64 = 8;
/// What each account starts with.
pub const OPENING: u64 = 1_000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = Path::new(
        args.get(2)
            .map(String::as_str)
            .unwrap_or_else(|| die(&"no DIR")),
    );
    let store = SledEventStore::open(dir).unwrap_or_else(|e| die(&e));
    actix::System::new().block_on(async move {
        let accounts = AggregateRegistry::start(store.clone(), AggregateConfig::default());
        let transfers = AggregateRegistry::start(store.clone(), AggregateConfig::default());
        match args[1].as_str() {
            "init" => {
                for i in 0..ACCOUNTS {
                    let deposit = AccountCommand::Deposit {
                        cents: OPENING,
                        transfer: None,
                    };
                    accounts
                        .execute_fresh(&format!("acc-{i}"), deposit)
                        .await
                        .unwrap_or_else(|e| die(&e));
                }
                accounts
                    .execute_fresh(&format!("acc-{}", ACCOUNTS - 1), AccountCommand::Close)
                    .await
                    .unwrap_or_else(|e| die(&e));
                say(format_args!("DONE"));
            }
            "run" => {
                let seed: u64 = args[3].parse().unwrap_or_else(|e| die(&e));
                let count: u64 = args[4].parse().unwrap_or_else(|e| die(&e));
                let subscriptions = Subscriptions::new(Arc::new(store.clone()));
                let config = SubscriptionConfig::default()
                    .commit_every(4)
                    .commit_interval(Duration::from_millis(10));
                subscriptions
                    .start_with(
                        Transfers {
                            accounts: accounts.clone(),
                            transfers: transfers.clone(),
                        },
                        config,
                    )
                    .unwrap_or_else(|e| die(&e));
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                for i in 0..count {
                    let from = rng.gen_range(0..ACCOUNTS);
                    let to = (from + rng.gen_range(1..ACCOUNTS)) % ACCOUNTS;
                    let id = format!("t-{seed}-{i}");
                    let request = TransferCommand::Request {
                        id: id.clone(),
                        from: format!("acc-{from}"),
                        to: format!("acc-{to}"),
                        cents: rng.gen_range(1..800),
                    };
                    transfers
                        .execute_fresh(&id, request)
                        .await
                        .unwrap_or_else(|e| die(&e));
                    say(format_args!("REQ {id}"));
                }
                match subscriptions.settle(Duration::from_secs(120)).await {
                    Ok(_) => say(format_args!("SETTLED")),
                    Err(e) => {
                        say(format_args!("FAILED {e}"));
                        std::process::exit(3);
                    }
                }
                subscriptions.stop_all().await;
            }
            other => die(&format!("unknown mode {other:?}")),
        }
        accounts.shutdown().await;
        transfers.shutdown().await;
        store.close().await;
    });
}
