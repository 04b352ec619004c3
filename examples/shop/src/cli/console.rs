//! `story --console`: the tidings web console over the story's store and its running services,
//! served beside the story and kept up after the report until Ctrl-C.

use std::net::SocketAddr;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpServer};
use tidings_cli::console::{Console, ConsoleOptions, Sampler};

use super::CliError;
use crate::SharedShop;

/// The console while it runs.
pub(super) struct Running {
    server: ServerHandle,
    sampler: Sampler,
    url: String,
}

/// Serves the console on `addr` (port 0: any free port), over the shop's store, with its
/// subscriptions seen live and its event types decoded; prints the address and the token that
/// replay, skip and reset need (`TIDINGS_CONSOLE_TOKEN`, or a new random one).
pub(super) fn start(shop: &SharedShop, addr: SocketAddr) -> Result<Running, CliError> {
    let token = std::env::var("TIDINGS_CONSOLE_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let console = Console::new(
        shop.store().clone(),
        shop.subscriptions().clone(),
        super::registry(),
        ConsoleOptions::default().token(Some(token.clone())),
    );
    let sampler = console.spawn_sampler();
    let served = console.clone();
    let server = HttpServer::new(move || {
        let console = served.clone();
        App::new().configure(move |cfg| console.configure(cfg))
    })
    .workers(1)
    // The story handles Ctrl-C itself (`linger`).
    .disable_signals()
    .shutdown_timeout(2)
    .bind(addr)
    .map_err(|e| format!("--console {addr}: {e}"))?;
    let bound = server
        .addrs()
        .first()
        .copied()
        .ok_or("--console: bound to no address")?;
    let url = format!("http://{bound}/");
    let server = server.run();
    let handle = server.handle();
    actix::spawn(server);
    println!("console: {url} (token for replay, skip and reset: {token})");
    Ok(Running {
        server: handle,
        sampler,
        url,
    })
}

impl Running {
    /// Keeps the console up for a look until Ctrl-C (or SIGTERM), then stops it.
    pub(super) async fn linger(self) {
        println!();
        println!(
            "The console stays up at {} with the services running: Ctrl-C ends the story.",
            self.url
        );
        wait_for_a_stop_signal().await;
        self.sampler.stop();
        self.server.stop(true).await;
    }
}

/// Ctrl-C or SIGTERM; if they cannot be watched, an hour (never forever).
async fn wait_for_a_stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::time::timeout(Duration::from_secs(3600), tokio::signal::ctrl_c()).await;
        }
    }
}
