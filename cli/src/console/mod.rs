//! The web console: streams and their events, subscriptions with their lag over time, parked
//! events with replay and skip, reset with a preview, and Prometheus `/metrics` (feature
//! `console`, on by default; decision 51).
//!
//! `tidings console --store ...` serves it on `127.0.0.1:9870`. An application that runs its
//! subscriptions in its own process mounts it in its own actix-web `App` instead, so that the
//! console sees them live and operations on them go through their loops:
//!
//! ```no_run
//! use std::sync::Arc;
//! use actix_web::{web, App, HttpServer};
//! use tidings::store::{EventStore, SledEventStore};
//! use tidings::subscription::Subscriptions;
//! use tidings_cli::console::{Console, ConsoleOptions};
//! use tidings_cli::Registry;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let store: Arc<dyn EventStore> = Arc::new(SledEventStore::open("data")?);
//! let subscriptions = Subscriptions::new(store.clone());
//! // ... start the application's subscriptions on `subscriptions` ...
//! let options = ConsoleOptions::default().token(std::env::var("CONSOLE_TOKEN").ok());
//! let console = Console::new(store, subscriptions, Registry::new(), options);
//! let _sampler = console.spawn_sampler(); // lag history, one sample a second
//! HttpServer::new(move || {
//!     let console = console.clone();
//!     App::new().service(web::scope("/console").configure(move |cfg| console.configure(cfg)))
//! })
//! .bind(("127.0.0.1", 9870))?
//! .run()
//! .await?;
//! # Ok(())
//! # }
//! ```
//!
//! Every endpoint of the JSON API under `api/` runs the CLI's own command (with `--json`) and
//! answers with its lines; errors are JSON `{"error": ..., "status": ...}` with 404 for an
//! unknown subscription, stream or parked event, 400 for malformed input, 409 for an operation
//! refused as things stand, and 202 for a request accepted but not applied yet. Requests that
//! change state need the token (header `X-Tidings-Token`); with no token configured they are
//! refused (403). See `docs/observability.md`.

mod api;
mod assets;
mod history;
mod host;
mod serve;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::web;
use metrics_exporter_prometheus::PrometheusHandle;
use tidings::store::EventStore;
use tidings::subscription::Subscriptions;

use self::history::History;
use crate::location::StoreLocation;
use crate::registry::Registry;

pub use self::history::{MAX_SAMPLES, MAX_SUBSCRIPTIONS};
pub(crate) use self::serve::serve;

/// The header that carries the token of a request that changes state.
pub const TOKEN_HEADER: &str = "X-Tidings-Token";

/// How the console is set up: its token, its Prometheus handle, the store it shows.
#[derive(Clone, Default)]
pub struct ConsoleOptions {
    token: Option<String>,
    prometheus: Option<PrometheusHandle>,
    location: Option<(StoreLocation, Option<String>)>,
    sample_interval: Option<Duration>,
    record_lag_metrics: bool,
    allowed_hosts: Vec<String>,
}

impl std::fmt::Debug for ConsoleOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleOptions")
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("prometheus", &self.prometheus.is_some())
            .field("location", &self.location)
            .field("sample_interval", &self.sample_interval)
            .field("record_lag_metrics", &self.record_lag_metrics)
            .field("allowed_hosts", &self.allowed_hosts)
            .finish()
    }
}

impl ConsoleOptions {
    /// The token that requests changing state (replay, skip, reset) must carry in the
    /// `X-Tidings-Token` header. `None` (the default): state changes are off, reading works.
    /// An empty token counts as none.
    #[must_use]
    pub fn token(mut self, token: Option<String>) -> Self {
        self.token = token.filter(|t| !t.is_empty());
        self
    }

    /// Serve `/metrics` by rendering this recorder's handle (the application installed the
    /// recorder, as `PrometheusBuilder::new().install_recorder()` does). Without one,
    /// `/metrics` answers 404 saying so.
    #[must_use]
    pub fn prometheus(mut self, handle: PrometheusHandle) -> Self {
        self.prometheus = Some(handle);
        self
    }

    /// Where the store is, as on the command line (`--store`, `--schema`). On a PostgreSQL
    /// store the commands then treat subscriptions recorded as running elsewhere as such (see
    /// [`execute_on`](crate::execute_on)); the page shows the store's name.
    #[must_use]
    pub fn location(mut self, store: StoreLocation, schema: Option<String>) -> Self {
        self.location = Some((store, schema));
        self
    }

    /// A host name the API and `/metrics` answer to besides IP addresses and `localhost` (the
    /// name a proxy in front of the console forwards in `Host`). Requests naming any other host
    /// are refused (403): a page elsewhere that had its own name resolve to this machine's
    /// address (DNS rebinding) cannot read the store through the browser of someone who can
    /// reach the console.
    #[must_use]
    pub fn allow_host(mut self, name: impl Into<String>) -> Self {
        self.allowed_hosts.push(name.into());
        self
    }

    /// How often the sampler records lag (default one second). The history holds
    /// [`MAX_SAMPLES`] samples whatever the interval.
    #[must_use]
    pub fn sample_interval(mut self, interval: Duration) -> Self {
        self.sample_interval = Some(interval.max(Duration::from_millis(10)));
        self
    }

    /// Have the sampler set the `tidings_subscription_lag_events` and
    /// `tidings_subscription_checkpoint_position` gauges of the subscriptions that do not run in
    /// this process, from their stored checkpoints (default off: the loops that run them set
    /// them where they run). `tidings console` turns it on, so that its `/metrics` shows lag.
    #[must_use]
    pub fn record_lag_metrics(mut self, on: bool) -> Self {
        self.record_lag_metrics = on;
        self
    }
}

/// The web console over one store: mount it with [`configure`](Console::configure), and keep
/// its lag history with [`spawn_sampler`](Console::spawn_sampler). Cheap to clone (every clone
/// shares the history).
#[derive(Clone)]
pub struct Console {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn EventStore>,
    subscriptions: Subscriptions,
    registry: Arc<Registry>,
    options: ConsoleOptions,
    history: Mutex<History>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl Console {
    /// A console over `store`, seeing the subscriptions that `subscriptions` runs in this
    /// process (others are read from the store), decoding payloads with `registry`.
    pub fn new(
        store: Arc<dyn EventStore>,
        subscriptions: Subscriptions,
        registry: impl Into<Arc<Registry>>,
        options: ConsoleOptions,
    ) -> Self {
        Console {
            inner: Arc::new(Inner {
                store,
                subscriptions,
                registry: registry.into(),
                options,
                history: Mutex::new(History::default()),
            }),
        }
    }

    /// Registers the page, its assets, the JSON API (`api/...`) and `metrics` on `cfg`: call it
    /// from `App::configure`, or from `web::scope("/console").configure` to mount it under a
    /// path (the page then lives at `/console/`).
    pub fn configure(&self, cfg: &mut web::ServiceConfig) {
        cfg.app_data(web::Data::new(self.clone()));
        assets::configure(cfg);
        api::configure(cfg);
    }

    /// Starts sampling every subscription's lag into the history that the lag chart reads
    /// (every second unless [`ConsoleOptions::sample_interval`] says otherwise), on the current
    /// actix (or tokio local) runtime. It samples until [`Sampler::stop`] or until the runtime
    /// ends; dropping the returned handle does not stop it.
    ///
    /// The history keeps the last [`MAX_SAMPLES`] samples of at most [`MAX_SUBSCRIPTIONS`]
    /// subscriptions (by name order), so its memory is bounded (a few MB at most).
    pub fn spawn_sampler(&self) -> Sampler {
        let console = self.clone();
        let every = self
            .inner
            .options
            .sample_interval
            .unwrap_or(Duration::from_secs(1));
        let task = actix_web::rt::spawn(async move {
            let mut ticks = actix_web::rt::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                if let Err(e) = console.sample().await {
                    // Shown by the page (and the history endpoint) until a sample succeeds.
                    console.history().failed(e.to_string());
                }
            }
        });
        Sampler { task }
    }

    /// Takes one sample of every subscription's checkpoint and lag now (what the sampler does
    /// each interval).
    pub async fn sample(&self) -> Result<(), tidings::store::StoreError> {
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let inner = &self.inner;
        let page = inner
            .store
            .list_checkpoints(None, MAX_SUBSCRIPTIONS + 1)
            .await?;
        let more = page.len() > MAX_SUBSCRIPTIONS;
        let head = inner.store.head();
        let mut rows = Vec::with_capacity(page.len().min(MAX_SUBSCRIPTIONS));
        for c in page.into_iter().take(MAX_SUBSCRIPTIONS) {
            let live = inner
                .subscriptions
                .get(&c.name)
                .filter(|h| !h.is_finished())
                .map(|h| h.status());
            let (checkpoint, lag) = match &live {
                Some(s) => (s.checkpoint, head.saturating_sub(s.handled_up_to)),
                None => (c.position, head.saturating_sub(c.position)),
            };
            if live.is_none() && inner.options.record_lag_metrics {
                let label = [("subscription", c.name.clone())];
                metrics::gauge!(tidings::metrics::SUBSCRIPTION_LAG_EVENTS, &label).set(lag as f64);
                metrics::gauge!(tidings::metrics::SUBSCRIPTION_CHECKPOINT, &label)
                    .set(checkpoint as f64);
            }
            rows.push((c.name, checkpoint, lag));
        }
        if let Some(handle) = &inner.options.prometheus {
            handle.run_upkeep();
        }
        self.history().push(at_ms, head, rows, more);
        Ok(())
    }

    fn history(&self) -> std::sync::MutexGuard<'_, History> {
        self.inner.history.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The lag sampler started by [`Console::spawn_sampler`].
#[derive(Debug)]
pub struct Sampler {
    task: actix_web::rt::task::JoinHandle<()>,
}

impl Sampler {
    /// Stops sampling (the history is kept).
    pub fn stop(self) {
        self.task.abort();
    }
}

/// The guide's examples are compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/observability.md")]
pub struct ObservabilityGuide;
