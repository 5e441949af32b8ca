//! The daemon's listeners on actix: the general listener and, when enabled,
//! the metrics service (plain, TLS or mTLS), served by one actix-server
//! worker. This module owns the shared state, binding and the run loop;
//! `routes` declares what each listener answers (actix-web middleware and
//! handlers), `conn` what happens to a connection before and around HTTP
//! (the connection cap, deadlines, the TLS handshake). Auth decisions are
//! made in `auth`, TLS contexts in `tls`, metrics in `collectors`.

mod conn;
mod host;
mod routes;
mod settings;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::auth::Authenticator;
use crate::config::{io_reason, Config};
use crate::device::DeviceState;
use crate::telemetry::Telemetry;
use crate::tls;

/// How long in-flight requests get to finish after SIGTERM (actix counts
/// whole seconds).
const SHUTDOWN_GRACE_SECS: u64 = 5;
/// Pending connections the kernel queues for each listener.
const BACKLOG: i32 = 1024;

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

    fn config_key(self) -> &'static str {
        match self {
            Role::General => "listen_addr",
            Role::MetricsService => "metrics_service.listen_addr",
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
    /// The general listener's TLS when it follows the device's
    /// (`follow_device_tls`).
    pub device_tls: Option<Arc<tls::DeviceTls>>,
    pub serves_metrics: bool,
}

impl Listener {
    fn address(&self) -> SocketAddr {
        *self.bound.get().unwrap_or(&self.addr)
    }

    fn tls_label(&self) -> &'static str {
        use tls::device::Serving;
        match (&self.tls, &self.device_tls) {
            (Some(t), _) if t.mtls() => "mtls",
            (Some(_), _) => "tls",
            (None, Some(d)) => match d.serving() {
                Serving::Off => "none",
                Serving::Tls(_) => "tls",
                Serving::Pending(_) => "pending",
            },
            (None, None) => "none",
        }
    }

    /// Whether this listener may answer in clear now: never while it
    /// follows a device whose TLS is on (or wanted, certificates pending).
    async fn clear_allowed(&self, state: &State) -> bool {
        match &self.device_tls {
            None => true,
            Some(_) => state.auth.device().tls_mode().await == crate::device::TlsMode::Off,
        }
    }
}

/// Everything a request needs, shared by the listeners.
pub struct State {
    pub config: Config,
    pub auth: Authenticator,
    /// The collectors and the daemon's own counters.
    pub registry: prometheus::Registry,
    pub telemetry: Telemetry,
    pub listeners: Vec<Arc<Listener>>,
    refusal_log: LogLimiter,
}

impl State {
    /// Builds the state and the listeners' TLS; fails if a certificate or
    /// key cannot be used (never falls back to plaintext).
    pub fn new(config: Config) -> Result<Arc<State>, String> {
        let device = Arc::new(DeviceState::new(config.device_config.clone()));
        let mut listeners = vec![Arc::new(Listener {
            role: Role::General,
            addr: config.listen_addr,
            bound: Default::default(),
            tls: None,
            device_tls: config.follow_device_tls.then(|| {
                Arc::new(tls::DeviceTls::new(config.device_tls_dir.clone(), config.host_names.clone()))
            }),
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
                device_tls: None,
                serves_metrics: true,
            }));
        }
        let registry = prometheus::Registry::new();
        crate::collectors::register(&config, &registry).map_err(|e| format!("metrics: {e}"))?;
        Ok(Arc::new(State {
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

/// Runs the daemon until SIGTERM or SIGINT. `pidfile`, if given, is written
/// once every listener is bound, so whoever waits for it knows the daemon
/// is serving, and removed on a clean exit. With `user`, the daemon becomes
/// it once bound, before any thread starts (`privilege`).
pub fn run(
    config: Config,
    pidfile: Option<&Path>,
    user: Option<&crate::privilege::User>,
) -> Result<(), String> {
    one_malloc_arena();
    code_pages_on_demand();
    let state = State::new(config)?;
    let sockets = bind(&state)?;
    if let Some(user) = user {
        crate::privilege::drop_to(user)?;
    }
    actix_web::rt::System::new().block_on(async move {
        if let Some(p) = pidfile {
            write_pidfile(p)?;
        }
        let result = serve(state, sockets).await;
        if let Some(p) = pidfile {
            let _ = std::fs::remove_file(p);
        }
        result
    })
}

/// glibc gives each thread that allocates an arena of its own, whose pages
/// stay resident; this daemon's threads (accept, worker, bcrypt, gzip) do
/// little at once, and one arena keeps its memory small.
fn one_malloc_arena() {
    #[cfg(target_env = "gnu")]
    // SAFETY: a malloc tuning call before any thread is started.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// The kernel reads a mapped program ahead of where it faults, and maps
/// what it read: nearly the whole binary ends up resident though a scrape
/// runs a fraction of it. Random-access advice on the program's own
/// read-only mappings keeps resident only the pages that run (on the board,
/// with the mTLS service up and 20 scrapes: 4,540 KiB resident, 4,740
/// without it).
fn code_pages_on_demand() {
    use nix::sys::mman::{madvise, MmapAdvise};
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else { return };
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else { return };
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else { continue };
        if perms.starts_with("rw") || f.nth(3).map(Path::new) != Some(exe.as_path()) {
            continue;
        }
        let Some((a, b)) = range.split_once('-') else { continue };
        let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) else { continue };
        if let Some(start) = std::ptr::NonNull::new(a as *mut std::ffi::c_void) {
            // SAFETY: advice on a mapping this process has, of its length;
            // it changes paging, never the contents.
            if let Err(e) = unsafe { madvise(start, b - a, MmapAdvise::MADV_RANDOM) } {
                log::debug!("madvise {range}: {e}");
            }
        }
    }
}

/// Binds every listener, with a backlog long enough that a burst of
/// connections does not drop the one that matters.
pub fn bind(state: &State) -> Result<Vec<std::net::TcpListener>, String> {
    let mut out = Vec::new();
    for l in &state.listeners {
        let err = |e: std::io::Error| format!("{} {}: {}", l.role.config_key(), l.addr, io_reason(&e));
        let socket = std::net::TcpListener::bind(l.addr).map_err(err)?;
        let backlog = nix::sys::socket::Backlog::new(BACKLOG).map_err(|e| e.to_string())?;
        nix::sys::socket::listen(&socket, backlog).map_err(|e| err(e.into()))?;
        let _ = l.bound.set(socket.local_addr().map_err(err)?);
        out.push(socket);
    }
    Ok(out)
}

/// The signals the daemon answers, installed before it says it listens:
/// one arriving early must not find the default action (terminate).
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals, String> {
        use tokio::signal::unix::{signal, SignalKind};
        let install = |kind| signal(kind).map_err(|e| format!("cannot install signal handlers: {e}"));
        Ok(Signals {
            term: install(SignalKind::terminate())?,
            int: install(SignalKind::interrupt())?,
            hup: install(SignalKind::hangup())?,
        })
    }
}

/// Resolves on SIGTERM or SIGINT. actix's own handlers are not used: they
/// treat SIGINT as an abrupt stop, and SIGHUP is ours.
async fn shutdown_signal(mut term: tokio::signal::unix::Signal, mut int: tokio::signal::unix::Signal) {
    tokio::select! {
        _ = term.recv() => log::info!("SIGTERM: shutting down"),
        _ = int.recv() => log::info!("SIGINT: shutting down"),
    }
}

/// Serves the bound listeners until SIGTERM or SIGINT, then lets open
/// requests finish for up to [`SHUTDOWN_GRACE_SECS`]. Runs inside an actix
/// `System`.
pub async fn serve(state: Arc<State>, sockets: Vec<std::net::TcpListener>) -> Result<(), String> {
    let Signals { term, int, hup } = Signals::install()?;
    let mut builder = actix_server::Server::build()
        .workers(state.config.workers)
        // Our connection cap (per listener, evicting idle connections) is
        // the one that acts: actix's would stop accepting instead.
        .max_concurrent_connections(state.config.limits.max_connections * state.listeners.len() + 64)
        // The blocking pool compresses responses (bcrypt has threads of its
        // own): a scrape or two at a time is all a single core needs.
        .worker_max_blocking_threads(2)
        .shutdown_timeout(SHUTDOWN_GRACE_SECS)
        .shutdown_signal(shutdown_signal(term, int));
    let graceful = builder.graceful_shutdown_signal();
    for (l, socket) in state.listeners.iter().zip(sockets) {
        let addr = l.address();
        if let Some(d) = &l.device_tls {
            // The device's TLS as of start (logged if it is on).
            d.current(&state.auth.device().tls_mode().await);
        }
        let scheme = if l.tls_label() == "none" { "http" } else { "https" };
        let routes = match (l.role, l.serves_metrics) {
            (Role::General, true) => "/, /healthz, /settings, /metrics",
            (Role::General, false) => "/, /healthz, /settings",
            (Role::MetricsService, _) => "/, /healthz, /metrics",
        };
        let follows = if l.device_tls.is_some() { ", following the device's" } else { "" };
        log::info!(
            "listening on {scheme}://{addr} ({}, tls {}{follows}: {routes})",
            l.role.label(),
            l.tls_label()
        );
        if l.serves_metrics && l.tls_label() == "none" && state.auth.device_password_enabled() {
            let until = if l.device_tls.is_some() { " until the device's TLS is turned on" } else { "" };
            log::warn!(
                "{addr} is plain HTTP: a device password sent with basic auth crosses the network in clear{until}"
            );
        }
        builder = conn::listen(builder, socket, state.clone(), l.clone(), graceful.clone())
            .map_err(|e| format!("{} {addr}: {}", l.role.config_key(), io_reason(&e)))?;
    }
    let server = builder.run();
    let hup = actix_web::rt::spawn(reload_on_hangup(state, hup));
    let result = server.await.map_err(|e| e.to_string());
    hup.abort();
    log::info!("stopped");
    result
}

/// SIGHUP: re-read the device state and the token, forget remembered
/// credentials.
async fn reload_on_hangup(state: Arc<State>, mut hup: tokio::signal::unix::Signal) {
    while hup.recv().await.is_some() {
        log::info!("SIGHUP: re-reading device state and token, forgetting remembered credentials");
        state.auth.reset();
    }
}

/// Written whole (a temporary file renamed into place): a reader never
/// sees an empty pid file.
fn write_pidfile(path: &Path) -> Result<(), String> {
    let tmp = path.with_extension("pid.tmp");
    std::fs::write(&tmp, format!("{}\n", std::process::id()))
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("pid file {}: {}", path.display(), io_reason(&e)))
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
