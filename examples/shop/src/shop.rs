//! [`Shop`]: the store, the three aggregate registries, and the four services, in one value
//! that the binary, the tests and the crash child drive. The store is the embedded one
//! ([`Shop::open`]) or any other, PostgreSQL included ([`Shop::with_store`]), where each service
//! may run in a process of its own.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidings::prelude::*;
use tidings::subscription::{
    ControlError, StartError, SubscriptionState, SubscriptionStatus, WaitError,
};

use crate::catalog::Line;
use crate::gateway::{PaymentGateway, SimulatedGateway};
use crate::invariants::{self, Check};
use crate::order::{Order, OrderCommand, OrderError, OrderEvent};
use crate::payment::Payment;
use crate::services::{FulfilmentService, PaymentService, Repeats, StockService};
use crate::stock::{Stock, StockCommand, StockError, WAREHOUSE};
use crate::view::{ReadModel, ShopView};

/// One of the shop's services (a durable subscription).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Service {
    /// Charges placed orders, refunds cancelled paid ones ([`PaymentService`]).
    Payments,
    /// Reserves the items of paid orders ([`StockService`]).
    Stock,
    /// Confirms or cancels orders ([`FulfilmentService`]).
    Fulfilment,
    /// Keeps the read model ([`ShopView`]).
    View,
}

impl Service {
    /// Every service, in the order they are started.
    pub const ALL: [Service; 4] = [
        Service::Payments,
        Service::Stock,
        Service::Fulfilment,
        Service::View,
    ];

    /// Parses a service's name on the command line: its subscription's name (`payments`,
    /// `stock`, `fulfilment`, `shop-view`) or a short one (`payment`, `order` for fulfilment,
    /// which decides orders, `view`).
    pub fn parse(name: &str) -> Option<Service> {
        Some(match name {
            "payments" | "payment" => Service::Payments,
            "stock" => Service::Stock,
            "fulfilment" | "fulfillment" | "order" | "orders" => Service::Fulfilment,
            "shop-view" | "view" => Service::View,
            _ => return None,
        })
    }

    /// Its subscription's name.
    pub fn name(self) -> &'static str {
        match self {
            Service::Payments => PaymentService::NAME,
            Service::Stock => StockService::NAME,
            Service::Fulfilment => FulfilmentService::NAME,
            Service::View => ShopView::NAME,
        }
    }
}

/// How the shop runs.
#[derive(Clone)]
pub struct ShopConfig {
    /// The payment gateway the payment service calls.
    pub gateway: Arc<dyn PaymentGateway>,
    /// Settings of every service's subscription.
    pub subscription: SubscriptionConfig,
    /// What a failing payment service does: retry (the gateway may be flaky), then park.
    pub payments_failure_policy: FailurePolicy,
    /// Settings of the three aggregate registries.
    pub aggregates: AggregateConfig,
}

impl Default for ShopConfig {
    fn default() -> Self {
        ShopConfig {
            gateway: Arc::new(SimulatedGateway::default()),
            subscription: SubscriptionConfig::default().commit_interval(Duration::from_millis(50)),
            payments_failure_policy: FailurePolicy::retry_then_park(
                5,
                Duration::from_millis(20),
                Duration::from_millis(500),
            ),
            aggregates: AggregateConfig::default().idle_timeout(Some(Duration::from_secs(60))),
        }
    }
}

impl ShopConfig {
    /// Sets the gateway.
    pub fn gateway(mut self, gateway: Arc<dyn PaymentGateway>) -> Self {
        self.gateway = gateway;
        self
    }

    /// Sets the payment service's failure policy.
    pub fn payments_failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.payments_failure_policy = policy;
        self
    }

    /// Sets every service's subscription settings (the payment service's failure policy is
    /// [`payments_failure_policy`](Self::payments_failure_policy)).
    pub fn subscription(mut self, config: SubscriptionConfig) -> Self {
        self.subscription = config;
        self
    }
}

/// What can go wrong running the shop.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShopError {
    /// The store failed (or does not open: another process has it, damage, ...).
    #[error("event store: {0}")]
    Store(#[from] StoreError),
    /// A service could not be started (it is already running).
    #[error(transparent)]
    Start(#[from] StartError),
    /// An operation on a service's parked events failed.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// A service failed (the reason names the event).
    #[error("service {name} failed: {reason}")]
    ServiceFailed {
        /// The service's subscription name.
        name: &'static str,
        /// Why.
        reason: String,
    },
    /// The services running here did not settle: one failed or stopped, or the deadline came
    /// first (the error names who is behind).
    #[error(transparent)]
    Wait(#[from] WaitError),
    /// The services (in other processes) did not catch up with the log in time.
    #[error("not settled after {waited:?}: head {head}, behind: {behind:?}")]
    NotSettled {
        /// How long it waited.
        waited: Duration,
        /// The head then.
        head: u64,
        /// The services still behind.
        behind: Vec<&'static str>,
    },
}

/// The shop: a store, the order, payment and stock aggregates, and the services that react to
/// their events. Must be opened and used inside an actix `System`.
///
/// `S` is the store's type: [`SledEventStore`] for a shop [`open`](Shop::open)ed in a
/// directory (so [`store`](Shop::store) is the embedded store itself), `dyn EventStore`
/// ([`SharedShop`]) for one built [`with_store`](Shop::with_store) over any store, PostgreSQL
/// included.
pub struct Shop<S: EventStore + ?Sized = SledEventStore> {
    store: Arc<S>,
    /// The same store, as the registries and subscriptions have it.
    shared: Arc<dyn EventStore>,
    orders: AggregateRegistry<Order>,
    payments: AggregateRegistry<Payment>,
    stock: AggregateRegistry<Stock>,
    subscriptions: Subscriptions,
    config: ShopConfig,
    repeats: Repeats,
}

/// A shop over any store ([`Shop::with_store`], [`Shop::into_shared`]).
pub type SharedShop = Shop<dyn EventStore>;

impl Shop {
    /// Opens (or creates) the shop's store in `dir` and starts the aggregate registries. No
    /// service runs yet: see [`start_all`](Self::start_all).
    pub fn open(dir: &Path, config: ShopConfig) -> Result<Shop, ShopError> {
        let store = Arc::new(SledEventStore::open(dir)?);
        Ok(Shop::build(store.clone(), store, config))
    }
}

impl SharedShop {
    /// The shop over a store that is already open (PostgreSQL, say, shared by several
    /// processes: each may run some of the services, and any may host the aggregates, which
    /// optimistic concurrency and idempotent command ids keep correct). Starts the aggregate
    /// registries; no service runs yet.
    pub fn with_store(store: Arc<dyn EventStore>, config: ShopConfig) -> SharedShop {
        Shop::build(store.clone(), store, config)
    }
}

impl<S: EventStore + ?Sized> Shop<S> {
    fn build(store: Arc<S>, shared: Arc<dyn EventStore>, config: ShopConfig) -> Shop<S> {
        let aggregates = config.aggregates.clone();
        Shop {
            orders: AggregateRegistry::start(shared.clone(), aggregates.clone()),
            payments: AggregateRegistry::start(shared.clone(), aggregates.clone()),
            // One warehouse records an event per order: a wide idempotence window keeps every
            // redelivery after a crash within it.
            stock: AggregateRegistry::start(shared.clone(), aggregates.dedup_window(10_000)),
            subscriptions: Subscriptions::new(shared.clone()),
            store,
            shared,
            config,
            repeats: Repeats::default(),
        }
    }

    /// The same shop, its store seen as any store (for code that runs on either backend).
    pub fn into_shared(self) -> SharedShop {
        Shop {
            store: self.shared.clone(),
            shared: self.shared,
            orders: self.orders,
            payments: self.payments,
            stock: self.stock,
            subscriptions: self.subscriptions,
            config: self.config,
            repeats: self.repeats,
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// The order aggregates.
    pub fn orders(&self) -> &AggregateRegistry<Order> {
        &self.orders
    }

    /// The payment aggregates.
    pub fn payments(&self) -> &AggregateRegistry<Payment> {
        &self.payments
    }

    /// The warehouse.
    pub fn stock(&self) -> &AggregateRegistry<Stock> {
        &self.stock
    }

    /// The services' subscriptions (status, parked events, reset...).
    pub fn subscriptions(&self) -> &Subscriptions {
        &self.subscriptions
    }

    /// How many commands the services sent again (for an event delivered again after a crash
    /// or a retry) and the aggregates answered from history instead of executing twice.
    pub fn repeated_commands(&self) -> u64 {
        self.repeats.get()
    }

    /// Starts one service: it catches up from its checkpoint, then follows the log.
    pub fn start(&self, service: Service) -> Result<SubscriptionHandle, ShopError> {
        let config = self.config.subscription.clone();
        let subs = &self.subscriptions;
        Ok(match service {
            Service::Payments => subs.start_with(
                PaymentService::new(
                    self.payments.clone(),
                    self.config.gateway.clone(),
                    self.repeats.clone(),
                ),
                config.failure_policy(self.config.payments_failure_policy.clone()),
            )?,
            Service::Stock => subs.start_with(
                StockService::new(
                    self.orders.clone(),
                    self.stock.clone(),
                    self.repeats.clone(),
                ),
                config,
            )?,
            Service::Fulfilment => subs.start_with(
                FulfilmentService::new(self.orders.clone(), self.repeats.clone()),
                config,
            )?,
            Service::View => subs.start_with(ShopView, config)?,
        })
    }

    /// Starts every service that is not running.
    pub fn start_all(&self) -> Result<(), ShopError> {
        for service in Service::ALL {
            if !self.is_running(service) {
                self.start(service)?;
            }
        }
        Ok(())
    }

    /// Stops a service after the event in hand; returns its status once its checkpoint is saved.
    pub async fn stop(&self, service: Service) -> Option<SubscriptionStatus> {
        self.subscriptions.stop(service.name()).await
    }

    /// Whether a service is running.
    pub fn is_running(&self, service: Service) -> bool {
        self.subscriptions
            .get(service.name())
            .is_some_and(|h| !h.is_finished())
    }

    /// A service's status in this process, if it was started.
    pub fn status(&self, service: Service) -> Option<SubscriptionStatus> {
        self.subscriptions.get(service.name()).map(|h| h.status())
    }

    /// How many positions of the log a service has not looked at yet (running or stopped).
    pub async fn lag(&self, service: Service) -> Result<u64, StoreError> {
        let done = match self.status(service) {
            Some(s) => s.handled_up_to,
            None => self
                .store
                .load_checkpoint(service.name())
                .await?
                .unwrap_or(0),
        };
        Ok(self.shared.head().saturating_sub(done))
    }

    /// How many positions of the log a service has not committed yet, read from the store (its
    /// committed checkpoint against the newest head): what any process sees of a service that
    /// runs elsewhere.
    pub async fn committed_lag(&self, service: Service) -> Result<u64, StoreError> {
        let head = self.fresh_head().await?;
        let done = self
            .store
            .load_checkpoint(service.name())
            .await?
            .unwrap_or(0);
        Ok(head.saturating_sub(done))
    }

    /// The store's durable head, asked of the store itself (on PostgreSQL, of the server, not
    /// this process's last notification).
    pub async fn fresh_head(&self) -> Result<u64, StoreError> {
        let from = self.shared.head().saturating_add(1);
        let page = self.shared.read_all(from, 1, &Filter::all()).await?;
        Ok(page.head.max(self.shared.head()))
    }

    /// [`settle`](Self::settle) for services that run in other processes: waits until each of
    /// `services` has committed a checkpoint at the head and the head stopped moving, reading
    /// only the store, at most `timeout`. Returns the head. A service whose stored status says
    /// it failed is an error.
    pub async fn settle_committed(
        &self,
        services: &[Service],
        timeout: Duration,
    ) -> Result<u64, ShopError> {
        let started = Instant::now();
        let mut quiet_at: Option<u64> = None;
        loop {
            let head = self.fresh_head().await?;
            let mut behind = Vec::new();
            for &service in services {
                let done = self
                    .store
                    .load_checkpoint(service.name())
                    .await?
                    .unwrap_or(0);
                if done < head {
                    behind.push(service.name());
                }
            }
            if behind.is_empty() {
                // Twice in a row at the same head: nothing was reacting in between.
                if quiet_at == Some(head) {
                    return Ok(head);
                }
                quiet_at = Some(head);
            } else {
                quiet_at = None;
                for &service in services {
                    let status = tidings::subscription::subscription_status_from_store(
                        &*self.shared,
                        service.name(),
                    )
                    .await?;
                    if let Some(SubscriptionState::Failed(reason)) = status.map(|s| s.state) {
                        return Err(ShopError::ServiceFailed {
                            name: service.name(),
                            reason,
                        });
                    }
                }
            }
            if started.elapsed() >= timeout {
                return Err(ShopError::NotSettled {
                    waited: started.elapsed(),
                    head,
                    behind,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Places an order (a new command id each call).
    pub async fn place_order(
        &self,
        order_id: &str,
        customer: &str,
        items: Vec<Line>,
    ) -> Result<CommandOutcome, AggregateError<OrderError>> {
        let command = OrderCommand::Place {
            order_id: order_id.to_owned(),
            customer: customer.to_owned(),
            items,
        };
        self.orders
            .execute(order_id, CommandEnvelope::new(command))
            .await
    }

    /// Restocks the warehouse.
    pub async fn restock(
        &self,
        items: Vec<Line>,
    ) -> Result<CommandOutcome, AggregateError<StockError>> {
        self.stock
            .execute_fresh(WAREHOUSE, StockCommand::Restock { items })
            .await
    }

    /// The next free order number: one more than the highest `o-<number>` order in the log.
    pub async fn next_order_number(&self) -> Result<u64, ShopError> {
        let filter = Filter::all().event_types(["OrderPlaced"]);
        let (mut from, mut highest) = (1, 0u64);
        loop {
            let page = self.shared.read_all(from, 512, &filter).await?;
            for e in &page.events {
                if let Ok(event) = OrderEvent::from_recorded(e) {
                    if let Some(n) = event
                        .order_id()
                        .strip_prefix("o-")
                        .and_then(|n| n.parse::<u64>().ok())
                    {
                        highest = highest.max(n);
                    }
                }
            }
            from = page.next_position;
            if page.is_end() {
                return Ok(highest + 1);
            }
        }
    }

    /// Waits until every running service has handled the whole log and the log stopped
    /// growing (every reaction has run), at most `timeout`. Returns the head. A service that
    /// failed is an error.
    pub async fn settle(&self, timeout: Duration) -> Result<u64, ShopError> {
        Ok(self.subscriptions.settle(timeout).await?)
    }

    /// Commits what the read model's projection has pending (if it runs here), so that the
    /// store shows it. Nothing to do if it stands by: the process that holds it commits within
    /// its commit interval ([`settle_committed`](Self::settle_committed) waits for that).
    pub async fn flush_view(&self) -> Result<(), ShopError> {
        if let Some(handle) = self.subscriptions.get(ShopView::NAME) {
            match handle.flush().await {
                Ok(()) | Err(ControlError::Standby(_) | ControlError::NotRunning(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// The read model, as committed (after flushing the projection).
    pub async fn read_model(&self) -> Result<ReadModel, ShopError> {
        self.flush_view().await?;
        Ok(ReadModel::load(&*self.shared).await?)
    }

    /// Checks the invariants from the log (flushing the projection first, so that the read
    /// model can be compared). Settle first for a verdict on a quiet shop.
    pub async fn check(&self) -> Result<Vec<Check>, ShopError> {
        self.flush_view().await?;
        Ok(invariants::check(&*self.shared).await?)
    }

    /// Stops every service (saving checkpoints) and every aggregate instance.
    pub async fn shutdown(self) {
        self.subscriptions.stop_all().await;
        self.orders.shutdown().await;
        self.payments.shutdown().await;
        self.stock.shutdown().await;
    }
}
