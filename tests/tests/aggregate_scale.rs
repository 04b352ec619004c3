//! 10 000 aggregates in one process stay within the registry's instance bound: the least
//! recently used instances are stopped, and any of them comes back with its state on demand.
//!
//! Prints the resident memory (VmRSS) before and after; memory is reported, not asserted.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tidings::aggregate::testing::TempStore;
use tidings::aggregate::{Aggregate, AggregateConfig};
use tidings::DomainEvent;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, DomainEvent)]
enum TallyEvent {
    Counted { n: u64 },
}

#[derive(Default, Serialize, Deserialize)]
struct Tally {
    total: u64,
}

impl Aggregate for Tally {
    const CATEGORY: &'static str = "tally";
    type Command = u64;
    type Event = TallyEvent;
    type Error = tidings::aggregate::NeverRejected;

    fn handle(&self, n: u64) -> Result<Vec<TallyEvent>, Self::Error> {
        Ok(vec![TallyEvent::Counted { n }])
    }

    fn apply(&mut self, event: &TallyEvent) {
        let TallyEvent::Counted { n } = event;
        self.total += n;
    }
}

fn vm_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

const AGGREGATES: u64 = 10_000;
const MAX_INSTANCES: usize = 500;
const IN_FLIGHT: u64 = 250;

#[actix::test]
async fn ten_thousand_aggregates_stay_within_the_instance_bound() {
    let temp = TempStore::new().unwrap();
    let config = AggregateConfig::default().max_instances(MAX_INSTANCES);
    let tallies = temp.registry::<Tally>(config);
    let rss_before = vm_rss_kib();
    let started = Instant::now();
    let mut peak_live = 0;

    // IN_FLIGHT tasks, each sending commands to its share of the aggregates.
    let tasks: Vec<_> = (0..IN_FLIGHT)
        .map(|task| {
            let tallies = tallies.clone();
            actix::spawn(async move {
                let mut peak = 0;
                for i in (task..AGGREGATES).step_by(IN_FLIGHT as usize) {
                    tallies.execute_fresh(&format!("t{i}"), i).await.unwrap();
                    peak = peak.max(tallies.stats().live_instances);
                }
                peak
            })
        })
        .collect();
    for task in tasks {
        peak_live = peak_live.max(task.await.unwrap());
    }
    let elapsed = started.elapsed();

    let stats = tallies.stats();
    assert!(stats.registered <= MAX_INSTANCES, "{stats:?}");
    assert!(
        stats.evictions >= AGGREGATES - MAX_INSTANCES as u64,
        "{stats:?}"
    );
    // Evicted instances finish their stop on the arbiter; once it is quiet, the bound holds.
    let deadline = Instant::now() + Duration::from_secs(10);
    while tallies.stats().live_instances > MAX_INSTANCES && Instant::now() < deadline {
        actix::clock::sleep(Duration::from_millis(10)).await;
    }
    let live = tallies.stats().live_instances;
    assert!(live <= MAX_INSTANCES, "{live} live instances");
    let rss_after = vm_rss_kib();
    println!(
        "{AGGREGATES} aggregates, max_instances {MAX_INSTANCES}: peak live {peak_live}, live {live}, \
         evictions {}, VmRSS before {} KiB, after {} KiB, {:.1?}",
        stats.evictions,
        rss_before.map_or("?".into(), |v| v.to_string()),
        rss_after.map_or("?".into(), |v| v.to_string()),
        elapsed,
    );

    // Evicted aggregates come back with their state.
    for i in [0, 1, 4_999, AGGREGATES - 1] {
        let total = tallies.query(&format!("t{i}"), |t| t.total).await.unwrap();
        assert_eq!(total, i);
    }
    tallies.shutdown().await;
    assert_eq!(tallies.stats().live_instances, 0);
}
