use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bcrypt::Version;

use crate::util::*;

#[test]
fn a_misconfigured_job_does_not_lock_out_a_good_job_of_the_same_server() {
    let d = Daemon::start(
        "[auth]\nfailure_burst = 3\nfailure_interval = \"1s\"\n",
        Some(&password_mode(&hash("right", Version::TwoA, 4), "sess")),
    );
    let good = basic("admin", "right");
    // The good job proves the password while the server is within budget.
    assert_eq!(get_from("127.0.0.2", d.addr, "/metrics", &[("Authorization", &good)]).status, 200);
    for i in 0..3 {
        let bad = basic("admin", &format!("wrong{i}"));
        assert_eq!(get_from("127.0.0.2", d.addr, "/metrics", &[("Authorization", &bad)]).status, 401);
        // A password already found wrong is refused again at no cost (and
        // while over budget, with the same 429 as anything else).
        let again = get_from("127.0.0.2", d.addr, "/metrics", &[("Authorization", &bad)]).status;
        assert_eq!(again, if i < 2 { 401 } else { 429 });
    }
    let r = get_from("127.0.0.2", d.addr, "/metrics", &[("Authorization", &basic("admin", "wrong3"))]);
    assert_eq!(r.status, 429);
    assert!(r.header("retry-after").is_some());
    // Over budget: the password this client proved, and the session
    // cookie (128 random bits), are still checked; anything else is not.
    assert_eq!(get_from("127.0.0.2", d.addr, "/metrics", &[("Authorization", &good)]).status, 200);
    assert_eq!(get_from("127.0.0.2", d.addr, "/metrics", &[("Cookie", "authToken=sess")]).status, 200);
    assert_eq!(get_from("127.0.0.2", d.addr, "/metrics", &[("Cookie", "authToken=guess")]).status, 429);
    // Another client is not affected, and verifies the password itself.
    assert_eq!(get_from("127.0.0.3", d.addr, "/metrics", &[("Authorization", &good)]).status, 200);
    let t = d.get("/metrics", &[("Authorization", &good)]).text();
    assert_eq!(sample(&t, "jetkvm_exporter_auth_failures_total{reason=\"rate_limited\"}"), Some(3.0));
    assert_eq!(sample(&t, "jetkvm_exporter_auth_failures_total{reason=\"bad_password\"}"), Some(5.0));
}

/// Regression: the attack on the limiter. Once over budget, a password
/// another client had proved answered 200 and any other 429, at HMAC speed
/// and at no further cost: an oracle for the device password.
#[test]
fn over_budget_the_right_and_a_wrong_password_get_the_same_answer() {
    let d = Daemon::start("", Some(&password_mode(&hash("right", Version::TwoA, 4), "")));
    let good = basic("admin", "right");
    let bad = basic("admin", "wrong");
    // Prometheus scrapes with the password: it is remembered, for it.
    assert_eq!(get_from("127.0.0.2", d.addr, "/metrics", &[("Authorization", &good)]).status, 200);
    // Two attackers each spend the budget (10) on wrong passwords, then
    // one tries the right password, the other a wrong one.
    let mut answers = Vec::new();
    for (attacker, guess) in [("127.0.0.9", &good), ("127.0.0.10", &bad)] {
        for i in 0..10 {
            let r =
                get_from(attacker, d.addr, "/metrics", &[("Authorization", &basic("a", &format!("w{i}")))]);
            // Checked, or not (the shared budget of unknown clients is
            // spent): a new password costs its unit either way.
            assert!(matches!(r.status, 401 | 503), "{}", r.status);
        }
        let r = get_from(attacker, d.addr, "/metrics", &[("Authorization", guess)]);
        answers.push((r.status, r.header("retry-after").map(str::to_owned), r.text()));
    }
    assert_eq!(answers[0].0, 429, "{answers:?}");
    assert_eq!(answers[0], answers[1]);
    // Guessing fast keeps it that way: every new password refused costs one
    // more, so none is ever checked, the right one included.
    for i in 0..200 {
        let r =
            get_from("127.0.0.9", d.addr, "/metrics", &[("Authorization", &basic("a", &format!("g{i}")))]);
        assert_eq!(r.status, 429);
    }
    let r = get_from("127.0.0.9", d.addr, "/metrics", &[("Authorization", &good)]);
    assert_eq!(r.status, 429);
    // The Retry-After grows with the debt, up to `burst` intervals: then
    // the password refused unchecked (paid for) is checked.
    assert_eq!(r.header("retry-after"), Some("60"));
    // Prometheus itself is not affected.
    assert_eq!(get_from("127.0.0.2", d.addr, "/metrics", &[("Authorization", &good)]).status, 200);
}

/// Regression: the budget was checked before and charged after the
/// outcome, so concurrent guesses from one client all got checked.
#[test]
fn concurrent_guesses_each_cost_one_unit_of_budget() {
    // Cost 10: each bcrypt takes long enough for all guesses to overlap.
    let d = Daemon::start(
        "[auth]\nfailure_burst = 3\nfailure_interval = \"60s\"\nbcrypt_queue = 16\n",
        Some(&password_mode(&hash("right", Version::TwoA, 10), "")),
    );
    let addr = d.addr;
    let barrier = Arc::new(std::sync::Barrier::new(8));
    let guesses: Vec<_> = (0..8)
        .map(|i| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let s = connect_from("127.0.0.2", addr);
                let req = request(
                    &addr.to_string(),
                    "/metrics",
                    &[("Authorization", &basic("a", &format!("g{i}")))],
                );
                barrier.wait();
                exchange(s, req.as_bytes()).unwrap().status
            })
        })
        .collect();
    let mut statuses: Vec<u16> = guesses.into_iter().map(|g| g.join().unwrap()).collect();
    statuses.sort();
    assert_eq!(statuses, [401, 401, 401, 429, 429, 429, 429, 429]);
}

/// Regression: each new address got a fresh budget, and a full table was
/// cleared to make room, so enough addresses escaped limiting altogether.
#[test]
fn a_flood_from_thousands_of_addresses_gets_a_bounded_number_of_checks() {
    let d = Daemon::start(
        "[auth]\nfailure_burst = 2\nfailure_interval = \"60s\"\nunverified_interval = \"500ms\"\n\
         tracked_clients = 16\nbcrypt_queue = 64\n",
        Some(&password_mode(&hash("right", Version::TwoA, 4), "")),
    );
    let good = basic("admin", "right");
    assert_eq!(get_from("127.0.0.2", d.addr, "/metrics", &[("Authorization", &good)]).status, 200);
    let start = Instant::now();
    let checked = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let addr = d.addr;
    let floods: Vec<_> = (0..4u32)
        .map(|t| {
            let (checked, sent) = (checked.clone(), sent.clone());
            std::thread::spawn(move || {
                // 4 x 600 addresses, one guess each: more than the table holds.
                for i in 0..600u32 {
                    let src = format!("127.{}.{}.{}", 10 + t, i / 250, 1 + i % 250);
                    let r = get_from(
                        &src,
                        addr,
                        "/metrics",
                        &[("Authorization", &basic("a", &format!("{t}-{i}")))],
                    );
                    match r.status {
                        401 => checked.fetch_add(1, Ordering::Relaxed),
                        503 => 0,
                        other => panic!("flood got {other}"),
                    };
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // A client known good keeps scraping through it.
    while sent.load(Ordering::Relaxed) < 2400 && start.elapsed() < Duration::from_secs(60) {
        assert_eq!(get_from("127.0.0.2", d.addr, "/metrics", &[("Authorization", &good)]).status, 200);
        std::thread::sleep(Duration::from_millis(50));
    }
    for f in floods {
        f.join().unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let checked = checked.load(Ordering::Relaxed);
    // The shared budget: 2 at once, then one per 500 ms, for every address
    // never allowed together.
    let bound = 2 + (elapsed / 0.5).ceil() as usize;
    eprintln!("2400 addresses in {elapsed:.1} s: {checked} passwords checked (bound {bound})");
    assert!(checked <= bound, "{checked} checks in {elapsed:.1} s");
    // The shared budget is not shut: the first password of the flood (the
    // good client's took one of the two at the start) was checked.
    assert!(checked >= 1);
    let t = get_from("127.0.0.2", d.addr, "/metrics", &[("Authorization", &good)]).text();
    assert!(sample(&t, "jetkvm_exporter_auth_failures_total{reason=\"throttled\"}").unwrap() >= 2000.0);
}

#[test]
fn a_flood_of_wrong_passwords_does_not_stop_verified_scrapes() {
    // Cost 10, as on the device: each wrong password really costs bcrypt.
    let d = Daemon::start(
        "[auth]\nfailure_burst = 5\nfailure_interval = \"10s\"\n",
        Some(&password_mode(&hash("right", Version::TwoA, 10), "session-token")),
    );
    let good = basic("admin", "right");
    let token = format!("Bearer {}", new_token(&d));
    // Verify the password once from the scraping client, so its later
    // scrapes use the remembered result.
    assert_eq!(get_from("127.0.0.2", d.addr, "/metrics", &[("Authorization", &good)]).status, 200);

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
    let t = get_from("127.0.0.2", d.addr, "/metrics", &[("Authorization", &good)]).text();
    assert!(sample(&t, "jetkvm_exporter_auth_failures_total{reason=\"bad_password\"}").unwrap() >= 1.0);
}

/// Runs `f` on a thread in a network namespace of its own (processes it
/// starts are in it too), whose loopback holds `addresses`.
fn in_netns(addresses: &[&str], f: impl FnOnce() + Send + 'static) {
    let addresses: Vec<String> = addresses.iter().map(|a| a.to_string()).collect();
    std::thread::spawn(move || {
        // SAFETY: unshare only changes this thread's namespaces.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "unshare(CLONE_NEWNET) needs root: {}", std::io::Error::last_os_error());
        let ip = |args: &str| {
            let ok = std::process::Command::new("ip").args(args.split(' ')).status();
            assert!(ok.expect("ip (iproute2) must be installed").success(), "ip {args}");
        };
        ip("link set lo up");
        for a in &addresses {
            ip(&format!("addr add {a} dev lo nodad"));
        }
        f();
    })
    .join()
    .unwrap();
}

/// Regression: an IPv6 /64 was one client, so with SLAAC (one /64 for the
/// whole LAN) one attacker kept every IPv6 host's password checks at 429;
/// and every request cost budget, even one without any credential (which a
/// web page can make the owner's browser send).
#[test]
fn ipv6_neighbours_and_credential_less_requests_leave_a_hosts_budget_alone() {
    in_netns(&["2001:db8::1/64", "2001:db8::2/64", "2001:db8::3/64", "2001:db8::4/64"], || {
        let d = Daemon::start(
            "listen_addr = \"[2001:db8::1]:0\"\n[auth]\nfailure_burst = 3\nfailure_interval = \"60s\"\n\
             unverified_interval = \"100ms\"\n",
            Some(&password_mode(&hash("right", Version::TwoA, 4), "")),
        );
        let good = basic("admin", "right");
        // One address of the /64 spends its budget, and more.
        let mut last = 0;
        for i in 0..20 {
            let bad = basic("admin", &format!("w{i}"));
            last = get_from("2001:db8::2", d.addr, "/metrics", &[("Authorization", &bad)]).status;
        }
        assert_eq!(last, 429);
        assert_eq!(get_from("2001:db8::2", d.addr, "/metrics", &[("Authorization", &good)]).status, 429);
        // The shared budget of clients never allowed refills (100 ms).
        std::thread::sleep(Duration::from_millis(400));
        // Its neighbour on the same /64 is another host.
        assert_eq!(get_from("2001:db8::3", d.addr, "/metrics", &[("Authorization", &good)]).status, 200);
        // Requests without a credential cost nothing, however many.
        for cookie in ["", "theme=dark"] {
            for _ in 0..20 {
                let r = get_from("2001:db8::4", d.addr, "/metrics", &[("Cookie", cookie)]);
                assert_eq!(r.status, 401);
            }
        }
        assert_eq!(get_from("2001:db8::4", d.addr, "/metrics", &[("Authorization", &good)]).status, 200);
        let t = get_from("2001:db8::3", d.addr, "/metrics", &[("Authorization", &good)]).text();
        assert_eq!(
            sample(&t, "jetkvm_exporter_auth_failures_total{reason=\"missing_credentials\"}"),
            Some(40.0)
        );
    });
}
