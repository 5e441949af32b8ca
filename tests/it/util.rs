//! Shared helpers: temporary directories, starting the real binary on a
//! loopback port, a raw HTTP/1.1 client, device config writers.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_jetkvm-metrics");

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "jetkvm-metrics-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
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

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
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
    pub addr: SocketAddr,
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
        let config = format!(
            "listen_addr = \"127.0.0.1:0\"\ndevice_config = \"{}\"\ntoken_file = \"{}\"\n{filesystems}{extra}",
            dir.path("kvm_config.json").display(),
            dir.path("token.sha256").display(),
        );
        let path = dir.write("config.toml", &config);
        Daemon::start_with(dir, &path)
    }

    pub fn start_with(dir: TempDir, config: &Path) -> Daemon {
        let mut child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut tx = Some(tx);
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Some(i) = line.find("listening on http://") {
                        let rest = &line[i + "listening on http://".len()..];
                        let addr = rest.split_whitespace().next().unwrap().to_owned();
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(addr);
                        }
                    }
                    let mut l = log.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(a) => a.parse().unwrap(),
            Err(_) => {
                let _ = child.kill();
                panic!("daemon did not start; log:\n{}", log.lock().unwrap());
            }
        };
        Daemon { child, addr, dir, log }
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

pub fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    raw(addr, req.as_bytes())
}

/// Sends raw bytes and parses whatever response comes back.
pub fn raw(addr: SocketAddr, request: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(request).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    parse_response(&buf).unwrap_or_else(|| panic!("no HTTP response: {:?}", String::from_utf8_lossy(&buf)))
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
    if is("content-encoding", "gzip") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut out).ok()?;
        body = out;
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
