//! What each listener answers, declared in one place: the actix-web `App`,
//! its middleware (per request: the connection's busy mark, head limits,
//! methods; on `/metrics`: authentication and gzip) and the handlers. The
//! decision itself is `auth::Authenticator::decide`, which sees plain
//! values, never actix types.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{Method as HttpMethod, StatusCode};
use actix_web::middleware::{from_fn, Compress, Next};
use actix_web::{web, App, Error, HttpMessage, HttpRequest, HttpResponse};

use super::conn::ConnInfo;
use super::{settings, Listener, Role, State};
use crate::auth::{self, Outcome, Reason};
use crate::crypto::Secret;
use crate::device::AuthMode;
use crate::metrics::{self, Families, Kind};
use crate::telemetry::HttpError;
use crate::tls::device::Serving;

/// The landing page, with `$more` after the link to the metrics.
macro_rules! landing {
    ($more:literal) => {
        concat!(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>JetKVM metrics</title></head>\n",
            "<body><h1>JetKVM metrics</h1><p><a href=\"/metrics\">Metrics</a> (authentication required)</p>",
            $more,
            "</body></html>\n"
        )
    };
}
const LANDING: &str = landing!(
    "\n<p><a href=\"/settings\">Settings</a>: the metrics token, TLS, Prometheus jobs (sign in to the device first)</p>"
);
const LANDING_METRICS_SERVICE: &str = landing!("");

/// The routes of one listener.
pub fn app(
    state: Arc<State>,
    listener: Arc<Listener>,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = Error,
        InitError = (),
    >,
> {
    let serves_metrics = listener.serves_metrics;
    let general = listener.role == Role::General;
    App::new()
        .app_data(web::Data::from(state))
        .app_data(web::Data::from(listener))
        .wrap(from_fn(request))
        .route("/", web::to(landing))
        .route("/healthz", web::to(healthz))
        .configure(move |cfg| {
            if general {
                cfg.service(
                    web::scope("/settings")
                        .wrap(from_fn(settings::page_headers))
                        .route("", web::get().to(settings::page))
                        .route("", web::head().to(settings::page))
                        .route("/token", web::post().to(settings::token_action))
                        .route("/ca.crt", web::get().to(settings::ca))
                        .route("/ca.crt", web::head().to(settings::ca)),
                );
            }
        })
        .configure(move |cfg| {
            if serves_metrics {
                cfg.service(
                    web::resource("/metrics")
                        .wrap(from_fn(authenticate))
                        .wrap(Compress::default())
                        .to(scrape),
                );
            } else {
                cfg.route("/metrics", web::to(moved));
            }
        })
        .default_service(web::to(not_found))
}

pub(super) fn text(status: StatusCode, body: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status).content_type("text/plain; charset=utf-8").body(body.into())
}

fn state(req: &ServiceRequest) -> web::Data<State> {
    req.app_data::<web::Data<State>>().cloned().expect("the App carries the state")
}

/// The methods a path answers.
fn allowed_methods(path: &str) -> &'static str {
    if path == "/settings/token" {
        "POST"
    } else {
        "GET, HEAD"
    }
}

/// Every request: marks its connection busy while it is handled, refuses
/// heads over the configured limits, plain HTTP while the listener serves
/// the device's TLS (before any credential is looked at), and methods the
/// path does not answer.
async fn request(
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
        let mut r = text(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "request header fields too large\n");
        r.head_mut().set_connection_type(actix_web::http::ConnectionType::Close);
        return Ok(req.into_response(r).map_into_right_body());
    }
    let encrypted = req.conn_data::<Rc<ConnInfo>>().is_some_and(|c| c.encrypted.get());
    let listener = req.app_data::<web::Data<Listener>>().cloned().expect("the App carries its listener");
    // Checked per request: a keep-alive connection opened while the
    // device's TLS was off gets nothing once it is on.
    if !encrypted && req.path() != "/healthz" && !listener.clear_allowed(&state).await {
        state.telemetry.http_error(HttpError::PlainHttp);
        let mut r = text(
            StatusCode::BAD_REQUEST,
            "the device's TLS is on: this port answers over HTTPS only (https:// and the same port)\n",
        );
        r.head_mut().set_connection_type(actix_web::http::ConnectionType::Close);
        return Ok(req.into_response(r).map_into_right_body());
    }
    let allowed = allowed_methods(req.path());
    let method_ok = match allowed {
        "POST" => req.method() == HttpMethod::POST,
        _ => req.method() == HttpMethod::GET || req.method() == HttpMethod::HEAD,
    };
    if !method_ok {
        state.telemetry.bad_request();
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        r.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allowed));
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
    !super::host::known(&super::host::request_host(req.headers()), &state.config, listener)
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
async fn authenticate(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, Error> {
    let state = state(&req);
    let Some(conn) = req.conn_data::<Rc<ConnInfo>>().cloned() else {
        // Every connection is tagged (conn::listen): never reached.
        return Ok(req
            .into_response(text(StatusCode::INTERNAL_SERVER_ERROR, "no connection\n"))
            .map_into_right_body());
    };
    let credentials = take_credentials(&mut req.extensions_mut());
    let (authorization, cookies) = (credentials.authorization(), credentials.cookies());
    let outcome = state.auth.decide(&auth_request(&authorization, &cookies, &conn)).await;
    let refusal = match outcome {
        Outcome::Allow(method) => {
            state.telemetry.auth_success(method);
            state.telemetry.scrape();
            return Ok(next.call(req).await?.map_into_left_body());
        }
        Outcome::Deny(reason) => refuse(&state, "/metrics", reason, conn.peer),
        Outcome::Limited(retry) => limited(&state, "/metrics", retry, conn.peer),
    };
    Ok(req.into_response(refusal).map_into_right_body())
}

/// A request's `Authorization` and `Cookie` values, in buffers wiped when
/// the request is done with them.
#[derive(Default)]
pub(super) struct Credentials {
    authorization: Vec<Secret>,
    cookies: Vec<Secret>,
}

impl Credentials {
    pub fn authorization(&self) -> Vec<&[u8]> {
        self.authorization.iter().map(Secret::as_bytes).collect()
    }

    pub fn cookies(&self) -> Vec<&[u8]> {
        self.cookies.iter().map(Secret::as_bytes).collect()
    }
}

/// Moves the credential headers out of the request's header map into
/// [`Credentials`] in its extensions, and copies every other header value
/// out of the connection's read buffer. actix's header values are views of
/// that buffer, and it keeps the last request heads (maps and all) pooled
/// for reuse: without this, the raw head, `Authorization` included, would
/// outlive its connection unwiped. Now the buffer is freed, and wiped by
/// the allocator, when the connection ends, and the credentials when the
/// request is.
fn hold_credentials(req: &mut ServiceRequest) {
    let mut held = Credentials::default();
    let headers = req.headers_mut();
    let views: Vec<_> = headers.drain().collect();
    let mut name = None;
    for (n, value) in views {
        // `drain` names only the first value of each header.
        let Some(n) = n.or(name.take()) else { continue };
        if n == header::AUTHORIZATION {
            held.authorization.push(Secret::from_slice(value.as_bytes()));
        } else if n == header::COOKIE {
            held.cookies.push(Secret::from_slice(value.as_bytes()));
        } else if let Ok(copy) = HeaderValue::from_bytes(value.as_bytes()) {
            headers.append(n.clone(), copy);
        }
        name = Some(n);
    }
    req.extensions_mut().insert(held);
}

/// The request's credentials, taken: wiped when the caller drops them.
pub(super) fn take_credentials(ext: &mut actix_web::dev::Extensions) -> Credentials {
    ext.remove::<Credentials>().unwrap_or_default()
}

/// What the auth decision sees of a request: plain values.
pub(super) fn auth_request<'a>(
    authorization: &'a [&'a [u8]],
    cookies: &'a [&'a [u8]],
    conn: &'a ConnInfo,
) -> auth::Request<'a> {
    auth::Request {
        authorization,
        cookies,
        peer: conn.peer.ip(),
        client_cert: conn.client_cert.get().map(String::as_str),
    }
}

async fn landing(listener: web::Data<Listener>) -> HttpResponse {
    let page = if listener.role == Role::General { LANDING } else { LANDING_METRICS_SERVICE };
    HttpResponse::Ok().content_type("text/html; charset=utf-8").body(page)
}

/// `ok`, and to a client on the device itself the system version, so that
/// `probe` can tell this daemon from anything else on the port. The
/// version is not told to the LAN.
async fn healthz(req: HttpRequest, state: web::Data<State>) -> HttpResponse {
    let same_host = req.conn_data::<Rc<ConnInfo>>().is_some_and(|c| c.same_host);
    match same_host.then(|| crate::collectors::system_version(&state.config.version_file)) {
        Some(Ok(version)) => text(StatusCode::OK, format!("ok {version}\n")),
        _ => text(StatusCode::OK, "ok\n"),
    }
}

async fn not_found() -> HttpResponse {
    text(StatusCode::NOT_FOUND, "not found\n")
}

/// `/metrics` on the general listener once the metrics service has it.
async fn moved(state: web::Data<State>) -> HttpResponse {
    let port = state.metrics_port().unwrap_or_default();
    text(StatusCode::NOT_FOUND, format!("metrics are served by the metrics service on port {port}\n"))
}

/// Gathers the registry (collectors and counters) and the exporter's own
/// state, and encodes them; gzip is the `Compress` middleware's.
async fn scrape(state: web::Data<State>) -> HttpResponse {
    // The device's TLS as of now, for listener_info, even if no connection
    // has reached the general listener since it changed.
    for l in &state.listeners {
        if let Some(d) = &l.device_tls {
            d.current(&state.auth.device().tls_mode().await);
        }
    }
    let mut families = state.registry.gather();
    let mut own = Families::new();
    write_exporter_state(&state, &mut own);
    // The encoder refuses a family without samples (no certificate yet).
    families.extend(own.into_vec().into_iter().filter(|f| !f.get_metric().is_empty()));
    families.sort_by(|a, b| a.name().cmp(b.name()));
    HttpResponse::Ok()
        .content_type(metrics::CONTENT_TYPE)
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(metrics::encode(&families))
}

/// Listener, TLS, token and device-config state.
fn write_exporter_state(state: &State, out: &mut Families) {
    out.single(
        "jetkvm_exporter_device_config_load_success",
        "Whether the device's auth state (kvm_config.json) was last read successfully.",
        Kind::Gauge,
        if state.auth.device().load_ok() { 1.0 } else { 0.0 },
    );
    let mut f = out.family(
        "jetkvm_exporter_listener_info",
        "A listener of this exporter: its role and TLS mode (none, tls, mtls, or pending: the device wants TLS and has no certificate yet, so plain HTTP is refused); always 1.",
        Kind::Gauge,
    );
    for l in &state.listeners {
        let addr = l.address().to_string();
        f.sample(&[("listener", l.role.label()), ("address", &addr), ("tls", l.tls_label())], 1.0);
    }
    // What each TLS listener serves: (role, last reload ok, certificates).
    let mut tls = Vec::new();
    for l in &state.listeners {
        if let Some(t) = &l.tls {
            tls.push((l.role, t.reload_ok(), t.serving().not_after.clone()));
        } else if let Some(d) = &l.device_tls {
            match d.serving() {
                Serving::Tls(b) => tls.push((l.role, d.reload_ok(), b.not_after.clone())),
                Serving::Pending(_) => tls.push((l.role, d.reload_ok(), Vec::new())),
                Serving::Off => {}
            }
        }
    }
    if !tls.is_empty() {
        let mut f = out.family(
            "jetkvm_exporter_tls_reload_success",
            "Whether the last load of a listener's certificate, key and CA files succeeded (0: still serving the previous ones).",
            Kind::Gauge,
        );
        for (role, ok, _) in &tls {
            f.sample(&[("listener", role.label())], if *ok { 1.0 } else { 0.0 });
        }
        let mut f = out.family(
            "jetkvm_exporter_tls_certificate_not_after_seconds",
            "Expiry of a served certificate, in seconds since the Unix epoch.",
            Kind::Gauge,
        );
        for (_, _, not_after) in &tls {
            for (file, not_after) in not_after {
                f.sample(&[("cert_file", &file.to_string_lossy())], *not_after as f64);
            }
        }
    }
    out.single(
        "jetkvm_exporter_token_load_success",
        "Whether the metrics token file was last read successfully (an absent file counts as success).",
        Kind::Gauge,
        if state.auth.tokens().load_ok() { 1.0 } else { 0.0 },
    );
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
