//! Helpers for tests against a NATS server with JetStream: where it is, a JetStream stream of a
//! test's own that is deleted afterwards, reading a stream back, and a loud skip when no server
//! is there.
//!
//! The server is `TIDINGS_TEST_NATS_URL` (default `nats://127.0.0.1:4222`). When it cannot be
//! reached a test prints a loud message and passes, unless `TIDINGS_REQUIRE_NATS=1` (CI sets
//! it), in which case it fails.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tidings::broker::nats::async_nats::jetstream::{self, consumer, stream};
use tidings::broker::nats::NatsBroker;

use crate::pg::blocking;

/// The server used when `TIDINGS_TEST_NATS_URL` is not set.
pub const DEFAULT_URL: &str = "nats://127.0.0.1:4222";

/// The URL of the test server.
pub fn url() -> String {
    std::env::var("TIDINGS_TEST_NATS_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// Whether a missing server fails the test instead of skipping it.
pub fn required() -> bool {
    std::env::var("TIDINGS_REQUIRE_NATS").is_ok_and(|v| v == "1")
}

/// Whether the server answers with JetStream; when it does not, prints a loud message, and
/// panics if [`required`].
pub fn available(test: &str) -> bool {
    let reached = blocking(async {
        let broker = NatsBroker::connect(&url(), Duration::from_secs(5))
            .await
            .map_err(|e| e.to_string())?;
        // The account info request answers with an error where JetStream is off.
        let reply = broker
            .client()
            .request("$JS.API.INFO", "".into())
            .await
            .map_err(|e| format!("JetStream: {e}"))?;
        let info: serde_json::Value =
            serde_json::from_slice(&reply.payload).map_err(|e| format!("JetStream: {e}"))?;
        match info.get("error") {
            None => Ok(()),
            Some(error) => Err(format!("JetStream: {error}")),
        }
    });
    match reached {
        Ok(()) => true,
        Err(e) => {
            let message = format!(
                "NATS with JetStream at {} is not reachable ({e}): test {test} SKIPPED. Start \
                 the server (nats-server -js) or set TIDINGS_TEST_NATS_URL; set \
                 TIDINGS_REQUIRE_NATS=1 to fail instead.",
                url()
            );
            if required() {
                panic!("{message}");
            }
            eprintln!("\n!!!!!!!! {message} !!!!!!!!\n");
            false
        }
    }
}

/// A JetStream stream of one test (named `TIDINGS_<test>_<pid>_<n>`, taking the subjects
/// `<prefix>.>`), deleted when this guard is dropped.
pub struct TestStream {
    /// The stream's name.
    pub name: String,
    /// The subject prefix it takes (`<prefix>.>`).
    pub prefix: String,
}

impl TestStream {
    /// Creates the stream; `configure` may change its settings.
    pub fn create(test: &str, configure: impl FnOnce(&mut stream::Config)) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let clean: String = test
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!("TIDINGS_{clean}_{}_{n}_{nanos}", std::process::id());
        let prefix = format!("t{}_{n}_{nanos}", std::process::id());
        let mut config = stream::Config {
            name: name.clone(),
            subjects: vec![format!("{prefix}.>")],
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        };
        configure(&mut config);
        blocking(async {
            connect()
                .await
                .jetstream()
                .create_stream(config)
                .await
                .unwrap_or_else(|e| panic!("create JetStream stream {name}: {e}"));
        });
        TestStream { name, prefix }
    }

    /// Every message in the stream, in stream order (read by an ephemeral consumer), waiting
    /// at most `timeout` for them.
    pub async fn messages(
        &self,
        broker: &NatsBroker,
        timeout: Duration,
    ) -> Vec<jetstream::Message> {
        let stream = broker
            .jetstream()
            .get_stream(&self.name)
            .await
            .expect("get the test stream");
        let mut stream_info = stream.clone();
        let total = stream_info
            .info()
            .await
            .expect("stream info")
            .state
            .messages;
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                ack_policy: consumer::AckPolicy::None,
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .expect("create a consumer");
        let mut messages = consumer.messages().await.expect("consume");
        let deadline = Instant::now() + timeout;
        let mut out = Vec::with_capacity(total as usize);
        while (out.len() as u64) < total {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, messages.next()).await {
                Ok(Some(Ok(m))) => out.push(m),
                Ok(Some(Err(e))) => panic!("reading {}: {e}", self.name),
                Ok(None) => break,
                Err(_) => panic!(
                    "read {} of {total} messages of {} in {timeout:?}",
                    out.len(),
                    self.name
                ),
            }
        }
        out
    }
}

impl Drop for TestStream {
    fn drop(&mut self) {
        let name = self.name.clone();
        blocking(async move {
            if let Err(e) = connect().await.jetstream().delete_stream(&name).await {
                eprintln!("could not delete JetStream stream {name}: {e}");
            }
        });
    }
}

/// A connection to the test server (panics if it cannot be made).
pub async fn connect() -> NatsBroker {
    NatsBroker::connect(&url(), Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A header of `message` as text.
pub fn header<'a>(message: &'a jetstream::Message, name: &str) -> Option<&'a str> {
    message.headers.as_ref()?.get(name).map(|v| v.as_str())
}

/// An inbox handler that appends each message's payload as one `Received` event to
/// `inbound-<the subject's last token>`.
pub struct ToEvents;

#[tidings::async_trait]
impl tidings::broker::nats::InboxHandler for ToEvents {
    async fn handle(
        &mut self,
        m: &tidings::broker::nats::InboxMessage<'_>,
    ) -> Result<tidings::broker::nats::InboxAction, tidings::subscription::HandlerError> {
        let token = m.message.subject.as_str().rsplit('.').next().unwrap_or("x");
        Ok(tidings::broker::nats::InboxAction::Append {
            stream: format!("inbound-{token}"),
            events: vec![tidings::store::EventData::new(
                "Received",
                m.message.payload.to_vec(),
            )],
        })
    }
}
