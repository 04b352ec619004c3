//! The page, its script and its style, compiled into the binary, and `/metrics`.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

use super::Console;

const INDEX: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/console.js");
const STYLE: &str = include_str!("assets/console.css");

/// Only the console's own script, style and API: no inline script or style, no other origin,
/// no framing, no forms.
pub(super) const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

pub(super) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("", web::get().to(to_directory))
        .route(
            "/",
            web::get().to(|| async { asset(INDEX, "text/html; charset=utf-8") }),
        )
        .route(
            "/assets/console.js",
            web::get().to(|| async { asset(SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/assets/console.css",
            web::get().to(|| async { asset(STYLE, "text/css; charset=utf-8") }),
        )
        .route("/metrics", web::get().to(metrics));
}

fn asset(body: &'static str, content_type: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, content_type))
        .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}

/// Mounted under a scope (`/console`), the page is at `/console/`, so that its relative links
/// (`assets/...`, `api/...`) stay under the scope.
async fn to_directory(req: HttpRequest) -> HttpResponse {
    HttpResponse::PermanentRedirect()
        .insert_header((header::LOCATION, format!("{}/", req.path())))
        .finish()
}

/// Prometheus' text format, from the recorder handle the console was given.
async fn metrics(console: web::Data<Console>, req: HttpRequest) -> HttpResponse {
    if let Some(refused) = super::host::refusal(&req) {
        return actix_web::ResponseError::error_response(&refused);
    }
    match &console.inner.options.prometheus {
        Some(handle) => {
            handle.run_upkeep();
            HttpResponse::Ok()
                .insert_header((header::CONTENT_TYPE, "text/plain; version=0.0.4"))
                .insert_header((header::CACHE_CONTROL, "no-store"))
                .body(handle.render())
        }
        None => HttpResponse::NotFound()
            .insert_header((header::CONTENT_TYPE, "text/plain; charset=utf-8"))
            .body(
                "no Prometheus recorder: the application that mounts the console passes one with \
                 ConsoleOptions::prometheus (tidings console installs its own)\n",
            ),
    }
}
