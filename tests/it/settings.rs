//! The settings page over HTTP: who may see it, what it shows, the token's
//! create / rotate / revoke, and every cross-site refusal.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bcrypt::Version;

use crate::util::*;

const SESSION: &str = "4d2c1b0a-9e8f-4a7b-8c6d-5e4f3a2b1c0d";

fn cookie() -> (&'static str, String) {
    ("Cookie", format!("authToken={SESSION}"))
}

/// The value of the anti-CSRF field in a page.
fn csrf(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a form with csrf") + "name=\"csrf\" value=\"".len();
    page[at..].split('"').next().unwrap().to_owned()
}

/// The text of the element with `id` (`<pre id=..>` and the like).
fn element(page: &str, id: &str) -> Option<String> {
    let start = page.find(&format!("id=\"{id}\""))?;
    let open = start + page[start..].find('>')? + 1;
    let close = open + page[open..].find("</")?;
    Some(page[open..close].replace("&quot;", "\"").replace("&#39;", "'").replace("&amp;", "&"))
}

fn origin(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

fn post(d: &Daemon, headers: &[(&str, &str)], body: &str) -> Resp {
    post_form(d.addr, "/settings/token", headers, body)
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

fn counter(d: &Daemon, series: &str) -> f64 {
    let (k, v) = cookie();
    d.sample(series, &[(k, &v)])
}

#[test]
fn only_the_device_credentials_open_the_page_and_refusals_reveal_nothing() {
    let d = Daemon::start("", Some(&password_mode(&hash("pw", Version::TwoA, 4), SESSION)));
    let (k, v) = cookie();

    for (headers, reason) in [
        (vec![], "missing_credentials"),
        (vec![("Cookie", "authToken=not-the-session".to_owned())], "bad_cookie"),
        (vec![("Authorization", basic("admin", "wrong"))], "bad_password"),
    ] {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = d.get("/settings", &h);
        assert_eq!(r.status, 401, "{reason}");
        assert_eq!(r.header("WWW-Authenticate"), Some("Basic realm=\"JetKVM\""));
        let body = r.text();
        for secret in ["csrf", "token", "Listeners", "scrape_configs", "127.0.0.1"] {
            assert!(!body.contains(secret), "401 page shows {secret}: {body}");
        }
        assert_eq!(r.header("Cache-Control"), Some("no-store"));
        assert_eq!(r.header("X-Frame-Options"), Some("DENY"));
        assert!(r.header("Content-Security-Policy").unwrap().contains("frame-ancestors 'none'"));
        let log = d.wait_log(&format!(": {reason}"));
        assert!(
            log.lines().any(|l| l.contains("refused /settings from 127.0.0.1") && l.ends_with(reason)),
            "{log}"
        );
    }
    // The form is behind the same door. (The CA is public: with the
    // device's TLS off there is none.)
    assert_eq!(d.get("/settings/ca.crt", &[]).status, 404);
    assert_eq!(post(&d, &[("Origin", &origin(d.addr))], "action=create&csrf=00").status, 401);
    assert!(!d.dir.path("token.sha256").exists());

    for headers in [vec![(k, v.clone())], vec![("Authorization", basic("admin", "pw"))]] {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = d.get("/settings", &h);
        assert_eq!(r.status, 200);
        let page = r.text();
        assert_eq!(element(&page, "token-state").unwrap(), "No token is set.");
        assert!(page.contains("id=\"listener-general\""), "{page}");
        assert!(element(&page, "plain-warning").unwrap().contains("plain HTTP"), "{page}");
        assert_eq!(csrf(&page).len(), 64);
        // Strict headers; no script, no third-party asset.
        assert_eq!(r.header("Cache-Control"), Some("no-store"));
        assert_eq!(r.header("X-Frame-Options"), Some("DENY"));
        let csp = r.header("Content-Security-Policy").unwrap();
        assert!(csp.starts_with("default-src 'none'; style-src 'sha256-"), "{csp}");
        assert!(csp.contains("form-action 'self'") && csp.contains("base-uri 'none'"), "{csp}");
        assert!(!page.contains("<script") && !page.contains("src=") && !page.contains("https://"), "{page}");
    }

    // The read-only credentials never open it.
    let token = new_token(&d);
    assert_eq!(d.get("/metrics", &[("Authorization", &bearer(&token))]).status, 200);
    assert_eq!(d.get("/settings", &[("Authorization", &bearer(&token))]).status, 401);
    assert_eq!(d.get("/settings", &[("Authorization", &basic("prometheus", &token))]).status, 401);
    let t = d.get("/metrics", &[(k, &v)]).text();
    assert_eq!(sample(&t, "jetkvm_exporter_auth_failures_total{reason=\"read_only_credential\"}"), Some(2.0));
    assert_eq!(sample(&t, "jetkvm_exporter_auth_successes_total{method=\"cookie\"}"), Some(2.0));
    assert_eq!(sample(&t, "jetkvm_exporter_auth_successes_total{method=\"password\"}"), Some(1.0));
}

#[test]
fn create_rotate_revoke_from_the_page_take_effect_at_once() {
    let d = Daemon::start("", Some(&password_mode(&hash("pw", Version::TwoA, 4), SESSION)));
    let (k, v) = cookie();
    let o = origin(d.addr);
    let page = d.get("/settings", &[(k, &v)]).text();
    let form = format!("action=create&csrf={}", csrf(&page));

    let r = post(&d, &[(k, &v), ("Origin", &o)], &form);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("Cache-Control"), Some("no-store"));
    let first = element(&r.text(), "new-token").expect("the new token, once");
    assert!(first.starts_with("jkm_"), "{first}");
    assert_eq!(d.get("/metrics", &[("Authorization", &bearer(&first))]).status, 200);

    // Shown once: a reload shows that a token is set, never the token.
    let again = d.get("/settings", &[(k, &v)]).text();
    assert!(!again.contains(&first) && element(&again, "new-token").is_none());
    assert!(element(&again, "token-state").unwrap().starts_with("A token is set, since 20"), "{again}");
    assert!(again.contains("id=\"revoke\""));

    // Rotate (from a Referer, without Origin): the old token stops at once.
    let r = post(&d, &[(k, &v), ("Referer", &format!("{o}/settings"))], &form);
    assert_eq!(r.status, 200, "{}", r.text());
    let second = element(&r.text(), "new-token").unwrap();
    assert_ne!(first, second);
    assert_eq!(d.get("/metrics", &[("Authorization", &bearer(&first))]).status, 401);
    assert_eq!(d.get("/metrics", &[("Authorization", &bearer(&second))]).status, 200);

    // Revoke.
    let r = post(&d, &[(k, &v), ("Origin", &o)], &form.replace("create", "revoke"));
    assert_eq!(r.status, 200);
    assert_eq!(element(&r.text(), "done").unwrap(), "Token revoked.");
    assert_eq!(d.get("/metrics", &[("Authorization", &bearer(&second))]).status, 401);
    assert!(!d.dir.path("token.sha256").exists());

    // Logged, never the token.
    let log = d.wait_log("metrics token revoked");
    assert!(log.contains("metrics token created from the settings page by 127.0.0.1"), "{log}");
    assert!(log.contains("metrics token rotated from the settings page by 127.0.0.1"), "{log}");
    assert!(!log.contains(&first) && !log.contains(&second), "{log}");
}

#[test]
fn cross_site_posts_and_wrong_methods_are_refused() {
    let d = Daemon::start("", Some(&password_mode(&hash("pw", Version::TwoA, 4), SESSION)));
    let (k, v) = cookie();
    let o = origin(d.addr);
    let page = d.get("/settings", &[(k, &v)]).text();
    let good = csrf(&page);
    let by_password = csrf(&d.get("/settings", &[("Authorization", &basic("admin", "pw"))]).text());
    assert_ne!(good, by_password, "the value is bound to the credential");

    let refused: Vec<(Vec<(&str, String)>, String)> = vec![
        // Another site, even with the right value.
        (vec![(k, v.clone()), ("Origin", "http://127.0.0.1:1".into())], good.clone()),
        (vec![(k, v.clone()), ("Origin", "null".into())], good.clone()),
        (vec![(k, v.clone()), ("Origin", format!("https://{}.evil.example", d.addr.ip()))], good.clone()),
        (vec![(k, v.clone()), ("Referer", "http://127.0.0.1:1/settings".into())], good.clone()),
        (vec![(k, v.clone()), ("Referer", format!("{o}.evil.example/"))], good.clone()),
        // Neither header.
        (vec![(k, v.clone())], good.clone()),
        // This site without the session's value, or with another's.
        (vec![(k, v.clone()), ("Origin", o.clone())], String::new()),
        (vec![(k, v.clone()), ("Origin", o.clone())], "0".repeat(64)),
        (vec![(k, v.clone()), ("Origin", o.clone())], by_password.clone()),
    ];
    let n = refused.len();
    for (headers, value) in refused {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = post(&d, &h, &format!("action=create&csrf={value}"));
        assert_eq!(r.status, 403, "{headers:?} {}", r.text());
    }
    assert!(!d.dir.path("token.sha256").exists(), "no refused post created a token");
    assert_eq!(counter(&d, "jetkvm_exporter_auth_failures_total{reason=\"cross_site_request\"}"), n as f64);

    // A new session (logout, login) makes the old page's value useless.
    rewrite_in_place(&d.device_config(), &password_mode(&hash("pw", Version::TwoA, 4), "another-session"));
    let r = post(
        &d,
        &[("Cookie", "authToken=another-session"), ("Origin", &o)],
        &format!("action=create&csrf={good}"),
    );
    assert_eq!(r.status, 403);

    // Malformed forms: counted 4xx, no token.
    let c = ("Cookie", "authToken=another-session");
    let fresh = csrf(&d.get("/settings", &[c]).text());
    let before = d.sample("jetkvm_exporter_http_bad_requests_total", &[c]);
    assert_eq!(post(&d, &[c, ("Origin", &o)], &format!("action=delete&csrf={fresh}")).status, 400);
    assert_eq!(post(&d, &[c, ("Origin", &o)], "csrf=1").status, 400);
    let big = format!("action=create&csrf={fresh}&pad={}", "x".repeat(2000));
    assert_eq!(post(&d, &[c, ("Origin", &o)], &big).status, 413);
    let body = format!("action=create&csrf={fresh}");
    let plain = format!(
        "POST /settings/token HTTP/1.1\r\nHost: {}\r\nCookie: authToken=another-session\r\nOrigin: {o}\r\n\
         Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        d.addr,
        body.len()
    );
    assert_eq!(raw(d.addr, plain.as_bytes()).status, 400, "only a urlencoded form");
    assert_eq!(d.sample("jetkvm_exporter_http_bad_requests_total", &[c]), before + 4.0);
    // A body is read only once the credential is admitted.
    assert_eq!(post(&d, &[("Origin", &o)], &big).status, 401);
    assert!(!d.dir.path("token.sha256").exists());

    // HEAD where GET is served.
    let r = raw(d.addr, format!("HEAD /settings HTTP/1.1\r\nHost: {}\r\nCookie: authToken=another-session\r\nConnection: close\r\n\r\n", d.addr).as_bytes());
    assert_eq!(r.status, 200);

    // State changes only by POST, and only there.
    let r = d.get("/settings/token?action=create", &[c]);
    assert_eq!((r.status, r.header("Allow")), (405, Some("POST")));
    let r = post_form(d.addr, "/settings", &[c, ("Origin", &o)], &format!("action=create&csrf={fresh}"));
    assert_eq!((r.status, r.header("Allow")), (405, Some("GET, HEAD")));
    let r = post_form(d.addr, "/metrics", &[c], "");
    assert_eq!((r.status, r.header("Allow")), (405, Some("GET, HEAD")));
    assert!(!d.dir.path("token.sha256").exists());
}

/// The pasted jobs, with their files in `dir`, as `promtool check config`
/// sees them.
fn check_jobs(page: &str, ids: &[&str]) {
    let dir = TempDir::new();
    for f in [
        "jetkvm-token",
        "jetkvm-password",
        "jetkvm-ca.crt",
        "jetkvm-metrics-ca.crt",
        "prometheus.crt",
        "prometheus.key",
    ] {
        dir.write(f, "x\n");
    }
    for id in ids {
        let yaml = element(page, &format!("job-{id}")).unwrap_or_else(|| panic!("job-{id} in {page}"));
        let file =
            dir.write("prometheus.yml", &yaml.replace("/etc/prometheus/", &format!("{}/", dir.0.display())));
        let out =
            std::process::Command::new("promtool").args(["check", "config"]).arg(&file).output().unwrap();
        let said =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{yaml}\n{said}");
    }
}

#[test]
fn pasted_prometheus_jobs_are_valid_for_each_way_in() {
    // Password mode: the token and the device password.
    let d = Daemon::start("", Some(&password_mode(&hash("pw", Version::TwoA, 4), SESSION)));
    let (k, v) = cookie();
    let page = d.get("/settings", &[(k, &v)]).text();
    check_jobs(&page, &["token", "password"]);
    assert!(element(&page, "job-token").unwrap().contains(&format!("127.0.0.1:{}", d.addr.port())));
    assert!(!page.contains("job-mtls"));

    // The device password turned off for metrics: no password job.
    let d = Daemon::start(
        "[auth]\ndevice_password = false\n",
        Some(&password_mode(&hash("pw", Version::TwoA, 4), SESSION)),
    );
    let page = d.get("/settings", &[(k, &v)]).text();
    check_jobs(&page, &["token"]);
    assert!(!page.contains("job-password"));

    // No-password mode: everyone is let in, the job needs nothing.
    let d = Daemon::start("", Some(&no_password_mode()));
    let r = d.get("/settings", &[]);
    assert_eq!(r.status, 200);
    let page = r.text();
    check_jobs(&page, &["open"]);
    assert!(element(&page, "plain-warning").is_none(), "no password to leak");
    let o = origin(d.addr);
    let r = post(&d, &[("Origin", &o)], &format!("action=create&csrf={}", csrf(&page)));
    assert_eq!(r.status, 200);
    assert!(element(&r.text(), "new-token").is_some());
    // Still refused from another site in no-password mode.
    let r = post(&d, &[("Origin", "http://127.0.0.1:1")], &format!("action=create&csrf={}", csrf(&page)));
    assert_eq!(r.status, 403);
    // A name the device does not answer to (a site rebinding its own name
    // to the device's address) is refused there, page and form alike.
    let rebound = format!(
        "GET /settings HTTP/1.1\r\nHost: attacker.example:{}\r\nConnection: close\r\n\r\n",
        d.addr.port()
    );
    let r = raw(d.addr, rebound.as_bytes());
    assert_eq!(r.status, 403);
    assert!(!r.text().contains("csrf"));
    let host = format!("localhost:{}", d.addr.port());
    let named = format!("GET /settings HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    assert_eq!(raw(d.addr, named.as_bytes()).status, 200);
    let jetkvm = b"GET /settings HTTP/1.1\r\nHost: jetkvm.local\r\nConnection: close\r\n\r\n";
    assert_eq!(raw(d.addr, jetkvm).status, 200);
}

#[test]
fn with_an_mtls_metrics_service_the_page_stays_on_the_general_listener() {
    let dir = TempDir::new();
    let ca = pki::ca("metrics CA");
    let server = pki::leaf(&ca, "jetkvm", &["localhost"], false, -1, 30);
    dir.write("ca.crt", &ca.cert_pem());
    dir.write("server.crt", &server.cert_pem());
    dir.write("server.key", &server.key_pem());
    let extra = format!(
        "[metrics_service]\nenabled = true\nlisten_addr = \"127.0.0.1:0\"\nmtls = true\nca_certs = [\"{0}/ca.crt\"]\n\
         [[metrics_service.keypairs]]\ncert_file = \"{0}/server.crt\"\nkey_file = \"{0}/server.key\"\n",
        dir.0.display()
    );
    let d = Daemon::start(&extra, Some(&password_mode(&hash("pw", Version::TwoA, 4), SESSION)));
    let (k, v) = cookie();
    let page = d.get("/settings", &[(k, &v)]).text();
    let row = &page[page.find("id=\"listener-metrics_service\"").unwrap()..];
    assert!(row[..row.find("</tr>").unwrap()].contains("mTLS"), "{page}");
    check_jobs(&page, &["mtls"]);
    assert!(!page.contains("job-token") && !page.contains("job-password"), "only mTLS gets in there");
    let job = element(&page, "job-mtls").unwrap();
    assert!(job.contains(&format!(":{}\"]", d.metrics_addr.unwrap().port())), "{job}");
    // The metrics service has no settings page.
    let c = TlsClient::new(&ca.cert_pem()).with_cert(&pki::leaf(&ca, "prometheus", &["p"], true, -1, 30));
    assert_eq!(c.get(d.metrics_addr.unwrap(), "/settings", &[(k, &v)]).unwrap().resp.status, 404);
}

/// Regression: in no-password mode, 64 connections each sending the form's
/// head (`Content-Length: 1024`, the limit) and no body held every slot,
/// and every new connection was refused. A request waiting for its body
/// counts as idle (the cap may close it for a scrape) and has 5 s for the
/// whole body; another site's post is refused before the body is read.
#[test]
fn form_heads_without_bodies_do_not_hold_the_device() {
    let d = Daemon::start("", Some(&no_password_mode()));
    let head = |origin: &str| {
        format!(
            "POST /settings/token HTTP/1.1\r\nHost: {}\r\nOrigin: {origin}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1024\r\n\r\n",
            d.addr
        )
    };
    // From 64 addresses: one address past max_connections_per_client only
    // pushes out its own.
    let mut flood: Vec<TcpStream> = (0..64)
        .map(|i| {
            let mut s = connect_from(&format!("127.0.1.{}", i + 1), d.addr);
            s.write_all(head(&origin(d.addr)).as_bytes()).unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    assert_eq!(d.get("/metrics", &[]).status, 200, "a scrape beside the flood");
    // Every flood connection ends: closed for the scrape, or 408 at its
    // deadline.
    let mut timed_out = 0;
    for s in &mut flood {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        if parse_response(&buf).is_some_and(|r| r.status == 408) {
            timed_out += 1;
        }
    }
    assert!(started.elapsed() < Duration::from_secs(8), "{:?}", started.elapsed());
    assert!(timed_out >= 60, "{timed_out} of 64 answered 408");

    // Another site's head is refused at once, its body never waited for.
    let mut s = TcpStream::connect(d.addr).unwrap();
    s.write_all(head("http://attacker.example").as_bytes()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).unwrap();
    assert_eq!(parse_response(&buf[..n]).unwrap().status, 403);
}
