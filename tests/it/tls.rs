use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bcrypt::Version;

use crate::util::pki::{self, Issued};
use crate::util::*;

/// A CA, a server certificate for localhost, and a client certificate.
struct Certs {
    ca: Issued,
    server: Issued,
    client: Issued,
}

fn certs() -> Certs {
    let ca = pki::ca("test prometheus CA");
    let server = pki::leaf(&ca, "jetkvm", &["localhost", "127.0.0.1"], false, -1, 30);
    let client = pki::leaf(&ca, "prometheus", &["prometheus.lan"], true, -1, 30);
    Certs { ca, server, client }
}

fn write_certs(dir: &TempDir, c: &Certs) {
    dir.write("ca.pem", &c.ca.cert_pem());
    dir.write("server.crt", &c.server.cert_pem());
    dir.write("server.key", &c.server.key_pem());
}

fn service(dir: &TempDir, mtls: bool, extra: &str) -> String {
    let ca =
        if mtls { format!("ca_certs = [\"{}\"]\n", dir.path("ca.pem").display()) } else { String::new() };
    format!(
        "[metrics_service]\nenabled = true\nlisten_addr = \"127.0.0.1:0\"\nmtls = {mtls}\n{ca}{extra}\n\
         [[metrics_service.keypairs]]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        dir.path("server.crt").display(),
        dir.path("server.key").display()
    )
}

/// The top of a configuration whose files live in `dir`.
fn base_config(dir: &TempDir, general: &str) -> String {
    format!(
        "listen_addr = \"{general}\"\ndevice_config = \"{}\"\ntoken_file = \"{}\"\nfilesystems = []\n",
        dir.path("kvm_config.json").display(),
        dir.path("token.sha256").display()
    )
}

/// A daemon whose metrics service serves `c`'s certificate, with mTLS
/// against `c`'s CA if asked.
fn serving(device: &str, c: &Certs, mtls: bool) -> Daemon {
    start(device, |dir| {
        write_certs(dir, c);
        service(dir, mtls, "")
    })
}

/// Starts a daemon whose files live in a directory prepared by `config`.
fn start(device: &str, config: impl FnOnce(&TempDir) -> String) -> Daemon {
    let dir = TempDir::new();
    dir.write("kvm_config.json", device);
    let text = base_config(&dir, "127.0.0.1:0") + &config(&dir);
    let path = dir.write("config.toml", &text);
    Daemon::start_with(dir, &path)
}

fn device() -> String {
    password_mode(&hash("pw", Version::TwoA, 4), "")
}

#[test]
fn https_without_mtls_uses_the_same_authentication() {
    let c = certs();
    let d = serving(&device(), &c, false);
    let addr = d.metrics_addr.unwrap();
    let client = TlsClient::new(&c.ca.cert_pem());
    let r = client.get(addr, "/metrics", &[("Authorization", &basic("admin", "pw"))]).unwrap();
    assert_eq!(r.resp.status, 200);
    assert_eq!(r.version, "TLSv1.3", "TLS 1.3 preferred");
    assert_eq!(client.get(addr, "/metrics", &[]).unwrap().resp.status, 401);
    // TLS 1.2 still works; plaintext on the TLS port does not.
    let mut tls12 = TlsClient::new(&c.ca.cert_pem());
    tls12.max_version = Some(openssl::ssl::SslVersion::TLS1_2);
    assert_eq!(tls12.get(addr, "/healthz", &[]).unwrap().version, "TLSv1.2");
    let mut tls11 = TlsClient::new(&c.ca.cert_pem());
    tls11.max_version = Some(openssl::ssl::SslVersion::TLS1_1);
    assert!(tls11.get(addr, "/healthz", &[]).is_err(), "TLS 1.1 must be refused");
    let plain = std::panic::catch_unwind(|| raw(addr, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n"));
    assert!(plain.map(|r| r.status != 200).unwrap_or(true), "plaintext answered on the TLS port");
    let t = client.get(addr, "/metrics", &[("Authorization", &basic("admin", "pw"))]).unwrap().resp.text();
    assert!(sample(&t, "jetkvm_exporter_http_errors_total{reason=\"tls_handshake\"}").unwrap() >= 1.0);
    assert!(t.contains("jetkvm_exporter_listener_info{listener=\"metrics_service\""));
    assert!(t.contains("tls=\"tls\"} 1"));
    // The warning about clear-text passwords is not logged for a TLS listener.
    assert!(!d.log().contains("crosses the network in clear"), "{}", d.log());
}

#[test]
fn metrics_move_off_the_general_listener() {
    let c = certs();
    let d = serving(&no_password_mode(), &c, false);
    let r = d.get("/metrics", &[]);
    assert_eq!(r.status, 404);
    let port = d.metrics_addr.unwrap().port();
    assert_eq!(r.text(), format!("metrics are served by the metrics service on port {port}\n"));
    assert_eq!(d.get("/healthz", &[]).status, 200);
    let r = TlsClient::new(&c.ca.cert_pem()).get(d.metrics_addr.unwrap(), "/metrics", &[]).unwrap();
    assert_eq!(r.resp.status, 200);
}

#[test]
fn mtls_accepts_only_verified_allowed_client_certificates() {
    let c = certs();
    let other_ca = pki::ca("someone else's CA");
    let foreign = pki::leaf(&other_ca, "prometheus", &["prometheus.lan"], true, -1, 30);
    let expired = pki::leaf(&c.ca, "prometheus", &["prometheus.lan"], true, -10, 5);
    let not_yet = pki::leaf(&c.ca, "prometheus", &["prometheus.lan"], true, 5, 5);
    let stranger = pki::leaf(&c.ca, "stranger", &["stranger.lan"], true, -1, 30);
    let d = start(&device(), |dir| {
        write_certs(dir, &c);
        service(dir, true, "client_allowed_sans = [\"prometheus.lan\"]")
    });
    let addr = d.metrics_addr.unwrap();
    let ca = c.ca.cert_pem();

    // A good certificate authenticates the scrape by itself.
    let r = TlsClient::new(&ca).with_cert(&c.client).get(addr, "/metrics", &[]).unwrap();
    assert_eq!(r.resp.status, 200);
    // No certificate, even with the right password: refused at the handshake.
    assert!(TlsClient::new(&ca).get(addr, "/metrics", &[("Authorization", &basic("a", "pw"))]).is_err());
    for (name, cert) in [
        ("other CA", &foreign),
        ("expired", &expired),
        ("not yet valid", &not_yet),
        ("SAN not allowed", &stranger),
    ] {
        let r = TlsClient::new(&ca).with_cert(cert).get(addr, "/metrics", &[]);
        assert!(r.is_err(), "{name}: {:?}", r.map(|r| r.resp.status));
    }
    let t = TlsClient::new(&ca).with_cert(&c.client).get(addr, "/metrics", &[]).unwrap().resp.text();
    assert_eq!(sample(&t, "jetkvm_exporter_auth_successes_total{method=\"client_cert\"}"), Some(2.0));
    assert_eq!(sample(&t, "jetkvm_exporter_auth_failures_total{reason=\"client_cert_missing\"}"), Some(1.0));
    assert_eq!(sample(&t, "jetkvm_exporter_auth_failures_total{reason=\"client_cert_invalid\"}"), Some(3.0));
    assert_eq!(
        sample(&t, "jetkvm_exporter_auth_failures_total{reason=\"client_cert_not_allowed\"}"),
        Some(1.0)
    );
    assert!(t.contains("tls=\"mtls\"} 1"));
    // Plaintext on the mTLS port gets nothing.
    let plain = std::panic::catch_unwind(|| raw(addr, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n"));
    assert!(plain.map(|r| r.status != 200).unwrap_or(true));
}

#[test]
fn mtls_without_allowed_sans_accepts_any_certificate_from_the_ca() {
    let c = certs();
    let stranger = pki::leaf(&c.ca, "stranger", &["stranger.lan"], true, -1, 30);
    let d = serving(&device(), &c, true);
    let r =
        TlsClient::new(&c.ca.cert_pem()).with_cert(&stranger).get(d.metrics_addr.unwrap(), "/metrics", &[]);
    assert_eq!(r.unwrap().resp.status, 200);
}

#[test]
fn keypairs_are_chosen_by_sni() {
    let ca = pki::ca("ca");
    let a = pki::leaf(&ca, "a", &["a.test"], false, -1, 30);
    let b = pki::leaf(&ca, "b", &["b.test"], false, -1, 30);
    let d = start(&no_password_mode(), |dir| {
        dir.write("a.crt", &a.cert_pem());
        dir.write("a.key", &a.key_pem());
        dir.write("b.crt", &b.cert_pem());
        dir.write("b.key", &b.key_pem());
        format!(
            "[metrics_service]\nenabled = true\nlisten_addr = \"127.0.0.1:0\"\n\
             [[metrics_service.keypairs]]\ncert_file = \"{0}/a.crt\"\nkey_file = \"{0}/a.key\"\n\
             [[metrics_service.keypairs]]\ncert_file = \"{0}/b.crt\"\nkey_file = \"{0}/b.key\"\n",
            dir.0.display()
        )
    });
    let addr = d.metrics_addr.unwrap();
    for (sni, want) in [("a.test", &a), ("b.test", &b), ("other.test", &a)] {
        let mut client = TlsClient::new(&ca.cert_pem());
        client.sni = sni.into();
        // other.test gets the default (first) keypair, whose name does not match.
        let r = client.get(addr, "/healthz", &[]);
        if sni == "other.test" {
            assert!(r.is_err());
            continue;
        }
        let r = r.unwrap();
        assert_eq!(
            r.server_cert.serial_number().to_bn().unwrap(),
            want.cert.serial_number().to_bn().unwrap(),
            "{sni}"
        );
    }
}

#[test]
fn certificates_rotate_while_scraping_and_bad_files_keep_the_old_ones() {
    let c = certs();
    let d = serving(&no_password_mode(), &c, true);
    let addr = d.metrics_addr.unwrap();
    let ca = c.ca.cert_pem();
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let scraper = {
        let (stop, ok) = (stop.clone(), ok.clone());
        let client = TlsClient::new(&ca).with_cert(&c.client);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let r = client.get(addr, "/metrics", &[]).expect("scrape failed during rotation");
                assert_eq!(r.resp.status, 200);
                ok.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    // Rotate the way a tool would: key first, then certificate (a window in
    // which they do not match), non-atomically.
    let new = pki::leaf(&c.ca, "jetkvm-2", &["localhost"], false, -1, 60);
    rewrite_in_place(&d.dir.path("server.key"), &new.key_pem());
    std::thread::sleep(Duration::from_millis(200));
    rewrite_in_place(&d.dir.path("server.crt"), &new.cert_pem());
    std::thread::sleep(Duration::from_millis(1500));
    let r = TlsClient::new(&ca).with_cert(&c.client).get(addr, "/metrics", &[]).unwrap();
    assert_eq!(r.server_cert.serial_number().to_bn().unwrap(), new.cert.serial_number().to_bn().unwrap());
    assert_eq!(
        sample(&r.resp.text(), "jetkvm_exporter_tls_reload_success{listener=\"metrics_service\"}"),
        Some(1.0)
    );

    // A broken certificate: the previous one keeps serving, the metric says so.
    rewrite_in_place(&d.dir.path("server.crt"), "-----BEGIN CERTIFICATE-----\ngarbage\n");
    std::thread::sleep(Duration::from_millis(1500));
    let r = TlsClient::new(&ca).with_cert(&c.client).get(addr, "/metrics", &[]).unwrap();
    assert_eq!(r.server_cert.serial_number().to_bn().unwrap(), new.cert.serial_number().to_bn().unwrap());
    assert_eq!(
        sample(&r.resp.text(), "jetkvm_exporter_tls_reload_success{listener=\"metrics_service\"}"),
        Some(0.0)
    );
    stop.store(true, Ordering::Relaxed);
    scraper.join().expect("a scrape failed while certificates rotated");
    assert!(ok.load(Ordering::Relaxed) > 5);
    assert!(d
        .wait_log("still serving the previous certificates")
        .contains("still serving the previous certificates"));
}

/// Regression: emptying or removing the CA file (revoking every client)
/// kept the previous CAs trusted, as a bad keypair keeps the old keypair.
#[test]
fn an_emptied_or_removed_ca_file_refuses_every_client_until_it_is_valid() {
    let c = certs();
    let d = serving(&no_password_mode(), &c, true);
    let addr = d.metrics_addr.unwrap();
    let client = TlsClient::new(&c.ca.cert_pem()).with_cert(&c.client);
    assert_eq!(client.get(addr, "/metrics", &[]).unwrap().resp.status, 200);
    let ca_file = d.dir.path("ca.pem");
    for (what, revoke) in [
        ("emptied", &(|p: &std::path::Path| std::fs::write(p, "").unwrap()) as &dyn Fn(&std::path::Path)),
        ("removed", &|p: &std::path::Path| std::fs::remove_file(p).unwrap()),
        ("torn", &|p: &std::path::Path| std::fs::write(p, "-----BEGIN CERTIFICATE-----\nMIIB").unwrap()),
    ] {
        revoke(&ca_file);
        let refused = client.get(addr, "/metrics", &[]);
        assert!(refused.is_err(), "CA file {what}: {:?}", refused.map(|r| r.resp.status));
        // It stays refused (the failed reload is not undone by a retry).
        std::thread::sleep(Duration::from_millis(1100));
        assert!(client.get(addr, "/metrics", &[]).is_err(), "CA file {what}, a second later");
        std::fs::write(&ca_file, c.ca.cert_pem()).unwrap();
        let r = client.get(addr, "/metrics", &[]).unwrap();
        assert_eq!(r.resp.status, 200, "CA file {what} then restored");
    }
    assert!(d.wait_log("refusing every client certificate").contains("refusing every client certificate"));
}

/// CPython's `ssl` (OpenSSL) as the client: it keeps the sessions a server
/// hands out and offers them again. Three connections with the client
/// certificate, each offering the previous session; prints, per
/// connection, the status line and whether the session was resumed.
const RESUMING_CLIENT: &str = r#"
import socket, ssl, sys
port, d, version = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = ssl.create_default_context(cafile=d + "/ca.pem")
ctx.load_cert_chain(d + "/client.crt", d + "/client.key")
ctx.maximum_version = getattr(ssl.TLSVersion, version)
session = None
for _ in range(3):
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost", session=session) as c:
        c.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := c.recv(4096):
            data += chunk
        print(data.split(b"\r\n")[0].decode(), "resumed" if c.session_reused else "full")
        session = c.session
"#;

/// Regression: sessions on the mTLS listener had no session id context (a
/// client offering one got an internal error); resumed, a session would
/// skip verifying the certificate and outlive it and its CA.
#[test]
fn mtls_sessions_are_never_resumed() {
    let c = certs();
    let d = start(&no_password_mode(), |dir| {
        write_certs(dir, &c);
        dir.write("client.crt", &c.client.cert_pem());
        dir.write("client.key", &c.client.key_pem());
        service(dir, true, "")
    });
    let port = d.metrics_addr.unwrap().port().to_string();
    // Files changed in the last 2 s are re-read for each connection, which
    // makes a new context (and new ticket keys) every time: let them
    // settle, so that resumption would happen if it were allowed.
    std::thread::sleep(Duration::from_millis(2200));
    for version in ["TLSv1_3", "TLSv1_2"] {
        let out = Command::new("python3")
            .args(["-c", RESUMING_CLIENT, &port])
            .arg(&d.dir.0)
            .arg(version)
            .output()
            .unwrap();
        let printed = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{version}: {printed}{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(printed, "HTTP/1.1 200 OK full\n".repeat(3), "{version}");
    }
}

/// Connections still in their TLS handshake count against the cap (the
/// oldest is closed for a new one) and have the header timeout to finish.
#[test]
fn tls_handshakes_count_against_the_cap_and_have_a_deadline() {
    let c = certs();
    let d = start(&no_password_mode(), |dir| {
        write_certs(dir, &c);
        service(dir, false, "") + "[limits]\nmax_connections = 4\nheader_timeout = \"2s\"\n"
    });
    let addr = d.metrics_addr.unwrap();
    // Connections that never send a ClientHello.
    let mut stuck: Vec<std::net::TcpStream> =
        (0..10).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let r = TlsClient::new(&c.ca.cert_pem()).get(addr, "/metrics", &[]).unwrap();
    assert_eq!(r.resp.status, 200);
    assert!(sample(&r.resp.text(), "jetkvm_exporter_connections_evicted_total").unwrap() >= 6.0);
    // The last four, never evicted, are closed by the handshake deadline.
    let started = std::time::Instant::now();
    for s in stuck.iter_mut().rev().take(4) {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 16];
        assert!(matches!(std::io::Read::read(s, &mut buf), Ok(0) | Err(_)));
    }
    assert!(started.elapsed() < Duration::from_secs(5), "handshakes held for {:?}", started.elapsed());
    let t = TlsClient::new(&c.ca.cert_pem()).get(addr, "/metrics", &[]).unwrap().resp.text();
    assert!(sample(&t, "jetkvm_exporter_http_errors_total{reason=\"timeout\"}").unwrap() >= 1.0, "{t}");
}

/// Runs check-config and serve on a metrics_service section; both must
/// fail naming `needle`.
fn rejected(dir: &TempDir, general: &str, section: &str, needle: &str) {
    let text = base_config(dir, general) + section;
    let path = dir.write("bad.toml", &text);
    let out = Command::new(BIN).args(["check-config", "--config"]).arg(&path).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "check-config accepted:\n{section}");
    assert!(stdout.contains(needle), "check-config: want {needle:?} in:\n{stdout}");
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("serve started with:\n{section}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(1));
    assert!(err.contains(needle), "serve: want {needle:?} in:\n{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn every_invalid_metrics_service_is_refused_by_check_config_and_serve() {
    let c = certs();
    let other = pki::leaf(&c.ca, "other", &["localhost"], false, -1, 30);
    let dir = TempDir::new();
    dir.write("kvm_config.json", &no_password_mode());
    write_certs(&dir, &c);
    dir.write("other.key", &other.key_pem());
    dir.write("garbage.pem", "not a certificate\n");
    let p = |n: &str| dir.path(n).display().to_string();
    let kp = |cert: &str, key: &str| {
        format!("[[metrics_service.keypairs]]\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\n")
    };
    let head = |mtls: bool, extra: &str| {
        format!("[metrics_service]\nenabled = true\nlisten_addr = \"127.0.0.1:0\"\nmtls = {mtls}\n{extra}\n")
    };
    let good_kp = kp(&p("server.crt"), &p("server.key"));
    let ca = format!("ca_certs = [\"{}\"]", p("ca.pem"));
    let cases: Vec<(String, &str)> = vec![
        (head(true, &ca), "mtls = true needs at least one [[metrics_service.keypairs]]"),
        (head(true, "") + &good_kp, "mtls = true needs the CA certificates"),
        (head(false, &ca) + &good_kp, "key \"metrics_service.ca_certs\": set, but mtls is false"),
        (
            head(false, "client_allowed_sans = [\"x\"]") + &good_kp,
            "key \"metrics_service.client_allowed_sans\"",
        ),
        (
            head(true, &format!("ca_certs = [\"{}\"]", p("missing-ca.pem"))) + &good_kp,
            "missing-ca.pem: no such file",
        ),
        (
            head(true, &format!("ca_certs = [\"{}\"]", p("garbage.pem"))) + &good_kp,
            "garbage.pem: no PEM certificate",
        ),
        (head(false, "") + &kp(&p("missing.crt"), &p("server.key")), "missing.crt: no such file"),
        (
            head(false, "") + &kp(&p("garbage.pem"), &p("server.key")),
            "key \"metrics_service.keypairs.cert_file\"",
        ),
        (head(false, "") + &kp(&p("server.crt"), &p("garbage.pem")), "garbage.pem: not a PEM private key"),
        (head(false, "") + &kp(&p("server.crt"), &p("other.key")), "other.key: does not match certificate"),
        (head(false, "") + &kp("relative.crt", &p("server.key")), "is not an absolute path"),
        (head(false, "verify = true") + &good_kp, "unknown field \"verify\""),
        (
            "[metrics_service]\nenabled = true\nlisten_addr = \"127.0.0.1:3080\"\n".to_owned(),
            "key \"metrics_service.listen_addr\": 127.0.0.1:3080 is also listen_addr",
        ),
    ];
    for (section, needle) in cases {
        // The last case needs the general listener on the same address.
        let general = if needle.contains("is also listen_addr") { "127.0.0.1:3080" } else { "127.0.0.1:0" };
        rejected(&dir, general, &section, needle);
    }
}

#[test]
fn plain_http_metrics_service_warns_about_clear_text_passwords() {
    let d = start(&device(), |_| "[metrics_service]\nenabled = true\nlisten_addr = \"127.0.0.1:0\"\n".into());
    let addr = d.metrics_addr.unwrap();
    assert_eq!(get(addr, "/metrics", &[("Authorization", &basic("", "pw"))]).status, 200);
    assert_eq!(d.get("/metrics", &[("Authorization", &basic("", "pw"))]).status, 404);
    let log = d.wait_log("crosses the network in clear");
    assert!(log.contains(&format!("{addr} is plain HTTP")), "{log}");
    let t = get(addr, "/metrics", &[("Authorization", &basic("", "pw"))]).text();
    assert!(t.contains("listener=\"metrics_service\""), "{t}");
    assert!(t.contains("tls=\"none\"} 1"));
}

/// Over TLS too, presented secrets leave nothing behind once their
/// connections are closed: OpenSSL's record buffers hold the decrypted
/// request until the next record overwrites them unless told to cleanse.
#[test]
fn presented_secrets_are_wiped_after_use_over_tls() {
    let c = certs();
    let d = serving(&device(), &c, false);
    let token = new_token(&d);
    let secrets = presented_secrets(&token);
    let hashed = hash(&secrets.right, Version::TwoA, 4);
    rewrite_in_place(&d.device_config(), &password_mode(&hashed, ""));
    let client = TlsClient::new(&c.ca.cert_pem());
    for _ in 0..3 {
        for (header, status) in secrets.headers() {
            let r = client.get(d.metrics_addr.unwrap(), "/metrics", &[("Authorization", &header)]).unwrap();
            assert_eq!(r.resp.status, status, "{header}");
        }
    }
    assert_wiped(d.child.id(), &hashed, &secrets);
}
