//! `serve --service NAME`: one service of the shop as a program of its own, on PostgreSQL.
//!
//! It starts the service's subscription (and the aggregate registries its reactions use) and
//! runs until SIGTERM or SIGINT (then it stops the subscription, which saves its checkpoint and
//! gives up its lease, so that a standby takes over at once) or until it is killed (then a
//! standby takes over once the lease expires: `--lease-ttl-ms`). It prints one line, flushed,
//! each time its role changes, so that a person or a parent process can follow it:
//!
//! ```text
//! SERVING stock pid 4242
//! STANDBY stock holder pid 4240 generation 3
//! HOLDING stock generation 4 pid 4242
//! REPEATS stock 2
//! STOPPED stock checkpoint 812
//! ```
//!
//! `REPEATS` counts the commands its aggregates answered from history (reactions repeated for
//! events delivered again after a kill). A service that fails prints `FAILED <name> <reason>`
//! and exits with status 3.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use tidings::subscription::SubscriptionState;
use tokio::signal::unix::{signal, SignalKind};

use super::{open_postgres, CliError, Location};
use crate::{Service, Shop, ShopConfig};

/// The subscriptions' lease time-to-live unless `--lease-ttl-ms` says otherwise: how long a
/// standby waits after the holder died.
pub(crate) const LEASE_TTL: Duration = Duration::from_millis(1000);

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The service: payments (or payment), stock, fulfilment (or order: it confirms and cancels
    /// orders), view (or shop-view: the read model).
    #[arg(long, value_parser = parse_service, value_name = "NAME")]
    service: Service,
    /// The time-to-live of the service's lease, in milliseconds: a standby takes over at most
    /// about this long after the holder dies.
    #[arg(long, value_name = "MS", default_value_t = LEASE_TTL.as_millis() as u64)]
    lease_ttl_ms: u64,
    /// Commit the checkpoint after this many events (default: the shop's settings).
    #[arg(long, value_name = "N")]
    commit_every: Option<u64>,
}

fn parse_service(name: &str) -> Result<Service, String> {
    Service::parse(name).ok_or_else(|| {
        format!("unknown service {name:?}: payments, stock, fulfilment (order) or view")
    })
}

/// The shop's settings for a process on PostgreSQL: the lease's time-to-live `ttl` (default
/// [`LEASE_TTL`]).
pub(crate) fn config(ttl: Option<Duration>) -> ShopConfig {
    let defaults = ShopConfig::default();
    let subscription = defaults.subscription.clone();
    defaults.subscription(subscription.lease_ttl(ttl.unwrap_or(LEASE_TTL)))
}

/// Prints `line` on stdout at once (stdout is line buffered; a parent reads it right away).
fn say(line: &str) {
    println!("{line}");
}

pub async fn run(location: &Location, args: ServeArgs) -> Result<ExitCode, CliError> {
    let Location::Postgres { url, schema } = location else {
        return Err(
            "serve needs --store postgres://...: the embedded store is open in one \
                    process at a time, so there every service runs in the process that opened \
                    it (the story, place-order, check...)"
                .into(),
        );
    };
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let store = open_postgres(url, schema, 3).await?;
    let mut config = config(Some(Duration::from_millis(args.lease_ttl_ms.max(100))));
    if let Some(every) = args.commit_every {
        config.subscription = config.subscription.commit_every(every.max(1));
    }
    let shop = Shop::with_store(store, config);
    let service = args.service;
    let name = service.name();
    let me = std::process::id();
    let handle = shop.start(service)?;
    say(&format!("SERVING {name} pid {me}"));
    // The last role printed: holding (with the generation) or standing by (with the holder).
    let mut last: Option<(bool, u64)> = None;
    let mut repeats = 0;
    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = tokio::time::sleep(Duration::from_millis(5)) => {}
        }
        let status = handle.status();
        let role = match (&status.state, &status.holder) {
            (SubscriptionState::Failed(reason), _) => {
                say(&format!("FAILED {name} {reason}"));
                return Ok(ExitCode::from(3));
            }
            (SubscriptionState::Standby, Some(holder)) => Some((false, holder.holder.pid.into())),
            (SubscriptionState::Starting | SubscriptionState::Standby, _) => None,
            (_, Some(lease)) if lease.holder.pid == me => Some((true, lease.generation)),
            _ => None,
        };
        if role.is_some() && role != last {
            match (role, &status.holder) {
                (Some((true, generation)), _) => {
                    say(&format!("HOLDING {name} generation {generation} pid {me}"))
                }
                (Some((false, pid)), Some(lease)) => say(&format!(
                    "STANDBY {name} holder pid {pid} generation {}",
                    lease.generation
                )),
                _ => {}
            }
            last = role;
        }
        if shop.repeated_commands() > repeats {
            repeats = shop.repeated_commands();
            say(&format!("REPEATS {name} {repeats}"));
        }
    }
    let stopped = shop.stop(service).await;
    shop.shutdown().await;
    let checkpoint = stopped.map_or(0, |s| s.checkpoint);
    say(&format!("STOPPED {name} checkpoint {checkpoint}"));
    Ok(ExitCode::SUCCESS)
}
