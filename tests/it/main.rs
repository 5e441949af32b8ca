//! Integration tests: each starts the real `jetkvm-metrics` binary on a
//! loopback port and speaks HTTP to it.

mod util;

/// The device app's own metrics re-exposed: merged, bounded, and an app that
/// is down, silent, hostile or asking for credentials.
mod app_metrics;
/// The device app's processes by role in both generations, and capture.
mod app_processes;
/// Every way `/metrics` is allowed or refused, from the device's auth state.
mod auth;
/// Headless Chromium with the device's session cookie.
mod browser;
/// The command line: help, version, `check-config`, startup errors.
mod cli;
/// Collectors on fixture `/proc` and `/sys` trees, the golden exposition, promtool.
mod collectors;
/// The device config changing, torn and vanishing under a running daemon.
mod device_state;
/// The general listener following the device's TLS while it changes.
mod device_tls;
/// What the README tells a user, checked against the daemon.
mod docs;
/// Files vanishing and torn under load, SIGHUP storms.
mod faults;
/// Hostile input on every listener: malformed credentials, framing, TLS garbage.
mod hostile;
/// Routes, methods, encodings, size limits, timeouts, the connection cap, signals.
mod http;
/// A thousand scrapes over keep-alive; ten thousand idle connections.
mod load;
/// `serve --user`: the daemon's user, capabilities and files once it drops root.
mod privilege;
/// `probe`: the daemon in each configuration, asked as the system update asks.
mod probe;
/// The per-client failure limiter and a wrong-password flood.
mod ratelimit;
/// The settings page: who sees it, the token from the browser's side, CSRF.
mod settings;
/// The metrics service: HTTPS, mTLS, SNI, rotation, invalid configurations.
mod tls;
/// The read-only metrics token: new, rotate, revoke, device-independent.
mod token;
