//! The general listener following the device's TLS (`tls_mode` in the
//! device config, certificates in `device_tls_dir`) while the daemon runs:
//! real TLS clients at each step (a real Prometheus across a rotation: tests/e2e/native.py).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use bcrypt::Version;
use openssl::x509::X509;

use crate::util::*;

const SESSION: &str = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d";

fn cookie() -> (&'static str, String) {
    ("Cookie", format!("authToken={SESSION}"))
}

/// Writes the device's own CA as the device keeps it.
fn device_ca(tls: &Path) -> pki::Issued {
    let ca = pki::ca("JetKVM device CA");
    std::fs::write(tls.join("__ca__.crt"), ca.cert_pem()).unwrap();
    std::fs::write(tls.join("__ca__.key"), ca.key_pem()).unwrap();
    ca
}

/// Writes `<name>.crt` (the leaf, then its CA) and `<name>.key`, key first
/// as a writer that replaces both would.
fn write_pair(tls: &Path, name: &str, leaf: &pki::Issued, ca: &pki::Issued) {
    std::fs::write(tls.join(format!("{name}.key")), leaf.key_pem()).unwrap();
    std::fs::write(tls.join(format!("{name}.crt")), leaf.cert_pem() + &ca.cert_pem()).unwrap();
}

/// One HTTPS request. `sni`: the name sent and verified; `None` sends no
/// server name and checks only the chain.
fn https(
    addr: SocketAddr,
    ca_pem: &str,
    sni: Option<&str>,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(Resp, X509), String> {
    use openssl::ssl::{SslConnector, SslMethod};
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    let mut store = openssl::x509::store::X509StoreBuilder::new().unwrap();
    store.add_cert(X509::from_pem(ca_pem.as_bytes()).unwrap()).unwrap();
    b.set_cert_store(store.build());
    let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut config = b.build().configure().unwrap();
    if sni.is_none() {
        config = config.use_server_name_indication(false).verify_hostname(false);
    }
    let mut s = config.connect(sni.unwrap_or("jetkvm.local"), tcp).map_err(|e| e.to_string())?;
    s.write_all(request(sni.unwrap_or("jetkvm.local"), path, headers).as_bytes())
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let resp = parse_response(&buf).ok_or("no HTTP response")?;
    Ok((resp, s.ssl().peer_certificate().unwrap()))
}

fn names(cert: &X509) -> Vec<String> {
    cert.subject_alt_names()
        .map(|s| s.iter().filter_map(|n| n.dnsname().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// A request on a connection kept open, answered with a Content-Length.
fn keep_alive_get(s: &mut TcpStream, host: &str, path: &str, headers: &[(&str, &str)]) -> Option<Resp> {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).ok()? == 0 {
            return None;
        }
        buf.push(byte[0]);
    }
    let head = parse_response(&buf)?;
    let len: usize = head.header("content-length")?.parse().ok()?;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    buf.extend_from_slice(&body);
    parse_response(&buf)
}

fn set_mode(d: &Daemon, mode: &str) {
    rewrite_in_place(&d.device_config(), &password_mode_tls(&hash("pw", Version::TwoA, 4), SESSION, mode));
}

#[test]
// One running daemon through every mode in order, and the counters its
// requests add up to at the end: a story, not separable steps.
#[allow(clippy::too_many_lines)]
fn mode_switches_while_running_with_a_real_client_at_each_step() {
    // kvm.lan: a name the owner configured (the device's issued leaves are
    // served for configured names only).
    let d = Daemon::start(
        "host_names = [\"kvm.lan\"]\n",
        Some(&password_mode_tls(&hash("pw", Version::TwoA, 4), SESSION, "")),
    );
    let tls = d.dir.path("tls");
    let (k, v) = cookie();
    let c = [(k, v.as_str())];
    let mut allowed = 0.0;
    let mut plain_refused = 0.0;

    // Off: plain HTTP, as before.
    let r = d.get("/metrics", &c);
    allowed += 1.0;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("tls=\"none\""), "{}", r.text());
    let mut kept = TcpStream::connect(d.addr).unwrap();
    kept.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(keep_alive_get(&mut kept, &d.addr.to_string(), "/metrics", &c).unwrap().status, 200);
    allowed += 1.0;
    let stray_ca = pki::ca("not the device");
    assert!(https(d.addr, &stray_ca.cert_pem(), None, "/healthz", &[]).is_err(), "no TLS while off");

    // Self-signed before the device has issued a certificate: nothing in
    // clear, on new connections and on the one kept open.
    set_mode(&d, "self-signed");
    let r = d.get("/metrics", &c);
    plain_refused += 1.0;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("HTTPS"), "{}", r.text());
    let r = keep_alive_get(&mut kept, &d.addr.to_string(), "/metrics", &c).unwrap();
    plain_refused += 1.0;
    assert_eq!(r.status, 400);
    assert!(https(d.addr, &stray_ca.cert_pem(), None, "/metrics", &c).is_err());
    let log = d.wait_log("no certificate issued yet");
    assert!(log.contains("refusing to serve in clear"), "{log}");
    // The plain-HTTP health check still answers: it carries no credential.
    assert_eq!(d.get("/healthz", &[]).status, 200);

    // The device issues its CA and leaves: HTTPS on the same port, the
    // certificate chosen by SNI, the default host's without SNI.
    let ca = device_ca(&tls);
    let default_leaf = pki::leaf(&ca, "jetkvm.local", &["jetkvm.local"], false, -1, 30);
    write_pair(&tls, "jetkvm.local", &default_leaf, &ca);
    write_pair(&tls, "kvm.lan", &pki::leaf(&ca, "kvm.lan", &["kvm.lan"], false, -1, 30), &ca);
    let (r, cert) = https(d.addr, &ca.cert_pem(), Some("jetkvm.local"), "/metrics", &c).unwrap();
    allowed += 1.0;
    assert_eq!(r.status, 200);
    assert_eq!(names(&cert), ["jetkvm.local"]);
    let t = r.text();
    assert!(t.contains("listener=\"general\",tls=\"tls\"") || t.contains("tls=\"tls\""), "{t}");
    for leaf in ["jetkvm.local.crt", "kvm.lan.crt"] {
        assert!(t.contains(&format!("{}\"}}", tls.join(leaf).display())), "{leaf} not_after in {t}");
    }
    assert_eq!(sample(&t, "jetkvm_exporter_tls_reload_success{listener=\"general\"}"), Some(1.0));
    let (_, cert) = https(d.addr, &ca.cert_pem(), Some("kvm.lan"), "/healthz", &[]).unwrap();
    assert_eq!(names(&cert), ["kvm.lan"]);
    let (_, cert) = https(d.addr, &ca.cert_pem(), None, "/healthz", &[]).unwrap();
    assert_eq!(names(&cert), ["jetkvm.local"], "no SNI: the device's default host");
    assert_eq!(d.get("/metrics", &c).status, 400);
    plain_refused += 1.0;

    // The settings page over HTTPS: no clear-text warning, the device's CA.
    let (r, _) = https(d.addr, &ca.cert_pem(), Some("jetkvm.local"), "/settings", &c).unwrap();
    allowed += 1.0;
    let page = r.text();
    assert!(!page.contains("plain-warning"), "{page}");
    assert!(page.contains("self-signed certificate for jetkvm.local, kvm.lan"), "{page}");
    assert!(page.contains("server_name: jetkvm.local") && page.contains("scheme: https"), "{page}");
    // The CA is public: no credential needed to fetch it.
    let (r, _) = https(d.addr, &ca.cert_pem(), Some("jetkvm.local"), "/settings/ca.crt", &[]).unwrap();
    assert_eq!(r.text(), ca.cert_pem());

    // A new leaf for the default host: the next connection gets it.
    let rotated = pki::leaf(&ca, "jetkvm.local", &["jetkvm.local"], false, -1, 60);
    write_pair(&tls, "jetkvm.local", &rotated, &ca);
    let (_, cert) = https(d.addr, &ca.cert_pem(), Some("jetkvm.local"), "/healthz", &[]).unwrap();
    assert_eq!(cert.serial_number().to_bn().unwrap(), rotated.cert.serial_number().to_bn().unwrap());

    // A torn device config does not turn TLS off.
    rewrite_in_place(&d.device_config(), "");
    assert_eq!(d.get("/metrics", &c).status, 400);
    plain_refused += 1.0;
    assert!(https(d.addr, &ca.cert_pem(), Some("jetkvm.local"), "/healthz", &[]).is_ok());

    // Custom: the owner's certificate.
    let owner_ca = pki::ca("owner's CA");
    let custom = pki::leaf(&owner_ca, "jetkvm.home", &["jetkvm.home"], false, -1, 30);
    write_pair(&tls, "user-defined", &custom, &owner_ca);
    set_mode(&d, "custom");
    let (r, cert) = https(d.addr, &owner_ca.cert_pem(), Some("jetkvm.home"), "/metrics", &c).unwrap();
    allowed += 1.0;
    assert_eq!(r.status, 200);
    assert_eq!(names(&cert), ["jetkvm.home"]);
    assert!(
        https(d.addr, &ca.cert_pem(), Some("jetkvm.local"), "/healthz", &[]).is_err(),
        "self-signed no more"
    );
    let (r, _) = https(d.addr, &owner_ca.cert_pem(), Some("jetkvm.home"), "/settings/ca.crt", &[]).unwrap();
    assert_eq!(r.text(), owner_ca.cert_pem());
    assert_eq!(d.get("/metrics", &c).status, 400);
    plain_refused += 1.0;

    // Off again: plain HTTP returns, TLS is gone.
    set_mode(&d, "");
    let r = d.get("/metrics", &c);
    allowed += 1.0;
    assert_eq!(r.status, 200);
    assert!(https(d.addr, &owner_ca.cert_pem(), Some("jetkvm.home"), "/healthz", &[]).is_err());
    let t = r.text();
    assert_eq!(sample(&t, "jetkvm_exporter_http_errors_total{reason=\"plain_http\"}"), Some(plain_refused));
    // No credential was evaluated on a refused plain request.
    assert_eq!(sample(&t, "jetkvm_exporter_auth_successes_total{method=\"cookie\"}"), Some(allowed));
    assert_eq!(sample(&t, "jetkvm_exporter_auth_failures_total{reason=\"missing_credentials\"}"), Some(0.0));
    let log = d.log();
    assert!(log.contains("device TLS (custom): serving HTTPS for jetkvm.home"), "{log}");
    assert!(log.contains("device TLS off: plain HTTP"), "{log}");
}

#[test]
fn pending_certificates_show_in_listener_info_and_the_log() {
    let extra = "[metrics_service]\nenabled = true\nlisten_addr = \"127.0.0.1:0\"\n";
    let d =
        Daemon::start(extra, Some(&password_mode_tls(&hash("pw", Version::TwoA, 4), SESSION, "self-signed")));
    let (k, v) = cookie();
    let m = d.metrics_addr.unwrap();
    let t = get(m, "/metrics", &[(k, &v)]).text();
    let info =
        t.lines().find(|l| l.starts_with("jetkvm_exporter_listener_info{listener=\"general\"")).unwrap();
    assert!(info.contains("tls=\"pending\""), "{info}");
    assert_eq!(sample(&t, "jetkvm_exporter_tls_reload_success{listener=\"general\"}"), Some(0.0), "{t}");
    assert!(d.log().contains("device TLS (self-signed)"), "{}", d.log());

    // The settings page in clear: refused before the cookie is looked at.
    assert_eq!(d.get("/settings", &[(k, &v)]).status, 400);
    let t = get(m, "/metrics", &[(k, &v)]).text();
    assert_eq!(sample(&t, "jetkvm_exporter_auth_successes_total{method=\"cookie\"}"), Some(2.0));

    // Once issued, the state follows without a restart.
    let ca = device_ca(&d.dir.path("tls"));
    write_pair(
        &d.dir.path("tls"),
        "jetkvm.local",
        &pki::leaf(&ca, "jetkvm.local", &["jetkvm.local"], false, -1, 30),
        &ca,
    );
    let t = get(m, "/metrics", &[(k, &v)]).text();
    assert!(t.contains("address=\"") && t.contains("tls=\"tls\""), "{t}");
}

/// What the daemon read from files and held, as the kernel counts it.
fn read_bytes_and_rss(pid: u32) -> (u64, u64) {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    let rchar = io.lines().find_map(|l| l.strip_prefix("rchar: ")).unwrap().trim().parse().unwrap();
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    let rss: u64 = smaps
        .lines()
        .find_map(|l| l.strip_prefix("Rss:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap();
    (rchar, rss * 1024)
}

/// Regression: the device issues and saves a leaf for any name a client
/// sends its HTTPS server, and the daemon stat'ed, loaded (one SSL context
/// each), logged, exported and trusted as a `Host` every leaf in the
/// directory: 3,000 such leaves took it from 8.8 to 160 MB. Only the
/// leaves of the names the device is known by are served now. 3,000 leaves
/// appear while a client keeps connecting, asking for names of its own:
/// what the daemon reads, holds, exports and logs stays bounded.
#[test]
fn an_attacker_fed_certificate_store_stays_bounded() {
    let d =
        Daemon::start("", Some(&password_mode_tls(&hash("pw", Version::TwoA, 4), SESSION, "self-signed")));
    let tls = d.dir.path("tls");
    let ca = device_ca(&tls);
    write_pair(&tls, "jetkvm.local", &pki::leaf(&ca, "jetkvm.local", &["jetkvm.local"], false, -1, 30), &ca);
    let (_, cert) = https(d.addr, &ca.cert_pem(), Some("jetkvm.local"), "/healthz", &[]).unwrap();
    assert_eq!(names(&cert), ["jetkvm.local"]);
    let pid = d.child.id();
    // Figures for docs/BENCHMARKS.md, not asserted.
    let per_connection_time = || {
        let started = Instant::now();
        for _ in 0..50 {
            https(d.addr, &ca.cert_pem(), Some("jetkvm.local"), "/healthz", &[]).unwrap();
        }
        started.elapsed() / 50
    };
    let time_before = per_connection_time();
    let (read_before, rss_before) = read_bytes_and_rss(pid);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = {
        let (stop, addr) = (stop.clone(), d.addr);
        std::thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Its own name each time, as one makes the device issue
                // leaves; the daemon answers with the device's default.
                let sni = format!("host-{n}.attacker.example");
                if let Ok(cert) = https_unverified(addr, &sni) {
                    assert_eq!(names(&cert), ["jetkvm.local"]);
                }
                n += 1;
            }
            n
        })
    };
    let leaf = pki::leaf(&ca, "attacker", &["attacker.example"], false, -1, 30);
    for i in 0..3000 {
        write_pair(&tls, &format!("host-{i}.attacker.example"), &leaf, &ca);
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let connections = client.join().unwrap() as u64;
    // Enough to have seen the leaves appear (a loaded machine connects slowly).
    assert!(connections > 5, "{connections} connections");

    let c = cookie();
    let (r, _) = https(d.addr, &ca.cert_pem(), Some("jetkvm.local"), "/metrics", &[(c.0, &c.1)]).unwrap();
    let series = r
        .text()
        .lines()
        .filter(|l| l.starts_with("jetkvm_exporter_tls_certificate_not_after_seconds{"))
        .count();
    assert_eq!(series, 1, "{}", r.text());
    let (read_after, rss_after) = read_bytes_and_rss(pid);
    let time_after = per_connection_time();
    eprintln!(
        "3,000 leaves: RSS {} -> {} KiB; a TLS connection (handshake and /healthz) {time_before:?} -> {time_after:?}",
        rss_before / 1024,
        rss_after / 1024
    );
    // Socket reads of each connection, no certificate files.
    let per_connection = (read_after - read_before) / (connections + 1);
    assert!(per_connection < 16 * 1024, "{per_connection} bytes read per connection");
    assert!(rss_after < rss_before + 16 * 1024 * 1024, "RSS {rss_before} -> {rss_after}");
    let log = d.log();
    assert!(!log.contains("attacker.example"), "an issued leaf's name reached the log");
    assert!(log.matches("device TLS").count() <= 3, "{log}");
}

/// An HTTPS handshake with `sni`, verifying nothing: the certificate served.
fn https_unverified(addr: SocketAddr, sni: &str) -> Result<X509, String> {
    use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    b.set_verify(SslVerifyMode::NONE);
    let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    let s =
        b.build().configure().unwrap().verify_hostname(false).connect(sni, tcp).map_err(|e| e.to_string())?;
    let cert = s.ssl().peer_certificate().ok_or("no certificate")?;
    Ok(cert)
}
