//! A connection to a NATS server, on a runtime of its own.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;

/// What went wrong talking to the broker outside of publishing an event.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The server could not be reached or refused the connection. Check the URL and that the
    /// server runs; nothing was done.
    #[error("cannot connect to NATS at {url}: {reason}")]
    Connect {
        /// The URL given.
        url: String,
        /// Why.
        reason: String,
    },
    /// A JetStream request failed (a stream or consumer that does not exist, the broker
    /// unavailable). Retry later, or fix the names.
    #[error("JetStream: {0}")]
    JetStream(String),
    /// The broker's runtime could not be started (out of threads): fatal for this process.
    #[error("cannot start the broker's runtime")]
    Runtime(#[from] std::io::Error),
    /// A setting is not valid (the message names it). Fix the configuration.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// A connection to a NATS server with JetStream, shared by relays and inboxes (cheap to clone).
///
/// The connection runs on a small tokio runtime of its own, not on the caller's (an actix
/// arbiter's thread may be busy or go away, and the connection must keep reading acks and
/// pings meanwhile). It reconnects by itself after an outage, without limit; publishes wait
/// for it (see [`RelayConfig::ack_timeout`](super::RelayConfig::ack_timeout)).
#[derive(Clone)]
pub struct NatsBroker {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    /// Runs the connection's task: kept as long as a clone of the broker lives.
    _runtime: Arc<OwnRuntime>,
    url: String,
}

impl std::fmt::Debug for NatsBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBroker")
            .field("url", &self.url)
            .finish()
    }
}

/// Shuts the runtime down without blocking when the last handle goes (dropping a runtime
/// inside async code would panic).
struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl NatsBroker {
    /// Connects to the server at `url` (`nats://host:port`), waiting at most `timeout` for the
    /// first connection.
    pub async fn connect(url: &str, timeout: Duration) -> Result<Self, BrokerError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tidings-nats")
            .enable_all()
            .build()?;
        let target = url.to_owned();
        let connect = runtime.spawn(async move {
            async_nats::ConnectOptions::new()
                .connection_timeout(timeout)
                .max_reconnects(None)
                // Short pauses between reconnections: an outage ends as soon as the server is
                // back (async-nats' default grows to 4 s).
                .reconnect_delay_callback(|attempts| {
                    Duration::from_millis((50 * attempts as u64).min(1_000))
                })
                .connect(target)
                .await
        });
        let connected = tokio::time::timeout(timeout + Duration::from_secs(1), connect).await;
        let client = match connected {
            Ok(Ok(Ok(client))) => client,
            Ok(Ok(Err(e))) => return Err(connect_error(url, e.to_string())),
            Ok(Err(e)) => return Err(connect_error(url, e.to_string())),
            Err(_) => return Err(connect_error(url, "timed out".into())),
        };
        let jetstream = jetstream::new(client.clone());
        Ok(NatsBroker {
            client,
            jetstream,
            _runtime: Arc::new(OwnRuntime(Some(runtime))),
            url: url.to_owned(),
        })
    }

    /// The core NATS client.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The JetStream context (for creating and inspecting streams and consumers).
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.jetstream
    }

    /// The URL connected to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The largest message (payload and headers) the server accepts, as it announced.
    pub fn max_payload(&self) -> usize {
        self.client.server_info().max_payload
    }
}

fn connect_error(url: &str, reason: String) -> BrokerError {
    BrokerError::Connect {
        url: url.to_owned(),
        reason,
    }
}
