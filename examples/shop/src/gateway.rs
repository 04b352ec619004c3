//! The payment gateway: the outside world the payment service talks to.
//!
//! [`PaymentGateway`] is a trait so that a test (or a real integration) can put its own behind
//! the shop. Calls carry an idempotency key, as real gateways take one: the payment service
//! derives it from the event it reacts to, so asking again after a crash does not charge again.
//! [`SimulatedGateway`] is the one the example runs with: deterministic decisions, and failures
//! that can be injected.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tidings::async_trait;
use uuid::Uuid;

use crate::payment::ChargeOutcome;

/// A request to take money for an order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChargeRequest {
    /// The same key for every attempt of one charge: the gateway charges once per key.
    pub idempotency_key: Uuid,
    /// The order paid for.
    pub order_id: String,
    /// Who pays.
    pub customer: String,
    /// How much, in cents.
    pub amount_cents: u64,
}

/// A request to give back a charge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundRequest {
    /// The same key for every attempt of one refund.
    pub idempotency_key: Uuid,
    /// The order.
    pub order_id: String,
    /// How much, in cents.
    pub amount_cents: u64,
}

/// A gateway call that did not get an answer: worth retrying (with the same key).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("payment gateway unavailable: {0}")]
pub struct GatewayError(pub String);

/// A payment gateway. Implementations must be idempotent per `idempotency_key`: a second call
/// with a key already answered returns the first answer and moves no money.
#[async_trait]
pub trait PaymentGateway: Send + Sync + 'static {
    /// Charges the customer, or declines.
    async fn charge(&self, request: &ChargeRequest) -> Result<ChargeOutcome, GatewayError>;
    /// Gives the money back.
    async fn refund(&self, request: &RefundRequest) -> Result<(), GatewayError>;
}

/// What a [`SimulatedGateway`] did, for tests and the final report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GatewayStats {
    /// Calls of `charge` and `refund`, failed ones included.
    pub calls: u64,
    /// Calls answered with an injected failure.
    pub failures: u64,
    /// Calls that repeated an idempotency key already answered (answered from memory).
    pub repeats: u64,
    /// Charges approved (distinct keys).
    pub charges: u64,
    /// Money taken, in cents.
    pub charged_cents: u64,
    /// Refunds made (distinct keys).
    pub refunds: u64,
    /// Money given back, in cents.
    pub refunded_cents: u64,
    /// The most approved charges any one order got (1 when nothing was charged twice).
    pub max_charges_per_order: u64,
}

#[derive(Default)]
struct Ledger {
    attempts: HashMap<Uuid, u32>,
    charges: HashMap<Uuid, ChargeOutcome>,
    refunds: HashMap<Uuid, u64>,
    charges_per_order: HashMap<String, u64>,
    stats: GatewayStats,
}

/// An in-memory gateway with deterministic answers: it declines a charge above its card limit,
/// and approves the rest. Failures can be injected: every key's first `n` calls fail
/// ([`fail_first`](Self::fail_first)), or every call fails while it is down
/// ([`set_down`](Self::set_down)).
pub struct SimulatedGateway {
    card_limit_cents: u64,
    fail_first: u32,
    down: AtomicBool,
    ledger: Mutex<Ledger>,
}

impl Default for SimulatedGateway {
    fn default() -> Self {
        SimulatedGateway::new(SimulatedGateway::DEFAULT_CARD_LIMIT_CENTS)
    }
}

impl SimulatedGateway {
    /// The default card limit: 150.00.
    pub const DEFAULT_CARD_LIMIT_CENTS: u64 = 15_000;

    /// A gateway that declines charges above `card_limit_cents`.
    pub fn new(card_limit_cents: u64) -> Self {
        SimulatedGateway {
            card_limit_cents,
            fail_first: 0,
            down: AtomicBool::new(false),
            ledger: Mutex::default(),
        }
    }

    /// Makes the first `n` calls with each idempotency key fail (a flaky network).
    pub fn fail_first(mut self, n: u32) -> Self {
        self.fail_first = n;
        self
    }

    /// Takes the gateway down (every call fails) or brings it back.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// What it did so far.
    pub fn stats(&self) -> GatewayStats {
        self.ledger().stats.clone()
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a call with `key`; an error if it is to fail.
    fn attempt(&self, ledger: &mut Ledger, key: Uuid) -> Result<(), GatewayError> {
        ledger.stats.calls += 1;
        let attempts = ledger.attempts.entry(key).or_default();
        *attempts += 1;
        let n = *attempts;
        if self.down.load(Ordering::SeqCst) {
            ledger.stats.failures += 1;
            return Err(GatewayError("the gateway is down".into()));
        }
        if n <= self.fail_first {
            ledger.stats.failures += 1;
            return Err(GatewayError(format!("timeout (attempt {n} of key {key})")));
        }
        Ok(())
    }
}

#[async_trait]
impl PaymentGateway for SimulatedGateway {
    async fn charge(&self, request: &ChargeRequest) -> Result<ChargeOutcome, GatewayError> {
        let mut ledger = self.ledger();
        self.attempt(&mut ledger, request.idempotency_key)?;
        if let Some(answer) = ledger.charges.get(&request.idempotency_key) {
            let answer = answer.clone();
            ledger.stats.repeats += 1;
            return Ok(answer);
        }
        let outcome = if request.amount_cents > self.card_limit_cents {
            ChargeOutcome::Declined {
                reason: format!(
                    "over the card limit of {}",
                    crate::catalog::money(self.card_limit_cents)
                ),
            }
        } else {
            let key = request.idempotency_key.simple().to_string();
            ChargeOutcome::Approved {
                reference: format!("ch_{}", &key[..12]),
            }
        };
        if matches!(outcome, ChargeOutcome::Approved { .. }) {
            ledger.stats.charges += 1;
            ledger.stats.charged_cents += request.amount_cents;
            let n = ledger
                .charges_per_order
                .entry(request.order_id.clone())
                .or_default();
            *n += 1;
            let n = *n;
            ledger.stats.max_charges_per_order = ledger.stats.max_charges_per_order.max(n);
        }
        ledger
            .charges
            .insert(request.idempotency_key, outcome.clone());
        Ok(outcome)
    }

    async fn refund(&self, request: &RefundRequest) -> Result<(), GatewayError> {
        let mut ledger = self.ledger();
        self.attempt(&mut ledger, request.idempotency_key)?;
        if ledger.refunds.contains_key(&request.idempotency_key) {
            ledger.stats.repeats += 1;
            return Ok(());
        }
        ledger
            .refunds
            .insert(request.idempotency_key, request.amount_cents);
        ledger.stats.refunds += 1;
        ledger.stats.refunded_cents += request.amount_cents;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(amount_cents: u64) -> ChargeRequest {
        ChargeRequest {
            idempotency_key: Uuid::now_v7(),
            order_id: "o-1".into(),
            customer: "ada".into(),
            amount_cents,
        }
    }

    #[tokio::test]
    async fn a_key_is_charged_once_and_failures_come_first() {
        let gateway = SimulatedGateway::new(1_000).fail_first(2);
        let r = request(500);
        assert!(gateway.charge(&r).await.is_err());
        assert!(gateway.charge(&r).await.is_err());
        let first = gateway.charge(&r).await.unwrap();
        assert!(matches!(first, ChargeOutcome::Approved { .. }));
        assert_eq!(gateway.charge(&r).await.unwrap(), first);
        let s = gateway.stats();
        assert_eq!((s.calls, s.failures, s.repeats), (4, 2, 1));
        assert_eq!(
            (s.charges, s.charged_cents, s.max_charges_per_order),
            (1, 500, 1)
        );
    }

    #[tokio::test]
    async fn over_the_limit_is_declined_and_down_fails_everything() {
        let gateway = SimulatedGateway::new(1_000);
        assert!(matches!(
            gateway.charge(&request(1_001)).await.unwrap(),
            ChargeOutcome::Declined { .. }
        ));
        gateway.set_down(true);
        assert!(gateway.charge(&request(1)).await.is_err());
        gateway.set_down(false);
        assert!(gateway.charge(&request(1)).await.is_ok());
        assert_eq!(gateway.stats().charges, 1);
    }
}
