//! Configuration: strict TOML (unknown keys are errors) turned into a
//! validated [`Config`]. Every problem is reported as one line naming the
//! file, the key and the reason. A key is declared twice: its field (with
//! its doc) in `Config`, and one line in `parse` that states its default
//! and its range (the raw TOML structs below only mirror the file's shape).
//! This module reads no file and imports nothing of the crate: loading and
//! checking what the keys name is `startup`.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Read when `--config` is not given, if it exists.
pub const DEFAULT_PATH: &str = "/etc/jetkvm-metrics/config.toml";

#[derive(Clone, Debug)]
pub struct Config {
    /// Where this configuration came from, for messages.
    pub source: String,
    pub listen_addr: SocketAddr,
    pub device_config: PathBuf,
    pub proc_root: PathBuf,
    pub sys_root: PathBuf,
    pub version_file: PathBuf,
    pub connection_ports: Vec<u16>,
    pub filesystems: Vec<PathBuf>,
    /// SHA-256 of the read-only metrics token (see `auth::token`).
    pub token_file: PathBuf,
    pub limits: Limits,
    pub auth: Auth,
    /// The separate metrics listener, when enabled.
    pub metrics_service: Option<MetricsService>,
    /// Where the device keeps its TLS certificates and keys.
    pub device_tls_dir: PathBuf,
    /// Serve HTTPS on `listen_addr` with the device's certificates while
    /// the device's `tls_mode` is set.
    pub follow_device_tls: bool,
    /// Names the device is known by beyond `jetkvm.local`, its host name
    /// (alone and `.local`) and its addresses (lowercase): in no-password
    /// mode, the `Host` names it answers to.
    pub host_names: Vec<String>,
    /// The device's USB gadget: `sys_root/kernel/config/usb_gadget/<name>`.
    pub usb_gadget: String,
    /// The display's backlight: `sys_root/class/backlight/<name>`.
    pub display_backlight: String,
    /// Names of the device app's binaries (as `comm` has them: 15 bytes):
    /// the first is the app's own (its supervisor, app and native
    /// processes in newer builds, told apart by parentage and command
    /// line), any other a separate native binary (`jetkvm_native` in older
    /// builds). Empty: the app is not looked for.
    pub app_processes: Vec<String>,
    pub video: Video,
    /// The device app's own `/metrics`, re-exposed in part.
    pub app_metrics: AppMetrics,
}

/// The device app's own exposition (HTTP on loopback, no authentication).
#[derive(Clone, Debug)]
pub struct AppMetrics {
    /// Where the app serves it; unset (an empty string): not asked.
    pub address: Option<SocketAddr>,
    /// Longest wait for its answer, connecting included (at most 1 s).
    pub timeout: Duration,
}

/// The HDMI receiver.
#[derive(Clone, Debug)]
pub struct Video {
    /// Its V4L2 node; unset: the node whose name has `driver`'s.
    pub device: Option<PathBuf>,
    pub driver: String,
    /// "1" while the receiver sleeps (it is not asked then).
    pub sleep_file: PathBuf,
    /// The receiver is asked at most this often.
    pub query_interval: Duration,
    /// The capture node the app streams from while someone watches.
    pub capture_device: PathBuf,
}

#[derive(Clone, Debug)]
pub struct MetricsService {
    pub listen_addr: SocketAddr,
    /// Require a client certificate verified against `ca_certs`.
    pub mtls: bool,
    pub ca_certs: Vec<PathBuf>,
    /// If not empty, a client certificate must carry one of these SANs.
    pub client_allowed_sans: Vec<String>,
    /// Empty: plain HTTP. Several: chosen by SNI, the first by default.
    pub keypairs: Vec<Keypair>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keypair {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Clone, Debug)]
pub struct Limits {
    /// Open connections at once; past it an idle one of the client holding
    /// the most is closed.
    pub max_connections: usize,
    /// Open connections of one client address at once (capped by
    /// `max_connections`); past it that client's own oldest idle one is
    /// closed.
    pub max_connections_per_client: usize,
    /// Time a client has to send a complete request head, also the idle
    /// time allowed between keep-alive requests.
    pub header_timeout: Duration,
    /// Time a write may make no progress before the connection is dropped.
    pub write_timeout: Duration,
    /// Largest request head accepted, request line and headers (at least 8192).
    pub max_header_bytes: usize,
    /// Most header fields accepted in one request.
    pub max_headers: usize,
}

#[derive(Clone, Debug)]
pub struct Auth {
    /// bcrypt verifications running at once, off the request workers.
    pub bcrypt_concurrency: usize,
    /// bcrypt verifications allowed to wait; past it a request is answered
    /// 503 at once instead of queueing.
    pub bcrypt_queue: usize,
    /// Verified and refused passwords remembered (as keyed MACs).
    pub cache_entries: usize,
    /// Accept the device password (basic auth) on metrics. `false` leaves
    /// the token, the session cookie and client certificates.
    pub device_password: bool,
    /// Failed authentications a client may make at once...
    pub failure_burst: u32,
    /// ...and then one more per this interval; past it, 429.
    pub failure_interval: Duration,
    /// bcrypt checks for clients never allowed before share one budget:
    /// `failure_burst` at once, then one more per this interval.
    pub unverified_interval: Duration,
    /// Clients whose failures are tracked at once (memory bound).
    pub tracked_clients: usize,
}

/// The defaults are what an empty file means: each key's default is
/// stated once, where it is read (see `Config::parse`).
impl Default for Config {
    fn default() -> Self {
        Config::parse("", "built-in defaults").expect("the defaults are valid")
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Raw {
    listen_addr: Option<String>,
    device_config: Option<PathBuf>,
    proc_root: Option<PathBuf>,
    sys_root: Option<PathBuf>,
    version_file: Option<PathBuf>,
    connection_ports: Option<Vec<i64>>,
    filesystems: Option<Vec<PathBuf>>,
    workers: Option<i64>,
    token_file: Option<PathBuf>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    auth: RawAuth,
    metrics_service: Option<RawMetricsService>,
    device_tls_dir: Option<PathBuf>,
    follow_device_tls: Option<bool>,
    host_names: Option<Vec<String>>,
    usb_gadget: Option<String>,
    display_backlight: Option<String>,
    app_processes: Option<Vec<String>>,
    video_device: Option<PathBuf>,
    video_driver: Option<String>,
    video_sleep_file: Option<PathBuf>,
    video_query_interval: Option<String>,
    video_capture_device: Option<PathBuf>,
    app_metrics_address: Option<String>,
    app_metrics_timeout: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMetricsService {
    enabled: Option<bool>,
    listen_addr: Option<String>,
    mtls: Option<bool>,
    #[serde(default)]
    ca_certs: Vec<PathBuf>,
    #[serde(default)]
    client_allowed_sans: Vec<String>,
    #[serde(default)]
    keypairs: Vec<RawKeypair>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeypair {
    cert_file: PathBuf,
    key_file: PathBuf,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_connections: Option<i64>,
    max_connections_per_client: Option<i64>,
    header_timeout: Option<String>,
    write_timeout: Option<String>,
    max_header_bytes: Option<i64>,
    max_headers: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    bcrypt_concurrency: Option<i64>,
    bcrypt_queue: Option<i64>,
    cache_entries: Option<i64>,
    device_password: Option<bool>,
    failure_burst: Option<i64>,
    failure_interval: Option<String>,
    unverified_interval: Option<String>,
    tracked_clients: Option<i64>,
}

/// Collects problems as "config FILE: key "K": REASON" lines.
struct Problems<'a> {
    file: &'a str,
    lines: Vec<String>,
}

impl Problems<'_> {
    fn key(&mut self, key: &str, reason: impl std::fmt::Display) {
        self.lines.push(format!("config {}: key \"{key}\": {reason}", self.file));
    }

    fn int(&mut self, key: &str, v: Option<i64>, range: RangeInclusive<i64>, default: i64) -> usize {
        match v {
            Some(n) if range.contains(&n) => n as usize,
            Some(n) => {
                self.key(key, format_args!("{n} is out of range {}..={}", range.start(), range.end()));
                default as usize
            }
            None => default as usize,
        }
    }

    fn duration(&mut self, key: &str, v: Option<String>, default: Duration) -> Duration {
        self.duration_in(
            key,
            v,
            default,
            Duration::from_millis(100)..=Duration::from_secs(3600),
            "100ms and 1h",
        )
    }

    /// `said`: the range as the configuration writes it, for the message.
    fn duration_in(
        &mut self,
        key: &str,
        v: Option<String>,
        default: Duration,
        range: RangeInclusive<Duration>,
        said: &str,
    ) -> Duration {
        match v.as_deref().map(parse_duration) {
            None => default,
            Some(Ok(d)) if range.contains(&d) => d,
            Some(Ok(_)) => {
                self.key(key, format_args!("must be between {said}"));
                default
            }
            Some(Err(e)) => {
                self.key(key, e);
                default
            }
        }
    }

    fn path(&mut self, key: &str, v: Option<PathBuf>, default: &str) -> PathBuf {
        match v {
            None => default.into(),
            Some(p) if p.is_absolute() => p,
            Some(p) => {
                self.key(key, format_args!("{:?} is not an absolute path", p.display().to_string()));
                default.into()
            }
        }
    }

    /// A name that is one path component.
    fn file_name(&mut self, key: &str, v: Option<String>, default: &str) -> String {
        match v {
            None => default.into(),
            Some(n) if !n.is_empty() && n.len() <= 255 && !n.contains('/') && n != "." && n != ".." => n,
            Some(n) => {
                self.key(key, format_args!("{n:?} is not a file name"));
                default.into()
            }
        }
    }

    fn addr(&mut self, key: &str, v: Option<String>, default: &str) -> SocketAddr {
        let default = default.parse().expect("valid literal");
        match v {
            None => default,
            Some(s) => s.parse().unwrap_or_else(|_| {
                self.key(key, format_args!("{s:?} is not an IP:port socket address"));
                default
            }),
        }
    }

    fn finish<T>(self, value: T) -> Result<T, Vec<String>> {
        if self.lines.is_empty() {
            Ok(value)
        } else {
            Err(self.lines)
        }
    }
}

impl Config {
    /// Parses and validates TOML text; `file` names it in messages. Each
    /// key's default and range are stated here, where it is read.
    pub fn parse(text: &str, file: &str) -> Result<Config, Vec<String>> {
        let raw: Raw = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start));
            let msg = e.message().replace('`', "\"");
            vec![match line {
                Some(l) => format!("config {file}: line {l}: {msg}"),
                None => format!("config {file}: {msg}"),
            }]
        })?;
        let mut p = Problems { file, lines: Vec::new() };
        let listen_addr = p.addr("listen_addr", raw.listen_addr, "0.0.0.0:3080");
        let metrics_service = match raw.metrics_service {
            Some(m) if m.enabled == Some(true) => Some(metrics_service(&mut p, m, listen_addr)),
            Some(m) => {
                not_enabled(&mut p, &m);
                None
            }
            None => None,
        };
        // Accepted as 1 alone, for files of earlier releases: one worker
        // is what the device's one core and the server's state assume.
        if raw.workers.is_some_and(|n| n != 1) {
            p.key("workers", "the daemon runs one worker (the device has one core); only 1 is accepted");
        }
        let config = Config {
            source: file.to_owned(),
            listen_addr,
            device_config: p.path("device_config", raw.device_config, "/userdata/kvm_config.json"),
            proc_root: p.path("proc_root", raw.proc_root, "/proc"),
            sys_root: p.path("sys_root", raw.sys_root, "/sys"),
            version_file: p.path("version_file", raw.version_file, "/version"),
            connection_ports: connection_ports(&mut p, raw.connection_ports),
            filesystems: filesystems(&mut p, raw.filesystems),
            token_file: p.path("token_file", raw.token_file, "/userdata/jetkvm/metrics/token/token.sha256"),
            limits: Limits::parse(&mut p, raw.limits),
            auth: Auth::parse(&mut p, raw.auth),
            metrics_service,
            device_tls_dir: p.path("device_tls_dir", raw.device_tls_dir, "/userdata/jetkvm/tls"),
            follow_device_tls: raw.follow_device_tls.unwrap_or(true),
            host_names: host_names(&mut p, raw.host_names),
            usb_gadget: p.file_name("usb_gadget", raw.usb_gadget, "jetkvm"),
            display_backlight: p.file_name("display_backlight", raw.display_backlight, "backlight"),
            app_processes: app_processes(&mut p, raw.app_processes),
            video: Video {
                device: raw.video_device.map(|d| p.path("video_device", Some(d), "/")),
                driver: p.file_name("video_driver", raw.video_driver, "tc35874x"),
                sleep_file: p.path(
                    "video_sleep_file",
                    raw.video_sleep_file,
                    "/sys/bus/i2c/devices/4-000f/sleep_mode",
                ),
                query_interval: p.duration_in(
                    "video_query_interval",
                    raw.video_query_interval,
                    Duration::from_secs(10),
                    Duration::from_secs(5)..=Duration::from_secs(60),
                    "5s and 1m",
                ),
                capture_device: p.path("video_capture_device", raw.video_capture_device, "/dev/video0"),
            },
            app_metrics: AppMetrics {
                address: app_metrics_address(&mut p, raw.app_metrics_address),
                timeout: p.duration_in(
                    "app_metrics_timeout",
                    raw.app_metrics_timeout,
                    Duration::from_secs(1),
                    Duration::from_millis(50)..=Duration::from_secs(1),
                    "50ms and 1s",
                ),
            },
        };
        p.finish(config)
    }
}

impl Limits {
    fn parse(p: &mut Problems, raw: RawLimits) -> Limits {
        Limits {
            max_connections: p.int("limits.max_connections", raw.max_connections, 1..=100_000, 64),
            max_connections_per_client: p.int(
                "limits.max_connections_per_client",
                raw.max_connections_per_client,
                1..=100_000,
                8,
            ),
            header_timeout: p.duration("limits.header_timeout", raw.header_timeout, Duration::from_secs(10)),
            write_timeout: p.duration("limits.write_timeout", raw.write_timeout, Duration::from_secs(10)),
            max_header_bytes: p.int("limits.max_header_bytes", raw.max_header_bytes, 8192..=1 << 20, 8192),
            max_headers: p.int("limits.max_headers", raw.max_headers, 8..=1000, 64),
        }
    }
}

impl Auth {
    fn parse(p: &mut Problems, raw: RawAuth) -> Auth {
        Auth {
            bcrypt_concurrency: p.int("auth.bcrypt_concurrency", raw.bcrypt_concurrency, 1..=64, 1),
            bcrypt_queue: p.int("auth.bcrypt_queue", raw.bcrypt_queue, 0..=1024, 4),
            cache_entries: p.int("auth.cache_entries", raw.cache_entries, 1..=1024, 16),
            device_password: raw.device_password.unwrap_or(true),
            failure_burst: p.int("auth.failure_burst", raw.failure_burst, 1..=10_000, 10) as u32,
            failure_interval: p.duration(
                "auth.failure_interval",
                raw.failure_interval,
                Duration::from_secs(6),
            ),
            unverified_interval: p.duration(
                "auth.unverified_interval",
                raw.unverified_interval,
                Duration::from_secs(1),
            ),
            tracked_clients: p.int("auth.tracked_clients", raw.tracked_clients, 16..=1_000_000, 4096),
        }
    }
}

/// TCP ports, each once.
fn connection_ports(p: &mut Problems, v: Option<Vec<i64>>) -> Vec<u16> {
    // What the device serves: its web UI, and HTTPS when its TLS is on.
    let Some(v) = v else { return vec![80, 443] };
    let mut ports = Vec::new();
    for n in v {
        match u16::try_from(n) {
            Ok(port) if port > 0 && !ports.contains(&port) => ports.push(port),
            Ok(port) if port > 0 => p.key("connection_ports", format_args!("port {port} is listed twice")),
            _ => p.key("connection_ports", format_args!("{n} is not a TCP port")),
        }
    }
    ports
}

/// Absolute paths, each once.
fn filesystems(p: &mut Problems, v: Option<Vec<PathBuf>>) -> Vec<PathBuf> {
    let Some(v) = v else { return vec!["/".into(), "/userdata".into()] };
    let mut out: Vec<PathBuf> = Vec::new();
    for f in v {
        if !f.is_absolute() {
            p.key("filesystems", format_args!("{:?} is not an absolute path", f.display().to_string()));
        } else if out.contains(&f) {
            p.key("filesystems", format_args!("{:?} is listed twice", f.display().to_string()));
        } else {
            out.push(f);
        }
    }
    out
}

/// Keys that only mean something in an enabled metrics service: set without
/// `enabled = true`, metrics would stay on plain HTTP while the operator
/// believes otherwise.
fn not_enabled(p: &mut Problems, m: &RawMetricsService) {
    for (key, set) in [
        ("metrics_service.mtls", m.mtls == Some(true)),
        ("metrics_service.keypairs", !m.keypairs.is_empty()),
        ("metrics_service.ca_certs", !m.ca_certs.is_empty()),
        ("metrics_service.client_allowed_sans", !m.client_allowed_sans.is_empty()),
    ] {
        if set {
            p.key(key, "set, but metrics_service.enabled is not true: metrics would stay on listen_addr");
        }
    }
}

fn metrics_service(p: &mut Problems, m: RawMetricsService, general: SocketAddr) -> MetricsService {
    let listen_addr = p.addr("metrics_service.listen_addr", m.listen_addr, "0.0.0.0:3081");
    if listen_addr == general && general.port() != 0 {
        p.key("metrics_service.listen_addr", format_args!("{listen_addr} is also listen_addr"));
    }
    let mtls = m.mtls.unwrap_or(false);
    if mtls && m.keypairs.is_empty() {
        p.key("metrics_service.mtls", "mtls = true needs at least one [[metrics_service.keypairs]]");
    }
    if mtls && m.ca_certs.is_empty() {
        p.key(
            "metrics_service.ca_certs",
            "mtls = true needs the CA certificates that sign client certificates",
        );
    }
    if !mtls && !m.ca_certs.is_empty() {
        p.key("metrics_service.ca_certs", "set, but mtls is false: client certificates would not be checked");
    }
    if !mtls && !m.client_allowed_sans.is_empty() {
        p.key(
            "metrics_service.client_allowed_sans",
            "set, but mtls is false: client certificates would not be checked",
        );
    }
    let mut check_path = |key: &str, f: PathBuf| -> PathBuf {
        if !f.is_absolute() {
            p.key(key, format_args!("{:?} is not an absolute path", f.display().to_string()));
        }
        f
    };
    let ca_certs = m.ca_certs.into_iter().map(|f| check_path("metrics_service.ca_certs", f)).collect();
    let keypairs = m
        .keypairs
        .into_iter()
        .map(|k| Keypair {
            cert_file: check_path("metrics_service.keypairs.cert_file", k.cert_file),
            key_file: check_path("metrics_service.keypairs.key_file", k.key_file),
        })
        .collect();
    for san in &m.client_allowed_sans {
        if san.trim().is_empty() {
            p.key("metrics_service.client_allowed_sans", "an empty name would match nothing");
        }
    }
    MetricsService { listen_addr, mtls, ca_certs, client_allowed_sans: m.client_allowed_sans, keypairs }
}

/// The most `app_processes`: each is a few reads per scrape.
const APP_PROCESSES_MAX: usize = 8;

/// Process names, each once: the app's binary, and the older builds'
/// separate native binary, by default.
fn app_processes(p: &mut Problems, v: Option<Vec<String>>) -> Vec<String> {
    let Some(v) = v else { return vec!["jetkvm_app".into(), "jetkvm_native".into()] };
    let mut out: Vec<String> = Vec::new();
    for name in v {
        if name.is_empty() || name.len() > 15 || name.contains('/') || name.chars().any(char::is_control) {
            p.key(
                "app_processes",
                format_args!("{name:?} is not a process name (1 to 15 bytes, as the kernel keeps it)"),
            );
        } else if out.contains(&name) {
            p.key("app_processes", format_args!("{name:?} is listed twice"));
        } else {
            out.push(name);
        }
    }
    if out.len() > APP_PROCESSES_MAX {
        p.key("app_processes", format_args!("{} names: at most {APP_PROCESSES_MAX}", out.len()));
    }
    out
}

/// The app's metrics address: on loopback only, since what it serves has
/// no authentication of its own and is re-exposed behind ours.
fn app_metrics_address(p: &mut Problems, v: Option<String>) -> Option<SocketAddr> {
    match v.as_deref() {
        Some("") => None,
        _ => {
            let addr = p.addr("app_metrics_address", v, "127.0.0.1:80");
            if !addr.ip().is_loopback() {
                p.key("app_metrics_address", format_args!("{addr} is not a loopback address"));
            }
            Some(addr)
        }
    }
}

/// The most `host_names`: a short list, whose every name costs a TLS
/// context and series when the device issues certificates for it.
pub const HOST_NAMES_MAX: usize = 16;

/// DNS names, lowercase, each once; addresses need no listing.
fn host_names(p: &mut Problems, v: Option<Vec<String>>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for name in v.unwrap_or_default() {
        let lower = name.to_ascii_lowercase();
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        if lower.len() > 253 || !lower.split('.').all(label_ok) || lower.parse::<std::net::IpAddr>().is_ok() {
            p.key("host_names", format_args!("{name:?} is not a DNS name"));
        } else if out.contains(&lower) {
            p.key("host_names", format_args!("{name:?} is listed twice"));
        } else {
            out.push(lower);
        }
    }
    if out.len() > HOST_NAMES_MAX {
        p.key("host_names", format_args!("{} names: at most {HOST_NAMES_MAX}", out.len()));
    }
    out
}

/// "10s", "500ms", "2m", "1h".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a duration such as \"10s\""))?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => None,
    };
    ms.map(Duration::from_millis)
        .ok_or_else(|| format!("{s:?} is not a duration such as \"10s\" (units: ms, s, m, h)"))
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|b| **b == b'\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_from_empty_file() {
        let c = Config::parse("", "c.toml").unwrap();
        assert_eq!(c.listen_addr, "0.0.0.0:3080".parse().unwrap());
        assert_eq!(c.connection_ports, vec![80, 443]);
        assert!(Config::parse("workers = 1\n", "c.toml").is_ok());
        let e = Config::parse("workers = 2\n", "c.toml").unwrap_err();
        assert_eq!(e, ["config c.toml: key \"workers\": the daemon runs one worker (the device has one core); only 1 is accepted"]);
    }

    #[test]
    fn unknown_key_names_file_and_line() {
        let e = Config::parse("workers = 1\nlisten = \"x\"\n", "/etc/c.toml").unwrap_err();
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("config /etc/c.toml: line 2: unknown field \"listen\""), "{}", e[0]);
    }

    #[test]
    fn every_bad_value_is_reported() {
        let text = "listen_addr = \"nope\"\nconnection_ports = [0, 70000, 80, 80]\nproc_root = \"rel\"\n\
                    [limits]\nheader_timeout = \"5 parsecs\"\nmax_header_bytes = 10\n";
        let e = Config::parse(text, "c.toml").unwrap_err();
        let joined = e.join("\n");
        for needle in [
            "key \"listen_addr\"",
            "0 is not a TCP port",
            "70000 is not a TCP port",
            "port 80 is listed twice",
            "key \"proc_root\"",
            "key \"limits.header_timeout\"",
            "key \"limits.max_header_bytes\"",
        ] {
            assert!(joined.contains(needle), "{needle} missing from:\n{joined}");
        }
        assert_eq!(e.len(), 7);
    }

    #[test]
    fn metrics_service_keys_without_enabled_are_errors() {
        for (text, key) in [
            ("[metrics_service]\nmtls = true\n", "metrics_service.mtls"),
            ("[metrics_service]\nenabled = false\nca_certs = [\"/ca.pem\"]\n", "metrics_service.ca_certs"),
            (
                "[[metrics_service.keypairs]]\ncert_file = \"/c\"\nkey_file = \"/k\"\n",
                "metrics_service.keypairs",
            ),
        ] {
            let e = Config::parse(text, "c.toml").unwrap_err();
            assert_eq!(e.len(), 1, "{e:?}");
            assert!(e[0].starts_with(&format!("config c.toml: key \"{key}\": set, but")), "{}", e[0]);
        }
        // Disabled and empty is fine.
        assert!(Config::parse("[metrics_service]\nenabled = false\n", "c.toml")
            .unwrap()
            .metrics_service
            .is_none());
    }

    #[test]
    fn host_names_are_dns_names_and_few() {
        let c = Config::parse("host_names = [\"KVM.example.org\", \"rack-3\"]\n", "c.toml").unwrap();
        assert_eq!(c.host_names, ["kvm.example.org", "rack-3"]);
        for (bad, why) in [
            ("[\"10.0.0.5\"]", "is not a DNS name"),
            ("[\"a..b\"]", "is not a DNS name"),
            ("[\"-a.b\"]", "is not a DNS name"),
            ("[\"a b\"]", "is not a DNS name"),
            ("[\"kvm\", \"KVM\"]", "is listed twice"),
        ] {
            let e = Config::parse(&format!("host_names = {bad}\n"), "c.toml").unwrap_err();
            assert!(e[0].starts_with("config c.toml: key \"host_names\": ") && e[0].ends_with(why), "{e:?}");
        }
        let many: Vec<String> = (0..17).map(|i| format!("\"n{i}\"")).collect();
        let e = Config::parse(&format!("host_names = [{}]\n", many.join(", ")), "c.toml").unwrap_err();
        assert_eq!(e, ["config c.toml: key \"host_names\": 17 names: at most 16"]);
    }

    #[test]
    fn kvm_state_keys() {
        let c = Config::parse("", "c.toml").unwrap();
        assert_eq!((c.usb_gadget.as_str(), c.app_processes.len()), ("jetkvm", 2));
        assert_eq!(c.display_backlight, "backlight");
        assert_eq!((c.video.driver.as_str(), c.video.device.is_none()), ("tc35874x", true));
        assert_eq!(c.video.query_interval, Duration::from_secs(10));
        assert_eq!(c.video.capture_device, PathBuf::from("/dev/video0"));
        assert_eq!(c.app_metrics.address, Some("127.0.0.1:80".parse().unwrap()));
        assert_eq!(c.app_metrics.timeout, Duration::from_secs(1));
        for (text, why) in [
            ("video_query_interval = \"2s\"\n", "key \"video_query_interval\": must be between 5s and 1m"),
            ("video_query_interval = \"61s\"\n", "key \"video_query_interval\": must be between 5s and 1m"),
            ("video_device = \"video0\"\n", "key \"video_device\": \"video0\" is not an absolute path"),
            ("usb_gadget = \"../g\"\n", "key \"usb_gadget\": \"../g\" is not a file name"),
            ("display_backlight = \"a/b\"\n", "key \"display_backlight\": \"a/b\" is not a file name"),
            (
                "app_processes = [\"a-name-of-sixteen\"]\n",
                "key \"app_processes\": \"a-name-of-sixteen\" is not a process name",
            ),
            ("app_processes = [\"a\", \"a\"]\n", "key \"app_processes\": \"a\" is listed twice"),
            (
                "app_metrics_address = \"192.168.1.2:80\"\n",
                "key \"app_metrics_address\": 192.168.1.2:80 is not a loopback address",
            ),
            ("app_metrics_timeout = \"2s\"\n", "key \"app_metrics_timeout\": must be between 50ms and 1s"),
            (
                "video_capture_device = \"video0\"\n",
                "key \"video_capture_device\": \"video0\" is not an absolute path",
            ),
        ] {
            let e = Config::parse(text, "c.toml").unwrap_err();
            assert!(e.len() == 1 && e[0].starts_with(&format!("config c.toml: {why}")), "{text}: {e:?}");
        }
        let c = Config::parse("video_device = \"/dev/video0\"\napp_processes = []\n", "c.toml").unwrap();
        assert_eq!((c.video.device.unwrap(), c.app_processes.len()), ("/dev/video0".into(), 0));
        let c = Config::parse("app_metrics_address = \"\"\n", "c.toml").unwrap();
        assert!(c.app_metrics.address.is_none());
        let c = Config::parse("app_metrics_address = \"[::1]:8080\"\n", "c.toml").unwrap();
        assert_eq!(c.app_metrics.address, Some("[::1]:8080".parse().unwrap()));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        for bad in ["", "s", "10", "10 s", "-1s", "1d", "99999999999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
