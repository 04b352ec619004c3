//! The subcommands that work on an existing store: a data directory, or a PostgreSQL schema
//! (where the services may run in other processes: these subcommands then start them here as
//! standbys, and wait for whichever process holds them by reading the store).

use std::process::ExitCode;
use std::time::Duration;

use crate::catalog::{money, Line};
use crate::view::ReadModel;
use crate::{Service, SharedShop, Shop, ShopConfig};
use clap::Args;
use tidings::aggregate::AggregateError;
use tidings::store::{EventStore, SledEventStore};
use tidings::subscription::subscription_status_from_store;

use super::report::{money_line, order_line, print_checks, service_line, stock_line, Outcomes};
use super::{open_postgres, CliError, Location};

/// How long a subcommand waits for the services to catch up.
const SETTLE: Duration = Duration::from_secs(60);

#[derive(Debug, Args)]
pub struct PlaceOrderArgs {
    /// Who orders.
    #[arg(long, default_value = "guest")]
    customer: String,
    /// The order's id (default: the next free o-<number>). Placing an existing id is refused.
    #[arg(long)]
    id: Option<String>,
    /// The lines, as sku=quantity (skus: widget, gadget, gizmo, doohickey).
    #[arg(required = true, value_name = "SKU=QUANTITY")]
    items: Vec<Line>,
}

#[derive(Debug, Args)]
pub struct RestockArgs {
    /// The lines, as sku=quantity.
    #[arg(required = true, value_name = "SKU=QUANTITY")]
    items: Vec<Line>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Also list every order.
    #[arg(long)]
    orders: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {}

/// Opens the shop with every service running (on PostgreSQL, as standbys where another process
/// holds them).
async fn open(location: &Location) -> Result<SharedShop, CliError> {
    let shop = match location {
        Location::Sled(dir) => Shop::open(dir, ShopConfig::default())?.into_shared(),
        Location::Postgres { url, schema } => Shop::with_store(
            open_postgres(url, schema, 4).await?,
            super::serve::config(None),
        ),
    };
    shop.start_all()?;
    Ok(shop)
}

/// Waits until the services have caught up: through this process's handles on the embedded
/// store, through the checkpoints in the store on PostgreSQL (whoever runs them).
async fn settle(shop: &SharedShop, location: &Location) -> Result<u64, CliError> {
    Ok(match location {
        Location::Sled(_) => shop.settle(SETTLE).await?,
        Location::Postgres { .. } => shop.settle_committed(&Service::ALL, SETTLE).await?,
    })
}

pub async fn place_order(location: &Location, args: PlaceOrderArgs) -> Result<ExitCode, CliError> {
    let shop = open(location).await?;
    let id = match args.id {
        Some(id) => id,
        None => format!("o-{:06}", shop.next_order_number().await?),
    };
    let result = shop.place_order(&id, &args.customer, args.items).await;
    let code = match result {
        Ok(_) => {
            settle(&shop, location).await?;
            let model = shop.read_model().await?;
            match model.orders.get(&id) {
                Some(s) => println!("{}", order_line(s)),
                None => println!("{id}: placed (not in the read model yet)"),
            }
            ExitCode::SUCCESS
        }
        Err(AggregateError::Rejected(why)) => {
            eprintln!("order {id} refused: {why}");
            ExitCode::FAILURE
        }
        Err(e) => {
            shop.shutdown().await;
            return Err(e.into());
        }
    };
    shop.shutdown().await;
    Ok(code)
}

pub async fn restock(location: &Location, args: RestockArgs) -> Result<ExitCode, CliError> {
    let shop = open(location).await?;
    let result = shop.restock(args.items).await;
    let code = match result {
        Ok(_) => {
            settle(&shop, location).await?;
            println!("stock: {}", stock_line(&shop.read_model().await?));
            ExitCode::SUCCESS
        }
        Err(AggregateError::Rejected(why)) => {
            eprintln!("restock refused: {why}");
            ExitCode::FAILURE
        }
        Err(e) => {
            shop.shutdown().await;
            return Err(e.into());
        }
    };
    shop.shutdown().await;
    Ok(code)
}

pub async fn status(location: &Location, args: StatusArgs) -> Result<ExitCode, CliError> {
    let store: std::sync::Arc<dyn EventStore> = match location {
        Location::Sled(dir) => {
            if !dir.exists() {
                return Err(
                    format!("no shop store at {} (run the story first)", dir.display()).into(),
                );
            }
            std::sync::Arc::new(SledEventStore::open(dir)?)
        }
        Location::Postgres { url, schema } => open_postgres(url, schema, 2).await?,
    };
    let store = &*store;
    let model = ReadModel::load(store).await?;
    println!("store {}: {} events", location.describe(), store.head());
    println!("orders: {}", Outcomes::of(model.orders.values()).line());
    println!("stock:  {}", stock_line(&model));
    println!("money:  {}", money_line(&model));
    println!("services (as last committed):");
    for service in Service::ALL {
        match subscription_status_from_store(store, service.name()).await? {
            Some(s) => println!("  {}", service_line(&s)),
            None => println!("  {:<11} never ran", service.name()),
        }
        let lease = match location {
            // The embedded store has no leases: one process runs everything.
            Location::Sled(_) => None,
            Location::Postgres { .. } => store.load_lease(service.name()).await?,
        };
        if let Some(lease) = lease {
            println!(
                "  {:<11} lease generation {}, last taken by {}",
                "", lease.generation, lease.holder
            );
        }
    }
    if args.orders {
        println!("orders:");
        for s in model.orders.values() {
            println!("  {}", order_line(s));
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn check(location: &Location, _: CheckArgs) -> Result<ExitCode, CliError> {
    let shop = open(location).await?;
    let head = settle(&shop, location).await?;
    let checks = shop.check().await?;
    let model = shop.read_model().await?;
    shop.shutdown().await;
    println!("store {}: {head} events", location.describe());
    println!("orders: {}", Outcomes::of(model.orders.values()).line());
    println!(
        "money:  {} (net {})",
        money_line(&model),
        money(
            model
                .totals
                .charged_cents
                .saturating_sub(model.totals.refunded_cents)
        )
    );
    Ok(if print_checks(&checks) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
