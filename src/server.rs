//! Listeners and HTTP: the one place that owns sockets. Binds the general
//! listener and, when enabled, the metrics service (plain, TLS or mTLS);
//! caps connections per listener (evicting the oldest idle one when full),
//! enforces handshake, request-head size, header-read and write timeouts,
//! routes requests and turns auth outcomes into responses. Auth decisions
//! are made in `auth`, TLS contexts in `tls`, metrics in `collectors`.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method as HttpMethod, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use openssl::ssl::{Ssl, SslVerifyMode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio_openssl::SslStream;

use crate::auth::{self, client_cert, Authenticator, Outcome, Reason};
use crate::config::Config;
use crate::device::DeviceState;
use crate::metrics::{self, Families, Kind};
use crate::telemetry::{HttpError, Telemetry};
use crate::tls;

/// How long in-flight requests get to finish after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// OpenSSL's reason code for "peer did not return a certificate".
const NO_PEER_CERT: i32 = 199;

const LANDING: &str = "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>JetKVM metrics</title></head>\n\
<body><h1>JetKVM metrics</h1><p><a href=\"/metrics\">Metrics</a> (authentication required)</p></body></html>\n";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `listen_addr`: `/`, `/healthz`, and `/metrics` unless the metrics
    /// service is enabled.
    General,
    /// `metrics_service.listen_addr`.
    MetricsService,
}

impl Role {
    fn label(self) -> &'static str {
        match self {
            Role::General => "general",
            Role::MetricsService => "metrics_service",
        }
    }
}

/// One listener's configuration.
pub struct Listener {
    pub role: Role,
    /// As configured (the port may be 0).
    pub addr: SocketAddr,
    /// As bound.
    bound: std::sync::OnceLock<SocketAddr>,
    pub tls: Option<Arc<tls::Acceptor>>,
    pub serves_metrics: bool,
}

impl Listener {
    fn address(&self) -> SocketAddr {
        *self.bound.get().unwrap_or(&self.addr)
    }

    fn tls_label(&self) -> &'static str {
        match &self.tls {
            None => "none",
            Some(t) if t.mtls() => "mtls",
            Some(_) => "tls",
        }
    }
}

/// Everything a request handler needs.
pub struct App {
    pub config: Config,
    pub auth: Authenticator,
    /// The collectors and the daemon's own counters.
    pub registry: prometheus::Registry,
    pub telemetry: Telemetry,
    pub listeners: Vec<Arc<Listener>>,
    refusal_log: LogLimiter,
}

impl App {
    /// Builds the state and the listeners' TLS; fails if a certificate or
    /// key cannot be used (never falls back to plaintext).
    pub fn new(config: Config) -> Result<Arc<App>, String> {
        let device = Arc::new(DeviceState::new(config.device_config.clone()));
        let mut listeners = vec![Arc::new(Listener {
            role: Role::General,
            addr: config.listen_addr,
            bound: Default::default(),
            tls: None,
            serves_metrics: config.metrics_service.is_none(),
        })];
        if let Some(ms) = &config.metrics_service {
            let tls = if ms.keypairs.is_empty() {
                None
            } else {
                Some(Arc::new(tls::Acceptor::new(ms).map_err(|e| format!("config {}: {e}", config.source))?))
            };
            listeners.push(Arc::new(Listener {
                role: Role::MetricsService,
                addr: ms.listen_addr,
                bound: Default::default(),
                tls,
                serves_metrics: true,
            }));
        }
        let registry = prometheus::Registry::new();
        crate::collectors::register(&config, &registry).map_err(|e| format!("metrics: {e}"))?;
        Ok(Arc::new(App {
            auth: Authenticator::new(&config, device),
            telemetry: Telemetry::new(&registry).map_err(|e| format!("metrics: {e}"))?,
            registry,
            refusal_log: LogLimiter::new(20, Duration::from_secs(60)),
            listeners,
            config,
        }))
    }

    fn metrics_port(&self) -> Option<u16> {
        self.listeners.iter().find(|l| l.role == Role::MetricsService).map(|l| l.address().port())
    }
}

/// A listener bound to its socket.
pub struct Bound {
    pub listener: Arc<Listener>,
    pub socket: TcpListener,
}

/// Runs the daemon until SIGTERM or SIGINT. Builds the runtime the
/// configuration asks for (one worker by default). `pidfile`, if given, is
/// written once every listener is bound, so whoever waits for it knows the
/// daemon is serving, and removed on a clean exit.
pub fn run(config: Config, pidfile: Option<&std::path::Path>) -> Result<(), String> {
    let mut rt = if config.workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(config.workers);
        b
    };
    let rt = rt
        .enable_all()
        // The blocking pool only runs bcrypt.
        .max_blocking_threads(config.auth.bcrypt_concurrency)
        .build()
        .map_err(|e| format!("cannot start runtime: {e}"))?;
    rt.block_on(async move {
        let app = App::new(config)?;
        let bound = bind(&app).await?;
        if let Some(p) = pidfile {
            write_pidfile(p)?;
        }
        let result = serve(app, bound, shutdown_signal()).await;
        if let Some(p) = pidfile {
            let _ = std::fs::remove_file(p);
        }
        result
    })
}

/// Written whole (a temporary file renamed into place): a reader never
/// sees an empty pid file.
fn write_pidfile(path: &std::path::Path) -> Result<(), String> {
    let tmp = path.with_extension("pid.tmp");
    std::fs::write(&tmp, format!("{}\n", std::process::id()))
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("pid file {}: {}", path.display(), crate::config::io_reason(&e)))
}

pub async fn bind(app: &App) -> Result<Vec<Bound>, String> {
    let mut out = Vec::new();
    for l in &app.listeners {
        let key = match l.role {
            Role::General => "listen_addr",
            Role::MetricsService => "metrics_service.listen_addr",
        };
        let socket = TcpListener::bind(l.addr)
            .await
            .map_err(|e| format!("{key} {}: {}", l.addr, crate::config::io_reason(&e)))?;
        out.push(Bound { listener: l.clone(), socket });
    }
    Ok(out)
}

/// Resolves on SIGTERM or SIGINT; SIGHUP is handled inside `serve`.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        log::error!("cannot install signal handlers");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => log::info!("SIGTERM: shutting down"),
        _ = int.recv() => log::info!("SIGINT: shutting down"),
    }
}

/// Serves every bound listener until `shutdown` resolves, then lets open
/// requests finish for up to [`SHUTDOWN_GRACE`].
pub async fn serve(
    app: Arc<App>,
    bound: Vec<Bound>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), String> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| format!("cannot install SIGHUP handler: {e}"))?;
    let mut trackers = Vec::new();
    for b in bound {
        let addr = b.socket.local_addr().map_err(|e| e.to_string())?;
        let l = &b.listener;
        let _ = l.bound.set(addr);
        let scheme = if l.tls.is_some() { "https" } else { "http" };
        let routes = if l.serves_metrics { "/, /healthz, /metrics" } else { "/, /healthz" };
        log::info!("listening on {scheme}://{addr} ({}, tls {}: {routes})", l.role.label(), l.tls_label());
        if l.serves_metrics && l.tls.is_none() && app.auth.device_password_enabled() {
            log::warn!(
                "{addr} is plain HTTP: a device password sent with basic auth crosses the network in clear"
            );
        }
        let tracker = Arc::new(Tracker::new(app.config.limits.max_connections));
        trackers.push(tracker.clone());
        tokio::spawn(accept_loop(app.clone(), b, tracker, stop_rx.clone()));
    }
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = hup.recv() => {
                log::info!("SIGHUP: re-reading device state and token, forgetting remembered credentials");
                app.auth.reset();
            }
        }
    }
    let _ = stop_tx.send(true);
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    while trackers.iter().any(|t| t.open() > 0) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    log::info!("stopped");
    Ok(())
}

async fn accept_loop(app: Arc<App>, bound: Bound, tracker: Arc<Tracker>, mut stop: watch::Receiver<bool>) {
    let Bound { listener, socket } = bound;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            accepted = socket.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Some(slot) = tracker.admit(&app.telemetry) else {
                        drop(stream);
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let conn = Conn { app: app.clone(), listener: listener.clone(), tracker: tracker.clone(), slot, peer };
                    tokio::spawn(conn.run(stream, stop.clone()));
                }
                // EMFILE and friends: back off instead of spinning.
                Err(e) => {
                    log::warn!("accept on {}: {e}", listener.addr);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// One accepted connection.
struct Conn {
    app: Arc<App>,
    listener: Arc<Listener>,
    tracker: Arc<Tracker>,
    slot: Arc<Slot>,
    peer: SocketAddr,
}

impl Conn {
    async fn run(self, stream: TcpStream, stop: watch::Receiver<bool>) {
        match self.listener.tls.clone() {
            None => self.http(stream, None, stop).await,
            Some(acceptor) => {
                if let Some((tls, identity)) = self.handshake(&acceptor, stream).await {
                    self.http(tls, identity, stop).await;
                }
            }
        }
        self.tracker.remove(self.slot.id);
    }

    /// The TLS handshake, bounded by the header timeout. On the mTLS
    /// listener, a certificate problem is an auth failure with its reason.
    async fn handshake(
        &self,
        acceptor: &tls::Acceptor,
        stream: TcpStream,
    ) -> Option<(SslStream<TcpStream>, Option<String>)> {
        let app = &self.app;
        let built = acceptor.current();
        let rejected: Arc<Mutex<Option<Reason>>> = Arc::default();
        let ssl = Ssl::new(&built.context).map(|mut ssl| {
            if acceptor.mtls() {
                let rejected = rejected.clone();
                let allowed = acceptor.allowed_sans().to_vec();
                let mode = SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT;
                ssl.set_verify_callback(mode, move |ok, ctx| {
                    let mut r = rejected.lock().unwrap_or_else(|p| p.into_inner());
                    if !ok {
                        r.get_or_insert(Reason::ClientCertInvalid);
                        return false;
                    }
                    if ctx.error_depth() == 0 {
                        if let Some(cert) = ctx.current_cert() {
                            if !client_cert::allowed(cert, &allowed) {
                                r.get_or_insert(Reason::ClientCertNotAllowed);
                                return false;
                            }
                        }
                    }
                    true
                });
            }
            ssl
        });
        let mut tls = match ssl.and_then(|ssl| SslStream::new(ssl, stream)) {
            Ok(t) => t,
            Err(e) => {
                log::error!("TLS setup: {e}");
                return None;
            }
        };
        let limit = app.config.limits.header_timeout;
        match tokio::time::timeout(limit, Pin::new(&mut tls).accept()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let recorded = *rejected.lock().unwrap_or_else(|p| p.into_inner());
                let no_cert =
                    e.ssl_error().is_some_and(|s| s.errors().iter().any(|x| x.reason_code() == NO_PEER_CERT));
                match recorded.or((acceptor.mtls() && no_cert).then_some(Reason::ClientCertMissing)) {
                    Some(reason) => {
                        app.telemetry.auth_failure(reason);
                        app.refusal_log
                            .log(|| format!("refused TLS client {}: {}", self.peer, reason.label()));
                    }
                    None => {
                        app.telemetry.http_error(HttpError::TlsHandshake);
                        log::debug!("TLS handshake with {}: {e}", self.peer);
                    }
                }
                return None;
            }
            Err(_) => {
                app.telemetry.http_error(HttpError::Timeout);
                return None;
            }
        }
        let identity = if acceptor.mtls() {
            // The handshake required and verified it; no certificate here
            // would be an OpenSSL bug, and is refused like one.
            match tls.ssl().peer_certificate() {
                Some(c) => Some(client_cert::identity(&c)),
                None => return None,
            }
        } else {
            None
        };
        Some((tls, identity))
    }

    async fn http<IO>(&self, io: IO, client_cert: Option<String>, mut stop: watch::Receiver<bool>)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let app = &self.app;
        let limits = &app.config.limits;
        let io = TokioIo::new(TimedIo::new(io, limits.write_timeout));
        let ctx = Arc::new(ConnCtx { peer: self.peer, listener: self.listener.clone(), client_cert });
        let svc = {
            let app = app.clone();
            let slot = self.slot.clone();
            service_fn(move |req| {
                let app = app.clone();
                let ctx = ctx.clone();
                let busy = BusyGuard::new(slot.clone());
                async move {
                    let resp = handle(&app, req, &ctx).await;
                    drop(busy);
                    Ok::<_, Infallible>(resp)
                }
            })
        };
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            // A client that shuts down its write side after the request
            // still gets the answer.
            .half_close(true)
            .max_buf_size(limits.max_header_bytes)
            .max_headers(limits.max_headers)
            .serve_connection(io, svc);
        tokio::pin!(conn);
        let mut stopping = false;
        let result = loop {
            tokio::select! {
                r = conn.as_mut() => break r,
                _ = self.slot.evict.notified() => {
                    if self.slot.busy.load(Ordering::Acquire) == 0 {
                        app.telemetry.evicted();
                        break Ok(());
                    }
                }
                _ = stop.changed(), if !stopping => {
                    stopping = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        };
        if let Err(e) = result {
            app.telemetry.http_error(classify(&e));
            log::debug!("connection from {}: {e}", self.peer);
        }
    }
}

/// What a request handler knows about its connection.
struct ConnCtx {
    peer: SocketAddr,
    listener: Arc<Listener>,
    client_cert: Option<String>,
}

fn classify(e: &hyper::Error) -> HttpError {
    if e.is_parse_too_large() {
        HttpError::TooLarge
    } else if e.is_parse() || e.is_parse_status() {
        HttpError::Parse
    } else if e.is_timeout() {
        HttpError::Timeout
    } else {
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            if let Some(io) = s.downcast_ref::<io::Error>() {
                if io.kind() == io::ErrorKind::TimedOut {
                    return HttpError::Timeout;
                }
            }
            source = s.source();
        }
        HttpError::Io
    }
}

type Resp = Response<Full<Bytes>>;

fn text(status: StatusCode, body: &'static str) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

async fn handle(app: &App, req: Request<Incoming>, ctx: &ConnCtx) -> Resp {
    if req.method() != HttpMethod::GET && req.method() != HttpMethod::HEAD {
        app.telemetry.bad_request();
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let mut resp = match req.uri().path() {
        "/" => {
            let mut r = text(StatusCode::OK, LANDING);
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
            r
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/metrics" if ctx.listener.serves_metrics => metrics(app, &req, ctx).await,
        "/metrics" => {
            let port = app.metrics_port().unwrap_or_default();
            let body = format!("metrics are served by the metrics service on port {port}\n");
            let mut r = Response::new(Full::new(Bytes::from(body)));
            *r.status_mut() = StatusCode::NOT_FOUND;
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
            r
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    };
    resp.headers_mut().insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    resp
}

async fn metrics(app: &App, req: &Request<Incoming>, ctx: &ConnCtx) -> Resp {
    let request = auth::Request {
        headers: req.headers(),
        peer: ctx.peer.ip(),
        client_cert: ctx.client_cert.as_deref(),
    };
    let method = match app.auth.decide(&request).await {
        Outcome::Allow(m) => m,
        Outcome::Deny(reason) => return refuse(app, reason, ctx.peer),
        Outcome::Limited(retry) => return limited(app, retry, ctx.peer),
    };
    app.telemetry.auth_success(method);
    app.telemetry.scrape();
    let mut families = app.registry.gather();
    let mut state = Families::new();
    write_exporter_state(app, &mut state);
    families.extend(state.into_vec());
    families.sort_by(|a, b| a.name().cmp(b.name()));
    let body = metrics::encode(&families);

    let gzip = accepts_gzip(req.headers());
    let body = if gzip { gzip_bytes(&body) } else { body };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(metrics::CONTENT_TYPE));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    if gzip {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    r
}

/// Listener, TLS and token state.
fn write_exporter_state(app: &App, out: &mut Families) {
    out.single(
        "jetkvm_exporter_device_config_load_success",
        "Whether the device's auth state (kvm_config.json) was last read successfully.",
        Kind::Gauge,
        if app.auth.device().load_ok() { 1.0 } else { 0.0 },
    );
    let mut f = out.family(
        "jetkvm_exporter_listener_info",
        "A listener of this exporter: its role and TLS mode (none, tls, mtls); always 1.",
        Kind::Gauge,
    );
    for l in &app.listeners {
        let addr = l.address().to_string();
        f.sample(&[("listener", l.role.label()), ("address", &addr), ("tls", l.tls_label())], 1.0);
    }
    let tls: Vec<_> = app.listeners.iter().filter_map(|l| l.tls.as_ref().map(|t| (l.role, t))).collect();
    if !tls.is_empty() {
        let mut f = out.family(
            "jetkvm_exporter_tls_reload_success",
            "Whether the last load of a listener's certificate, key and CA files succeeded (0: still serving the previous ones).",
            Kind::Gauge,
        );
        for (role, t) in &tls {
            f.sample(&[("listener", role.label())], if t.reload_ok() { 1.0 } else { 0.0 });
        }
        let mut f = out.family(
            "jetkvm_exporter_tls_certificate_not_after_seconds",
            "Expiry of a served certificate, in seconds since the Unix epoch.",
            Kind::Gauge,
        );
        for (_, t) in &tls {
            for (file, not_after) in &t.serving().not_after {
                f.sample(&[("cert_file", &file.to_string_lossy())], *not_after as f64);
            }
        }
    }
    out.single(
        "jetkvm_exporter_token_load_success",
        "Whether the metrics token file was last read successfully (an absent file counts as success).",
        Kind::Gauge,
        if app.auth.tokens().load_ok() { 1.0 } else { 0.0 },
    );
}

fn refuse(app: &App, reason: Reason, peer: SocketAddr) -> Resp {
    app.telemetry.auth_failure(reason);
    app.refusal_log.log(|| format!("refused /metrics from {peer}: {}", reason.label()));
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

fn limited(app: &App, retry: Duration, peer: SocketAddr) -> Resp {
    app.telemetry.auth_failure(Reason::RateLimited);
    app.refusal_log.log(|| format!("refused /metrics from {peer}: {}", Reason::RateLimited.label()));
    let mut r = text(StatusCode::TOO_MANY_REQUESTS, "too many failed attempts, retry later\n");
    let secs = retry.as_secs() + u64::from(retry.subsec_nanos() > 0);
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    r
}

/// Whether `Accept-Encoding` lists gzip (or `*`) with a non-zero q.
pub fn accepts_gzip(headers: &hyper::HeaderMap) -> bool {
    headers.get_all(header::ACCEPT_ENCODING).iter().filter_map(|v| v.to_str().ok()).any(|v| {
        v.split(',').any(|item| {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            let q_zero = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !q_zero
        })
    })
}

fn gzip_bytes(body: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc =
        flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 4), flate2::Compression::fast());
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(body);
    enc.finish().unwrap_or_default()
}

/// Allows `burst` lines per `window`, then one line saying how many were
/// dropped: a flood of refusals cannot fill the log.
struct LogLimiter {
    burst: u32,
    window: Duration,
    state: Mutex<(Instant, u32, u64)>,
}

impl LogLimiter {
    fn new(burst: u32, window: Duration) -> Self {
        LogLimiter { burst, window, state: Mutex::new((Instant::now(), 0, 0)) }
    }

    fn log(&self, msg: impl FnOnce() -> String) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if now.duration_since(s.0) >= self.window {
            if s.2 > 0 {
                log::warn!("{} similar messages suppressed", s.2);
            }
            *s = (now, 0, 0);
        }
        if s.1 < self.burst {
            s.1 += 1;
            log::warn!("{}", msg());
        } else {
            s.2 += 1;
        }
    }
}

/// One open connection.
struct Slot {
    id: u64,
    /// Requests being handled right now.
    busy: AtomicUsize,
    evict: Notify,
}

struct BusyGuard(Arc<Slot>);

impl BusyGuard {
    fn new(slot: Arc<Slot>) -> Self {
        slot.busy.fetch_add(1, Ordering::AcqRel);
        BusyGuard(slot)
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Open connections, oldest first, and the cap.
struct Tracker {
    max: usize,
    next_id: AtomicU64,
    open: Mutex<Vec<Arc<Slot>>>,
}

impl Tracker {
    fn new(max: usize) -> Self {
        Tracker { max, next_id: AtomicU64::new(0), open: Mutex::new(Vec::new()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Slot>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn open(&self) -> usize {
        self.lock().len()
    }

    /// A slot for a new connection. At the cap, the oldest idle connection
    /// is told to close (a slowloris or a parked keep-alive); if every
    /// connection is busy, the new one is refused.
    fn admit(&self, telemetry: &Telemetry) -> Option<Arc<Slot>> {
        let mut open = self.lock();
        if open.len() >= self.max {
            let idle = open.iter().position(|s| s.busy.load(Ordering::Acquire) == 0);
            match idle {
                Some(i) => {
                    let victim = open.remove(i);
                    victim.evict.notify_one();
                }
                None => {
                    telemetry.refused();
                    return None;
                }
            }
        }
        let slot = Arc::new(Slot {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            busy: AtomicUsize::new(0),
            evict: Notify::new(),
        });
        open.push(slot.clone());
        Some(slot)
    }

    fn remove(&self, id: u64) {
        self.lock().retain(|s| s.id != id);
    }
}

/// Fails a write that makes no progress for `timeout`: a client that stops
/// reading cannot hold a connection (and its buffers) forever. Reads are
/// bounded by hyper's header-read timeout.
struct TimedIo<T> {
    inner: T,
    timeout: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> TimedIo<T> {
    fn new(inner: T, timeout: Duration) -> Self {
        TimedIo { inner, timeout, stalled: None }
    }

    fn check_stall<R>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        match poll {
            Poll::Ready(r) => {
                self.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let timeout = self.timeout;
                let sleep = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "write stalled")))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TimedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TimedIo<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let p = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check_stall(cx, p)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let p = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.check_stall(cx, p)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let p = Pin::new(&mut self.inner).poll_flush(cx);
        self.check_stall(cx, p)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::accepts_gzip;
    use hyper::header::{HeaderMap, HeaderValue, ACCEPT_ENCODING};

    #[test]
    fn gzip_negotiation() {
        let h = |v: &'static str| {
            let mut m = HeaderMap::new();
            m.insert(ACCEPT_ENCODING, HeaderValue::from_static(v));
            m
        };
        assert!(accepts_gzip(&h("gzip")));
        assert!(accepts_gzip(&h("deflate, GZIP;q=0.5")));
        assert!(accepts_gzip(&h("*")));
        assert!(!accepts_gzip(&h("gzip;q=0")));
        assert!(!accepts_gzip(&h("identity")));
        assert!(!accepts_gzip(&h("gzipx")));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }
}
