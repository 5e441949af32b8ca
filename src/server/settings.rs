//! The settings page on the general listener: the metrics token (create,
//! rotate, revoke), each listener and its TLS, the device's CA, and
//! Prometheus jobs ready to paste. For whoever the device itself lets in
//! (`auth::Authenticator::decide_settings`); never the read-only token or a
//! client certificate.
//!
//! Cross-site requests: state changes only by POST, which must come from
//! this origin (`Origin`, else `Referer`) and carry the anti-CSRF value
//! bound to the credential that loaded the page. No JavaScript, no
//! third-party assets, a CSP that allows only the page's own style, and no
//! framing.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use actix_web::body::BoxBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::InternalError;
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::{web, Error, FromRequest, HttpMessage, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::credentials::{auth_request, take_credentials};
use super::listener::Listener;
use super::refusal::{closing, limited, no_connection, refuse, text};
use super::settings_page::{self as page, Done, Page, TokenState};
use super::slot::ConnInfo;
use super::state::State;
use crate::auth::{token, Method, Outcome, Reason};
use crate::tls::device::Serving;

/// Largest form body accepted: two short fields.
pub const FORM_LIMIT: usize = 1024;
/// Time the whole form body has once its head is in: 1 KiB from a person's
/// browser on the LAN takes milliseconds.
const BODY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// Headers on every answer under `/settings`, refusals included.
pub async fn page_headers(
    req: ServiceRequest,
    next: Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<ServiceResponse<impl actix_web::body::MessageBody>, Error> {
    let mut res = next.call(req).await?;
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // `same-origin`: the form's POST still carries this page's Origin.
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(page::csp()));
    Ok(res)
}

/// Who is asking, once the device has let them in: a handler that takes a
/// `Visitor` runs only for an admitted one (the refusal is the response).
pub struct Visitor {
    method: Method,
    /// The anti-CSRF value for this credential.
    csrf: String,
    conn: Rc<ConnInfo>,
}

impl FromRequest for Visitor {
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Visitor, Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let state = req.app_data::<web::Data<State>>().cloned().expect("the App carries the state");
            admit(&req, &state).await.map_err(|r| InternalError::from_response("refused", r).into())
        })
    }
}

/// The settings decision, counted and logged; a refusal is the response.
async fn admit(req: &HttpRequest, state: &State) -> Result<Visitor, HttpResponse> {
    let Some(conn) = req.conn_data::<Rc<ConnInfo>>().cloned() else { return Err(no_connection()) };
    let credentials = take_credentials(&mut req.extensions_mut());
    let (authorization, cookies) = (credentials.authorization(), credentials.cookies());
    // The general listener has no client certificates; the decision
    // would not take one here anyway.
    let request = auth_request(&authorization, &cookies, &conn);
    let refusal = match state.auth.decide_settings(&request).await {
        (Outcome::Allow(method), Some(csrf)) => {
            state.telemetry.auth_success(method);
            return Ok(Visitor { method, csrf, conn });
        }
        (Outcome::Allow(_), None) => refuse(state, "/settings", Reason::DeviceConfigUnavailable, conn.peer),
        (Outcome::Deny(reason), _) => refuse(state, "/settings", reason, conn.peer),
        (Outcome::Limited(retry), _) => limited(state, "/settings", retry, conn.peer),
    };
    Err(if refusal.status() == StatusCode::UNAUTHORIZED {
        let mut r = refusal.set_body(BoxBody::new(page::UNAUTHORIZED));
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
        r
    } else {
        refusal
    })
}

/// `GET /settings`.
pub async fn page(
    v: Visitor,
    req: HttpRequest,
    state: web::Data<State>,
    listener: web::Data<Listener>,
) -> HttpResponse {
    respond(&req, &state, &listener, &v, None).await
}

#[derive(Deserialize)]
pub struct TokenForm {
    action: String,
    csrf: String,
}

/// The form, read only after the credential is admitted. Not `web::Form`:
/// its charset decoding links encoding_rs's tables, 146 KB of the armv7
/// binary, for two ASCII fields.
async fn read_form(req: &HttpRequest, payload: web::Payload) -> Result<TokenForm, StatusCode> {
    let urlencoded = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"));
    if !urlencoded {
        return Err(StatusCode::BAD_REQUEST);
    }
    match payload.to_bytes_limited(FORM_LIMIT).await {
        Ok(Ok(body)) => serde_urlencoded::from_bytes(&body).map_err(|_| StatusCode::BAD_REQUEST),
        Ok(Err(_)) => Err(StatusCode::BAD_REQUEST),
        Err(_) => Err(StatusCode::PAYLOAD_TOO_LARGE),
    }
}

/// `POST /settings/token`: `action` = `create` (which also rotates) or
/// `revoke`, from the settings page (same origin, its anti-CSRF value).
pub async fn token_action(
    v: Visitor,
    req: HttpRequest,
    state: web::Data<State>,
    listener: web::Data<Listener>,
    payload: web::Payload,
) -> HttpResponse {
    let peer = v.conn.peer;
    let cross_site = || {
        state.telemetry.auth_failure(Reason::CrossSiteRequest);
        state
            .refusal_log
            .log(|| format!("refused /settings/token from {peer}: {}", Reason::CrossSiteRequest.label()));
        text(StatusCode::FORBIDDEN, "forbidden: this form must be sent from the settings page\n")
    };
    // Before the body: another site's post costs no wait for it.
    if !same_origin(&req, v.conn.encrypted.get()) {
        return cross_site();
    }
    // The body, within its deadline; waiting for it, the connection counts
    // as idle (the cap may close it for a new one, as a slow head).
    let form = {
        let _waiting = v.conn.slot.waiting_for_input();
        tokio::time::timeout(BODY_DEADLINE, read_form(&req, payload)).await
    };
    let form = match form {
        Ok(Ok(f)) => f,
        Ok(Err(status)) => {
            state.telemetry.bad_request();
            return text(status, "bad form\n");
        }
        Err(_) => {
            state.telemetry.http_error(crate::telemetry::HttpError::Timeout);
            return closing(text(StatusCode::REQUEST_TIMEOUT, "the form did not arrive in time\n"));
        }
    };
    if !crate::crypto::ct_eq(form.csrf.as_bytes(), v.csrf.as_bytes()) {
        return cross_site();
    }
    let done = match form.action.as_str() {
        "create" => create(&state, &v).await,
        "revoke" => revoke(&state, &v).await,
        _ => {
            state.telemetry.bad_request();
            return text(StatusCode::BAD_REQUEST, "action must be create or revoke\n");
        }
    };
    let failed = matches!(done, Done::Failed(_));
    let mut r = respond(&req, &state, &listener, &v, Some(done)).await;
    if failed {
        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    }
    r
}

/// Creates (or rotates) the token, off the worker.
async fn create(state: &State, v: &Visitor) -> Done {
    let path = state.config.token_file.clone();
    let had = token::status(&path).ok().flatten().is_some();
    let created = web::block(move || token::create(&path, 0).map(|(t, _)| t)).await;
    state.auth.tokens().invalidate();
    match created {
        Ok(Ok(t)) => {
            let what = if had { "rotated" } else { "created" };
            log::info!("metrics token {what} {}", by(v));
            Done::Created(t)
        }
        Ok(Err(e)) => failed(format!("token_file {e}")),
        Err(_) => failed("token_file: the write did not run".into()),
    }
}

/// Revokes the token, off the worker.
async fn revoke(state: &State, v: &Visitor) -> Done {
    let path = state.config.token_file.clone();
    let revoked = web::block(move || token::revoke(&path)).await;
    state.auth.tokens().invalidate();
    match revoked {
        Ok(Ok(had)) => {
            if had {
                log::info!("metrics token revoked {}", by(v));
            }
            Done::Revoked(had)
        }
        Ok(Err(e)) => failed(format!("token_file {e}")),
        Err(_) => failed("token_file: the removal did not run".into()),
    }
}

fn by(v: &Visitor) -> String {
    format!("from the settings page by {} ({})", v.conn.peer, v.method.label())
}

fn failed(e: String) -> Done {
    log::error!("settings page: {e}");
    Done::Failed(e)
}

/// `GET /settings/ca.crt`: the CA that issued the device's certificates,
/// for Prometheus' `ca_file`. Public, as in every handshake: fetching it
/// needs no credential, so none is sent before it is trusted.
pub async fn ca(listener: web::Data<Listener>) -> HttpResponse {
    let pem = match &listener.device_tls {
        Some(d) => match d.current().await {
            Serving::Tls(b) => b.ca_pem.clone(),
            _ => None,
        },
        None => None,
    };
    match pem {
        Some(pem) => HttpResponse::Ok()
            .content_type("application/x-pem-file")
            .insert_header((header::CONTENT_DISPOSITION, "attachment; filename=\"jetkvm-ca.crt\""))
            .body(pem),
        None => text(StatusCode::NOT_FOUND, "the device is not serving TLS with its certificates\n"),
    }
}

/// The request's `Origin` (or, without one, its `Referer`) is this
/// listener as the client reached it. Over plain HTTP either scheme: a
/// proxy in front may terminate TLS (`follow_device_tls = false`).
fn same_origin(req: &HttpRequest, encrypted: bool) -> bool {
    let Some(host) = req.headers().get(header::HOST).map(HeaderValue::as_bytes) else { return false };
    let schemes: &[&[u8]] = if encrypted { &[b"https://"] } else { &[b"http://", b"https://"] };
    schemes.iter().any(|scheme| {
        let origin = [scheme, host].concat();
        if let Some(o) = req.headers().get(header::ORIGIN) {
            return o.as_bytes() == origin.as_slice();
        }
        match req.headers().get(header::REFERER).map(HeaderValue::as_bytes) {
            Some(r) => r.starts_with(&origin) && r.get(origin.len()) == Some(&b'/'),
            None => false,
        }
    })
}

/// The page, gathered and rendered.
async fn respond(
    req: &HttpRequest,
    state: &State,
    this: &Listener,
    v: &Visitor,
    done: Option<Done>,
) -> HttpResponse {
    let page = gather(req, state, this, v, done).await;
    HttpResponse::Ok().content_type("text/html; charset=utf-8").body(page::render(&page))
}

/// What the page shows, read once: the device's state, the token file (off
/// the worker), each listener's TLS as of now.
async fn gather(req: &HttpRequest, state: &State, this: &Listener, v: &Visitor, done: Option<Done>) -> Page {
    let auth_mode = state.auth.device().current().await.ok().map(|d| d.mode);
    let path = state.config.token_file.clone();
    let token = match web::block(move || token::status(&path)).await {
        Ok(Ok(Some(r))) => TokenState::Set(r.created),
        Ok(Ok(None)) => TokenState::Absent,
        Ok(Err(e)) => TokenState::Unusable(e),
        Err(_) => TokenState::Unusable("the read did not run".into()),
    };
    let mut listeners = Vec::with_capacity(state.listeners.len());
    for l in &state.listeners {
        listeners.push(page::Listener {
            role: l.role,
            address: l.address(),
            serves_metrics: l.serves_metrics,
            tls: tls(l).await,
        });
    }
    let device_ca = this
        .device_tls
        .as_ref()
        .is_some_and(|d| matches!(d.serving(), Serving::Tls(ref b) if b.ca_pem.is_some()));
    Page {
        encrypted: v.conn.encrypted.get(),
        auth_mode,
        device_password: state.auth.device_password_enabled(),
        done,
        token,
        csrf: v.csrf.clone(),
        listeners,
        device_ca,
        host: super::host::request_host(req.headers()),
    }
}

/// One listener's TLS as a person reads it.
async fn tls(l: &Listener) -> page::Tls {
    let tls =
        |description: String, https, server_name| page::Tls { description, https, server_name, mtls: false };
    if let Some(t) = &l.tls {
        let what = if t.mtls() { "HTTPS, client certificates required (mTLS)" } else { "HTTPS" };
        return page::Tls { description: what.into(), https: true, server_name: None, mtls: t.mtls() };
    }
    let Some(d) = &l.device_tls else {
        return tls("plain HTTP (follow_device_tls is off)".into(), false, None);
    };
    match d.current().await {
        Serving::Off => tls("plain HTTP: the device's TLS is off".into(), false, None),
        Serving::Tls(b) => {
            let until =
                b.not_after.first().map(|(_, t)| crate::wording::rfc3339((*t).max(0) as u64)).unwrap_or_default();
            let s = format!(
                "HTTPS with the device's {} certificate for {} (valid until {until}); plain HTTP refused",
                b.mode.label(),
                b.hosts.join(", ")
            );
            tls(s, true, b.hosts.iter().find(|h| !h.contains('*')).cloned())
        }
        Serving::Pending(m) => tls(
            format!(
                "the device's TLS is {} but it has issued no certificate yet: plain HTTP refused, HTTPS not available until it does",
                m.label()
            ),
            true,
            None,
        ),
    }
}
