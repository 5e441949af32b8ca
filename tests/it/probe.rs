//! `probe`, which the system update trusts to confirm a new slot: the real
//! daemon in each configuration it supports, probed with that same
//! configuration file; and what must not pass (nothing listening, another
//! version, a certificate that is not the configured one).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU16, Ordering};

use bcrypt::Version;

use crate::util::*;

const SESSION: &str = "0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9";

/// A port free now on `ip` and the wildcard, for a configuration that names
/// it (the probe cannot learn a port chosen at bind time). Taken below the
/// kernel's ephemeral range (from 32768), where no port-0 listener or
/// outgoing connection of a concurrent test can take it first.
fn free_port(ip: &str) -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 1000) as u16 * 10;
    loop {
        let port = base + NEXT.fetch_add(1, Ordering::Relaxed) % 2_000;
        if TcpListener::bind((ip, port)).is_ok() && TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
}

/// A configuration in `dir` with `listen_addr` as written (quotes
/// included), the fixture version file and `extra`.
fn config(dir: &TempDir, listen_addr: &str, extra: &str) -> PathBuf {
    std::fs::create_dir_all(dir.path("tls")).unwrap();
    let text = format!(
        "listen_addr = {listen_addr}\ndevice_config = \"{}\"\ntoken_file = \"{}\"\nversion_file = \"{}\"\n\
         proc_root = \"{}\"\nsys_root = \"{}\"\ndevice_tls_dir = \"{}\"\nfilesystems = []\n{extra}",
        dir.path("kvm_config.json").display(),
        dir.path("token.sha256").display(),
        fixtures().join("version").display(),
        fixtures().join("proc").display(),
        fixtures().join("sys").display(),
        dir.path("tls").display(),
    );
    dir.write("config.toml", &text)
}

/// Runs `probe --config`: (exit code, stdout, stderr).
fn probe(config: &Path) -> (i32, String, String) {
    let out = Command::new(BIN).args(["probe", "--config"]).arg(config).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn password_device(dir: &TempDir, session: &str, tls_mode: &str) {
    let h = hash("device-password", Version::TwoA, 4);
    dir.write("kvm_config.json", &password_mode_tls(&h, session, tls_mode));
}

/// The device's self-signed TLS as it keeps it: its CA and a leaf for
/// `jetkvm.local`.
fn self_signed(tls: &Path) -> pki::Issued {
    let ca = pki::ca("JetKVM device CA");
    std::fs::write(tls.join("__ca__.crt"), ca.cert_pem()).unwrap();
    let leaf = pki::leaf(&ca, "jetkvm.local", &["jetkvm.local"], false, 0, 30);
    std::fs::write(tls.join("jetkvm.local.key"), leaf.key_pem()).unwrap();
    std::fs::write(tls.join("jetkvm.local.crt"), leaf.cert_pem() + &ca.cert_pem()).unwrap();
    ca
}

fn assert_ok(config: &Path, needles: &[&str]) -> String {
    let (code, out, err) = probe(config);
    assert_eq!(code, 0, "probe failed: {err}");
    assert!(out.contains("answered with version 0.4.8"), "{out}");
    for n in needles {
        assert!(out.contains(n), "{n:?} missing from {out:?}");
    }
    out
}

/// The probe fails, saying `why`.
fn assert_fails(config: &Path, why: &str) {
    let (code, _, err) = probe(config);
    assert_eq!(code, 1, "{err}");
    assert!(err.starts_with("jetkvm-metrics: ") && err.contains(why), "{why:?} missing from {err:?}");
}

/// A copy of the configuration `config` in `dir` with one path replaced.
fn with_path(dir: &TempDir, config: &Path, from: &Path, to: &Path) -> PathBuf {
    let text = std::fs::read_to_string(config).unwrap();
    dir.write("other.toml", &text.replace(&from.display().to_string(), &to.display().to_string()))
}

/// Regression: the update's confirm step accepted only an authenticated
/// scrape or a 401 over plain HTTP, so with the device's TLS on (400), in
/// no-password mode without a session (200) or with `listen_addr` in
/// single quotes (read as port 3080) every update rolled back. The probe
/// needs no credential and speaks what the listener speaks.
#[test]
fn every_device_state_is_probed_without_a_credential() {
    let dir = TempDir::new();
    let port = free_port("127.0.0.1");
    let path = config(&dir, &format!("'0.0.0.0:{port}'"), "");
    password_device(&dir, SESSION, "");
    let d = Daemon::start_with(dir, &path);
    let out = assert_ok(&path, &[&format!("listen_addr 127.0.0.1:{port} (http)")]);
    assert!(!out.contains(SESSION));

    // Password mode without a session, and no-password mode: the same
    // answer, and the daemon saw no credential at all.
    password_device(&d.dir, "", "");
    assert_ok(&path, &["(http)"]);
    d.dir.write("kvm_config.json", &no_password_mode());
    assert_ok(&path, &["(http)"]);
    assert!(!d.log().contains("refused"), "{}", d.log());

    // The device turns TLS on before it has a certificate: only /healthz
    // answers in clear, and that is what is asked.
    password_device(&d.dir, SESSION, "self-signed");
    assert_ok(&path, &["(http, device TLS self-signed pending)"]);
    // Then with the device's certificate, which must be the one served.
    self_signed(&d.dir.path("tls"));
    assert_ok(&path, &["(https, device TLS self-signed)"]);

    // Custom: user-defined.crt, a lone certificate with no CA.
    let ca = pki::ca("owner CA");
    let leaf = pki::leaf(&ca, "kvm.example", &["kvm.example"], false, 0, 30);
    std::fs::write(d.dir.path("tls/user-defined.key"), leaf.key_pem()).unwrap();
    std::fs::write(d.dir.path("tls/user-defined.crt"), leaf.cert_pem()).unwrap();
    password_device(&d.dir, SESSION, "custom");
    assert_ok(&path, &["(https, device TLS custom)"]);
}

#[test]
fn a_listener_bound_to_one_address_is_probed_there() {
    let dir = TempDir::new();
    let port = free_port("127.0.0.2");
    let path = config(&dir, &format!("\"127.0.0.2:{port}\""), "");
    dir.write("kvm_config.json", &no_password_mode());
    let _d = Daemon::start_with(dir, &path);
    assert_ok(&path, &[&format!("listen_addr 127.0.0.2:{port} (http)")]);
}

/// Metrics moved to the metrics service: the general listener answers,
/// and the metrics service shows the configured certificate. With mTLS the
/// probe holds no client certificate, so the handshake is all it asks.
#[test]
fn the_metrics_service_is_probed_with_its_certificate() {
    for mtls in [false, true] {
        let dir = TempDir::new();
        let ca = pki::ca("board CA");
        let server = pki::leaf(&ca, "jetkvm.local", &["jetkvm.local"], false, 0, 30);
        let client_ca = pki::ca("prometheus CA");
        std::fs::write(dir.path("server.crt"), server.cert_pem()).unwrap();
        std::fs::write(dir.path("server.key"), server.key_pem()).unwrap();
        std::fs::write(dir.path("clients.pem"), client_ca.cert_pem()).unwrap();
        let (general, metrics) = (free_port("127.0.0.1"), free_port("127.0.0.1"));
        let mut extra = format!(
            "[metrics_service]\nenabled = true\nlisten_addr = \"127.0.0.1:{metrics}\"\nmtls = {mtls}\n\
             [[metrics_service.keypairs]]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            dir.path("server.crt").display(),
            dir.path("server.key").display()
        );
        if mtls {
            extra = extra.replace(
                "mtls = true\n",
                &format!("mtls = true\nca_certs = [\"{}\"]\n", dir.path("clients.pem").display()),
            );
        }
        let path = config(&dir, &format!("\"0.0.0.0:{general}\""), &extra);
        dir.write("kvm_config.json", &no_password_mode());
        let d = Daemon::start_with(dir, &path);
        let want = if mtls {
            format!("metrics_service 127.0.0.1:{metrics} (mtls) served its configured certificate")
        } else {
            format!("metrics_service 127.0.0.1:{metrics} (https) answered")
        };
        assert_ok(&path, &[&want]);

        // Another certificate in the configured files than the daemon
        // serves (it keeps the one it loaded while a new one is torn): the
        // probe says so.
        let other = pki::leaf(&ca, "jetkvm.local", &["jetkvm.local"], false, 0, 30);
        let probe_dir = TempDir::new();
        std::fs::write(probe_dir.path("server.crt"), other.cert_pem()).unwrap();
        let moved = with_path(&probe_dir, &path, &d.dir.path("server.crt"), &probe_dir.path("server.crt"));
        assert_fails(&moved, "the certificate served is not the configured one");
    }
}

/// What a probe must not take for the daemon: nothing listening, a daemon
/// of another version (the old slot's, or another program), and a device
/// certificate that is not the one the daemon serves.
#[test]
fn the_probe_refuses_what_is_not_this_daemon() {
    let dir = TempDir::new();
    let port = free_port("127.0.0.1");
    let path = config(&dir, &format!("\"127.0.0.1:{port}\""), "");
    password_device(&dir, SESSION, "");
    assert_fails(&path, &format!("probe: listen_addr 127.0.0.1:{port} (http): "));

    let d = Daemon::start_with(dir, &path);
    let other = d.dir.write("version.other", "0.4.9\n");
    let newer = with_path(&d.dir, &path, &fixtures().join("version"), &other);
    assert_fails(&newer, "/healthz answered version \"0.4.8\", this system is \"0.4.9\"");

    // The device's certificate on disk differs from the one the daemon
    // serves.
    password_device(&d.dir, SESSION, "self-signed");
    self_signed(&d.dir.path("tls"));
    assert_ok(&path, &["(https, device TLS self-signed)"]);
    let elsewhere = TempDir::new();
    self_signed(&elsewhere.0);
    let moved = with_path(&elsewhere, &path, &d.dir.path("tls"), &elsewhere.0);
    assert_fails(&moved, "the certificate served is not the configured one");

    // A configuration the daemon's parser refuses stops the probe the
    // same way, with the daemon's own line.
    let bad = d.dir.write("bad.toml", "listen_addr = \"nowhere\"\n");
    assert_fails(&bad, "key \"listen_addr\": \"nowhere\" is not an IP:port socket address");
}

/// `/healthz` tells the version only to a client on the device; elsewhere
/// it stays `ok`. (Loopback here is the device; the emulated board checks
/// a client from the LAN.)
#[test]
fn healthz_tells_the_version_on_the_device() {
    let dir = TempDir::new();
    let port = free_port("127.0.0.1");
    let path = config(&dir, &format!("\"127.0.0.1:{port}\""), "");
    let d = Daemon::start_with(dir, &path);
    let r = d.get("/healthz", &[]);
    assert_eq!((r.status, r.text().as_str()), (200, "ok 0.4.8\n"));
}

/// `probe --require-app`, which a stock system's hook asks before it keeps
/// a slot: the daemon answering is not enough; every role of the app must
/// run (the board's stand-in app, built for this host).
#[test]
fn require_app_keeps_a_slot_only_with_the_app_running_whole() {
    let app = crate::app_processes::App::start("p", "one_binary", true);
    let dir = TempDir::new();
    let port = free_port("127.0.0.1");
    dir.write("kvm_config.json", &no_password_mode());
    let config = config(&dir, &format!("\"127.0.0.1:{port}\""), &app.config());
    let _d = Daemon::start_with(dir, &config);
    let run = || {
        let out =
            Command::new(BIN).args(["probe", "--require-app", "--config"]).arg(&config).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    // (Its processes start in the first moments; the probe looks once.)
    let end = std::time::Instant::now() + std::time::Duration::from_secs(12);
    let whole = loop {
        let (code, said) = run();
        if code == Some(0) || std::time::Instant::now() > end {
            break said;
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    assert!(whole.contains("the app runs: supervisor, app, native (one_binary)"), "{whole}");
    app.set("hold-native", true);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    unsafe { libc::kill(app.pid_of("[native") as i32, libc::SIGKILL) };
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (code, said) = run();
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("the app does not run whole: native down (one_binary)"), "{said}");
    // Only an option of probe.
    let out = Command::new(BIN).args(["check-config", "--require-app"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}
