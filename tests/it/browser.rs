//! A real browser: headless Chromium that got the device's session cookie
//! from a page on another port of the same host reads `/metrics`, as a
//! browser logged in to the device's web UI would.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;

use bcrypt::Version;

use crate::util::*;

const SESSION: &str = "0b6f3c52-7d1e-4a8b-9c2d-5e6f7a8b9c0d";

/// Serves one page that sets the `authToken` cookie (as the device's web UI
/// does at login) and redirects to `target`.
fn login_page(target: String) -> (std::net::SocketAddr, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let h = std::thread::spawn(move || {
        // Chromium may open a spare connection; answer the first request.
        for mut s in l.incoming().flatten().take(2) {
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            if n == 0 {
                continue;
            }
            let resp = format!(
                "HTTP/1.1 302 Found\r\nSet-Cookie: authToken={SESSION}; Path=/; HttpOnly; SameSite=Strict\r\n\
                 Location: {target}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let _ = s.write_all(resp.as_bytes());
            break;
        }
    });
    (addr, h)
}

fn chromium_dump(url: &str) -> String {
    let profile = TempDir::new();
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.0.display()))
        .args(["--dump-dom", url])
        .output()
        .expect("chromium (Debian package chromium) must be installed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_browser_with_the_device_session_cookie_reads_metrics() {
    let d = Daemon::start("", Some(&password_mode(&hash("pw", Version::TwoA, 4), SESSION)));
    let metrics = format!("http://127.0.0.1:{}/metrics", d.addr.port());

    // Without the cookie: refused. (Headless Chromium renders nothing for
    // a 401 carrying a basic-auth challenge; the daemon's count says what
    // it answered.)
    let dom = chromium_dump(&metrics);
    assert!(!dom.contains("jetkvm_exporter_build_info"), "{dom}");
    let log = d.wait_log("missing_credentials");
    assert!(log.contains("refused /metrics from 127.0.0.1"), "{log}");

    // "Log in" on another port of the same host, then follow to /metrics.
    let (login, server) = login_page(metrics.clone());
    let dom = chromium_dump(&format!("http://127.0.0.1:{}/login", login.port()));
    server.join().unwrap();
    assert!(dom.contains("jetkvm_exporter_build_info"), "{dom}");
    let t = d.get("/metrics", &[("Cookie", &format!("authToken={SESSION}"))]).text();
    assert_eq!(sample(&t, "jetkvm_exporter_auth_successes_total{method=\"cookie\"}"), Some(2.0));
    assert!(
        sample(&t, "jetkvm_exporter_auth_failures_total{reason=\"missing_credentials\"}").unwrap() >= 1.0
    );
}
