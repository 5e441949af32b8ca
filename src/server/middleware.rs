//! What runs around requests: [`request`] around every one (the
//! connection's busy mark, head limits, plain HTTP under the device's TLS,
//! foreign names), [`authenticate`] and [`follow_device`] around a scrape.

use std::rc::Rc;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::{web, Error, HttpMessage};

use super::credentials::{auth_request, hold_credentials, take_credentials};
use super::host;
use super::listener::Listener;
use super::refusal::{closing, limited, no_connection, refuse, text};
use super::slot::ConnInfo;
use super::state::State;
use crate::auth::{Outcome, Reason};
use crate::device::AuthMode;
use crate::telemetry::HttpError;

fn state(req: &ServiceRequest) -> web::Data<State> {
    req.app_data::<web::Data<State>>().cloned().expect("the App carries the state")
}

/// Every request: marks its connection busy while it is handled, refuses
/// heads over the configured limits, plain HTTP while the listener serves
/// the device's TLS (before any credential is looked at), and names the
/// device does not answer to. Methods are the route table's.
pub(super) async fn request(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, Error> {
    let state = state(&req);
    let slot = req.conn_data::<Rc<ConnInfo>>().map(|c| c.slot.clone());
    let _busy = slot.as_ref().map(|s| s.busy());
    let too_large = head_too_large(&req, &state);
    hold_credentials(&mut req);
    if too_large {
        state.telemetry.http_error(HttpError::TooLarge);
        let r =
            closing(text(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "request header fields too large\n"));
        return Ok(req.into_response(r).map_into_right_body());
    }
    let encrypted = req.conn_data::<Rc<ConnInfo>>().is_some_and(|c| c.encrypted.get());
    let listener = req.app_data::<web::Data<Listener>>().cloned().expect("the App carries its listener");
    // Checked per request: a keep-alive connection opened while the
    // device's TLS was off gets nothing once it is on.
    if !encrypted && req.path() != "/healthz" && !listener.clear_allowed().await {
        state.telemetry.http_error(HttpError::PlainHttp);
        let r = closing(text(
            StatusCode::BAD_REQUEST,
            "the device's TLS is on: this port answers over HTTPS only (https:// and the same port)\n",
        ));
        return Ok(req.into_response(r).map_into_right_body());
    }
    if foreign_host(&req, &state, &listener).await {
        let peer = req.conn_data::<Rc<ConnInfo>>().map(|c| c.peer);
        let path = req.path().to_owned();
        state.telemetry.auth_failure(Reason::CrossSiteRequest);
        state.refusal_log.log(|| {
            let from = peer.map(|p| p.to_string()).unwrap_or_default();
            format!("refused {path} from {from}: {} (host)", Reason::CrossSiteRequest.label())
        });
        let r = text(
            StatusCode::FORBIDDEN,
            "forbidden: the device does not answer to this name in no-password mode (see host_names)\n",
        );
        return Ok(req.into_response(r).map_into_right_body());
    }
    let mut res = next.call(req).await?;
    res.headers_mut().insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // Evicted while this request came in: answered, then closed.
    if slot.is_some_and(|s| s.close_after_response()) {
        res.response_mut().head_mut().set_connection_type(actix_web::http::ConnectionType::Close);
    }
    Ok(res.map_into_left_body())
}

/// In no-password mode, a request for a name the device does not answer
/// to: a site that rebound its own name to the device's address, reading
/// it from a visitor's browser (see `host`).
async fn foreign_host(req: &ServiceRequest, state: &State, listener: &Listener) -> bool {
    // The name first: the device's state is read only for a name it does
    // not know (a read may wait out a torn write).
    !host::known(&host::request_host(req.headers()), &state.config, listener)
        && matches!(state.auth.device().current().await, Ok(d) if d.mode == AuthMode::NoPassword)
}

/// The request head's size as it came on the wire (request line, each
/// header line with its CRLF), and the number of header fields, against
/// `limits`. actix's own limits (128 KiB, 96 fields) are far above ours.
fn head_too_large(req: &ServiceRequest, state: &State) -> bool {
    let limits = &state.config.limits;
    let headers = req.headers();
    let line = req.method().as_str().len() + req.uri().to_string().len() + 12;
    let size = headers.iter().fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4);
    size > limits.max_header_bytes || headers.len() > limits.max_headers
}

/// `/metrics`: the one decision, counted, and the refusals answered.
pub(super) async fn authenticate(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, Error> {
    let state = state(&req);
    let Some(conn) = req.conn_data::<Rc<ConnInfo>>().cloned() else {
        // Every connection is tagged (conn::http): never reached.
        return Ok(req.into_response(no_connection()).map_into_right_body());
    };
    let credentials = take_credentials(&mut req.extensions_mut());
    let (authorization, cookies) = (credentials.authorization(), credentials.cookies());
    let outcome = state.auth.decide(&auth_request(&authorization, &cookies, &conn)).await;
    let refusal = match outcome {
        Outcome::Allow(method) => {
            state.telemetry.auth_success(method);
            return Ok(next.call(req).await?.map_into_left_body());
        }
        Outcome::Deny(reason) => refuse(&state, "/metrics", reason, conn.peer),
        Outcome::Limited(retry) => limited(&state, "/metrics", retry, conn.peer),
    };
    Ok(req.into_response(refusal).map_into_right_body())
}

/// Before a scrape, once it is allowed: the device's state as of now, and
/// with it the certificate the general listener serves, so the exporter's
/// own metrics describe now even if no connection has reached the general
/// listener since the device changed. The collectors then only read.
pub(super) async fn follow_device(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let state = state(&req);
    for l in &state.listeners {
        if let Some(d) = &l.device_tls {
            d.current().await;
        }
    }
    next.call(req).await
}
