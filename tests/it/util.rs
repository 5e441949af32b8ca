//! Shared helpers: temporary directories, starting the real binary on a
//! loopback port, a raw HTTP/1.1 client, device config writers.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_jetkvm-metrics");

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A directory removed when dropped (`tempfile`'s, held for that alone),
/// known by its path.
pub struct TempDir(pub PathBuf, #[allow(dead_code)] tempfile::TempDir);

impl TempDir {
    pub fn new() -> TempDir {
        use std::os::unix::fs::PermissionsExt;
        // 0755, as a directory made under the usual umask: a daemon that
        // switched to its own user (the privilege tests) reads what is here.
        let t = tempfile::Builder::new()
            .prefix("jetkvm-metrics-test-")
            .permissions(std::fs::Permissions::from_mode(0o755))
            .tempdir()
            .unwrap();
        TempDir(t.path().to_path_buf(), t)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn write(&self, name: &str, content: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, content).unwrap();
        p
    }
}

/// bcrypt hash in the device's form (`$2a$`), at a cost cheap enough for tests.
pub fn hash(password: &str, version: bcrypt::Version, cost: u32) -> String {
    bcrypt::hash_with_result(password, cost).unwrap().format_for_version(version)
}

pub fn password_mode(hash: &str, session: &str) -> String {
    format!(
        "{{\n  \"localAuthMode\": \"password\",\n  \"hashed_password\": \"{hash}\",\n  \"local_auth_token\": \"{session}\",\n  \"tls_mode\": \"\",\n  \"display_rotation\": \"270\"\n}}\n"
    )
}

/// Password mode with the device's TLS in `tls_mode` (`""`, `self-signed`,
/// `custom`).
pub fn password_mode_tls(hash: &str, session: &str, tls_mode: &str) -> String {
    password_mode(hash, session).replace("\"tls_mode\": \"\"", &format!("\"tls_mode\": \"{tls_mode}\""))
}

pub fn no_password_mode() -> String {
    "{\n  \"localAuthMode\": \"noPassword\",\n  \"hashed_password\": \"\",\n  \"local_auth_token\": \"\"\n}\n"
        .into()
}

/// Rewrites a file the way the device does: in place, truncate then write.
pub fn rewrite_in_place(path: &Path, content: &str) {
    let mut f = std::fs::OpenOptions::new().write(true).truncate(true).open(path).unwrap();
    f.write_all(content.as_bytes()).unwrap();
}

/// The real daemon, on a loopback port chosen by the kernel.
pub struct Daemon {
    pub child: Child,
    /// The general listener.
    pub addr: SocketAddr,
    /// The metrics service, when the configuration enables it.
    pub metrics_addr: Option<SocketAddr>,
    pub dir: TempDir,
    pub log: Arc<Mutex<String>>,
}

impl Daemon {
    /// Starts `serve` with `extra` TOML appended to a config whose device
    /// config is `dir/kvm_config.json` (written from `device` if given).
    pub fn start(extra: &str, device: Option<&str>) -> Daemon {
        let dir = TempDir::new();
        if let Some(d) = device {
            dir.write("kvm_config.json", d);
        }
        // statvfs of real mounts varies: none unless a test asks.
        let filesystems = if extra.contains("filesystems") { "" } else { "filesystems = []\n" };
        // Fixture /proc and /sys unless a test asks for others: fast and the
        // same on every machine (this machine's /proc/net/tcp can hold
        // thousands of sockets while the load tests run).
        let mut roots = String::new();
        if !extra.contains("proc_root") {
            roots.push_str(&format!("proc_root = \"{}\"\n", fixtures().join("proc").display()));
        }
        if !extra.contains("sys_root") {
            roots.push_str(&format!("sys_root = \"{}\"\n", fixtures().join("sys").display()));
        }
        // The device's TLS directory: this daemon's own, never the host's.
        if !extra.contains("device_tls_dir") {
            std::fs::create_dir_all(dir.path("tls")).unwrap();
            roots.push_str(&format!("device_tls_dir = \"{}\"\n", dir.path("tls").display()));
        }
        // The device app's metrics only where a test serves them (this
        // machine's port 80 is not the app's); its capture node a device
        // every machine has, that no process of the app holds.
        if !extra.contains("app_metrics_address") {
            roots.push_str("app_metrics_address = \"\"\n");
        }
        if !extra.contains("video_capture_device") {
            roots.push_str("video_capture_device = \"/dev/null\"\n");
        }
        let listen = if extra.contains("listen_addr") { "" } else { "listen_addr = \"127.0.0.1:0\"\n" };
        let config = format!(
            "{listen}device_config = \"{}\"\ntoken_file = \"{}\"\n{filesystems}{roots}{extra}",
            dir.path("kvm_config.json").display(),
            dir.path("token.sha256").display(),
        );
        let path = dir.write("config.toml", &config);
        Daemon::start_with(dir, &path)
    }

    pub fn start_with(dir: TempDir, config: &Path) -> Daemon {
        Daemon::start_with_args(dir, config, &[])
    }

    /// `serve --config CONFIG` and `args`; the listeners' addresses are
    /// what the daemon writes in its `--ports-file` (`dir/ports` unless
    /// `args` name one).
    pub fn start_with_args(dir: TempDir, config: &Path, args: &[&str]) -> Daemon {
        let named = args.iter().position(|a| *a == "--ports-file").map(|i| PathBuf::from(args[i + 1]));
        let ports = named.clone().unwrap_or_else(|| dir.path("ports"));
        let _ = std::fs::remove_file(&ports);
        let default_ports = named.is_none().then(|| ["--ports-file".into(), ports.clone().into_os_string()]);
        let mut child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(config)
            .args(default_ports.iter().flatten())
            .args(args)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let mut l = log.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        let end = Instant::now() + Duration::from_secs(20);
        let text = loop {
            // Written whole, once every listener is bound.
            if let Ok(text) = std::fs::read_to_string(&ports) {
                break text;
            }
            if Instant::now() > end || child.try_wait().unwrap().is_some() {
                let _ = child.kill();
                std::thread::sleep(Duration::from_millis(100));
                panic!("daemon did not start; log:\n{}", log.lock().unwrap());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let address = |role: &str| {
            text.lines().find_map(|l| l.strip_prefix(role)?.strip_prefix(' ')).map(|a| a.parse().unwrap())
        };
        Daemon {
            addr: address("general").unwrap(),
            metrics_addr: address("metrics_service"),
            child,
            dir,
            log,
        }
    }

    pub fn device_config(&self) -> PathBuf {
        self.dir.path("kvm_config.json")
    }

    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        get(self.addr, path, headers)
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits up to 5 s for the log to contain `needle` (stderr is read by
    /// another thread).
    pub fn wait_log(&self, needle: &str) -> String {
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            let log = self.log();
            if log.contains(needle) || Instant::now() > end {
                return log;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, sig: &str) {
        let ok =
            Command::new("kill").args([&format!("-{sig}"), &self.child.id().to_string()]).status().unwrap();
        assert!(ok.success());
    }

    /// Waits for the process to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The value of one sample in a scrape, e.g.
    /// `jetkvm_exporter_auth_failures_total{reason="bad_password"}`.
    pub fn sample(&self, series: &str, headers: &[(&str, &str)]) -> f64 {
        let r = self.get("/metrics", headers);
        assert_eq!(r.status, 200, "{}", r.text());
        sample(&r.text(), series).unwrap_or_else(|| panic!("{series} not in scrape"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}

/// A GET that closes the connection after the answer.
pub fn request(host: &str, path: &str, headers: &[(&str, &str)]) -> String {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req
}

/// A form POST (`application/x-www-form-urlencoded`) that closes the
/// connection after the answer.
pub fn post_form(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    raw(addr, req.as_bytes())
}

pub fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Resp {
    raw(addr, request(&addr.to_string(), path, headers).as_bytes())
}

/// Sends raw bytes and parses whatever response comes back.
pub fn raw(addr: SocketAddr, bytes: &[u8]) -> Resp {
    exchange(TcpStream::connect(addr).unwrap(), bytes)
        .unwrap_or_else(|buf| panic!("no HTTP response: {:?}", String::from_utf8_lossy(&buf)))
}

/// Writes `bytes`, half-closes, reads to the end: the response, or what
/// came back instead.
pub fn exchange(mut s: TcpStream, bytes: &[u8]) -> Result<Resp, Vec<u8>> {
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    parse_response(&buf).ok_or(buf)
}

pub fn parse_response(buf: &[u8]) -> Option<Resp> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = buf[end + 4..].to_vec();
    let is = |name: &str, val: &str| {
        headers.iter().any(|(k, v)| k.eq_ignore_ascii_case(name) && v.eq_ignore_ascii_case(val))
    };
    if is("transfer-encoding", "chunked") {
        body = dechunk(&body)?;
    }
    Some(Resp { status, headers, body })
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let n = usize::from_str_radix(std::str::from_utf8(&b[..eol]).ok()?.trim(), 16).ok()?;
        b = &b[eol + 2..];
        if n == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..n)?);
        b = b.get(n + 2..)?;
    }
}

/// Runs `promtool check metrics` on an exposition; returns what it printed.
pub fn promtool_check(text: &str) -> String {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) must be installed");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() || !printed.is_empty(), "promtool failed silently");
    printed
}

/// Certificates made with OpenSSL for the TLS tests: a CA that signs
/// server and client certificates with chosen names and validity.
pub mod pki {
    use openssl::asn1::Asn1Time;
    use openssl::bn::{BigNum, MsbOption};
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::{PKey, Private};
    use openssl::x509::extension::{BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName};
    use openssl::x509::{X509NameBuilder, X509};

    pub struct Issued {
        pub cert: X509,
        pub key: PKey<Private>,
    }

    impl Issued {
        pub fn cert_pem(&self) -> String {
            String::from_utf8(self.cert.to_pem().unwrap()).unwrap()
        }
        pub fn key_pem(&self) -> String {
            String::from_utf8(self.key.private_key_to_pem_pkcs8().unwrap()).unwrap()
        }
    }

    fn key() -> PKey<Private> {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
    }

    fn serial() -> openssl::asn1::Asn1Integer {
        let mut bn = BigNum::new().unwrap();
        bn.rand(64, MsbOption::MAYBE_ZERO, false).unwrap();
        bn.to_asn1_integer().unwrap()
    }

    /// A certificate builder for `cn` with a new key, issued by `issuer`
    /// (self-signed if `None`).
    fn builder(cn: &str, issuer: Option<&Issued>) -> (openssl::x509::X509Builder, PKey<Private>) {
        let key = key();
        let mut n = X509NameBuilder::new().unwrap();
        n.append_entry_by_nid(Nid::COMMONNAME, cn).unwrap();
        let n = n.build();
        let mut b = X509::builder().unwrap();
        b.set_version(2).unwrap();
        b.set_serial_number(&serial()).unwrap();
        b.set_subject_name(&n).unwrap();
        b.set_issuer_name(issuer.map(|i| i.cert.subject_name()).unwrap_or(&n)).unwrap();
        b.set_pubkey(&key).unwrap();
        (b, key)
    }

    pub fn ca(name: &str) -> Issued {
        let (mut b, key) = builder(name, None);
        b.set_not_before(&Asn1Time::days_from_now(0).unwrap()).unwrap();
        b.set_not_after(&Asn1Time::days_from_now(365).unwrap()).unwrap();
        b.append_extension(BasicConstraints::new().critical().ca().build().unwrap()).unwrap();
        b.append_extension(KeyUsage::new().critical().key_cert_sign().crl_sign().build().unwrap()).unwrap();
        b.sign(&key, MessageDigest::sha256()).unwrap();
        Issued { cert: b.build(), key }
    }

    /// A leaf signed by `ca`. `days` is the validity from now; negative
    /// `start_days` with a short validity gives an expired certificate.
    pub fn leaf(ca: &Issued, cn: &str, dns: &[&str], client: bool, start_days: i64, days: i64) -> Issued {
        let (mut b, key) = builder(cn, Some(ca));
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        b.set_not_before(&Asn1Time::from_unix(now + start_days * 86_400).unwrap()).unwrap();
        b.set_not_after(&Asn1Time::from_unix(now + (start_days + days) * 86_400).unwrap()).unwrap();
        let mut san = SubjectAlternativeName::new();
        for d in dns {
            if d.parse::<std::net::IpAddr>().is_ok() {
                san.ip(d);
            } else {
                san.dns(d);
            }
        }
        b.append_extension(san.build(&b.x509v3_context(Some(&ca.cert), None)).unwrap()).unwrap();
        let eku = if client {
            ExtendedKeyUsage::new().client_auth().build()
        } else {
            ExtendedKeyUsage::new().server_auth().build()
        };
        b.append_extension(eku.unwrap()).unwrap();
        b.sign(&ca.key, MessageDigest::sha256()).unwrap();
        Issued { cert: b.build(), key }
    }
}

/// A TLS client: trusts `ca_pem`, presents `client` if given, sends SNI.
pub struct TlsClient {
    pub ca_pem: String,
    pub client: Option<(String, String)>,
    pub sni: String,
    pub max_version: Option<openssl::ssl::SslVersion>,
}

pub struct TlsResult {
    pub resp: Resp,
    pub version: String,
    pub server_cert: openssl::x509::X509,
}

impl TlsClient {
    pub fn new(ca_pem: &str) -> TlsClient {
        TlsClient { ca_pem: ca_pem.to_owned(), client: None, sni: "localhost".into(), max_version: None }
    }

    pub fn with_cert(mut self, issued: &pki::Issued) -> TlsClient {
        self.client = Some((issued.cert_pem(), issued.key_pem()));
        self
    }

    /// `Err` with OpenSSL's message if the handshake or exchange fails.
    pub fn get(&self, addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<TlsResult, String> {
        let connector = self.connector();
        let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut s = connector.connect(&self.sni, tcp).map_err(|e| e.to_string())?;
        let req = request(&self.sni, path, headers);
        // With TLS 1.3 a refused client certificate surfaces on the first
        // read or write, not in connect.
        s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        match s.read_to_end(&mut buf) {
            Ok(_) => {}
            Err(e) if !buf.is_empty() => {
                let _ = e;
            }
            Err(e) => return Err(e.to_string()),
        }
        let resp = parse_response(&buf).ok_or_else(|| format!("no HTTP response ({} bytes)", buf.len()))?;
        Ok(TlsResult {
            resp,
            version: s.ssl().version_str().to_owned(),
            server_cert: s.ssl().peer_certificate().unwrap(),
        })
    }

    pub fn connector(&self) -> openssl::ssl::SslConnector {
        use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
        let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
        let store = {
            let mut s = openssl::x509::store::X509StoreBuilder::new().unwrap();
            s.add_cert(openssl::x509::X509::from_pem(self.ca_pem.as_bytes()).unwrap()).unwrap();
            s.build()
        };
        b.set_cert_store(store);
        b.set_verify(SslVerifyMode::PEER);
        b.set_max_proto_version(self.max_version).unwrap();
        if let Some((cert, key)) = &self.client {
            b.set_certificate(&openssl::x509::X509::from_pem(cert.as_bytes()).unwrap()).unwrap();
            b.set_private_key(&openssl::pkey::PKey::private_key_from_pem(key.as_bytes()).unwrap()).unwrap();
        }
        b.build()
    }
}

/// A TCP connection from a chosen loopback source address (one "client"
/// per address, for the per-client failure limiter).
pub fn connect_from(source: &str, addr: SocketAddr) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let source: std::net::IpAddr = source.parse().unwrap();
        let sock = match source {
            std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        }
        .unwrap();
        sock.bind(SocketAddr::new(source, 0)).unwrap();
        let s = sock.connect(addr).await.unwrap();
        let s = s.into_std().unwrap();
        s.set_nonblocking(false).unwrap();
        s
    })
}

/// GET over a connection from `source`.
pub fn get_from(source: &str, addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Resp {
    let req = request(&addr.to_string(), path, headers);
    exchange(connect_from(source, addr), req.as_bytes())
        .unwrap_or_else(|_| panic!("no HTTP response from {addr}"))
}

/// Whether `needle` is anywhere in the writable memory of process `pid`.
pub fn memory_contains(pid: u32, needle: &[u8]) -> bool {
    use std::os::unix::fs::FileExt;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else { continue };
        if !perms.starts_with("rw") {
            continue;
        }
        let (a, b) = range.split_once('-').unwrap();
        let (mut at, end) = (u64::from_str_radix(a, 16).unwrap(), u64::from_str_radix(b, 16).unwrap());
        while at < end {
            // Overlap chunks so a needle across a boundary is found.
            let len = ((end - at) as usize).min(buf.len());
            let Ok(n) = mem.read_at(&mut buf[..len], at) else { break };
            if n == 0 {
                break;
            }
            if buf[..n].windows(needle.len()).any(|w| w == needle) {
                return true;
            }
            at += n.saturating_sub(needle.len()).max(1) as u64;
        }
    }
    false
}

/// Secrets a test presents, long enough that freeing a buffer (the
/// allocator writes its own pointers over the first 16 bytes) leaves most
/// of each readable: scans look for their last 40 bytes.
pub struct PresentedSecrets {
    pub right: String,
    pub wrong: String,
    pub token: String,
    pub wrong_token: String,
}

impl PresentedSecrets {
    /// Each `Authorization` value with the status it gets.
    pub fn headers(&self) -> Vec<(String, u16)> {
        vec![
            (basic("admin", &self.right), 200),
            (basic("admin", &self.wrong), 401),
            (format!("Bearer {}", self.token), 200),
            (format!("Bearer {}", self.wrong_token), 401),
        ]
    }
}

pub fn presented_secrets(token: &str) -> PresentedSecrets {
    let id = std::process::id();
    PresentedSecrets {
        right: format!("right-{id:0>58}"),
        wrong: format!("wrong-{:0>58}", id + 1),
        token: token.to_owned(),
        wrong_token: format!("{:0>64}", id + 2),
    }
}

/// A metrics token made with the CLI, as a user would.
pub fn new_token(d: &Daemon) -> String {
    let out =
        Command::new(BIN).args(["token", "new", "--config"]).arg(d.dir.path("config.toml")).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// None of the secrets, plain or as sent in the header, is in the memory of
/// process `pid` once the connections that carried them have ended (the
/// server may finish with one just after the client has its answer);
/// `held` (something the daemon keeps) is, so the scan works.
pub fn assert_wiped(pid: u32, held: &str, s: &PresentedSecrets) {
    assert!(memory_contains(pid, held.as_bytes()), "the memory scan finds nothing");
    let tail = |v: &str| v.as_bytes()[v.len() - 40..].to_vec();
    let mut needles = vec![
        ("the right password".to_owned(), tail(&s.right)),
        ("a wrong password".to_owned(), tail(&s.wrong)),
        ("the token".to_owned(), tail(&s.token)),
        ("a wrong token".to_owned(), tail(&s.wrong_token)),
    ];
    for (header, _) in s.headers() {
        needles.push((format!("the header {header:?}"), tail(&header)));
    }
    let end = Instant::now() + Duration::from_secs(2);
    loop {
        let found: Vec<&str> =
            needles.iter().filter(|(_, n)| memory_contains(pid, n)).map(|(w, _)| w.as_str()).collect();
        if found.is_empty() {
            return;
        }
        assert!(Instant::now() < end, "still in memory: {found:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A stand-in for the device app's `/metrics` on loopback: it answers every
/// connection with the same bytes (head included) once it has read the
/// request head, or, without an answer, holds the connection and says
/// nothing. It keeps the request heads it read.
pub struct AppServer {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<String>>>,
}

impl AppServer {
    pub fn start(answer: Option<Vec<u8>>) -> AppServer {
        AppServer::start_after(answer, Duration::ZERO)
    }

    /// Answers each request `delay` after it came, one at a time.
    pub fn start_after(answer: Option<Vec<u8>>, delay: Duration) -> AppServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).map(|n| n == 1).unwrap_or(false) {
                    head.push(byte[0]);
                }
                seen.lock().unwrap().push(String::from_utf8_lossy(&head).into_owned());
                std::thread::sleep(delay);
                match &answer {
                    Some(a) => {
                        let _ = conn.write_all(a);
                    }
                    None => held.push(conn),
                }
            }
        });
        AppServer { addr, requests }
    }

    /// A `200` in the text format with `body`, as the app's Go server
    /// answers an HTTP/1.0 request.
    pub fn text(body: &[u8]) -> AppServer {
        let mut answer = format!(
            "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        answer.extend_from_slice(body);
        AppServer::start(Some(answer))
    }

    /// The configuration key that points the daemon here.
    pub fn key(&self) -> String {
        format!("app_metrics_address = \"{}\"\n", self.addr)
    }
}
