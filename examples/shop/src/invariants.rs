//! The shop's invariants, checked from the event log itself (and the read model against it).
//!
//! [`check`] reads every order, payment and stock event of the store, page by page, rebuilds
//! what happened to each order and to the warehouse, and returns one [`Check`] per invariant.
//! It trusts neither the aggregates nor the read model: the log is the source of truth, and the
//! read model is compared to it.

use std::collections::BTreeMap;

use tidings::aggregate::is_framework_record;
use tidings::store::{EventStore, Filter, StoreError};
use tidings::subscription::EventHandler as _;
use tidings::DomainEvent;

use crate::catalog::{money, Line};
use crate::order::{CancelReason, OrderEvent};
use crate::payment::PaymentEvent;
use crate::stock::StockEvent;
use crate::view::{OutcomeView, PaymentView, ReadModel, ShopView};

/// The result of checking one invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// What is promised.
    pub name: &'static str,
    /// Whether it holds.
    pub pass: bool,
    /// Figures, or the first offenders.
    pub detail: String,
}

/// Invariant names, in the order [`check`] returns them.
pub const INVARIANTS: &[&str] = &[
    "every event of the shop decodes",
    "every order reaches exactly one final state",
    "no order is charged twice",
    "no order is reserved twice",
    "stock never goes below zero",
    "money charged minus refunded equals the total of confirmed orders",
    "every confirmed order was paid and its items reserved",
    "every order cancelled after payment is refunded",
    "the read model agrees with the log",
];

/// Whether every check passed.
pub fn all_pass(checks: &[Check]) -> bool {
    checks.iter().all(|c| c.pass)
}

/// What the log says about one order.
#[derive(Debug, Default)]
struct Facts {
    placed: Vec<(Vec<Line>, u64)>,
    /// Final events, in order: `true` for confirmed.
    finals: Vec<bool>,
    /// Order events recorded after its first final event.
    after_final: u32,
    cancelled_out_of_stock: bool,
    verified: Vec<u64>,
    declined: u32,
    refunded: Vec<u64>,
    reserved: Vec<Vec<Line>>,
    out_of_stock: u32,
}

impl Facts {
    fn confirmed(&self) -> bool {
        self.finals.first() == Some(&true)
    }
    fn cancelled(&self) -> bool {
        self.finals.first() == Some(&false)
    }
}

/// The log, folded.
#[derive(Debug, Default)]
struct Log {
    head: u64,
    events: u64,
    /// Remembered refusals and empty acceptances (framework records, not shop facts).
    decisions: u64,
    orders: BTreeMap<String, Facts>,
    undecodable: Vec<String>,
    /// Levels per SKU after each stock event; the lowest ever seen and where.
    levels: BTreeMap<String, i128>,
    lowest: Option<(i128, String, u64)>,
}

impl Log {
    async fn read(store: &dyn EventStore) -> Result<Log, StoreError> {
        let filter = Filter::all().categories(["order", "payment", "stock"]);
        let mut log = Log {
            head: store.head(),
            ..Log::default()
        };
        let mut from = 1;
        loop {
            let page = store.read_all(from, 512, &filter).await?;
            for e in &page.events {
                if e.position > log.head {
                    break;
                }
                if is_framework_record(&e.event_type) {
                    // A remembered refusal or empty acceptance: not a fact of the shop.
                    log.decisions += 1;
                    continue;
                }
                log.events += 1;
                let decoded = match e.category.as_str() {
                    "order" => OrderEvent::from_recorded(e).map(|ev| log.order(ev)),
                    "payment" => PaymentEvent::from_recorded(e).map(|ev| log.payment(ev)),
                    _ => StockEvent::from_recorded(e).map(|ev| log.stock(ev, e.position)),
                };
                if let Err(err) = decoded {
                    log.undecodable.push(err.to_string());
                }
            }
            from = page.next_position;
            if page.is_end() || from > log.head {
                return Ok(log);
            }
        }
    }

    fn facts(&mut self, order_id: &str) -> &mut Facts {
        self.orders.entry(order_id.to_owned()).or_default()
    }

    fn order(&mut self, event: OrderEvent) {
        let f = self.facts(event.order_id());
        if !f.finals.is_empty() {
            f.after_final += 1;
        }
        match event {
            OrderEvent::OrderPlaced {
                items, total_cents, ..
            } => f.placed.push((items, total_cents)),
            OrderEvent::OrderConfirmed { .. } => f.finals.push(true),
            OrderEvent::OrderCancelled { reason, .. } => {
                f.cancelled_out_of_stock |= matches!(reason, CancelReason::OutOfStock(_));
                f.finals.push(false);
            }
        }
    }

    fn payment(&mut self, event: PaymentEvent) {
        let f = self.facts(event.order_id());
        match event {
            PaymentEvent::PaymentVerified { amount_cents, .. } => f.verified.push(amount_cents),
            PaymentEvent::PaymentDeclined { .. } => f.declined += 1,
            PaymentEvent::PaymentRefunded { amount_cents, .. } => f.refunded.push(amount_cents),
        }
    }

    fn stock(&mut self, event: StockEvent, position: u64) {
        let (lines, sign) = match &event {
            StockEvent::Restocked { items } => (items.clone(), 1),
            StockEvent::StockReserved { order_id, items } => {
                self.facts(order_id).reserved.push(items.clone());
                (items.clone(), -1)
            }
            StockEvent::OutOfStock { order_id, .. } => {
                self.facts(order_id).out_of_stock += 1;
                (vec![], 0)
            }
        };
        for l in lines {
            let level = self.levels.entry(l.sku.clone()).or_default();
            *level += sign * i128::from(l.quantity);
            if self.lowest.as_ref().is_none_or(|(low, _, _)| *level < *low) {
                self.lowest = Some((*level, l.sku.clone(), position));
            }
        }
    }
}

/// Up to five offenders, and how many there are.
fn offenders<'a>(ids: impl Iterator<Item = &'a String>) -> (usize, String) {
    let ids: Vec<&String> = ids.collect();
    let mut shown: Vec<&str> = ids.iter().take(5).map(|s| s.as_str()).collect();
    if ids.len() > 5 {
        shown.push("...");
    }
    (ids.len(), shown.join(", "))
}

fn verdict(name: &'static str, bad: (usize, String), ok: String, what: &str) -> Check {
    let (n, shown) = bad;
    Check {
        name,
        pass: n == 0,
        detail: if n == 0 {
            ok
        } else {
            format!("{n} {what}: {shown}")
        },
    }
}

/// Checks every invariant against the log in `store` (and the committed read model against the
/// log). A check that fails says which orders break it.
pub async fn check(store: &dyn EventStore) -> Result<Vec<Check>, StoreError> {
    let log = Log::read(store).await?;
    let orders = &log.orders;
    let mut checks = Vec::new();

    checks.push(verdict(
        INVARIANTS[0],
        offenders(log.undecodable.iter()),
        format!(
            "{} shop events ({} remembered decisions) up to position {}",
            log.events, log.decisions, log.head
        ),
        "undecodable",
    ));

    let confirmed = orders.values().filter(|f| f.confirmed()).count();
    let cancelled = orders.values().filter(|f| f.cancelled()).count();
    checks.push(verdict(
        INVARIANTS[1],
        offenders(
            orders
                .iter()
                .filter(|(_, f)| f.placed.len() != 1 || f.finals.len() != 1 || f.after_final > 0)
                .map(|(id, _)| id),
        ),
        format!(
            "{} orders: {confirmed} confirmed, {cancelled} cancelled",
            orders.len()
        ),
        "orders not placed once and final once (pending, unknown, or two verdicts)",
    ));

    let charged: u64 = orders.values().flat_map(|f| &f.verified).sum();
    let refunded: u64 = orders.values().flat_map(|f| &f.refunded).sum();
    checks.push(verdict(
        INVARIANTS[2],
        offenders(
            orders
                .iter()
                .filter(|(_, f)| {
                    f.verified.len() + f.declined as usize > 1
                        || f.refunded.len() > 1
                        || f.refunded.len() > f.verified.len()
                })
                .map(|(id, _)| id),
        ),
        format!(
            "{} charges, {} refunds, each at most once per order",
            orders.values().filter(|f| !f.verified.is_empty()).count(),
            orders.values().filter(|f| !f.refunded.is_empty()).count()
        ),
        "orders charged or refunded more than once",
    ));

    checks.push(verdict(
        INVARIANTS[3],
        offenders(
            orders
                .iter()
                .filter(|(_, f)| f.reserved.len() + f.out_of_stock as usize > 1)
                .map(|(id, _)| id),
        ),
        format!(
            "{} reservations, {} out of stock, each at most once per order",
            orders.values().filter(|f| !f.reserved.is_empty()).count(),
            orders.values().filter(|f| f.out_of_stock > 0).count()
        ),
        "orders reserved more than once",
    ));

    let (pass, detail) = match &log.lowest {
        Some((low, sku, position)) if *low < 0 => (
            false,
            format!("{sku} at {low} after the event at position {position}"),
        ),
        Some((low, sku, _)) => (true, format!("lowest level {low} ({sku})")),
        None => (true, "no stock movements".to_owned()),
    };
    checks.push(Check {
        name: INVARIANTS[4],
        pass,
        detail,
    });

    let confirmed_total: u64 = orders
        .values()
        .filter(|f| f.confirmed())
        .filter_map(|f| f.placed.first().map(|(_, t)| *t))
        .sum();
    let net = i128::from(charged) - i128::from(refunded);
    checks.push(Check {
        name: INVARIANTS[5],
        pass: net == i128::from(confirmed_total),
        detail: format!(
            "charged {} - refunded {} = {}; confirmed orders total {}",
            money(charged),
            money(refunded),
            if net < 0 {
                format!("-{}", money(net.unsigned_abs() as u64))
            } else {
                money(net as u64)
            },
            money(confirmed_total)
        ),
    });

    checks.push(verdict(
        INVARIANTS[6],
        offenders(
            orders
                .iter()
                .filter(|(_, f)| f.confirmed())
                .filter(|(_, f)| {
                    let Some((items, total)) = f.placed.first() else {
                        return true;
                    };
                    f.verified != [*total]
                        || !f.refunded.is_empty()
                        || f.reserved != [items.clone()]
                })
                .map(|(id, _)| id),
        ),
        format!("{confirmed} confirmed orders, each paid in full and reserved line for line"),
        "confirmed orders not paid or not reserved as ordered",
    ));

    let paid_cancelled = orders
        .values()
        .filter(|f| f.cancelled() && !f.verified.is_empty())
        .count();
    checks.push(verdict(
        INVARIANTS[7],
        offenders(
            orders
                .iter()
                .filter(|(_, f)| f.cancelled() && f.refunded != f.verified)
                .map(|(id, _)| id),
        ),
        format!("{paid_cancelled} orders cancelled after payment, each refunded in full"),
        "cancelled orders whose payment was not refunded",
    ));

    checks.push(read_model_agrees(store, &log).await?);
    Ok(checks)
}

/// The committed read model, compared with the log.
async fn read_model_agrees(store: &dyn EventStore, log: &Log) -> Result<Check, StoreError> {
    let name = INVARIANTS[8];
    let model = ReadModel::load(store).await?;
    if model.checkpoint < log.head {
        return Ok(Check {
            name,
            pass: false,
            detail: format!(
                "the {:?} projection is behind: checkpoint {} < head {}",
                ShopView::NAME,
                model.checkpoint,
                log.head
            ),
        });
    }
    let mut problems = Vec::new();
    let orders = &log.orders;
    let t = &model.totals;
    let count = |p: &dyn Fn(&Facts) -> bool| orders.values().filter(|f| p(f)).count() as u64;
    let expected = [
        ("placed", t.placed, count(&|f| !f.placed.is_empty())),
        ("confirmed", t.confirmed, count(&|f| f.confirmed())),
        (
            "cancelled for stock",
            t.cancelled_out_of_stock,
            count(&|f| f.cancelled() && f.cancelled_out_of_stock),
        ),
        (
            "cancelled for payment",
            t.cancelled_declined,
            count(&|f| f.cancelled() && !f.cancelled_out_of_stock),
        ),
        (
            "charged",
            t.charged_cents,
            orders.values().flat_map(|f| &f.verified).sum(),
        ),
        (
            "refunded",
            t.refunded_cents,
            orders.values().flat_map(|f| &f.refunded).sum(),
        ),
    ];
    for (what, shown, actual) in expected {
        if shown != actual {
            problems.push(format!("{what}: read model {shown}, log {actual}"));
        }
    }
    for (sku, level) in &log.levels {
        let shown = model.stock.get(sku).copied().unwrap_or(0);
        if i128::from(shown) != *level {
            problems.push(format!("stock of {sku}: read model {shown}, log {level}"));
        }
    }
    for (id, f) in orders {
        let Some(s) = model.orders.get(id) else {
            problems.push(format!("order {id} missing from the read model"));
            continue;
        };
        let payment = match (f.verified.len(), f.declined, f.refunded.len()) {
            (_, _, r) if r > 0 => PaymentView::Refunded,
            (v, _, _) if v > 0 => PaymentView::Verified,
            (_, d, _) if d > 0 => PaymentView::Declined,
            _ => PaymentView::Pending,
        };
        let outcome_matches = matches!(
            (&s.outcome, f.finals.first()),
            (OutcomeView::Pending, None)
                | (OutcomeView::Confirmed, Some(true))
                | (OutcomeView::Cancelled(_), Some(false))
        );
        let reserved = !f.reserved.is_empty();
        if s.payment != payment || !outcome_matches || s.reserved != reserved {
            problems.push(format!("order {id}: read model {s:?}"));
        }
    }
    if model.orders.len() != orders.len() {
        problems.push(format!(
            "{} orders in the read model, {} in the log",
            model.orders.len(),
            orders.len()
        ));
    }
    let pass = problems.is_empty();
    let detail = if pass {
        format!(
            "{} orders, {} SKUs and the totals match at position {}",
            model.orders.len(),
            model.stock.len(),
            log.head
        )
    } else {
        let n = problems.len();
        problems.truncate(3);
        format!("{n} differences: {}", problems.join("; "))
    };
    Ok(Check { name, pass, detail })
}

#[cfg(test)]
mod tests {
    use tidings::store::{ExpectedVersion, SledEventStore};

    use super::*;

    fn placed(id: &str, items: Vec<Line>, total_cents: u64) -> OrderEvent {
        OrderEvent::OrderPlaced {
            order_id: id.into(),
            customer: "ada".into(),
            items,
            total_cents,
        }
    }

    fn verified(id: &str, amount_cents: u64) -> PaymentEvent {
        PaymentEvent::PaymentVerified {
            order_id: id.into(),
            amount_cents,
            reference: "r".into(),
        }
    }

    async fn append<E: DomainEvent>(store: &SledEventStore, stream: &str, events: &[E]) {
        let data = events.iter().map(|e| e.to_event_data().unwrap()).collect();
        store
            .append(stream, ExpectedVersion::Any, data)
            .await
            .unwrap();
    }

    fn failed(checks: &[Check]) -> Vec<&'static str> {
        checks.iter().filter(|c| !c.pass).map(|c| c.name).collect()
    }

    /// One good order, then one broken way per test: each check fails on what it is about.
    async fn store_with_a_good_order() -> (tempfile::TempDir, SledEventStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SledEventStore::open(dir.path()).unwrap();
        let w = vec![Line::new("widget", 2)];
        append(
            &store,
            "stock-main",
            &[StockEvent::Restocked { items: w.clone() }],
        )
        .await;
        append(&store, "order-a", &[placed("a", w.clone(), 2_500)]).await;
        append(&store, "payment-a", &[verified("a", 2_500)]).await;
        append(
            &store,
            "stock-main",
            &[StockEvent::StockReserved {
                order_id: "a".into(),
                items: w,
            }],
        )
        .await;
        append(
            &store,
            "order-a",
            &[OrderEvent::OrderConfirmed {
                order_id: "a".into(),
            }],
        )
        .await;
        (dir, store)
    }

    #[tokio::test]
    async fn a_consistent_log_passes_all_but_the_missing_read_model() {
        let (_dir, store) = store_with_a_good_order().await;
        let checks = check(&store).await.unwrap();
        assert_eq!(checks.len(), INVARIANTS.len());
        // No projection ran: the read model is behind, and says so.
        assert_eq!(failed(&checks), vec![INVARIANTS[8]]);
        assert!(checks[8].detail.contains("behind"), "{:?}", checks[8]);
    }

    #[tokio::test]
    async fn a_pending_order_and_a_second_verdict_fail_the_final_state_check() {
        let (_dir, store) = store_with_a_good_order().await;
        append(
            &store,
            "order-b",
            &[placed("b", vec![Line::new("gizmo", 1)], 799)],
        )
        .await;
        let checks = check(&store).await.unwrap();
        assert!(failed(&checks).contains(&INVARIANTS[1]));
        assert!(checks[1].detail.ends_with(": b"), "{:?}", checks[1]);
        let (_dir, store) = store_with_a_good_order().await;
        let cancel = OrderEvent::OrderCancelled {
            order_id: "a".into(),
            reason: CancelReason::PaymentDeclined("late".into()),
        };
        append(&store, "order-a", &[cancel]).await;
        assert!(failed(&check(&store).await.unwrap()).contains(&INVARIANTS[1]));
    }

    #[tokio::test]
    async fn overselling_fails_the_stock_check() {
        let (_dir, store) = store_with_a_good_order().await;
        let reserve = StockEvent::StockReserved {
            order_id: "b".into(),
            items: vec![Line::new("widget", 1)],
        };
        append(&store, "stock-main", &[reserve]).await;
        let checks = check(&store).await.unwrap();
        assert!(failed(&checks).contains(&INVARIANTS[4]));
        assert!(checks[4].detail.contains("widget at -1"), "{:?}", checks[4]);
    }

    #[tokio::test]
    async fn a_paid_cancellation_without_refund_fails_the_money_checks() {
        let (_dir, store) = store_with_a_good_order().await;
        append(
            &store,
            "order-c",
            &[placed("c", vec![Line::new("gizmo", 1)], 799)],
        )
        .await;
        append(&store, "payment-c", &[verified("c", 799)]).await;
        let cancel = OrderEvent::OrderCancelled {
            order_id: "c".into(),
            reason: CancelReason::OutOfStock(vec![Line::new("gizmo", 1)]),
        };
        append(&store, "order-c", &[cancel]).await;
        let failed = failed(&check(&store).await.unwrap());
        assert!(failed.contains(&INVARIANTS[5]), "{failed:?}");
        assert!(failed.contains(&INVARIANTS[7]), "{failed:?}");
        assert!(!failed.contains(&INVARIANTS[1]), "{failed:?}");
    }

    #[tokio::test]
    async fn an_undecodable_event_fails_the_decode_check() {
        let (_dir, store) = store_with_a_good_order().await;
        let bad = tidings::store::EventData::new("OrderPlaced", b"{\"nope\":1}".to_vec());
        store
            .append("order-x", ExpectedVersion::Any, vec![bad])
            .await
            .unwrap();
        let checks = check(&store).await.unwrap();
        assert!(failed(&checks).contains(&INVARIANTS[0]));
        assert!(checks[0].detail.contains("position 6"), "{:?}", checks[0]);
    }
}
