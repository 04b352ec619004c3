//! Printing for a person: outcomes, stock, money, services and invariants.

use crate::catalog::money;
use crate::view::{OrderSummary, OutcomeView, PaymentView, ReadModel};
use crate::Check;
use tidings::subscription::SubscriptionStatus;

/// How a set of orders ended.
#[derive(Debug, Default, Clone, Copy)]
pub struct Outcomes {
    pub placed: u64,
    pub confirmed: u64,
    pub declined: u64,
    pub out_of_stock: u64,
    pub pending: u64,
    pub paid_waiting: u64,
}

impl Outcomes {
    pub fn of<'a>(orders: impl IntoIterator<Item = &'a OrderSummary>) -> Outcomes {
        let mut o = Outcomes::default();
        for s in orders {
            o.placed += 1;
            match &s.outcome {
                OutcomeView::Confirmed => o.confirmed += 1,
                OutcomeView::Cancelled(_) if s.payment == PaymentView::Declined => o.declined += 1,
                OutcomeView::Cancelled(_) => o.out_of_stock += 1,
                OutcomeView::Pending => {
                    o.pending += 1;
                    if s.payment == PaymentView::Verified {
                        o.paid_waiting += 1;
                    }
                }
            }
        }
        o
    }

    pub fn line(&self) -> String {
        let mut line = format!(
            "{} placed: {} confirmed, {} cancelled (payment declined), {} cancelled (out of stock)",
            self.placed, self.confirmed, self.declined, self.out_of_stock
        );
        if self.pending > 0 {
            line.push_str(&format!(", {} not decided yet", self.pending));
        }
        line
    }
}

pub fn stock_line(model: &ReadModel) -> String {
    if model.stock.is_empty() {
        return "empty".into();
    }
    model
        .stock
        .iter()
        .map(|(sku, n)| format!("{sku} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn money_line(model: &ReadModel) -> String {
    let t = &model.totals;
    format!(
        "charged {}, refunded {}, kept {}",
        money(t.charged_cents),
        money(t.refunded_cents),
        money(t.charged_cents.saturating_sub(t.refunded_cents))
    )
}

pub fn order_line(s: &OrderSummary) -> String {
    let items: Vec<String> = s.items.iter().map(|l| l.to_string()).collect();
    let outcome = match &s.outcome {
        OutcomeView::Pending => format!("pending (payment {:?})", s.payment).to_lowercase(),
        OutcomeView::Confirmed => "confirmed".into(),
        OutcomeView::Cancelled(why) => format!("cancelled: {why}"),
    };
    let refunded = if s.payment == PaymentView::Refunded {
        ", refunded"
    } else {
        ""
    };
    format!(
        "{:<10} {:<8} {:>8}  {:<34} {outcome}{refunded}",
        s.order_id,
        s.customer,
        money(s.total_cents),
        items.join(" ")
    )
}

pub fn service_line(s: &SubscriptionStatus) -> String {
    let state = format!("{:?}", s.state);
    let mut line = format!(
        "{:<11} {:<12} checkpoint {:>6}  lag {:>5}",
        s.name,
        state.split('(').next().unwrap_or(&state),
        s.checkpoint,
        s.lag()
    );
    if s.parked > 0 {
        line.push_str(&format!("  parked {}", s.parked));
    }
    if let tidings::subscription::SubscriptionState::Failed(reason) = &s.state {
        line.push_str(&format!("  ({reason})"));
    }
    line
}

/// Prints the checks; returns whether all passed.
pub fn print_checks(checks: &[Check]) -> bool {
    println!("invariants (checked from the event log):");
    for c in checks {
        println!(
            "  {}  {} — {}",
            if c.pass { "PASS" } else { "FAIL" },
            c.name,
            c.detail
        );
    }
    crate::all_pass(checks)
}
