//! The console's JSON API, in process (actix-web's test service): bad input is a 4xx with a
//! message and never a 500, changes need the token, a replay is applied once, and the lag
//! history shows a stopped subscription's lag.

mod support;

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::{test, App};
use serde_json::{json, Value};
use support::{config, prepare, Orders, ShopEvent};
use tidings::store::{EventStore, ExpectedVersion, SledEventStore};
use tidings::subscription::{SubscriptionName, Subscriptions};
use tidings::DomainEvent;
use tidings_cli::console::{Console, ConsoleOptions, TOKEN_HEADER};
use tidings_cli::Registry;

const TOKEN: &str = "s3cret-token";

/// A console over `store`, with the fixture's event types registered.
fn console(
    store: &Arc<SledEventStore>,
    subscriptions: &Subscriptions,
    options: ConsoleOptions,
) -> Console {
    let handle: Arc<dyn EventStore> = store.clone();
    Console::new(
        handle,
        subscriptions.clone(),
        Registry::new().register::<ShopEvent>(),
        options,
    )
}

async fn app(
    console: &Console,
) -> impl Service<actix_http::Request, Response = ServiceResponse, Error = actix_web::Error> {
    let console = console.clone();
    test::init_service(App::new().configure(move |cfg| console.configure(cfg))).await
}

/// Sends a request; its status and JSON body (`Null` when the body is not JSON).
async fn call(
    app: &impl Service<actix_http::Request, Response = ServiceResponse, Error = actix_web::Error>,
    req: test::TestRequest,
) -> (StatusCode, Value) {
    send(app, req.to_request()).await
}

async fn send(
    app: &impl Service<actix_http::Request, Response = ServiceResponse, Error = actix_web::Error>,
    req: actix_http::Request,
) -> (StatusCode, Value) {
    let res = test::call_service(app, req).await;
    let status = res.status();
    let body = test::read_body(res).await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn get(path: &str) -> test::TestRequest {
    test::TestRequest::get().uri(path)
}

fn post(path: &str, body: Value) -> test::TestRequest {
    test::TestRequest::post()
        .uri(path)
        .insert_header((TOKEN_HEADER, TOKEN))
        .set_json(body)
}

/// The fixture store (orders parked 2 and 4; `reporting` at 2).
fn prepared() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    prepare(dir.path());
    dir
}

fn open(dir: &tempfile::TempDir) -> Arc<SledEventStore> {
    Arc::new(SledEventStore::open(dir.path()).unwrap())
}

#[test]
fn bad_input_is_a_4xx_with_a_message_and_never_a_500() {
    let dir = prepared();
    actix_web::rt::System::new().block_on(async {
        let store = open(&dir);
        let subscriptions = Subscriptions::new(store.clone());
        let console = console(
            &store,
            &subscriptions,
            ConsoleOptions::default().token(Some(TOKEN.into())),
        );
        let app = app(&console).await;
        let cases: Vec<(test::TestRequest, StatusCode, &str)> = vec![
            (
                get("/api/parked?subscription=nope"),
                StatusCode::NOT_FOUND,
                "\"nope\"",
            ),
            (get("/api/parked"), StatusCode::BAD_REQUEST, "subscription"),
            (
                get("/api/history?subscription=nope"),
                StatusCode::NOT_FOUND,
                "\"nope\"",
            ),
            (
                get("/api/events?stream=order-1&from=abc"),
                StatusCode::BAD_REQUEST,
                "from",
            ),
            (
                get("/api/events?stream=order-1&from=-1"),
                StatusCode::BAD_REQUEST,
                "from",
            ),
            (
                get("/api/events?stream=no-such"),
                StatusCode::NOT_FOUND,
                "no-such",
            ),
            (
                get("/api/streams?limit=lots"),
                StatusCode::BAD_REQUEST,
                "limit",
            ),
            (
                get("/api/streams?colour=red"),
                StatusCode::BAD_REQUEST,
                "colour",
            ),
            (
                get("/api/nothing-here"),
                StatusCode::NOT_FOUND,
                "no such endpoint",
            ),
            (
                post(
                    "/api/skip-parked",
                    json!({"subscription": "orders", "position": "abc"}),
                ),
                StatusCode::BAD_REQUEST,
                "position",
            ),
            (
                post(
                    "/api/skip-parked",
                    json!({"subscription": "orders", "position": -4}),
                ),
                StatusCode::BAD_REQUEST,
                "position",
            ),
            (
                post(
                    "/api/skip-parked",
                    json!({"subscription": "orders", "position": 3}),
                ),
                StatusCode::NOT_FOUND,
                "no event parked at position 3",
            ),
            (
                post(
                    "/api/skip-parked",
                    json!({"subscription": "nope", "position": 2}),
                ),
                StatusCode::NOT_FOUND,
                "\"nope\"",
            ),
            (
                post(
                    "/api/replay-parked",
                    json!({"subscription": "orders", "stream": "order-1"}),
                ),
                StatusCode::NOT_FOUND,
                "no parked events in stream",
            ),
            (
                post(
                    "/api/reset",
                    json!({"subscription": "orders", "to": "tomorrow"}),
                ),
                StatusCode::BAD_REQUEST,
                "tomorrow",
            ),
            (
                post("/api/reset", json!({"subscription": "nope", "to": "end"})),
                StatusCode::NOT_FOUND,
                "\"nope\"",
            ),
            (
                post("/api/reset", json!({"subscription": "orders"})),
                StatusCode::BAD_REQUEST,
                "to",
            ),
            (
                test::TestRequest::post()
                    .uri("/api/reset")
                    .insert_header((TOKEN_HEADER, TOKEN))
                    .insert_header(("Content-Type", "application/json"))
                    .set_payload("{not json"),
                StatusCode::BAD_REQUEST,
                "bad request body",
            ),
        ];
        for (req, expected, says) in cases {
            let req = req.to_request();
            let described = format!("{} {}", req.method(), req.uri());
            let (status, body) = send(&app, req).await;
            assert_eq!(status, expected, "{described}: {body}");
            let message = body["error"].as_str().unwrap_or_default();
            assert!(
                message.contains(says),
                "{described}: {message:?} lacks {says:?}"
            );
            assert_eq!(body["status"], expected.as_u16(), "{described}");
        }
        // Nothing above changed anything.
        let (_, parked) = call(&app, get("/api/parked?subscription=orders")).await;
        assert_eq!(parked["items"].as_array().unwrap().len(), 2);
        assert_eq!(store.load_checkpoint("orders").await.unwrap(), Some(6));
    });
}

#[test]
fn changes_need_the_token_and_are_off_without_one_while_dry_runs_need_none() {
    let dir = prepared();
    actix_web::rt::System::new().block_on(async {
        let store = open(&dir);
        let subscriptions = Subscriptions::new(store.clone());
        let skip = json!({"subscription": "orders", "position": 2});

        let read_only = console(&store, &subscriptions, ConsoleOptions::default());
        let app_ro = app(&read_only).await;
        let (status, body) = call(&app_ro, post("/api/skip-parked", skip.clone())).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert!(body["error"]
            .as_str()
            .unwrap()
            .contains("state changes are off"));
        let (_, overview) = call(&app_ro, get("/api/overview")).await;
        assert_eq!(overview["state_changes"], false);

        let guarded = console(
            &store,
            &subscriptions,
            ConsoleOptions::default().token(Some(TOKEN.into())),
        );
        let app = app(&guarded).await;
        let without = test::TestRequest::post()
            .uri("/api/skip-parked")
            .set_json(skip.clone());
        let (status, body) = call(&app, without).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert!(body["error"].as_str().unwrap().contains("X-Tidings-Token"));
        let wrong = test::TestRequest::post()
            .uri("/api/reset")
            .insert_header((TOKEN_HEADER, "s3cret-tokem"))
            .set_json(json!({"subscription": "orders", "to": "beginning"}));
        assert_eq!(call(&app, wrong).await.0, StatusCode::FORBIDDEN);

        // A dry run changes nothing: no token needed.
        let dry = test::TestRequest::post()
            .uri("/api/reset")
            .set_json(json!({"subscription": "orders", "to": "3", "dry_run": true}));
        let (status, body) = call(&app, dry).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["items"][0]["checkpoint"], 2);
        assert_eq!(body["items"][0]["handled_again"], 4);
        assert_eq!(
            (body["dry_run"].as_bool(), body["applied"].as_bool()),
            (Some(true), Some(false))
        );
        assert_eq!(store.load_checkpoint("orders").await.unwrap(), Some(6));

        // With the token: done, and said so.
        let (status, body) = call(&app, post("/api/skip-parked", skip)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["items"][0]["still_parked"], 1);
        let (status, body) = call(
            &app,
            post(
                "/api/reset",
                json!({"subscription": "reporting", "to": "end"}),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(store.load_checkpoint("reporting").await.unwrap(), Some(6));
        // A replay of a stopped subscription is recorded for when it starts: accepted.
        let (status, body) = call(
            &app,
            post("/api/replay-parked", json!({"subscription": "orders"})),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert_eq!(body["applied"], false);
    });
}

#[test]
fn a_replay_through_the_api_is_applied_once_by_the_running_subscription() {
    let dir = prepared();
    actix_web::rt::System::new().block_on(async {
        let store = open(&dir);
        let subscriptions = Subscriptions::new(store.clone());
        // Fixed: the poison order now goes through.
        let handle = subscriptions
            .start_with(Orders(Arc::new(AtomicBool::new(false))), config())
            .unwrap();
        handle
            .wait_until_handled(6, Duration::from_secs(60))
            .await
            .unwrap();
        let console = console(
            &store,
            &subscriptions,
            ConsoleOptions::default().token(Some(TOKEN.into())),
        );
        let app = app(&console).await;
        let count = || async {
            handle.flush().await.unwrap();
            let bytes = store.load_state("orders", b"count").await.unwrap().unwrap();
            serde_json::from_slice::<u64>(&bytes).unwrap()
        };
        assert_eq!(count().await, 2, "orders 1 and 3 handled, 2 and 4 parked");

        let replay = json!({"subscription": "orders", "stream": "order-2"});
        let (status, body) = call(&app, post("/api/replay-parked", replay.clone())).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["applied"], true);
        assert_eq!(body["items"][0]["handled"], 2);
        assert_eq!(body["items"][0]["still_parked"], 0);
        assert_eq!(count().await, 4);

        // Again: nothing is parked any more, and nothing is handled twice.
        let (status, body) = call(&app, post("/api/replay-parked", replay)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(count().await, 4);
        let (_, subs) = call(&app, get("/api/subscriptions")).await;
        let orders = subs["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "orders")
            .unwrap()
            .clone();
        assert_eq!(
            (orders["parked"].as_u64(), orders["lag"].as_u64()),
            (Some(0), Some(0))
        );
        assert_eq!(orders["running"], true);
        // A reset is refused while it runs.
        let (status, body) = call(
            &app,
            post(
                "/api/reset",
                json!({"subscription": "orders", "to": "beginning"}),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        // And so is its dry run: the preview refuses what the reset would refuse.
        let (status, body) = call(
            &app,
            post(
                "/api/reset",
                json!({"subscription": "orders", "to": "beginning", "dry_run": true}),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert!(
            body["error"].as_str().unwrap().contains("is running"),
            "{body}"
        );
        handle.stop().await;
    });
}

/// The process's Prometheus recorder (one per process), installed on first use.
fn prometheus() -> metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: OnceLock<metrics_exporter_prometheus::PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .unwrap()
        })
        .clone()
}

#[test]
fn the_lag_history_and_metrics_show_a_stopped_subscription_50_events_behind() {
    let prometheus = prometheus();
    actix_web::rt::System::new().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledEventStore::open(dir.path()).unwrap());
        let append = |n: u64| {
            let store = store.clone();
            async move {
                for i in 0..n {
                    let data = ShopEvent::OrderPlaced { cents: 100 + i }
                        .to_event_data()
                        .unwrap();
                    store
                        .append(&format!("order-{i}"), ExpectedVersion::Any, vec![data])
                        .await
                        .unwrap();
                }
            }
        };
        append(10).await;
        let subscriptions = Subscriptions::new(store.clone());
        let name = SubscriptionName::new("orders-lag").unwrap();
        let handle = subscriptions
            .start_with(
                Orders(Arc::new(AtomicBool::new(false))),
                config().name(name.clone()),
            )
            .unwrap();
        handle
            .wait_until_handled(10, Duration::from_secs(60))
            .await
            .unwrap();
        let console = console(
            &store,
            &subscriptions,
            ConsoleOptions::default()
                .sample_interval(Duration::from_millis(20))
                .record_lag_metrics(true)
                .prometheus(prometheus),
        );
        let sampler = console.spawn_sampler();
        let app = app(&console).await;
        handle.stop().await;
        append(50).await;

        // Wait (bounded) for a sample taken after the appends.
        let lag_now = || async {
            let (status, body) = call(&app, get("/api/history?subscription=orders-lag")).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            let series = &body["subscriptions"][0];
            assert_eq!(series["name"], "orders-lag");
            (
                series["lag"].as_array().unwrap().last().cloned(),
                body["head"].as_array().unwrap().last().cloned(),
            )
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (lag, head) = lag_now().await;
            if head == Some(json!(60)) {
                assert_eq!(lag, Some(json!(50)));
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no sample at head 60: {lag:?} {head:?}"
            );
            actix_web::rt::time::sleep(Duration::from_millis(20)).await;
        }
        let (_, subs) = call(&app, get("/api/subscriptions")).await;
        assert_eq!(subs["items"][0]["lag"], 50, "{subs}");

        let res = test::call_service(&app, get("/metrics").to_request()).await;
        assert_eq!(res.status(), StatusCode::OK);
        let text = String::from_utf8(test::read_body(res).await.to_vec()).unwrap();
        assert!(
            text.lines()
                .any(|l| l == "tidings_subscription_lag_events{subscription=\"orders-lag\"} 50"),
            "{text}"
        );
        sampler.stop();
    });
}

#[test]
fn the_page_and_its_assets_are_served_with_a_strict_content_security_policy() {
    let dir = prepared();
    actix_web::rt::System::new().block_on(async {
        let store = open(&dir);
        let subscriptions = Subscriptions::new(store.clone());
        let console = console(&store, &subscriptions, ConsoleOptions::default());
        let mounted = console.clone();
        let app = test::init_service(App::new().service(
            actix_web::web::scope("/console").configure(move |cfg| mounted.configure(cfg)),
        ))
        .await;
        for path in [
            "/console/",
            "/console/assets/console.js",
            "/console/assets/console.css",
        ] {
            let res = test::call_service(&app, get(path).to_request()).await;
            assert_eq!(res.status(), StatusCode::OK, "{path}");
            let csp = res
                .headers()
                .get("content-security-policy")
                .unwrap()
                .to_str()
                .unwrap();
            assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"));
            assert!(!csp.contains("unsafe"), "{csp}");
        }
        let res = test::call_service(&app, get("/console").to_request()).await;
        assert_eq!(res.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(res.headers().get("location").unwrap(), "/console/");
        let (status, body) = call(&app, get("/console/api/streams?category=order")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["items"].as_array().unwrap().len(), 3);
        let (status, body) = call(&app, get("/console/api/events?stream=order-2")).await;
        assert_eq!(status, StatusCode::OK);
        // Decoded through the registry.
        assert_eq!(
            body["items"][0]["payload"],
            json!({"OrderPlaced": {"cents": 13}})
        );
        // No recorder given: /metrics says so.
        let res = test::call_service(&app, get("/console/metrics").to_request()).await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
    });
}

#[test]
fn requests_naming_another_host_are_refused_dns_rebinding() {
    let dir = prepared();
    actix_web::rt::System::new().block_on(async {
        let store = open(&dir);
        let subscriptions = Subscriptions::new(store.clone());
        let options = ConsoleOptions::default().allow_host("console.internal");
        let app = app(&console(&store, &subscriptions, options)).await;
        let with_host = |path: &str, host: &str| {
            test::TestRequest::get()
                .uri(path)
                .insert_header(("Host", host.to_owned()))
        };
        // A page of evil.example whose name now resolves to this machine reads nothing.
        for path in [
            "/api/subscriptions",
            "/api/events?stream=order-1",
            "/metrics",
        ] {
            let (status, body) = call(&app, with_host(path, "evil.example:9870")).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
            assert!(
                body["error"].as_str().unwrap().contains("evil.example"),
                "{path}: {body}"
            );
        }
        for host in [
            "127.0.0.1:9870",
            "localhost:9870",
            "[::1]:9870",
            "Console.Internal",
        ] {
            let (status, body) = call(&app, with_host("/api/subscriptions", host)).await;
            assert_eq!(status, StatusCode::OK, "{host}: {body}");
        }
        // The page itself holds no data: it is served whatever the name.
        let (status, _) = call(&app, with_host("/", "evil.example")).await;
        assert_eq!(status, StatusCode::OK);
    });
}
