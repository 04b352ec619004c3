//! The console in a real browser: headless Chromium, driven through chromedriver (WebDriver,
//! the `fantoccini` crate; decision 52), against a running shop-like setup in this process.
//!
//! The lag chart climbs while the stock subscription is stopped and orders keep coming, and
//! falls to 0 once it is started again and catches up; a parked order is replayed by a click
//! (the confirmation accepted) and handled once. Screenshots go to `target/console-*.png`.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them). Without them the
//! test says so loudly and passes, unless `TIDINGS_REQUIRE_BROWSER=1` (set by `.ci/run`).

mod support;

use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{App, HttpServer};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use support::{config, Orders, ShopEvent, POISON};
use tidings::store::{EventStore, ExpectedVersion, SledEventStore};
use tidings::subscription::{
    parked_in_store, EventContext, HandleEvent, HandlerError, Subscriptions,
};
use tidings::{async_trait, DomainEvent, EventHandler};
use tidings_cli::console::{Console, ConsoleOptions};
use tidings_cli::Registry;

const TOKEN: &str = "browser-test-token";
/// How long any one condition may take to show in the page.
const PATIENCE: Duration = Duration::from_secs(60);

/// Reserves stock for every order (counts them in its state).
#[derive(EventHandler)]
#[event_handler(name = "stock", events(ShopEvent))]
struct Stock;

#[async_trait]
impl HandleEvent<ShopEvent> for Stock {
    async fn handle(
        &mut self,
        _event: ShopEvent,
        ctx: &mut EventContext<'_>,
    ) -> Result<(), HandlerError> {
        let n: u64 = ctx.get_json(b"reserved").await?.unwrap_or(0);
        ctx.put_json(b"reserved", &(n + 1))?;
        Ok(())
    }
}

/// Chromium and its driver, where Debian puts them (or `TIDINGS_CHROMIUM`,
/// `TIDINGS_CHROMEDRIVER`).
fn browser() -> Option<(PathBuf, PathBuf)> {
    let find = |var: &str, default: &str| {
        let path = PathBuf::from(std::env::var(var).unwrap_or_else(|_| default.into()));
        path.is_file().then_some(path)
    };
    let found = (
        find("TIDINGS_CHROMIUM", "/usr/bin/chromium"),
        find("TIDINGS_CHROMEDRIVER", "/usr/bin/chromedriver"),
    );
    match found {
        (Some(chromium), Some(driver)) => Some((chromium, driver)),
        _ if std::env::var("TIDINGS_REQUIRE_BROWSER").as_deref() == Ok("1") => panic!(
            "TIDINGS_REQUIRE_BROWSER=1 but Chromium or chromedriver is missing \
             (apt-get install chromium chromium-driver)"
        ),
        _ => {
            eprintln!(
                "\n======================================================================\n\
                 SKIPPED: the console's browser test needs Chromium and chromedriver\n\
                 (apt-get install chromium chromium-driver); none found. Set\n\
                 TIDINGS_REQUIRE_BROWSER=1 to fail instead.\n\
                 ======================================================================\n"
            );
            None
        }
    }
}

/// A chromedriver process, killed when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_driver(path: &Path) -> Driver {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(path)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let driver = Driver { child, port };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    driver
}

/// Waits (at most [`PATIENCE`]) until `check` gives a value.
async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of the lag chart's line for `name` (its last point), if drawn.
async fn charted_lag(client: &Client, name: &str) -> Option<u64> {
    let line = client
        .find(Locator::Css(&format!(
            "#lag-chart polyline[data-series='{name}']"
        )))
        .await
        .ok()?;
    line.attr("data-last").await.ok()??.parse().ok()
}

async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.expect("a screenshot");
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .to_path_buf();
    std::fs::write(target.join(name), png).expect("save the screenshot");
}

async fn append_order(store: &SledEventStore, stream: &str, cents: u64) {
    let data = ShopEvent::OrderPlaced { cents }.to_event_data().unwrap();
    store
        .append(stream, ExpectedVersion::Any, vec![data])
        .await
        .unwrap();
}

#[test]
fn the_console_charts_lag_and_replays_a_parked_event_in_a_real_browser() {
    let Some((chromium, driver_path)) = browser() else {
        return;
    };
    let driver = start_driver(&driver_path);
    let dir = tempfile::tempdir().unwrap();
    actix_web::rt::System::new().block_on(async move {
        let store = Arc::new(SledEventStore::open(dir.path()).unwrap());
        for i in 0..20 {
            append_order(&store, &format!("order-{i}"), 100 + i).await;
        }
        append_order(&store, "order-poison", POISON).await;
        let subscriptions = Subscriptions::new(store.clone());
        let broken = Arc::new(AtomicBool::new(true));
        let orders = subscriptions
            .start_with(Orders(broken.clone()), config())
            .unwrap();
        subscriptions.start(Stock).unwrap();
        subscriptions
            .settle(Duration::from_secs(60))
            .await
            .expect("the shop settles");

        let handle: Arc<dyn EventStore> = store.clone();
        let console = Console::new(
            handle,
            subscriptions.clone(),
            Registry::new().register::<ShopEvent>(),
            ConsoleOptions::default()
                .token(Some(TOKEN.into()))
                .sample_interval(Duration::from_millis(250)),
        );
        let sampler = console.spawn_sampler();
        let served = console.clone();
        let server = HttpServer::new(move || {
            let console = served.clone();
            App::new().configure(move |cfg| console.configure(cfg))
        })
        .workers(1)
        .bind(("127.0.0.1", 0))
        .unwrap();
        let addr = server.addrs()[0];
        let server = server.run();
        let server_handle = server.handle();
        actix_web::rt::spawn(server);

        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1500"],
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", driver.port))
            .await
            .expect("a Chromium session through chromedriver");
        client.goto(&format!("http://{addr}/")).await.unwrap();
        let token = client.find(Locator::Id("token")).await.unwrap();
        token.send_keys(TOKEN).await.unwrap();

        // The orders subscription parked the poison order: select it to see its parked events.
        let row = wait_for("the orders row", || async {
            client
                .find(Locator::Css("tr[data-subscription='orders']"))
                .await
                .ok()
        })
        .await;
        row.click().await.unwrap();
        wait_for("the parked poison order", || async {
            client
                .find(Locator::Css("#parked tr[data-stream='order-poison']"))
                .await
                .ok()
        })
        .await;

        // The stock service goes down while orders keep coming: its lag climbs in the chart.
        subscriptions.stop("stock").await.unwrap();
        let appending = Arc::new(AtomicBool::new(true));
        let appended = Arc::new(AtomicU64::new(0));
        let feeder = {
            let (store, appending, appended) = (store.clone(), appending.clone(), appended.clone());
            actix_web::rt::spawn(async move {
                // Bounded: at most 2 000 orders, one every 20 ms.
                for i in 0..2000u64 {
                    if !appending.load(Ordering::SeqCst) {
                        break;
                    }
                    append_order(&store, &format!("order-late-{i}"), 500 + i).await;
                    appended.fetch_add(1, Ordering::SeqCst);
                    actix_web::rt::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        let first = wait_for("stock's lag to show", || async {
            charted_lag(&client, "stock").await.filter(|lag| *lag >= 5)
        })
        .await;
        let later = wait_for("stock's lag to climb", || async {
            charted_lag(&client, "stock")
                .await
                .filter(|lag| *lag >= first + 20)
        })
        .await;
        assert!(later > first);
        screenshot(&client, "console-lagging.png").await;

        // It comes back and catches up: the chart falls to 0.
        appending.store(false, Ordering::SeqCst);
        feeder.await.unwrap();
        subscriptions.start(Stock).unwrap();
        wait_for("stock's lag to fall to 0", || async {
            charted_lag(&client, "stock").await.filter(|lag| *lag == 0)
        })
        .await;
        let lag_cell = client
            .find(Locator::Css("tr[data-subscription='stock'] td[data-lag]"))
            .await
            .unwrap();
        wait_for("the table's lag of 0", || async {
            (lag_cell.attr("data-lag").await.ok()?? == "0").then_some(())
        })
        .await;
        // The chart keeps the climb and the fall: the docs' picture.
        screenshot(&client, "console.png").await;

        // After a fix, the parked order is replayed by a click, confirmed.
        broken.store(false, Ordering::SeqCst);
        let replay = client
            .find(Locator::Css(
                "#parked tr[data-stream='order-poison'] button.replay",
            ))
            .await
            .unwrap();
        replay.click().await.unwrap();
        let question = wait_for("the confirmation", || async {
            client.get_alert_text().await.ok()
        })
        .await;
        assert!(
            question.contains("order-poison") && question.contains("OrderPlaced"),
            "{question}"
        );
        client.accept_alert().await.unwrap();
        wait_for("the parked list to empty", || async {
            let empty = client.find(Locator::Id("parked-empty")).await.ok()?;
            empty.is_displayed().await.ok()?.then_some(())
        })
        .await;
        let said = client
            .find(Locator::Id("message"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(said.contains("handled 1"), "{said}");
        screenshot(&client, "console-replayed.png").await;

        // Applied once: nothing parked, and the order counted once (20 + the poison one).
        assert!(parked_in_store(&*store, "orders").await.unwrap().is_empty());
        orders
            .wait_until_handled(store.head(), Duration::from_secs(60))
            .await
            .unwrap();
        let count: u64 =
            serde_json::from_slice(&store.load_state("orders", b"count").await.unwrap().unwrap())
                .unwrap();
        assert_eq!(count, 21 + appended.load(Ordering::SeqCst));

        client.close().await.unwrap();
        sampler.stop();
        server_handle.stop(true).await;
        subscriptions.stop_all().await;
    });
    drop(driver);
}
