//! The process that `tests/tests/nats_inbox_crash.rs` kills with SIGKILL while a NATS JetStream
//! inbox runs in it.
//!
//! `nats_inbox_child DIR URL STREAM` opens the store in `DIR` and runs the inbox `"inbox"` on
//! JetStream stream `STREAM` (acknowledgements awaited at most 500 ms, so that a message whose
//! ack a kill prevented is delivered again soon). Each message appends one event, its payload, to
//! `inbound-<last subject token>`. It prints `STARTED` once the inbox runs, `HEAD <head>`
//! (flushed) each time the store's head moves, `FAILED <reason>` (status 3) if the inbox fails,
//! and stops by itself after [`MAX_RUN`].

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidings::broker::nats::{InboxConfig, NatsBroker, NatsInbox};
use tidings::store::{EventStore, SledEventStore};
use tidings_tests::nats::ToEvents;
use tidings_tests::support::{die, say};

/// The child stops by itself after this long.
const MAX_RUN: Duration = Duration::from_secs(90);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, url, stream] = args.as_slice() else {
        die(&"usage: nats_inbox_child DIR URL STREAM");
    };
    actix::System::new().block_on(async move {
        let deadline = Instant::now() + MAX_RUN;
        let store = Arc::new(SledEventStore::open(Path::new(dir)).unwrap_or_else(|e| die(&e)));
        let broker = NatsBroker::connect(url, Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| die(&e));
        let config = InboxConfig::new("inbox", stream.clone()).ack_wait(Duration::from_millis(500));
        let inbox = NatsInbox::new(store.clone(), &broker, config, ToEvents)
            .start()
            .await
            .unwrap_or_else(|e| die(&e));
        say(format_args!("STARTED"));
        let mut head = None;
        while Instant::now() < deadline {
            if let Some(reason) = inbox.stats().failed {
                say(format_args!("FAILED {reason}"));
                std::process::exit(3);
            }
            if head != Some(store.head()) {
                head = Some(store.head());
                say(format_args!("HEAD {}", store.head()));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
}
