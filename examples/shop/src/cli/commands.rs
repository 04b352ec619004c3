//! The subcommands that work on an existing data directory.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use shop_example::catalog::{money, Line};
use shop_example::view::ReadModel;
use shop_example::{Service, Shop, ShopConfig};
use tidings::aggregate::AggregateError;
use tidings::store::SledEventStore;
use tidings::subscription::subscription_status_from_store;

use super::report::{money_line, order_line, print_checks, service_line, stock_line, Outcomes};
use super::CliError;

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

/// Opens the shop with every service running.
fn open(dir: &Path) -> Result<Shop, CliError> {
    let shop = Shop::open(dir, ShopConfig::default())?;
    shop.start_all()?;
    Ok(shop)
}

pub async fn place_order(dir: &Path, args: PlaceOrderArgs) -> Result<ExitCode, CliError> {
    let shop = open(dir)?;
    let id = match args.id {
        Some(id) => id,
        None => format!("o-{:06}", shop.next_order_number().await?),
    };
    let result = shop.place_order(&id, &args.customer, args.items).await;
    let code = match result {
        Ok(_) => {
            shop.settle(SETTLE).await?;
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

pub async fn restock(dir: &Path, args: RestockArgs) -> Result<ExitCode, CliError> {
    let shop = open(dir)?;
    let result = shop.restock(args.items).await;
    let code = match result {
        Ok(_) => {
            shop.settle(SETTLE).await?;
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

pub async fn status(dir: &Path, args: StatusArgs) -> Result<ExitCode, CliError> {
    if !dir.exists() {
        return Err(format!("no shop store at {} (run the story first)", dir.display()).into());
    }
    let store = SledEventStore::open(dir)?;
    let model = ReadModel::load(&store).await?;
    println!(
        "store {}: {} events",
        dir.display(),
        tidings::store::EventStore::head(&store)
    );
    println!("orders: {}", Outcomes::of(model.orders.values()).line());
    println!("stock:  {}", stock_line(&model));
    println!("money:  {}", money_line(&model));
    println!("services (as last committed):");
    for service in Service::ALL {
        match subscription_status_from_store(&store, service.name()).await? {
            Some(s) => println!("  {}", service_line(&s)),
            None => println!("  {:<11} never ran", service.name()),
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

pub async fn check(dir: &Path, _: CheckArgs) -> Result<ExitCode, CliError> {
    let shop = open(dir)?;
    let head = shop.settle(SETTLE).await?;
    let checks = shop.check().await?;
    let model = shop.read_model().await?;
    shop.shutdown().await;
    println!("store {}: {head} events", dir.display());
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
