//! `probe`: whether the daemon that a configuration describes is serving,
//! asked from the device itself. The system update confirms a new slot
//! with it, so it reads the configuration with the daemon's own parser,
//! connects where the daemon listens (loopback for a wildcard), speaks TLS
//! where the daemon does (the device's TLS on the general listener, the
//! metrics service's keypairs), checks that the certificate served is the
//! configured one, and sends no credential: `/healthz` answers a client on
//! the device with the system version, which must be the one this system
//! carries. It owns no state and no policy of the daemon's; it only asks.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use openssl::ssl::{HandshakeError, SslConnector, SslMethod, SslVerifyMode};
use openssl::x509::X509;

use crate::config::Config;
use crate::device::{DeviceConfig, TlsMode};
use crate::tls::device::{DeviceTls, Serving};

/// Time for each connect, write and read.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// The most of an answer read: `/healthz` is a line.
const MAX_ANSWER: u64 = 4096;
/// Pauses before re-reading a device config that did not parse (the
/// device's app rewrites it in place), as the daemon does.
const RETRY_DELAYS: [Duration; 3] =
    [Duration::from_millis(5), Duration::from_millis(20), Duration::from_millis(60)];

/// How to speak to one listener.
enum Speak {
    Plain,
    /// TLS, expecting `cert` (DER) as the served certificate. With `mtls`
    /// the listener wants a client certificate, which a probe never has:
    /// the handshake shows the server's certificate and no request is made.
    Tls {
        sni: Option<String>,
        cert: Vec<u8>,
        mtls: bool,
    },
}

impl Speak {
    fn label(&self) -> &'static str {
        match self {
            Speak::Plain => "http",
            Speak::Tls { mtls: true, .. } => "mtls",
            Speak::Tls { .. } => "https",
        }
    }
}

/// Whether the device's app runs whole: every role its generation has (the
/// app alone while that generation is not known). A system update keeps a
/// slot only with the app running and the daemon answering: the daemon's
/// answer alone keeps no slot.
pub fn app_runs(config: &Config) -> Result<String, String> {
    if config.app_processes.is_empty() {
        return Err("key \"app_processes\" is empty: the app is not looked for".into());
    }
    let (generation, roles) = crate::collectors::roles_now(config.app_processes.clone())?;
    let down: Vec<&str> = roles.iter().filter(|(_, up)| !up).map(|(r, _)| r.label()).collect();
    let all: Vec<&str> = roles.iter().map(|(r, _)| r.label()).collect();
    let generation = generation.map_or("generation not known", |g| g.label());
    match down.is_empty() {
        true => Ok(format!("the app runs: {} ({generation})", all.join(", "))),
        false => Err(format!("the app does not run whole: {} down ({generation})", down.join(", "))),
    }
}

/// Probes every listener `config` describes; on success, one line saying
/// what answered.
pub fn run(config: &Config) -> Result<String, String> {
    let version = crate::collectors::system_version(&config.version_file)
        .map_err(|e| format!("key \"version_file\": {e}"))?;
    let general = target("listen_addr", config.listen_addr)?;
    let (speak, how) = general_speaks(config)?;
    ask(general, &speak, &version)
        .map_err(|e| format!("listen_addr {general} ({}{how}): {e}", speak.label()))?;
    let mut said = format!("listen_addr {general} ({}{how}) answered with version {version}", speak.label());
    if let Some(ms) = &config.metrics_service {
        let addr = target("metrics_service.listen_addr", ms.listen_addr)?;
        let speak = match ms.keypairs.first() {
            None => Speak::Plain,
            Some(k) => Speak::Tls { sni: None, cert: leaf(&k.cert_file)?, mtls: ms.mtls },
        };
        ask(addr, &speak, &version)
            .map_err(|e| format!("metrics_service.listen_addr {addr} ({}): {e}", speak.label()))?;
        said.push_str(&match speak {
            Speak::Tls { mtls: true, .. } => {
                format!("; metrics_service {addr} (mtls) served its configured certificate")
            }
            _ => format!("; metrics_service {addr} ({}) answered", speak.label()),
        });
    }
    Ok(said)
}

/// Where to connect for a listener: its address, loopback for a wildcard.
fn target(key: &str, addr: SocketAddr) -> Result<SocketAddr, String> {
    if addr.port() == 0 {
        return Err(format!("key \"{key}\": port 0 is chosen when the daemon binds: nothing to probe"));
    }
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    Ok(SocketAddr::new(ip, addr.port()))
}

/// What the general listener speaks now: the device's TLS, when the
/// daemon follows it and the device has it on, with the certificate the
/// daemon's own code picks from the device's files.
fn general_speaks(config: &Config) -> Result<(Speak, String), String> {
    if !config.follow_device_tls {
        return Ok((Speak::Plain, String::new()));
    }
    let mode = device_tls_mode(&config.device_config)?;
    if mode == TlsMode::Off {
        return Ok((Speak::Plain, String::new()));
    }
    match DeviceTls::new(config.device_tls_dir.clone(), config.host_names.clone()).current(&mode) {
        Serving::Tls(built) => {
            let (cert_file, _) = built.not_after.first().ok_or("device TLS: no certificate served")?;
            let speak = Speak::Tls { sni: built.hosts.first().cloned(), cert: leaf(cert_file)?, mtls: false };
            Ok((speak, format!(", device TLS {}", mode.label())))
        }
        // Nothing but /healthz is answered in clear then, and that is
        // what is asked.
        Serving::Pending(_) => Ok((Speak::Plain, format!(", device TLS {} pending", mode.label()))),
        Serving::Off => Ok((Speak::Plain, String::new())),
    }
}

/// The device's `tls_mode`: off when the device has no config yet (as the
/// daemon counts it); an error while the file does not parse.
fn device_tls_mode(path: &Path) -> Result<TlsMode, String> {
    let mut delays = RETRY_DELAYS.iter();
    loop {
        if let Err(e) = std::fs::symlink_metadata(path) {
            if e.kind() == std::io::ErrorKind::NotFound {
                return Ok(TlsMode::Off);
            }
        }
        match DeviceConfig::load(path) {
            Ok(d) => return Ok(d.tls_mode),
            Err(e) => match delays.next() {
                Some(d) => std::thread::sleep(*d),
                None => return Err(format!("key \"device_config\": {e}")),
            },
        }
    }
}

/// The first certificate of a PEM file, as DER.
fn leaf(path: &Path) -> Result<Vec<u8>, String> {
    let pem = crate::files::read_file(path, 1 << 20)
        .map_err(|e| format!("{}: {}", path.display(), crate::wording::io_reason(&e)))?;
    X509::stack_from_pem(&pem)
        .ok()
        .and_then(|v| v.first().and_then(|c| c.to_der().ok()))
        .ok_or_else(|| format!("{}: no PEM certificate", path.display()))
}

/// One `GET /healthz` (or, on an mTLS listener, one handshake).
fn ask(addr: SocketAddr, speak: &Speak, version: &str) -> Result<(), String> {
    let tcp = TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(|e| crate::wording::io_reason(&e))?;
    tcp.set_read_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
    tcp.set_write_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
    let host = match speak {
        Speak::Tls { sni: Some(name), .. } => name.clone(),
        _ => "localhost".to_owned(),
    };
    let answer = match speak {
        Speak::Plain => exchange(tcp, &host)?,
        Speak::Tls { sni, cert, mtls } => {
            // No CA to verify against is needed: the certificate must be
            // exactly the configured one, and nothing secret is sent.
            let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(|e| e.to_string())?;
            b.set_verify(SslVerifyMode::NONE);
            let mut c = b.build().configure().map_err(|e| e.to_string())?;
            c.set_verify_hostname(false);
            c.set_use_server_name_indication(sni.is_some());
            let stream = match c.connect(sni.as_deref().unwrap_or("localhost"), tcp) {
                Ok(s) => Ok(s),
                Err(HandshakeError::Failure(mid)) if *mtls => {
                    // TLS 1.2 fails the handshake without a client
                    // certificate, after the server has shown its own.
                    return served(mid.ssl().peer_certificate(), cert);
                }
                Err(e) => Err(format!("TLS handshake: {e}")),
            }?;
            served(stream.ssl().peer_certificate(), cert)?;
            if *mtls {
                return Ok(());
            }
            exchange(stream, &host)?
        }
    };
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP answer")?;
    let status = head.lines().next().unwrap_or("");
    if status.split(' ').nth(1) != Some("200") {
        return Err(format!("/healthz answered {status:?}"));
    }
    match body.strip_prefix("ok ").map(str::trim_end) {
        Some(v) if v == version => Ok(()),
        Some(v) => Err(format!("/healthz answered version {v:?}, this system is {version:?}")),
        None => {
            Err("/healthz answered without a version: not this daemon, or not told it is on the device"
                .into())
        }
    }
}

/// Whether the server's certificate is the expected one.
fn served(got: Option<X509>, want: &[u8]) -> Result<(), String> {
    match got.and_then(|c| c.to_der().ok()) {
        Some(der) if der == want => Ok(()),
        Some(_) => Err("the certificate served is not the configured one".into()),
        None => Err("no server certificate".into()),
    }
}

/// Sends the request and reads the answer to its end (bounded).
fn exchange(mut s: impl Read + Write, host: &str) -> Result<Vec<u8>, String> {
    s.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
        .map_err(|e| format!("sending: {}", crate::wording::io_reason(&e)))?;
    let mut answer = Vec::new();
    match s.take(MAX_ANSWER).read_to_end(&mut answer) {
        Ok(_) => Ok(answer),
        // A TLS peer may close without close_notify after the answer.
        Err(_) if !answer.is_empty() => Ok(answer),
        Err(e) => Err(format!("reading: {}", crate::wording::io_reason(&e))),
    }
}
