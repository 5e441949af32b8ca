//! jetkvm-metrics: an authenticated Prometheus exporter for the JetKVM.
//!
//! Modules, one concern each (every one of them listed here):
//! - `cli`: the command line (`serve`, `check-config`, `token`, `probe`)
//! - `config`: strict TOML into a validated `Config` (a leaf: imports nothing
//!   of the crate)
//! - `startup`: loading the configuration file, and checking what it names
//! - `device`: the device's auth state (`kvm_config.json`), fail closed
//! - `auth`: one module per credential and the one function that decides
//! - `collectors`: device state read on scrape, one file per collector
//! - `app_metrics`: the device app's own `/metrics`, fetched on scrape and
//!   merged, bounded, into ours
//! - `capture_holders`: whether the app holds the capture node open, asked
//!   of a helper that keeps the one privilege it needs
//! - `metrics`: metric families in the `prometheus` crate's model, and their text
//! - `server`: listeners, limits, routes
//! - `probe`: asks a running daemon, from the device, whether it serves
//! - `telemetry`: the daemon's own counters
//! - `crypto`: OpenSSL primitives (random, HMAC, constant-time compare, secrets)
//! - `allocator`: the global allocator, which wipes what it frees
//! - `tls`: OpenSSL contexts for both listeners, reloaded as files change
//! - `privilege`: dropping to the daemon's own user once bound
//! - `sandbox`: the open-files helper's network namespace and seccomp filter
//! - `tuning`: allocator and paging advice at start
//! - `file_stamp`: cheap "did this file change" stamps
//! - `wording`: I/O errors and dates as people read them
//! - `files`: reading a file another user may have put in place

pub mod allocator;
pub mod app_metrics;
pub mod auth;
pub mod capture_holders;
pub mod cli;
pub mod collectors;
pub mod config;
pub mod crypto;
pub mod device;
pub mod file_stamp;
pub mod files;
pub mod metrics;
pub mod privilege;
pub mod probe;
pub mod sandbox;
pub mod server;
pub mod startup;
pub mod telemetry;
pub mod tls;
pub mod tuning;
pub mod wording;

/// The target triple this binary was built for.
pub const TARGET: &str = env!("JETKVM_METRICS_TARGET");
