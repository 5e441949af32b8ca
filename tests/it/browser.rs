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

/// Headless, offline, nothing in the background.
const CHROMIUM: [&str; 9] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
];

fn chromium_dump(url: &str) -> String {
    let profile = TempDir::new();
    let out = Command::new("chromium")
        .args(CHROMIUM)
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

/// Chromium driven over the DevTools protocol on a pipe
/// (`--remote-debugging-pipe`: it reads commands on fd 3 and writes on fd
/// 4, each message NUL-terminated JSON). Clicks are real mouse events on
/// the page's buttons: the page works without JavaScript.
struct Browser {
    child: std::process::Child,
    to: std::fs::File,
    from: std::sync::mpsc::Receiver<serde_json::Value>,
    next_id: u64,
    session: Option<String>,
    events: Vec<serde_json::Value>,
    _profile: TempDir,
}

fn cloexec_pipe() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    unsafe { (std::os::fd::OwnedFd::from_raw_fd(fds[0]), std::os::fd::OwnedFd::from_raw_fd(fds[1])) }
}

impl Browser {
    fn launch() -> Browser {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let profile = TempDir::new();
        let (cmd_read, cmd_write) = cloexec_pipe();
        let (evt_read, evt_write) = cloexec_pipe();
        let (r, w) = (cmd_read.as_raw_fd(), evt_write.as_raw_fd());
        let mut command = Command::new("chromium");
        command
            .args(CHROMIUM)
            .args(["--hide-scrollbars", "--window-size=1000,1100", "--remote-debugging-pipe"])
            .arg(format!("--user-data-dir={}", profile.0.display()))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        // dup2 clears close-on-exec on the copies: only fds 3 and 4 reach
        // the browser. Copied above 9 first: a pipe end may itself be 3 or
        // 4 (dup2 onto itself keeps close-on-exec, or the second clobbers
        // the first).
        unsafe {
            command.pre_exec(move || {
                let (r, w) = (libc::fcntl(r, libc::F_DUPFD, 10), libc::fcntl(w, libc::F_DUPFD, 10));
                if r < 0 || w < 0 || libc::dup2(r, 3) < 0 || libc::dup2(w, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("chromium (Debian package chromium) must be installed");
        drop((cmd_read, evt_write));
        let (tx, from) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = std::io::BufReader::new(std::fs::File::from(evt_read));
            let mut buf = Vec::new();
            while std::io::BufRead::read_until(&mut reader, 0, &mut buf).unwrap_or(0) > 0 {
                buf.pop_if(|b| *b == 0);
                if let Ok(v) = serde_json::from_slice(&buf) {
                    if tx.send(v).is_err() {
                        return;
                    }
                }
                buf.clear();
            }
        });
        let mut b = Browser {
            child,
            to: std::fs::File::from(cmd_write),
            from,
            next_id: 0,
            session: None,
            events: Vec::new(),
            _profile: profile,
        };
        let target = b.call("Target.createTarget", serde_json::json!({"url": "about:blank"}));
        let target = target["targetId"].as_str().unwrap().to_owned();
        let attached =
            b.call("Target.attachToTarget", serde_json::json!({"targetId": target, "flatten": true}));
        b.session = Some(attached["sessionId"].as_str().unwrap().to_owned());
        b.call("Page.enable", serde_json::json!({}));
        b
    }

    fn recv(&mut self) -> serde_json::Value {
        self.from.recv_timeout(std::time::Duration::from_secs(30)).expect("chromium stopped answering")
    }

    fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = serde_json::json!({"id": id, "method": method, "params": params});
        if let Some(s) = &self.session {
            msg["sessionId"] = serde_json::Value::String(s.clone());
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to.write_all(&bytes).unwrap();
        loop {
            let v = self.recv();
            if v["id"].as_u64() == Some(id) {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
            self.events.push(v);
        }
    }

    /// Waits for the page's next load (events from before are dropped by
    /// the caller through `expect_load`).
    fn wait_load(&mut self) {
        loop {
            if let Some(i) = self.events.iter().position(|e| e["method"] == "Page.loadEventFired") {
                self.events.remove(i);
                return;
            }
            let v = self.recv();
            self.events.push(v);
        }
    }

    fn expect_load(&mut self) {
        self.events.retain(|e| e["method"] != "Page.loadEventFired");
    }

    fn navigate(&mut self, url: &str) {
        self.expect_load();
        self.call("Page.navigate", serde_json::json!({"url": url}));
        self.wait_load();
    }

    fn html(&mut self) -> String {
        let doc = self.call("DOM.getDocument", serde_json::json!({"depth": -1}));
        let root = doc["root"]["nodeId"].clone();
        self.call("DOM.getOuterHTML", serde_json::json!({"nodeId": root}))["outerHTML"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// A left click in the middle of the element, then the page it loads.
    fn click(&mut self, selector: &str) {
        let doc = self.call("DOM.getDocument", serde_json::json!({}));
        let node = self.call(
            "DOM.querySelector",
            serde_json::json!({"nodeId": doc["root"]["nodeId"], "selector": selector}),
        )["nodeId"]
            .clone();
        assert_ne!(node, 0, "{selector} not on the page");
        let quad =
            self.call("DOM.getBoxModel", serde_json::json!({"nodeId": node}))["model"]["content"].clone();
        let q: Vec<f64> = quad.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let (x, y) = ((q[0] + q[4]) / 2.0, (q[1] + q[5]) / 2.0);
        self.expect_load();
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                serde_json::json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
            );
        }
        self.wait_load();
    }

    fn screenshot(&mut self) -> Vec<u8> {
        use base64::Engine;
        let shot = self.call("Page.captureScreenshot", serde_json::json!({"format": "png"}));
        base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().unwrap()).unwrap()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Serves `page` as HTML to a few connections on another port: another
/// site, as far as the daemon is concerned.
fn other_site(page: String) -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten().take(4) {
            let mut buf = [0u8; 4096];
            if s.read(&mut buf).unwrap_or(0) == 0 {
                continue;
            }
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                page.len()
            );
            let _ = s.write_all(resp.as_bytes());
        }
    });
    addr
}

/// The text of the element with `id`.
fn element(page: &str, id: &str) -> Option<String> {
    let start = page.find(&format!("id=\"{id}\""))?;
    let open = start + page[start..].find('>')? + 1;
    let close = open + page[open..].find("</")?;
    Some(page[open..close].to_owned())
}

#[test]
fn the_settings_page_in_a_browser_manages_the_token_and_refuses_another_site() {
    let d = Daemon::start("", Some(&password_mode(&hash("pw", Version::TwoA, 4), SESSION)));
    let settings = format!("http://127.0.0.1:{}/settings", d.addr.port());
    let bearer = |t: &str| format!("Bearer {t}");
    let mut b = Browser::launch();

    // Log in on the device (another port, same host), land on the page.
    let (login, server) = login_page(settings.clone());
    b.navigate(&format!("http://127.0.0.1:{}/login", login.port()));
    server.join().unwrap();
    let page = b.html();
    assert_eq!(element(&page, "token-state").as_deref(), Some("No token is set."), "{page}");

    // Create: the token is on the page this once, and it scrapes.
    b.click("#create");
    let page = b.html();
    let first = element(&page, "new-token").unwrap_or_else(|| panic!("no new token in {page}"));
    let shot = b.screenshot();
    assert!(shot.starts_with(b"\x89PNG") && shot.len() > 10_000, "{} bytes", shot.len());
    let file = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("settings.png");
    std::fs::write(&file, &shot).unwrap();
    eprintln!("screenshot: {}", file.display());
    assert_eq!(d.get("/metrics", &[("Authorization", &bearer(&first))]).status, 200);
    b.navigate(&settings);
    let page = b.html();
    assert!(!page.contains(&first), "shown once");
    assert!(element(&page, "token-state").unwrap().starts_with("A token is set, since"), "{page}");

    // Rotate: the old token is refused from the next request on.
    b.click("#create");
    let second = element(&b.html(), "new-token").unwrap();
    assert_ne!(first, second);
    assert_eq!(d.get("/metrics", &[("Authorization", &bearer(&first))]).status, 401);
    assert_eq!(d.get("/metrics", &[("Authorization", &bearer(&second))]).status, 200);

    // Another site posts the form, even with this session's anti-CSRF
    // value, and the browser sends the device's cookie along: refused.
    b.navigate(&settings);
    let page = b.html();
    let at = page.find("name=\"csrf\" value=\"").unwrap() + "name=\"csrf\" value=\"".len();
    let csrf = &page[at..at + 64];
    let stored = std::fs::read(d.dir.path("token.sha256")).unwrap();
    let attack = format!(
        "<!DOCTYPE html><html><body onload=\"document.forms[0].submit()\">\
         <form method=\"post\" action=\"{settings}/token\">\
         <input type=\"hidden\" name=\"action\" value=\"create\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         </form></body></html>"
    );
    let site = other_site(attack);
    b.navigate(&format!("http://127.0.0.1:{}/", site.port()));
    b.wait_load(); // the auto-submitted form's answer
    let answer = b.html();
    assert!(answer.contains("forbidden"), "{answer}");
    assert_eq!(std::fs::read(d.dir.path("token.sha256")).unwrap(), stored, "the token did not change");
    assert_eq!(d.get("/metrics", &[("Authorization", &bearer(&second))]).status, 200);
    let cookie = format!("authToken={SESSION}");
    // Refused for where it came from, after the cookie was accepted.
    assert_eq!(
        d.sample(
            "jetkvm_exporter_auth_failures_total{reason=\"cross_site_request\"}",
            &[("Cookie", &cookie)]
        ),
        1.0
    );

    // Revoke.
    b.navigate(&settings);
    b.click("#revoke");
    assert_eq!(element(&b.html(), "done").as_deref(), Some("Token revoked."));
    assert_eq!(d.get("/metrics", &[("Authorization", &bearer(&second))]).status, 401);
}
