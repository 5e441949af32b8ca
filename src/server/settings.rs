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

use std::fmt::Write as _;
use std::rc::Rc;
use std::sync::OnceLock;

use actix_web::body::BoxBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::{web, Error, HttpMessage, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::conn::ConnInfo;
use super::routes::{auth_request, limited, refuse, take_credentials, text};
use super::{Listener, Role, State};
use crate::auth::{token, Method, Outcome, Reason};
use crate::device::{AuthMode, TlsMode};
use crate::tls::device::Serving;

/// Largest form body accepted: two short fields.
pub const FORM_LIMIT: usize = 1024;
/// Time the whole form body has once its head is in: 1 KiB from a person's
/// browser on the LAN takes milliseconds.
const BODY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

const STYLE: &str = "body{font-family:sans-serif;max-width:52em;margin:1em auto;padding:0 1em;color:#222}\
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em}\
table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:.3em .6em;text-align:left}\
pre{background:#f4f4f4;padding:.6em;overflow-x:auto}\
.warn{background:#fff3cd;border:1px solid #e0b000;padding:.6em}\
.new{background:#e7f6e7;border:1px solid #3a3;padding:.6em}\
form{display:inline-block;margin-right:1em}button{padding:.3em 1em}";

/// Where the pasted jobs expect their secret files.
const TOKEN_FILE: &str = "/etc/prometheus/jetkvm-token";
const PASSWORD_FILE: &str = "/etc/prometheus/jetkvm-password";
const CA_FILE: &str = "/etc/prometheus/jetkvm-ca.crt";

const UNAUTHORIZED: &str =
    "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>JetKVM metrics</title></head>\n\
<body><h1>Unauthorized</h1><p>Sign in to the device first.</p></body></html>\n";

/// The page's Content-Security-Policy: nothing but its own inline style,
/// forms posting only here, no framing.
fn csp() -> &'static str {
    static CSP: OnceLock<String> = OnceLock::new();
    CSP.get_or_init(|| {
        use base64::Engine;
        let hash = base64::engine::general_purpose::STANDARD.encode(openssl::sha::sha256(STYLE.as_bytes()));
        format!(
            "default-src 'none'; style-src 'sha256-{hash}'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        )
    })
}

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
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(csp()));
    Ok(res)
}

/// Who is asking, once the device has let them in.
struct Visitor {
    method: Method,
    /// The anti-CSRF value for this credential.
    csrf: String,
    conn: Rc<ConnInfo>,
}

/// The settings decision, counted and logged; a refusal is the response.
async fn admit(req: &HttpRequest, state: &State) -> Result<Visitor, HttpResponse> {
    let Some(conn) = req.conn_data::<Rc<ConnInfo>>().cloned() else {
        return Err(text(StatusCode::INTERNAL_SERVER_ERROR, "no connection\n"));
    };
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
        // The browser's prompt for the device password, and nothing else.
        let mut r = refusal.set_body(BoxBody::new(UNAUTHORIZED));
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
        r
    } else {
        refusal
    })
}

/// `GET /settings`.
pub async fn page(req: HttpRequest, state: web::Data<State>, listener: web::Data<Listener>) -> HttpResponse {
    match admit(&req, &state).await {
        Ok(v) => render(&req, &state, &listener, &v, None).await,
        Err(r) => r,
    }
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
/// `revoke`.
pub async fn token_action(
    req: HttpRequest,
    state: web::Data<State>,
    listener: web::Data<Listener>,
    payload: web::Payload,
) -> HttpResponse {
    let v = match admit(&req, &state).await {
        Ok(v) => v,
        Err(r) => return r,
    };
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
            let mut r = text(StatusCode::REQUEST_TIMEOUT, "the form did not arrive in time\n");
            r.head_mut().set_connection_type(actix_web::http::ConnectionType::Close);
            return r;
        }
    };
    if !crate::crypto::ct_eq(form.csrf.as_bytes(), v.csrf.as_bytes()) {
        return cross_site();
    }
    let path = state.config.token_file.clone();
    let by = format!("from the settings page by {peer} ({})", v.method.label());
    match form.action.as_str() {
        "create" => {
            let had = token::status(&path).ok().flatten().is_some();
            let created = web::block(move || token::create(&path)).await;
            state.auth.tokens().invalidate();
            match created {
                Ok(Ok(t)) => {
                    log::info!("metrics token {} {by}", if had { "rotated" } else { "created" });
                    render(&req, &state, &listener, &v, Some(Done::Created(t))).await
                }
                Ok(Err(e)) => failed(&state, &req, &listener, &v, format!("token_file {e}")).await,
                Err(_) => {
                    failed(&state, &req, &listener, &v, "token_file: the write did not run".into()).await
                }
            }
        }
        "revoke" => {
            let revoked = web::block(move || token::revoke(&path)).await;
            state.auth.tokens().invalidate();
            match revoked {
                Ok(Ok(had)) => {
                    if had {
                        log::info!("metrics token revoked {by}");
                    }
                    render(&req, &state, &listener, &v, Some(Done::Revoked(had))).await
                }
                Ok(Err(e)) => failed(&state, &req, &listener, &v, format!("token_file {e}")).await,
                Err(_) => {
                    failed(&state, &req, &listener, &v, "token_file: the removal did not run".into()).await
                }
            }
        }
        _ => {
            state.telemetry.bad_request();
            text(StatusCode::BAD_REQUEST, "action must be create or revoke\n")
        }
    }
}

async fn failed(
    state: &State,
    req: &HttpRequest,
    listener: &Listener,
    v: &Visitor,
    e: String,
) -> HttpResponse {
    log::error!("settings page: {e}");
    let mut r = render(req, state, listener, v, Some(Done::Failed(e))).await;
    *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    r
}

/// `GET /settings/ca.crt`: the CA that issued the device's certificates,
/// for Prometheus' `ca_file`. Public, as in every handshake: fetching it
/// needs no credential, so none is sent before it is trusted.
pub async fn ca(state: web::Data<State>, listener: web::Data<Listener>) -> HttpResponse {
    let pem = match &listener.device_tls {
        Some(d) => match d.current(&state.auth.device().tls_mode().await) {
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

/// What a POST just did.
enum Done {
    /// The new token, shown this once.
    Created(String),
    /// Whether there was a token to revoke.
    Revoked(bool),
    Failed(String),
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// One listener's TLS as a person reads it, and whether metrics reach it
/// over HTTPS (and the server name to verify, if known).
fn tls_state(l: &Listener, mode: &TlsMode) -> (String, bool, Option<String>) {
    if let Some(t) = &l.tls {
        let what = if t.mtls() { "HTTPS, client certificates required (mTLS)" } else { "HTTPS" };
        return (what.into(), true, None);
    }
    match &l.device_tls {
        None => ("plain HTTP (follow_device_tls is off)".into(), false, None),
        Some(d) => match d.current(mode) {
            Serving::Off => ("plain HTTP: the device's TLS is off".into(), false, None),
            Serving::Tls(b) => {
                let until = b.not_after.first().map(|(_, t)| token::rfc3339((*t).max(0) as u64)).unwrap_or_default();
                let s = format!(
                    "HTTPS with the device's {} certificate for {} (valid until {until}); plain HTTP refused",
                    b.mode.label(),
                    b.hosts.join(", ")
                );
                (s, true, b.hosts.iter().find(|h| !h.contains('*')).cloned())
            }
            Serving::Pending(m) => (
                format!(
                    "the device's TLS is {} but it has issued no certificate yet: plain HTTP refused, HTTPS not available until it does",
                    m.label()
                ),
                true,
                None,
            ),
        },
    }
}

async fn render(
    req: &HttpRequest,
    state: &State,
    this: &Listener,
    v: &Visitor,
    done: Option<Done>,
) -> HttpResponse {
    let device = state.auth.device().current().await.ok();
    let mode = state.auth.device().tls_mode().await;
    let mut p = String::with_capacity(8192);
    let _ = write!(
        p,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>JetKVM metrics settings</title><style>{STYLE}</style></head>\n<body>\n<h1>JetKVM metrics settings</h1>\n"
    );
    let password_mode = device.as_ref().is_some_and(|d| d.mode == AuthMode::Password);
    if !v.conn.encrypted.get() && password_mode {
        p.push_str(
            "<p class=\"warn\" id=\"plain-warning\"><strong>This page came over plain HTTP.</strong> \
The device's session cookie or password crossed the network in clear to reach it. \
Turn on TLS in the device's settings: this port then serves HTTPS with the device's certificate.</p>\n",
        );
    }
    match &done {
        Some(Done::Created(t)) => {
            let _ = writeln!(
                p,
                "<div class=\"new\"><p><strong>New metrics token</strong> (shown this once; any previous token no longer works):</p>\
<pre id=\"new-token\">{}</pre><p>Save it as <code>{TOKEN_FILE}</code> on the Prometheus host.</p></div>",
                escape(t)
            );
        }
        Some(Done::Revoked(true)) => p.push_str("<p class=\"new\" id=\"done\">Token revoked.</p>\n"),
        Some(Done::Revoked(false)) => p.push_str("<p class=\"new\" id=\"done\">No token was set.</p>\n"),
        Some(Done::Failed(e)) => {
            let _ = writeln!(p, "<p class=\"warn\" id=\"done\">Failed: {}</p>", escape(e));
        }
        None => {}
    }

    p.push_str("<h2>Read-only metrics token</h2>\n");
    let has_token = match token::status(&state.config.token_file) {
        Ok(Some(r)) => {
            let _ =
                writeln!(p, "<p id=\"token-state\">A token is set, since {}.</p>", token::rfc3339(r.created));
            true
        }
        Ok(None) => {
            p.push_str("<p id=\"token-state\">No token is set.</p>\n");
            false
        }
        Err(e) => {
            let _ = writeln!(
                p,
                "<p class=\"warn\" id=\"token-state\">The token file cannot be used ({}): every token is refused.</p>",
                escape(&e)
            );
            true
        }
    };
    let csrf = escape(&v.csrf);
    let _ = write!(
        p,
        "<form method=\"post\" action=\"/settings/token\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
<button type=\"submit\" name=\"action\" value=\"create\" id=\"create\">{}</button></form>",
        if has_token { "Rotate token" } else { "Create token" }
    );
    if has_token {
        let _ = write!(
            p,
            "<form method=\"post\" action=\"/settings/token\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
<button type=\"submit\" name=\"action\" value=\"revoke\" id=\"revoke\">Revoke token</button></form>"
        );
    }
    p.push_str("\n<p>The token only reads metrics; it cannot open this page.</p>\n");

    p.push_str(
        "<h2>Listeners</h2>\n<table><tr><th>Listener</th><th>Address</th><th>Serves</th><th>TLS</th></tr>\n",
    );
    let mut metrics_at = None;
    for l in &state.listeners {
        let (tls, https, server_name) = tls_state(l, &mode);
        let serves = match (l.role, l.serves_metrics) {
            (Role::General, true) => "this page, /metrics",
            (Role::General, false) => "this page",
            (Role::MetricsService, _) => "/metrics",
        };
        let _ = writeln!(
            p,
            "<tr id=\"listener-{}\"><td>{}</td><td>{}</td><td>{serves}</td><td>{}</td></tr>",
            l.role.label(),
            l.role.label(),
            l.address(),
            escape(&tls)
        );
        if l.serves_metrics {
            metrics_at = Some((l, https, server_name));
        }
    }
    p.push_str("</table>\n");
    let device_ca = match &this.device_tls {
        Some(d) => matches!(d.serving(), Serving::Tls(ref b) if b.ca_pem.is_some()),
        None => false,
    };
    if device_ca {
        let _ = writeln!(
            p,
            "<p><a href=\"/settings/ca.crt\" id=\"ca\">Download the device's CA certificate</a> \
for Prometheus' <code>ca_file</code> (<code>{CA_FILE}</code> below).</p>"
        );
    }

    if let Some((l, https, server_name)) = metrics_at {
        p.push_str(
            "<h2>Prometheus</h2>\n<p>A job for each way in; put the secret in the file it names.</p>\n",
        );
        let target = format!("{}:{}", super::host::request_host(req.headers()), l.address().port());
        let mtls = l.tls.as_ref().is_some_and(|t| t.mtls());
        let job = |name: &str, auth: &str| {
            let mut y = format!("scrape_configs:\n  - job_name: {name}\n");
            if https {
                y.push_str("    scheme: https\n    tls_config:\n");
                if mtls {
                    y.push_str("      ca_file: /etc/prometheus/jetkvm-metrics-ca.crt\n      cert_file: /etc/prometheus/prometheus.crt\n      key_file: /etc/prometheus/prometheus.key\n");
                } else if l.role == Role::General {
                    let _ = writeln!(y, "      ca_file: {CA_FILE}");
                } else {
                    y.push_str("      ca_file: /etc/prometheus/jetkvm-metrics-ca.crt\n");
                }
                if let Some(n) = &server_name {
                    let _ = writeln!(y, "      server_name: {n}");
                }
            }
            y.push_str(auth);
            let _ = write!(y, "    static_configs:\n      - targets: [\"{target}\"]\n");
            y
        };
        let mut jobs: Vec<(&str, &str, String)> = Vec::new();
        if mtls {
            jobs.push(("mtls", "Client certificate (mTLS)", job("jetkvm", "")));
        } else if device.as_ref().is_some_and(|d| d.mode == AuthMode::NoPassword) {
            jobs.push(("open", "No password (the device runs without one)", job("jetkvm", "")));
        } else {
            let token_auth =
                format!("    authorization:\n      type: Bearer\n      credentials_file: {TOKEN_FILE}\n");
            jobs.push(("token", "Metrics token", job("jetkvm", &token_auth)));
            if password_mode && state.auth.device_password_enabled() {
                let pw =
                    format!("    basic_auth:\n      username: admin\n      password_file: {PASSWORD_FILE}\n");
                jobs.push(("password", "Device password", job("jetkvm", &pw)));
            }
        }
        for (id, title, yaml) in jobs {
            let _ = write!(p, "<h3>{title}</h3>\n<pre id=\"job-{id}\">{}</pre>\n", escape(&yaml));
            if id == "password" && !https {
                p.push_str("<p class=\"warn\">Over plain HTTP this job sends the device password in clear on every scrape.</p>\n");
            }
        }
    }
    p.push_str("</body></html>\n");
    HttpResponse::Ok().content_type("text/html; charset=utf-8").body(p)
}
