//! Refusals into responses, in one place: each reason's status and
//! headers, counted and logged (bounded) as it is answered.

use std::net::SocketAddr;
use std::time::Duration;

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::HttpResponse;

use super::state::State;
use crate::auth::Reason;

/// A plain-text answer.
pub(super) fn text(status: StatusCode, body: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status).content_type("text/plain; charset=utf-8").body(body.into())
}

pub(super) fn refuse(state: &State, path: &str, reason: Reason, peer: SocketAddr) -> HttpResponse {
    state.telemetry.auth_failure(reason);
    state.refusal_log.log(|| format!("refused {path} from {peer}: {}", reason.label()));
    match reason {
        Reason::MalformedAuthorization | Reason::MalformedCookie => {
            text(StatusCode::BAD_REQUEST, "bad request\n")
        }
        Reason::Busy | Reason::Throttled => {
            let mut r = text(StatusCode::SERVICE_UNAVAILABLE, "busy, retry later\n");
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
        _ => {
            let mut r = text(StatusCode::UNAUTHORIZED, "unauthorized\n");
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"JetKVM\""));
            r
        }
    }
}

pub(super) fn limited(state: &State, path: &str, retry: Duration, peer: SocketAddr) -> HttpResponse {
    state.telemetry.auth_failure(Reason::RateLimited);
    state.refusal_log.log(|| format!("refused {path} from {peer}: {}", Reason::RateLimited.label()));
    let mut r = text(StatusCode::TOO_MANY_REQUESTS, "too many failed attempts, retry later\n");
    let secs = retry.as_secs() + u64::from(retry.subsec_nanos() > 0);
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    r
}

/// A method the path does not answer: 405 with the methods it does.
pub(super) fn method_not_allowed(state: &State, allow: &'static str) -> HttpResponse {
    state.telemetry.bad_request();
    let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    r.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

/// A request that must close its connection after this answer.
pub(super) fn closing(mut r: HttpResponse) -> HttpResponse {
    r.head_mut().set_connection_type(actix_web::http::ConnectionType::Close);
    r
}

/// A request without its connection's facts: never reached (every
/// connection is tagged as it is served).
pub(super) fn no_connection() -> HttpResponse {
    text(StatusCode::INTERNAL_SERVER_ERROR, "no connection\n")
}
