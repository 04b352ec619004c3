//! The transfer process under SIGKILL (issue 14): a child process (`src/bin/transfer_child.rs`)
//! requests transfers between eight accounts while the transfer process manager debits,
//! credits and refunds, and is killed at random moments, then started again with more
//! transfers. At the end a last run settles everything, and the log must show:
//!
//! - money conserved: the balances add up to what the accounts were opened with;
//! - no account ever negative, replaying its stream;
//! - every acknowledged request is in the log, and every transfer ended exactly once, as
//!   completed (one debit of the source, one credit of the target), declined (no money moved)
//!   or failed (one debit and one refund of the source, nothing credited);
//! - no money movement that belongs to no transfer or to a transfer that never moved it.
//!
//! `TIDINGS_TRANSFER_KILLS` (default 8) sets the number of kills; `--nocapture` prints figures.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use rand::Rng;
use tidings::store::{EventStore, Filter, SledEventStore};
use tidings::DomainEvent;
use tidings_tests::support::{env_or, runtime, LineChild};
use tidings_tests::transfer::{AccountEvent, TransferEvent};

const CHILD: &str = env!("CARGO_BIN_EXE_transfer_child");
const ACCOUNTS: u64 = 8;
const OPENING: u64 = 1_000;
/// Transfers each run requests.
const PER_RUN: u64 = 30;

fn child(args: &[&str]) -> LineChild {
    LineChild::spawn(Command::new(CHILD).args(args), "transfer_child")
}

/// Waits for the child's line starting with `prefix`, collecting `REQ` ids on the way; `false`
/// if it exited first.
fn until(child: &LineChild, prefix: &str, requested: &mut BTreeSet<String>) -> bool {
    while let Ok(line) = child.lines.recv_timeout(Duration::from_secs(180)) {
        if let Some(id) = line.strip_prefix("REQ ") {
            requested.insert(id.to_owned());
        }
        if line.starts_with(prefix) {
            return true;
        }
        assert!(!line.starts_with("FAILED"), "the child failed: {line}");
    }
    false
}

#[derive(Default, Debug)]
struct Moves {
    debits: Vec<(String, u64)>,
    credits: Vec<(String, u64)>,
}

#[test]
fn transfers_killed_at_random_conserve_money_and_each_ends_exactly_once() {
    let kills = env_or("TIDINGS_TRANSFER_KILLS", 8);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    let mut requested = BTreeSet::new();
    let init = child(&["init", path]);
    assert!(
        until(&init, "DONE", &mut requested),
        "{}",
        init.kill().stderr
    );
    init.kill();

    let mut rng = rand::thread_rng();
    let mut killed_mid_run = 0;
    for round in 0..kills {
        let seed = round.to_string();
        let run = child(&["run", path, &seed, &PER_RUN.to_string()]);
        // Let it get somewhere: a few requests, or more; then kill it wherever it is.
        let wait_for = rng.gen_range(1..=PER_RUN);
        let mut seen = 0;
        while seen < wait_for {
            match run.lines.recv_timeout(Duration::from_secs(180)) {
                Ok(line) => {
                    if let Some(id) = line.strip_prefix("REQ ") {
                        requested.insert(id.to_owned());
                        seen += 1;
                    }
                    assert!(!line.starts_with("FAILED"), "the child failed: {line}");
                }
                Err(_) => break,
            }
        }
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..40)));
        let ended = run.kill();
        for line in &ended.rest {
            if let Some(id) = line.strip_prefix("REQ ") {
                requested.insert(id.to_owned());
            }
            assert!(!line.starts_with("FAILED"), "the child failed: {line}");
        }
        if !ended.rest.iter().any(|l| l == "SETTLED") {
            killed_mid_run += 1;
        }
        assert!(
            ended.status.code().is_none() || ended.status.success(),
            "the child exited on its own with {:?}: {}",
            ended.status,
            ended.stderr
        );
    }
    // The last run requests nothing new and settles everything left.
    let last = child(&["run", path, &kills.to_string(), "0"]);
    assert!(
        until(&last, "SETTLED", &mut requested),
        "{}",
        last.kill().stderr
    );
    let ended = last.kill();
    assert!(
        ended.stderr.is_empty() || !ended.stderr.contains("panicked"),
        "{}",
        ended.stderr
    );

    let rt = runtime();
    let store = SledEventStore::open(dir.path()).unwrap();
    let events = rt.block_on(async {
        let mut all = Vec::new();
        let mut from = 1;
        loop {
            let page = store.read_all(from, 1_000, &Filter::all()).await.unwrap();
            all.extend(page.events.iter().cloned());
            from = page.next_position;
            if page.is_end() {
                break all;
            }
        }
    });
    rt.block_on(store.close());

    // Replay the accounts, and gather each transfer's money moves and ends.
    let mut balances: BTreeMap<String, u64> = BTreeMap::new();
    let mut moves: BTreeMap<String, Moves> = BTreeMap::new();
    let mut requests: BTreeMap<String, (String, String, u64)> = BTreeMap::new();
    let mut ends: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in &events {
        match e.category.as_str() {
            "account" if !tidings::aggregate::is_framework_record(&e.event_type) => {
                let balance = balances.entry(e.stream_id.to_string()).or_default();
                match AccountEvent::from_recorded(e).unwrap() {
                    AccountEvent::Deposited { cents, transfer } => {
                        *balance += cents;
                        if let Some(t) = transfer {
                            moves
                                .entry(t)
                                .or_default()
                                .credits
                                .push((e.stream_id.to_string(), cents));
                        }
                    }
                    AccountEvent::Withdrawn { cents, transfer } => {
                        *balance = balance.checked_sub(cents).unwrap_or_else(|| {
                            panic!("{} went negative at position {}", e.stream_id, e.position)
                        });
                        moves
                            .entry(transfer)
                            .or_default()
                            .debits
                            .push((e.stream_id.to_string(), cents));
                    }
                    AccountEvent::Closed => {}
                }
            }
            "transfer" if !tidings::aggregate::is_framework_record(&e.event_type) => {
                let id = e.stream_id.strip_prefix("transfer-").unwrap().to_owned();
                match TransferEvent::from_recorded(e).unwrap() {
                    TransferEvent::TransferRequested {
                        from, to, cents, ..
                    } => {
                        requests.insert(
                            id,
                            (format!("account-{from}"), format!("account-{to}"), cents),
                        );
                    }
                    other => ends.entry(id).or_default().push(format!("{other:?}")),
                }
            }
            _ => {}
        }
    }
    let total: u64 = balances.values().sum();
    assert_eq!(total, ACCOUNTS * OPENING, "money conserved: {balances:?}");
    for id in &requested {
        assert!(
            requests.contains_key(id),
            "acknowledged request {id} is not in the log"
        );
    }
    let (mut completed, mut declined, mut failed) = (0, 0, 0);
    for (id, (from, to, cents)) in &requests {
        let end = ends.get(id).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(end.len(), 1, "transfer {id} must end exactly once: {end:?}");
        let m = moves.remove(id).unwrap_or_default();
        if end[0] == "TransferCompleted" {
            completed += 1;
            assert_eq!(m.debits, [(from.clone(), *cents)], "{id}");
            assert_eq!(m.credits, [(to.clone(), *cents)], "{id}");
        } else if end[0].starts_with("TransferDeclined") {
            declined += 1;
            assert!(m.debits.is_empty() && m.credits.is_empty(), "{id}: {m:?}");
        } else {
            failed += 1;
            assert!(end[0].starts_with("TransferFailed"), "{id}: {end:?}");
            assert_eq!(m.debits, [(from.clone(), *cents)], "{id}");
            assert_eq!(m.credits, [(from.clone(), *cents)], "{id}: refunded");
        }
    }
    assert!(moves.is_empty(), "money moved for no transfer: {moves:?}");
    assert!(
        completed > 0 && declined > 0 && failed > 0,
        "every path taken: {completed} completed, {declined} declined, {failed} failed"
    );
    println!(
        "{kills} kills ({killed_mid_run} mid-run), {} transfers: {completed} completed, {declined} declined, {failed} failed; {} events",
        requests.len(),
        events.len()
    );
}
