use bcrypt::Version;

use crate::util::*;

const SESSION: &str = "4c0a7f3e-8a9b-4e1d-9f6c-2b7d5e3a1c90";

fn refused(r: &Resp) {
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.header("www-authenticate"), Some("Basic realm=\"JetKVM\""));
    assert_eq!(r.text(), "unauthorized\n", "a refusal must not explain itself");
}

#[test]
fn password_mode_accepts_device_password_in_every_bcrypt_form() {
    for version in [Version::TwoA, Version::TwoB, Version::TwoY] {
        let d = Daemon::start("", Some(&password_mode(&hash("hunter2", version.clone(), 4), SESSION)));
        let r = d.get("/metrics", &[("Authorization", &basic("admin", "hunter2"))]);
        assert_eq!(r.status, 200, "{version:?}");
        // The username is ignored, as on the device.
        let r = d.get("/metrics", &[("Authorization", &basic("", "hunter2"))]);
        assert_eq!(r.status, 200);
        assert_eq!(
            d.sample(
                "jetkvm_exporter_auth_successes_total{method=\"password\"}",
                &[("Authorization", &basic("x", "hunter2"))]
            ),
            3.0
        );
    }
}

#[test]
fn device_cost_10_hash_verifies_once_then_is_remembered() {
    // The device's own form: Go writes $2a$ at cost 10.
    let d = Daemon::start("", Some(&password_mode(&hash("s3cret pass", Version::TwoA, 10), "")));
    for _ in 0..5 {
        assert_eq!(d.get("/metrics", &[("Authorization", &basic("admin", "s3cret pass"))]).status, 200);
    }
    refused(&d.get("/metrics", &[("Authorization", &basic("admin", "s3cret pas"))]));
}

#[test]
fn password_mode_refusals_are_401_and_counted_by_reason() {
    let d = Daemon::start("", Some(&password_mode(&hash("right", Version::TwoA, 4), SESSION)));
    refused(&d.get("/metrics", &[]));
    refused(&d.get("/metrics", &[("Authorization", &basic("admin", "wrong"))]));
    refused(&d.get("/metrics", &[("Authorization", &basic("admin", "wrong"))]));
    refused(&d.get("/metrics", &[("Cookie", "authToken=not-the-session")]));
    refused(&d.get("/metrics", &[("Authorization", "Digest username=x")]));
    // 73 bytes whose first 72 would match a truncating bcrypt.
    let long = "a".repeat(73);
    let d2 = Daemon::start("", Some(&password_mode(&hash(&long[..72], Version::TwoA, 4), "")));
    refused(&d2.get("/metrics", &[("Authorization", &basic("admin", &long))]));
    assert_eq!(d2.get("/metrics", &[("Authorization", &basic("admin", &long[..72]))]).status, 200);
    assert_eq!(
        d2.sample(
            "jetkvm_exporter_auth_failures_total{reason=\"password_too_long\"}",
            &[("Authorization", &basic("a", &long[..72]))]
        ),
        1.0
    );

    let ok = [("Authorization", basic("admin", "right"))];
    let ok: Vec<(&str, &str)> = ok.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let text = d.get("/metrics", &ok).text();
    for (reason, n) in [
        ("missing_credentials", 1.0),
        ("bad_password", 2.0),
        ("bad_cookie", 1.0),
        ("unsupported_scheme", 1.0),
    ] {
        assert_eq!(
            sample(&text, &format!("jetkvm_exporter_auth_failures_total{{reason=\"{reason}\"}}")),
            Some(n),
            "{reason}"
        );
    }
}

#[test]
fn session_cookie_is_accepted_only_while_it_is_the_device_token() {
    let d = Daemon::start("", Some(&password_mode(&hash("pw", Version::TwoA, 4), SESSION)));
    let cookie = format!("theme=dark; authToken={SESSION}");
    assert_eq!(d.get("/metrics", &[("Cookie", &cookie)]).status, 200);
    // A wrong cookie does not stop a good password from working, and vice versa.
    assert_eq!(
        d.get("/metrics", &[("Cookie", "authToken=x"), ("Authorization", &basic("", "pw"))]).status,
        200
    );
    assert_eq!(d.get("/metrics", &[("Cookie", &cookie), ("Authorization", &basic("", "bad"))]).status, 200);
    // Logged out: the device empties local_auth_token.
    rewrite_in_place(&d.device_config(), &password_mode(&hash("pw", Version::TwoA, 4), ""));
    refused(&d.get("/metrics", &[("Cookie", &cookie)]));
    refused(&d.get("/metrics", &[("Cookie", "authToken=")]));
    refused(&d.get("/metrics", &[("Cookie", "authToken=\"\"")]));
}

#[test]
fn no_password_mode_passes_everything() {
    let d = Daemon::start("", Some(&no_password_mode()));
    assert_eq!(d.get("/metrics", &[]).status, 200);
    assert_eq!(d.get("/metrics", &[("Authorization", &basic("x", "anything"))]).status, 200);
    assert_eq!(d.get("/metrics", &[("Authorization", "Basic !!!")]).status, 200);
    assert_eq!(d.sample("jetkvm_exporter_auth_successes_total{method=\"no_password\"}", &[]), 4.0);
    assert_eq!(d.sample("jetkvm_exporter_device_config_load_success", &[]), 1.0);
}

/// Regression: in no-password mode only `/settings` checked the `Host`, so
/// a site that rebinds its own name to the device's address could read
/// `/metrics` from a visitor's browser. Every route answers only the names
/// the device is known by there; with a password, credentials guard it.
#[test]
fn no_password_mode_answers_only_the_names_the_device_is_known_by() {
    let d = Daemon::start("host_names = [\"kvm.example.org\"]\n", Some(&no_password_mode()));
    let get = |host: &str, path: &str| {
        raw(d.addr, format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
    };
    let system = nix::unistd::gethostname().unwrap().into_string().unwrap();
    let port = d.addr.port();
    for host in [
        format!("127.0.0.1:{port}"),
        "[::1]".to_owned(),
        format!("{system}.local:{port}"),
        system.clone(),
        "jetkvm.local".to_owned(),
        format!("KVM.example.org:{port}"),
    ] {
        assert_eq!(get(&host, "/metrics").status, 200, "{host}");
    }
    for path in ["/metrics", "/", "/healthz", "/settings"] {
        let r = get(&format!("attacker.example:{port}"), path);
        assert_eq!(r.status, 403, "{path}");
        assert!(!r.text().contains("jetkvm_"), "{path}");
    }
    // The name of a certificate the device issued (for any name asked) is
    // not one it is known by.
    assert_eq!(get("jetkvm.attacker.example", "/metrics").status, 403);
    let failures = d.sample("jetkvm_exporter_auth_failures_total{reason=\"cross_site_request\"}", &[]);
    assert_eq!(failures, 5.0);
    assert!(d.wait_log("refused /metrics from").contains("cross_site_request (host)"));

    // With a password, the credential is what guards: any name.
    let h = hash("device-password", bcrypt::Version::TwoA, 4);
    rewrite_in_place(&d.device_config(), &password_mode(&h, ""));
    let r = raw(
        d.addr,
        format!(
            "GET /metrics HTTP/1.1\r\nHost: attacker.example\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
            basic("admin", "device-password")
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 200);
}

#[test]
fn fails_closed_on_every_unusable_device_state() {
    let h = hash("pw", Version::TwoA, 4);
    let full = password_mode(&h, SESSION);
    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing", None),
        ("empty", Some(String::new())),
        ("half-written", Some(full[..full.len() / 2].to_owned())),
        ("not json", Some("localAuthMode=noPassword\n".into())),
        ("array", Some("[]".into())),
        (
            "not set up",
            Some("{\"localAuthMode\": \"\", \"hashed_password\": \"\", \"local_auth_token\": \"\"}".into()),
        ),
        ("mode absent", Some("{\"hashed_password\": \"\"}".into())),
        ("unknown mode", Some("{\"localAuthMode\": \"nopassword\"}".into())),
    ];
    for (name, content) in cases {
        let d = Daemon::start("", content.as_deref());
        let creds = basic("admin", "pw");
        let cookie = format!("authToken={SESSION}");
        for headers in [vec![], vec![("Authorization", creds.as_str())], vec![("Cookie", cookie.as_str())]] {
            let r = d.get("/metrics", &headers);
            assert_eq!(r.status, 401, "{name}: {headers:?}");
        }
    }
    // Unreadable: a directory where the file should be.
    let d = Daemon::start("", None);
    std::fs::create_dir(d.device_config()).unwrap();
    refused(&d.get("/metrics", &[]));
    let log = d.wait_log("unreadable");
    assert!(log.contains("unreadable: is a directory"), "{log}");
}

#[test]
fn password_mode_with_unusable_hash_refuses_basic_but_not_session() {
    let d = Daemon::start(
        "",
        Some(&password_mode("$2x$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy", SESSION)),
    );
    refused(&d.get("/metrics", &[("Authorization", &basic("", ""))]));
    assert_eq!(d.get("/metrics", &[("Cookie", &format!("authToken={SESSION}"))]).status, 200);
}

#[test]
fn malformed_headers_get_400_and_are_counted() {
    let d = Daemon::start("", Some(&password_mode(&hash("pw", Version::TwoA, 4), SESSION)));
    for bad in ["Basic", "Basic !!!", "Basic dXNlcg==", "Bearer", "Bearer a b"] {
        let r = d.get("/metrics", &[("Authorization", bad)]);
        assert_eq!(r.status, 400, "{bad}");
    }
    let r = raw(
        d.addr,
        b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic \xff\xfe\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 400);
    let r = raw(
        d.addr,
        b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nCookie: authToken=\xff\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 400);
    let r = d.get("/metrics", &[("Authorization", "Basic Onh4"), ("Authorization", "Basic Onh4")]);
    assert_eq!(r.status, 400);
    let cookie = format!("authToken={SESSION}");
    let text = d.get("/metrics", &[("Cookie", &cookie)]).text();
    assert_eq!(
        sample(&text, "jetkvm_exporter_auth_failures_total{reason=\"malformed_authorization\"}"),
        Some(7.0)
    );
    assert_eq!(sample(&text, "jetkvm_exporter_auth_failures_total{reason=\"malformed_cookie\"}"), Some(1.0));
}

#[test]
fn secrets_never_reach_the_log() {
    let d = Daemon::start("", Some(&password_mode(&hash("correct horse", Version::TwoA, 4), SESSION)));
    d.get("/metrics", &[("Authorization", &basic("admin", "correct horse"))]);
    d.get("/metrics", &[("Authorization", &basic("admin", "battery staple"))]);
    d.get("/metrics", &[("Cookie", &format!("authToken={SESSION}"))]);
    d.get("/metrics", &[("Cookie", "authToken=guessed-token")]);
    let log = d.wait_log("bad_cookie");
    assert!(log.contains("refused /metrics from 127.0.0.1"), "{log}");
    for secret in ["correct horse", "battery staple", SESSION, "guessed-token", "$2a$", "Y29ycmVjdCBob3JzZ"] {
        assert!(!log.contains(secret), "{secret} in log:\n{log}");
    }
}

#[test]
fn landing_page_and_health_need_no_auth_and_reveal_nothing() {
    let d = Daemon::start("", Some(&password_mode(&hash("pw", Version::TwoA, 4), SESSION)));
    let r = d.get("/", &[]);
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    assert!(r.text().contains("href=\"/metrics\""));
    for leak in ["password", "0.1", "Password", "jetkvm_"] {
        assert!(!r.text().contains(leak), "{leak}");
    }
    let r = d.get("/healthz", &[]);
    assert_eq!((r.status, r.text().as_str()), (200, "ok\n"));
}

/// Passwords and tokens, right and wrong, leave nothing behind in the
/// daemon's memory once their connections are closed: not the plaintext,
/// and not the raw `Authorization` header (base64 of `user:password`, the
/// bearer token) that the HTTP layer read.
#[test]
fn presented_secrets_are_wiped_after_use() {
    let d = Daemon::start("", Some(&password_mode(&hash("pw", Version::TwoA, 4), "")));
    let token = new_token(&d);
    let secrets = presented_secrets(&token);
    let hashed = hash(&secrets.right, Version::TwoA, 4);
    rewrite_in_place(&d.device_config(), &password_mode(&hashed, ""));
    for _ in 0..3 {
        for (header, status) in secrets.headers() {
            assert_eq!(d.get("/metrics", &[("Authorization", &header)]).status, status, "{header}");
        }
    }
    assert_wiped(d.child.id(), &hashed, &secrets);
}
