use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bcrypt::Version;

use crate::util::*;

#[test]
fn password_change_takes_effect_on_the_next_request_without_restart() {
    let old = hash("old-password", Version::TwoA, 4);
    let new = hash("new-password", Version::TwoA, 4);
    let d = Daemon::start("", Some(&password_mode(&old, "session-1")));
    let old_creds = basic("admin", "old-password");
    assert_eq!(d.get("/metrics", &[("Authorization", &old_creds)]).status, 200);
    // Same length, same second: only the content differs.
    rewrite_in_place(&d.device_config(), &password_mode(&new, "session-2"));
    assert_eq!(d.get("/metrics", &[("Authorization", &old_creds)]).status, 401);
    assert_eq!(d.get("/metrics", &[("Cookie", "authToken=session-1")]).status, 401);
    assert_eq!(d.get("/metrics", &[("Authorization", &basic("admin", "new-password"))]).status, 200);
    assert_eq!(d.get("/metrics", &[("Cookie", "authToken=session-2")]).status, 200);
    // And back to no password, then to not set up.
    rewrite_in_place(&d.device_config(), &no_password_mode());
    assert_eq!(d.get("/metrics", &[]).status, 200);
    rewrite_in_place(&d.device_config(), "{\"localAuthMode\": \"\"}");
    assert_eq!(d.get("/metrics", &[]).status, 401);
    // Deleted, then written again.
    std::fs::remove_file(d.device_config()).unwrap();
    assert_eq!(d.get("/metrics", &[]).status, 401);
    std::fs::write(d.device_config(), no_password_mode()).unwrap();
    assert_eq!(d.get("/metrics", &[]).status, 200);
}

#[test]
fn change_after_the_racy_window_is_still_seen() {
    // Once the file is old, the daemon trusts its stat; a rewrite must
    // still change the stat and be read.
    let d = Daemon::start("", Some(&no_password_mode()));
    assert_eq!(d.get("/metrics", &[]).status, 200);
    std::thread::sleep(Duration::from_millis(2300));
    assert_eq!(d.get("/metrics", &[]).status, 200);
    rewrite_in_place(&d.device_config(), &password_mode(&hash("x", Version::TwoA, 4), ""));
    assert_eq!(d.get("/metrics", &[]).status, 401);
}

#[test]
fn torn_writes_never_let_a_request_through() {
    // The writer alternates between two password-mode files, tearing each
    // write in two with a pause; requests carry no valid credential.
    let h1 = hash("one", Version::TwoA, 4);
    let h2 = hash("two", Version::TwoA, 4);
    // A high failure budget: this test is about the device state, not the limiter.
    let mut d = Daemon::start("[auth]\nfailure_burst = 10000\n", Some(&password_mode(&h1, "s1")));
    let path = d.device_config();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            let contents = [password_mode(&h1, "s1"), password_mode(&h2, "s2"), String::new(), "{".into()];
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let c = &contents[i % contents.len()];
                let mut f = std::fs::OpenOptions::new().write(true).truncate(true).open(&path).unwrap();
                let (a, b) = c.split_at(c.len() / 2);
                f.write_all(a.as_bytes()).unwrap();
                std::thread::sleep(Duration::from_micros(300));
                f.write_all(b.as_bytes()).unwrap();
                i += 1;
            }
        })
    };
    let end = Instant::now() + Duration::from_secs(3);
    let mut n = 0;
    let wrong = basic("admin", "three");
    while Instant::now() < end {
        for headers in [vec![], vec![("Authorization", wrong.as_str())], vec![("Cookie", "authToken=s3")]] {
            let r = d.get("/metrics", &headers);
            assert_eq!(r.status, 401, "request {n} with {headers:?} got through");
            n += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    // Each request here reads a file being rewritten, twice (whether the
    // device's TLS is on, then the credential), with the retry pauses.
    assert!(n > 10, "only {n} requests");
    // Settled on a good file: the right password works again.
    rewrite_in_place(&d.device_config(), &password_mode(&hash("one", Version::TwoA, 4), ""));
    assert_eq!(d.get("/metrics", &[("Authorization", &basic("", "one"))]).status, 200);
    assert!(d.child.try_wait().unwrap().is_none(), "daemon died");
}

#[test]
fn a_half_written_file_completed_later_is_read() {
    // A half-written file completed a few milliseconds later is read whole:
    // by the retry if it lands in time, else by the next request.
    let h = hash("pw", Version::TwoA, 4);
    let full = password_mode(&h, "");
    let d = Daemon::start("", Some(&full[..20]));
    assert_eq!(d.get("/metrics", &[("Authorization", &basic("", "pw"))]).status, 401);
    let path = d.device_config();
    let completer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(3));
        std::fs::write(path, full).unwrap();
    });
    rewrite_in_place(&d.device_config(), &password_mode(&h, "")[..30]);
    let r = d.get("/metrics", &[("Authorization", &basic("", "pw"))]);
    completer.join().unwrap();
    // Either the retry saw the completed file, or the next request does.
    if r.status != 200 {
        assert_eq!(r.status, 401);
        assert_eq!(d.get("/metrics", &[("Authorization", &basic("", "pw"))]).status, 200);
    }
}

#[test]
fn sighup_forgets_remembered_credentials_and_keeps_serving() {
    let d = Daemon::start("", Some(&password_mode(&hash("pw", Version::TwoA, 4), "")));
    assert_eq!(d.get("/metrics", &[("Authorization", &basic("", "pw"))]).status, 200);
    d.signal("HUP");
    assert!(d.wait_log("SIGHUP").contains("SIGHUP"));
    assert_eq!(d.get("/metrics", &[("Authorization", &basic("", "pw"))]).status, 200);
}
