//! The tidings shop.
//!
//! Today it shows the foundation: it opens an embedded store, records a few orders as events,
//! and reads them back: by stream, and from the global log filtered by category. Order, payment
//! and stock aggregates that react to each other's events arrive with the aggregate and
//! subscription layers.
//!
//! Usage: `cargo run -p shop_example [-- --data-dir DIR]` (default `./shop-data`).

use std::path::PathBuf;
use std::process::ExitCode;

use tidings::prelude::*;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shop: {e}");
            ExitCode::FAILURE
        }
    }
}

fn data_dir() -> Result<PathBuf, String> {
    let mut args = std::env::args().skip(1);
    let mut dir = PathBuf::from("shop-data");
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--data-dir" => dir = args.next().ok_or("--data-dir needs a directory")?.into(),
            "-h" | "--help" => {
                println!("usage: shop_example [--data-dir DIR]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(dir)
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let dir = data_dir()?;
    let store = SledEventStore::open(&dir)?;
    println!(
        "tidings shop: store at {} (head {})",
        dir.display(),
        store.head()
    );

    // Each run places three orders, each in its own stream, with optimistic concurrency.
    let run_id = store.head() / 6 + 1;
    for n in 1..=3u64 {
        let stream = format!("order-{run_id}.{n}");
        let placed = EventData::new(
            "OrderPlaced",
            format!(r#"{{"sku":"widget","quantity":{n},"cents":{}}}"#, n * 1250),
        );
        let appended = store
            .append(&stream, ExpectedVersion::NoStream, vec![placed])
            .await?;
        let confirmed = EventData::new("OrderConfirmed", b"{}".to_vec());
        let confirmed = store
            .append(
                &stream,
                ExpectedVersion::Exact(appended.stream_version),
                vec![confirmed],
            )
            .await?;
        println!(
            "  {stream}: placed at position {}, confirmed at {} (version {})",
            appended.first_position, confirmed.first_position, confirmed.stream_version
        );
    }

    // A writer that still believes the first order is new is refused, and nothing is written.
    let stale = store
        .append(
            &format!("order-{run_id}.1"),
            ExpectedVersion::NoStream,
            vec![EventData::new("OrderPlaced", b"{}".to_vec())],
        )
        .await;
    match stale {
        Err(e @ StoreError::WrongExpectedVersion { .. }) => println!("  stale writer refused: {e}"),
        other => return Err(format!("a stale append was not refused: {other:?}").into()),
    }

    // Catch up on the whole log, page by page, keeping only orders placed.
    let filter = Filter::all().event_types(["OrderPlaced"]);
    let (mut from, mut placed) = (1, 0);
    loop {
        let page = store.read_all(from, 256, &filter).await?;
        placed += page.events.len();
        from = page.next_position;
        if page.is_end() {
            break;
        }
    }
    println!(
        "  the log holds {} events; {placed} orders placed over all runs",
        store.head()
    );
    let report = store.verify().await?;
    println!(
        "  verify: {} events and {} index entries checked, {}",
        report.events_checked,
        report.index_entries_checked,
        if report.is_ok() {
            "no damage"
        } else {
            "DAMAGE FOUND"
        }
    );
    if !report.is_ok() {
        return Err(report.problems.join("\n").into());
    }
    Ok(())
}
