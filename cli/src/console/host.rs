//! The `Host` check of the API and `/metrics` (DNS rebinding): a request must name the console
//! by an IP address, `localhost`, or a name the options allow.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, HttpRequest};

use super::api::ApiError;
use super::Console;

/// Whether a request whose `Host` header is `host` may be answered. No header (HTTP/1.0, not a
/// browser) is allowed; an IP literal (v4, or v6 in brackets) and `localhost` (or a name under
/// `.localhost`) are; any other name only if it is in `allowed` (ASCII case ignored).
pub(crate) fn allowed(host: Option<&str>, allowed: &[String]) -> bool {
    let Some(host) = host else { return true };
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [v6] or [v6]:port, nothing else after the bracket
        let Some((ip, after)) = rest.split_once(']') else {
            return false;
        };
        let port_ok = after.is_empty()
            || after
                .strip_prefix(':')
                .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        return port_ok && ip.parse::<std::net::Ipv6Addr>().is_ok();
    } else {
        host.rsplit_once(':').map_or(host, |(name, _port)| name)
    };
    name.parse::<std::net::Ipv4Addr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || name.to_ascii_lowercase().ends_with(".localhost")
        || allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
}

/// The refusal of a request naming another host, or `None`.
pub(crate) fn refusal(req: &HttpRequest) -> Option<ApiError> {
    let Some(console) = req.app_data::<web::Data<Console>>() else {
        // Never mounted through `Console::configure`: refuse rather than answer unchecked.
        return Some(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the console is not configured (mount it with Console::configure)".into(),
        ));
    };
    let host = req
        .headers()
        .get(header::HOST)
        .map(|h| h.to_str().unwrap_or("\u{fffd}"));
    if allowed(host, &console.inner.options.allowed_hosts) {
        return None;
    }
    Some(ApiError::new(
        StatusCode::FORBIDDEN,
        format!(
            "the console does not answer to host {:?}: name it by its address or localhost, or \
             allow the name (--allow-host / ConsoleOptions::allow_host)",
            host.unwrap_or_default()
        ),
    ))
}

/// The middleware of the API scope: a refused request gets its 403 answer (as a response, not
/// an error, so that every service stack shows it the same way).
pub(crate) async fn check(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    if let Some(refused) = refusal(req.request()) {
        let answer = actix_web::ResponseError::error_response(&refused);
        return Ok(req.into_response(answer).map_into_right_body());
    }
    Ok(next.call(req).await?.map_into_left_body())
}

#[cfg(test)]
mod tests {
    use super::allowed;

    #[test]
    fn addresses_localhost_and_allowed_names_pass_other_names_do_not() {
        let none: Vec<String> = Vec::new();
        for ok in [
            "127.0.0.1:9870",
            "127.0.0.1",
            "10.1.2.3:80",
            "[::1]:9870",
            "[fe80::1]",
            "localhost:9870",
            "LOCALHOST",
            "app.localhost:9870",
        ] {
            assert!(allowed(Some(ok), &none), "{ok}");
        }
        assert!(allowed(None, &none), "no Host header: not a browser");
        for refused in [
            "evil.example:9870",
            "evil.example",
            "localhost.evil.example",
            "127.0.0.1.evil.example",
            "[not-an-ip]:1",
            "[::1]anything",
            "[::1]:",
            "[::1]:80x",
            "[::1",
            "",
        ] {
            assert!(!allowed(Some(refused), &none), "{refused}");
        }
        let names = vec!["Console.Internal".to_owned()];
        assert!(allowed(Some("console.internal:443"), &names));
        assert!(!allowed(Some("other.internal"), &names));
    }
}
