use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bcrypt::Version;

use crate::util::*;

#[test]
fn failures_past_the_budget_get_429_without_bcrypt_then_recover_and_others_are_unaffected() {
    let d = Daemon::start(
        "[auth]\nfailure_burst = 3\nfailure_interval = \"1s\"\n",
        Some(&password_mode(&hash("right", Version::TwoA, 4), "sess")),
    );
    let good = basic("admin", "right");
    let bad = basic("admin", "wrong");
    for _ in 0..3 {
        assert_eq!(get_from("127.0.0.2", d.addr, "/metrics", &[("Authorization", &bad)]).status, 401);
    }
    let r = get_from("127.0.0.2", d.addr, "/metrics", &[("Authorization", &bad)]);
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("1"));
    // Over budget, a password nobody verified yet is not checked at all
    // (no bcrypt), even the right one.
    assert_eq!(get_from("127.0.0.2", d.addr, "/metrics", &[("Authorization", &good)]).status, 429);
    assert_eq!(get_from("127.0.0.2", d.addr, "/metrics", &[("Cookie", "authToken=guess")]).status, 429);
    // Another client is not affected, and verifies the password.
    assert_eq!(get_from("127.0.0.3", d.addr, "/metrics", &[("Authorization", &good)]).status, 200);
    // Checks that cost microseconds still pass for the limited client: a
    // remembered password and the session cookie. A misconfigured job does
    // not lock out the good jobs of the same Prometheus.
    assert_eq!(get_from("127.0.0.2", d.addr, "/metrics", &[("Authorization", &good)]).status, 200);
    assert_eq!(get_from("127.0.0.2", d.addr, "/metrics", &[("Cookie", "authToken=sess")]).status, 200);
    // One interval later, a new guess is checked again.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(
        get_from("127.0.0.2", d.addr, "/metrics", &[("Authorization", &basic("a", "wrong2"))]).status,
        401
    );
    let t = d.get("/metrics", &[("Authorization", &good)]).text();
    assert_eq!(sample(&t, "jetkvm_exporter_auth_failures_total{reason=\"rate_limited\"}"), Some(3.0));
    assert_eq!(sample(&t, "jetkvm_exporter_auth_failures_total{reason=\"bad_password\"}"), Some(4.0));
}

#[test]
fn a_flood_of_wrong_passwords_does_not_stop_verified_scrapes() {
    // Cost 10, as on the device: each wrong password really costs bcrypt.
    let d = Daemon::start(
        "[auth]\nfailure_burst = 5\nfailure_interval = \"10s\"\n",
        Some(&password_mode(&hash("right", Version::TwoA, 10), "session-token")),
    );
    let good = basic("admin", "right");
    let (_, out, _) = {
        let o = std::process::Command::new(BIN)
            .args(["token", "new", "--config"])
            .arg(d.dir.path("config.toml"))
            .output()
            .unwrap();
        (o.status, String::from_utf8_lossy(&o.stdout).into_owned(), ())
    };
    let token = format!("Bearer {}", out.trim());
    // Verify the password once, so later scrapes use the remembered result.
    assert_eq!(d.get("/metrics", &[("Authorization", &good)]).status, 200);

    let stop = Arc::new(AtomicBool::new(false));
    let flood_requests = Arc::new(AtomicUsize::new(0));
    let mut flooders = Vec::new();
    for f in 0..8 {
        let stop = stop.clone();
        let n = flood_requests.clone();
        let addr = d.addr;
        flooders.push(std::thread::spawn(move || {
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                // Many source addresses, each a different wrong password.
                let src = format!("127.0.{}.{}", 10 + f, 1 + i % 250);
                let r = get_from(
                    &src,
                    addr,
                    "/metrics",
                    &[("Authorization", &basic("admin", &format!("guess-{f}-{i}")))],
                );
                assert!(matches!(r.status, 401 | 429 | 503), "flood got {}", r.status);
                n.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    let end = Instant::now() + Duration::from_secs(4);
    let mut verified = 0;
    let mut slowest = Duration::ZERO;
    while Instant::now() < end {
        for headers in [
            [("Authorization", good.as_str())],
            [("Authorization", token.as_str())],
            [("Cookie", "authToken=session-token")],
        ] {
            let t0 = Instant::now();
            let r = get_from("127.0.0.2", d.addr, "/metrics", &headers);
            slowest = slowest.max(t0.elapsed());
            assert_eq!(r.status, 200, "verified scrape refused during the flood: {headers:?}");
            verified += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        f.join().unwrap();
    }
    let flood = flood_requests.load(Ordering::Relaxed);
    eprintln!("flood: {flood} wrong-password requests; {verified} verified scrapes, slowest {slowest:?}");
    assert!(flood >= 8 && verified > 10, "flood {flood}, verified {verified}");
    assert!(d.child.id() > 0);
    let t = d.get("/metrics", &[("Authorization", &good)]).text();
    assert!(sample(&t, "jetkvm_exporter_auth_failures_total{reason=\"bad_password\"}").unwrap() >= 1.0);
}
