//! Reads end at the store's byte budget (`READ_PAGE_BYTES`, issue 16 section 3), so a page
//! shorter than asked is not the end of a stream: an aggregate whose events pass the budget loads
//! every one of them, on sled and (when the server is there) on PostgreSQL.

use serde::{Deserialize, Serialize};
use tidings::aggregate::{load, Aggregate, AggregateConfig};
use tidings::store::{EventData, EventStore, ExpectedVersion, SledEventStore, READ_PAGE_BYTES};
use tidings::DomainEvent;
use tidings_tests::pg;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, DomainEvent)]
enum NoteEvent {
    Written { text: String },
}

/// Counts the notes and their bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Notebook {
    notes: u64,
    bytes: u64,
}

impl Aggregate for Notebook {
    const CATEGORY: &'static str = "notebook";
    type Command = ();
    type Event = NoteEvent;
    type Error = tidings::aggregate::NeverRejected;

    fn handle(&self, _: ()) -> Result<Vec<NoteEvent>, Self::Error> {
        Ok(Vec::new())
    }

    fn apply(&mut self, event: &NoteEvent) {
        let NoteEvent::Written { text } = event;
        self.notes += 1;
        self.bytes += text.len() as u64;
    }
}

/// Ten notes of a quarter of the budget: pages of four, the last one of two.
async fn ten_wide_notes_load_whole(store: &dyn EventStore) {
    let text = "n".repeat(READ_PAGE_BYTES / 4);
    for _ in 0..10 {
        let payload = serde_json::to_vec(&NoteEvent::Written { text: text.clone() }).unwrap();
        store
            .append(
                "notebook-1",
                ExpectedVersion::Any,
                vec![EventData::new("Written", payload)],
            )
            .await
            .unwrap();
    }
    let first = store.read_stream("notebook-1", 1, 500).await.unwrap();
    assert_eq!(first.len(), 4, "a page ends at the byte budget");
    for config in [
        AggregateConfig::default(),
        AggregateConfig::default().read_page(3),
    ] {
        let loaded = load::<Notebook>(store, "1", &config).await.unwrap();
        assert_eq!(loaded.version, 10);
        assert_eq!(
            loaded.state,
            Notebook {
                notes: 10,
                bytes: 10 * text.len() as u64
            }
        );
    }
}

#[test]
fn an_aggregate_whose_events_pass_the_page_budget_loads_every_event_on_sled() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = SledEventStore::open(dir.path()).unwrap();
        ten_wide_notes_load_whole(&store).await;
    });
}

#[test]
fn an_aggregate_whose_events_pass_the_page_budget_loads_every_event_on_postgres() {
    let Some(schema) = pg::Schema::fresh("memory_pages") else {
        return;
    };
    let store = schema.open(|c| c);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(ten_wide_notes_load_whole(&store));
}
