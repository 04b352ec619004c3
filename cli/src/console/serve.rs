//! `tidings console`: the console on its own, over the store named on the command line.

use std::net::SocketAddr;

use actix_web::{App, HttpServer};
use tidings::subscription::Subscriptions;

use super::{Console, ConsoleOptions};
use crate::error::{CliError, EXIT_OK};
use crate::registry::Registry;
use crate::{open, Cli};

/// Serves the console on `bind` until Ctrl-C (or SIGTERM); installs a Prometheus recorder
/// first (before the store opens, so that the store's metrics are recorded).
pub(crate) fn serve(
    cli: &Cli,
    registry: &Registry,
    bind: SocketAddr,
    token: Option<String>,
    allow_hosts: &[String],
) -> Result<u8, CliError> {
    let mut options = ConsoleOptions::default()
        .token(token)
        .record_lag_metrics(true);
    for name in allow_hosts {
        options = options.allow_host(name.clone());
    }
    if let Some(store) = &cli.store {
        options = options.location(store.clone(), cli.schema.clone());
    }
    match metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder() {
        Ok(handle) => {
            tidings::metrics::describe_metrics();
            options = options.prometheus(handle);
        }
        // An application that embeds the CLI may have installed its own recorder.
        Err(e) => eprintln!("tidings console: /metrics is off: {e}"),
    }
    let writable = options.token.is_some();
    actix_web::rt::System::new().block_on(async move {
        let store = open::open_store(cli).await?;
        let handle = store.handle();
        let console = Console::new(
            handle.clone(),
            Subscriptions::new(handle),
            registry.clone(),
            options,
        );
        let sampler = console.spawn_sampler();
        let served = console.clone();
        let server = HttpServer::new(move || {
            let console = served.clone();
            App::new().configure(move |cfg| console.configure(cfg))
        })
        .workers(1)
        // Ctrl-C waits this long at most for requests in flight (the page's included).
        .shutdown_timeout(3)
        .bind(bind);
        let result = match server {
            Ok(server) => {
                for addr in server.addrs() {
                    eprintln!(
                        "tidings console: http://{addr}/ (state changes {}; Ctrl-C stops)",
                        if writable {
                            "need the token"
                        } else {
                            "are off: no token"
                        }
                    );
                }
                if !bind.ip().is_loopback() {
                    eprintln!(
                        "tidings console: listening on {bind}, beyond this machine: anyone who \
                         reaches it can read the store's events"
                    );
                }
                server.run().await
            }
            Err(e) => Err(e),
        };
        sampler.stop();
        drop(console);
        store.close().await;
        result?;
        Ok(EXIT_OK)
    })
}
