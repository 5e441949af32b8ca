//! Listeners and HTTP: the one place that owns sockets. Binds the
//! configured address, caps connections (evicting the oldest idle one when
//! full), enforces request-head size, header-read and write timeouts, routes
//! requests and turns auth outcomes into responses. Auth decisions are made
//! in `auth`, metrics are gathered in `collectors`.

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
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};

use crate::auth::{Authenticator, Outcome, Reason};
use crate::collectors::Registry;
use crate::config::Config;
use crate::device::DeviceState;
use crate::exposition::{self, Exposition};
use crate::telemetry::{HttpError, Telemetry};

/// How long in-flight requests get to finish after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

const LANDING: &str = "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>JetKVM metrics</title></head>\n\
<body><h1>JetKVM metrics</h1><p><a href=\"/metrics\">Metrics</a> (authentication required)</p></body></html>\n";

/// Everything a request handler needs.
pub struct App {
    pub config: Config,
    pub auth: Authenticator,
    pub collectors: Registry,
    pub telemetry: Telemetry,
    refusal_log: LogLimiter,
}

impl App {
    pub fn new(config: Config) -> Arc<App> {
        let device = Arc::new(DeviceState::new(config.device_config.clone()));
        Arc::new(App {
            auth: Authenticator::new(&config, device),
            collectors: Registry::from_config(&config),
            telemetry: Telemetry::default(),
            refusal_log: LogLimiter::new(20, Duration::from_secs(60)),
            config,
        })
    }
}

/// Runs the daemon until SIGTERM or SIGINT. Builds the runtime the
/// configuration asks for (one worker by default).
pub fn run(config: Config) -> Result<(), String> {
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
        let app = App::new(config);
        let listener = bind(&app.config).await?;
        serve(app, listener, shutdown_signal()).await
    })
}

pub async fn bind(config: &Config) -> Result<TcpListener, String> {
    TcpListener::bind(config.listen_addr)
        .await
        .map_err(|e| format!("listen_addr {}: {}", config.listen_addr, crate::config::io_reason(&e)))
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

/// Accepts connections on `listener` until `shutdown` resolves, then lets
/// open requests finish for up to [`SHUTDOWN_GRACE`].
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), String> {
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    log::info!("listening on http://{addr} (/, /healthz, /metrics)");
    log::warn!("{addr} is plain HTTP: a device password sent with basic auth crosses the network in clear");
    let tracker = Arc::new(Tracker::new(app.config.limits.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| format!("cannot install SIGHUP handler: {e}"))?;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = hup.recv() => {
                log::info!("SIGHUP: re-reading device state, forgetting remembered credentials");
                app.auth.reset();
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Some(slot) = tracker.admit(&app.telemetry) else {
                        drop(stream);
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(connection(app.clone(), tracker.clone(), slot, stream, peer, stop_rx.clone()));
                }
                // EMFILE and friends: back off instead of spinning.
                Err(e) => {
                    log::warn!("accept on {addr}: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    while tracker.open() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    log::info!("stopped");
    Ok(())
}

async fn connection(
    app: Arc<App>,
    tracker: Arc<Tracker>,
    slot: Arc<Slot>,
    stream: TcpStream,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
) {
    let limits = &app.config.limits;
    let io = TokioIo::new(TimedIo::new(stream, limits.write_timeout));
    let svc = {
        let app = app.clone();
        let slot = slot.clone();
        service_fn(move |req| {
            let app = app.clone();
            let busy = BusyGuard::new(slot.clone());
            async move {
                let resp = handle(&app, req, peer).await;
                drop(busy);
                Ok::<_, Infallible>(resp)
            }
        })
    };
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers)
        .serve_connection(io, svc);
    tokio::pin!(conn);
    let mut stopping = false;
    let result = loop {
        tokio::select! {
            r = conn.as_mut() => break r,
            _ = slot.evict.notified() => {
                if slot.busy.load(Ordering::Acquire) == 0 {
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
        let kind = classify(&e);
        app.telemetry.http_error(kind);
        log::debug!("connection from {peer}: {e}");
    }
    tracker.remove(slot.id);
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

async fn handle(app: &App, req: Request<Incoming>, peer: SocketAddr) -> Resp {
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
        "/metrics" => metrics(app, &req, peer).await,
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    };
    resp.headers_mut().insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    resp
}

async fn metrics(app: &App, req: &Request<Incoming>, peer: SocketAddr) -> Resp {
    let method = match app.auth.decide(req.headers()).await {
        Outcome::Allow(m) => m,
        Outcome::Deny(reason) => return refuse(app, reason, peer),
    };
    app.telemetry.auth_success(method);
    app.telemetry.scrape();
    let mut out = Exposition::new();
    app.collectors.gather(&mut out);
    Registry::gather_process(&mut out);
    app.telemetry.write(&mut out, app.auth.device().load_ok());
    let body = out.into_string().into_bytes();

    let gzip = accepts_gzip(req.headers());
    let body = if gzip { gzip_bytes(&body) } else { body };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(exposition::CONTENT_TYPE));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    if gzip {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    r
}

fn refuse(app: &App, reason: Reason, peer: SocketAddr) -> Resp {
    app.telemetry.auth_failure(reason);
    app.refusal_log.log(|| format!("refused /metrics from {peer}: {}", reason.label()));
    match reason {
        Reason::MalformedAuthorization | Reason::MalformedCookie => {
            text(StatusCode::BAD_REQUEST, "bad request\n")
        }
        Reason::Busy => {
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
