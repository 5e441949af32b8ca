//! The daemon's listeners on actix: the general listener and, when enabled,
//! the metrics service (plain, TLS or mTLS), served by one actix-server
//! worker. This module binds and runs; its rooms:
//! - `state`: what every request shares (configuration, decision, collectors,
//!   listeners); `listener`: one listener, its role and TLS;
//! - `conn`, `tracker`, `slot`, `timed`: a connection before and around
//!   HTTP (the caps, deadlines, the TLS handshake) and its facts;
//! - `routes`: the route table; `middleware`: what runs around every request
//!   and around a scrape; `credentials`, `refusal`: credentials out of the
//!   request, refusals into responses;
//! - `exporter`: the exporter's own state as collectors;
//! - `settings` (handlers) and `settings_page` (the page and the jobs, pure);
//! - `host`, `loglimit`: the names the device answers to, bounded logging.
//!
//! Auth decisions are made in `auth`, TLS contexts in `tls`, metrics in
//! `collectors`.

mod conn;
mod credentials;
mod exporter;
mod formats;
mod host;
mod listener;
mod loglimit;
mod middleware;
mod refusal;
mod routes;
mod settings;
mod settings_page;
mod slot;
mod state;
mod timed;
mod tracker;

use std::path::Path;
use std::sync::Arc;

use crate::config::Config;
use crate::wording::io_reason;
use listener::Role;
use state::State;

/// How long in-flight requests get to finish after SIGTERM (actix counts
/// whole seconds).
const SHUTDOWN_GRACE_SECS: u64 = 5;
/// Pending connections the kernel queues for each listener.
const BACKLOG: i32 = 1024;

/// Files the daemon writes once every listener is bound, so whoever waits
/// for one knows the daemon is serving; removed on a clean exit.
#[derive(Default)]
pub struct Announce<'a> {
    /// The daemon's pid.
    pub pidfile: Option<&'a Path>,
    /// Each listener's bound address, a `ROLE ADDRESS` line each (`general`,
    /// `metrics_service`): where a port 0 ended up.
    pub ports_file: Option<&'a Path>,
}

/// Runs the daemon until SIGTERM or SIGINT. With `user`, the daemon becomes
/// it once bound, before any thread starts (`privilege`).
pub fn run(config: Config, announce: &Announce, user: Option<&crate::privilege::User>) -> Result<(), String> {
    // The open-files helper is forked first, with the least inherited.
    let holders = match user {
        Some(u) if crate::privilege::is_root() && !config.app_processes.is_empty() => {
            Some(crate::capture_holders::spawn(
                *u,
                config.app_processes.clone(),
                config.video.capture_device.clone(),
            )?)
        }
        _ => None,
    };
    let state = State::new(config, holders)?;
    let sockets = bind(&state)?;
    let ports = || state.listeners.iter().map(|l| format!("{} {}\n", l.role.label(), l.address())).collect();
    let files = [
        ("pid file", announce.pidfile, format!("{}\n", std::process::id())),
        ("ports file", announce.ports_file, announce.ports_file.map(|_| ports()).unwrap_or_default()),
    ];
    let remove = || files.iter().filter_map(|(_, p, _)| *p).for_each(|p| drop(std::fs::remove_file(p)));
    // Written while still root, where the init script keeps them: the
    // daemon's user can neither change them nor make root wait on them.
    // Every listener is bound: whoever waits for them knows it serves.
    for (what, path, text) in &files {
        if let Some(p) = path {
            write_whole(what, p, text).inspect_err(|_| remove())?;
        }
    }
    if let Some(user) = user {
        crate::privilege::drop_to(user, &[crate::privilege::Keep::DacReadSearch])
            .inspect_err(|_| remove())?;
    }
    actix_web::rt::System::new().block_on(async move {
        let result = serve(state, sockets).await;
        // As the daemon's user, only where it may: the init script removes
        // root's.
        remove();
        result
    })
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
        // One worker: the device has one core, and the app's metrics'
        // answer slot and the connection caps are kept by that one thread.
        .workers(1)
        // Our connection cap (per listener, evicting idle connections) is
        // the one that acts: actix's would stop accepting instead.
        .max_concurrent_connections(state.config.limits.max_connections * state.listeners.len() + 64)
        // The blocking pool writes and reads the token file for the
        // settings page (bcrypt has threads of its own): rare and short.
        .worker_max_blocking_threads(2)
        .shutdown_timeout(SHUTDOWN_GRACE_SECS)
        .shutdown_signal(shutdown_signal(term, int));
    let graceful = builder.graceful_shutdown_signal();
    for (l, socket) in state.listeners.iter().zip(sockets) {
        let addr = l.address();
        if let Some(d) = &l.device_tls {
            // The device's TLS as of start (logged if it is on).
            d.current().await;
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
    crate::tuning::after_start();
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
/// sees a partial file.
fn write_whole(what: &str, path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    // A new file, never through a link someone left at its name.
    let _ = std::fs::remove_file(&tmp);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("{what} {}: {}", path.display(), io_reason(&e)))
}
