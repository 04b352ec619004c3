//! The JSON API: each endpoint runs the CLI's own command with `--json` and answers with its
//! lines, so that the console and the CLI can never disagree.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use serde::Deserialize;
use serde_json::{json, Value};
use tidings::store::StoreError;
use tidings::subscription::ControlError;

use super::{Console, TOKEN_HEADER};
use crate::error::CliError;
use crate::{Cli, Command, ResetTarget};

/// Largest request body (a control request is a few fields).
const BODY_LIMIT: usize = 64 * 1024;
/// Events and streams listed per request by default, and at most.
const DEFAULT_LIMIT: u64 = 100;
const MAX_LIMIT: u64 = 1000;

pub(super) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/api")
            .wrap(actix_web::middleware::from_fn(super::host::check))
            .app_data(
                web::JsonConfig::default()
                    .limit(BODY_LIMIT)
                    .error_handler(|e, _| ApiError::bad(format!("bad request body: {e}")).into()),
            )
            .app_data(
                web::QueryConfig::default()
                    .error_handler(|e, _| ApiError::bad(format!("bad query: {e}")).into()),
            )
            .route("/overview", web::get().to(overview))
            .route("/streams", web::get().to(streams))
            .route("/events", web::get().to(events))
            .route("/subscriptions", web::get().to(subscriptions))
            .route("/parked", web::get().to(parked))
            .route("/history", web::get().to(history))
            .route("/replay-parked", web::post().to(replay))
            .route("/skip-parked", web::post().to(skip))
            .route("/reset", web::post().to(reset))
            .default_service(web::to(|| async {
                ApiError::new(StatusCode::NOT_FOUND, "no such endpoint".into()).error_response()
            })),
    );
}

/// An error answer: its status and a message, as JSON.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: String) -> Self {
        ApiError { status, message }
    }

    fn bad(message: String) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status)
            .insert_header(("Cache-Control", "no-store"))
            .json(json!({ "error": self.message, "status": self.status.as_u16() }))
    }
}

/// The HTTP status of a command's error: never 500 for what the request got wrong.
fn status_of(e: &CliError) -> StatusCode {
    match e {
        CliError::NotFound(_) | CliError::NoStore(_) | CliError::NoPostgresStore { .. } => {
            StatusCode::NOT_FOUND
        }
        CliError::Invalid(_) | CliError::Usage(_) | CliError::BadImport { .. } => {
            StatusCode::BAD_REQUEST
        }
        CliError::MaybeRunning { .. } => StatusCode::CONFLICT,
        CliError::Control(c) => match c {
            ControlError::Running(_)
            | ControlError::RunningElsewhere { .. }
            | ControlError::Standby(_)
            | ControlError::NotRunning(_) => StatusCode::CONFLICT,
            ControlError::Queued { .. } => StatusCode::ACCEPTED,
            ControlError::Failed(_) => StatusCode::SERVICE_UNAVAILABLE,
            ControlError::Store(s) => store_status(s),
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        },
        CliError::Store(s) => store_status(s),
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn store_status(e: &StoreError) -> StatusCode {
    match e {
        StoreError::InvalidInput(_) => StatusCode::BAD_REQUEST,
        StoreError::WrongExpectedVersion { .. }
        | StoreError::CheckpointConflict { .. }
        | StoreError::Fenced { .. }
        | StoreError::InUse { .. } => StatusCode::CONFLICT,
        StoreError::Unavailable(_) | StoreError::Closed => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<CliError> for ApiError {
    fn from(e: CliError) -> Self {
        // With its sources, as the CLI prints it.
        let mut message = e.to_string();
        let mut next = std::error::Error::source(&e);
        while let Some(source) = next {
            let more = source.to_string();
            if !message.contains(&more) {
                message.push_str(": ");
                message.push_str(&more);
            }
            next = source.source();
        }
        ApiError::new(status_of(&e), message)
    }
}

/// Runs `command` as `tidings --json --payload COMMAND` on the console's store; its lines.
async fn run(console: &Console, command: Command) -> Result<Vec<Value>, CliError> {
    let inner = &console.inner;
    let (store, schema) = match &inner.options.location {
        Some((store, schema)) => (Some(store.clone()), schema.clone()),
        None => (None, None),
    };
    let cli = Cli {
        store,
        schema,
        json: true,
        payload: true,
        command,
    };
    let mut out = Vec::new();
    crate::commands::run(
        &cli,
        &inner.store,
        &inner.subscriptions,
        &inner.registry,
        &mut out,
    )
    .await?;
    out.split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| serde_json::from_slice(line).map_err(|e| CliError::Io(e.into())))
        .collect()
}

fn items(lines: Vec<Value>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(json!({ "items": lines }))
}

/// A control request's answer: 200 with what was done (or, for a dry run, what would be), 202
/// when it is recorded to be applied later (a replay of a stopped subscription, a request
/// queued for the process that runs it). `applied` says whether it took effect.
fn control_answer(
    result: Result<Vec<Value>, CliError>,
    dry_run: bool,
) -> Result<HttpResponse, ApiError> {
    match result {
        Ok(lines) if dry_run => Ok(HttpResponse::Ok()
            .insert_header(("Cache-Control", "no-store"))
            .json(json!({ "items": lines, "applied": false, "dry_run": true }))),
        Ok(lines) => {
            let deferred = lines.iter().any(|l| l["deferred"] == true);
            let status = if deferred {
                StatusCode::ACCEPTED
            } else {
                StatusCode::OK
            };
            Ok(HttpResponse::build(status)
                .insert_header(("Cache-Control", "no-store"))
                .json(json!({ "items": lines, "applied": !deferred })))
        }
        Err(e @ CliError::Control(ControlError::Queued { .. })) => Ok(HttpResponse::Accepted()
            .insert_header(("Cache-Control", "no-store"))
            .json(json!({ "items": [], "applied": false, "message": e.to_string() }))),
        Err(e) => Err(e.into()),
    }
}

/// Refuses a request that changes state unless it carries the configured token.
fn authorize(console: &Console, req: &HttpRequest) -> Result<(), ApiError> {
    let forbidden = |m: &str| ApiError::new(StatusCode::FORBIDDEN, m.to_owned());
    let Some(expected) = &console.inner.options.token else {
        return Err(forbidden(
            "state changes are off: the console was started without a token \
             (tidings console --token, or TIDINGS_CONSOLE_TOKEN)",
        ));
    };
    match req.headers().get(TOKEN_HEADER) {
        None => Err(forbidden(
            "this request changes state: send the console's token in the X-Tidings-Token header",
        )),
        Some(given) if same(given.as_bytes(), expected.as_bytes()) => Ok(()),
        Some(_) => Err(forbidden("wrong token")),
    }
}

/// Compares without stopping at the first difference (no timing hint of a prefix).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A whole number given as text (a query parameter).
fn whole(field: &str, text: &str) -> Result<u64, ApiError> {
    text.parse().map_err(|_| {
        ApiError::bad(format!(
            "{field}: {text:?} is not a whole number (like 1 or 250)"
        ))
    })
}

/// A listing's `limit`: [`DEFAULT_LIMIT`] when not given, at most [`MAX_LIMIT`].
fn limit(text: Option<&str>) -> Result<u64, ApiError> {
    Ok(match text {
        Some(t) => whole("limit", t)?.min(MAX_LIMIT),
        None => DEFAULT_LIMIT,
    })
}

async fn overview(console: web::Data<Console>) -> HttpResponse {
    let inner = &console.inner;
    let store = inner
        .options
        .location
        .as_ref()
        .map(|(s, schema)| match schema {
            Some(schema) => format!("{s} (schema {schema})"),
            None => s.to_string(),
        });
    HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(json!({
            "version": env!("CARGO_PKG_VERSION"),
            "store": store,
            "head": inner.store.head(),
            "state_changes": inner.options.token.is_some(),
            "metrics": inner.options.prometheus.is_some(),
            "event_types": inner.registry.event_types().collect::<Vec<_>>(),
        }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamsQuery {
    category: Option<String>,
    limit: Option<String>,
}

async fn streams(
    console: web::Data<Console>,
    q: web::Query<StreamsQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = q.into_inner();
    let command = Command::Streams {
        category: q.category,
        limit: Some(limit(q.limit.as_deref())?),
    };
    Ok(items(run(&console, command).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    stream: String,
    from: Option<String>,
    limit: Option<String>,
}

async fn events(
    console: web::Data<Console>,
    q: web::Query<EventsQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = q.into_inner();
    let command = Command::Read {
        stream: q.stream,
        from: match q.from.as_deref() {
            Some(from) => whole("from", from)?,
            None => 1,
        },
        limit: Some(limit(q.limit.as_deref())?),
    };
    Ok(items(run(&console, command).await?))
}

async fn subscriptions(console: web::Data<Console>) -> Result<HttpResponse, ApiError> {
    Ok(items(
        run(
            &console,
            Command::Subscriptions {
                watch: false,
                interval: std::time::Duration::ZERO,
            },
        )
        .await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameQuery {
    subscription: String,
}

async fn parked(
    console: web::Data<Console>,
    q: web::Query<NameQuery>,
) -> Result<HttpResponse, ApiError> {
    let name = q.into_inner().subscription;
    Ok(items(run(&console, Command::Parked { name }).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    subscription: Option<String>,
}

async fn history(
    console: web::Data<Console>,
    q: web::Query<HistoryQuery>,
) -> Result<HttpResponse, ApiError> {
    let only = q.into_inner().subscription;
    if let Some(name) = &only {
        let known = console.history().knows(name)
            || console
                .inner
                .store
                .load_checkpoint(name)
                .await
                .map_err(CliError::from)?
                .is_some();
        if !known {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no subscription named {name:?} in this store"),
            ));
        }
    }
    let interval = console
        .inner
        .options
        .sample_interval
        .unwrap_or(std::time::Duration::from_secs(1))
        .as_millis() as u64;
    let body = serde_json::to_value(console.history().view(only.as_deref(), interval))
        .map_err(|e| CliError::Io(e.into()))?;
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(body))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayRequest {
    subscription: String,
    stream: Option<String>,
    #[serde(default)]
    dry_run: bool,
}

async fn replay(
    console: web::Data<Console>,
    req: HttpRequest,
    body: web::Json<ReplayRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    if !body.dry_run {
        authorize(&console, &req)?;
    }
    let dry_run = body.dry_run;
    let command = Command::ReplayParked {
        name: body.subscription,
        stream: body.stream,
        dry_run: body.dry_run,
    };
    control_answer(run(&console, command).await, dry_run)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SkipRequest {
    subscription: String,
    /// A number, or a string of digits.
    position: Value,
    #[serde(default)]
    force: bool,
    #[serde(default)]
    dry_run: bool,
}

async fn skip(
    console: web::Data<Console>,
    req: HttpRequest,
    body: web::Json<SkipRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    if !body.dry_run {
        authorize(&console, &req)?;
    }
    let dry_run = body.dry_run;
    let command = Command::SkipParked {
        name: body.subscription,
        position: match &body.position {
            Value::String(s) => whole("position", s)?,
            Value::Number(n) => n.as_u64().ok_or_else(|| {
                ApiError::bad(format!("position: {n} is not a position (a whole number)"))
            })?,
            other => {
                return Err(ApiError::bad(format!(
                    "position: {other} is not a position (a whole number)"
                )))
            }
        },
        force: body.force,
        dry_run: body.dry_run,
    };
    control_answer(run(&console, command).await, dry_run)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetRequest {
    subscription: String,
    /// `beginning`, `end`, a position, or an RFC 3339 time, as `reset --to`.
    to: String,
    #[serde(default)]
    clear_state: bool,
    #[serde(default)]
    force: bool,
    #[serde(default)]
    dry_run: bool,
}

async fn reset(
    console: web::Data<Console>,
    req: HttpRequest,
    body: web::Json<ResetRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let to: ResetTarget = body
        .to
        .parse()
        .map_err(|e: String| ApiError::bad(format!("to: {e}")))?;
    if !body.dry_run {
        authorize(&console, &req)?;
    }
    let dry_run = body.dry_run;
    let command = Command::Reset {
        name: body.subscription,
        to,
        clear_state: body.clear_state,
        force: body.force,
        dry_run: body.dry_run,
    };
    control_answer(run(&console, command).await, dry_run)
}
