//! Faults while scraping: files the daemon reads vanish, are truncated and
//! come back; signals arrive in storms. Never a crash, never a 200 without
//! valid credentials, and the exposition stays well-formed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::util::*;

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let t = to.join(e.file_name());
        let kind = e.file_type().unwrap();
        if kind.is_symlink() {
            // configfs links a configuration to its functions.
            std::os::unix::fs::symlink(std::fs::read_link(e.path()).unwrap(), t).unwrap();
        } else if kind.is_dir() {
            copy_dir(&e.path(), &t);
        } else {
            std::fs::copy(e.path(), t).unwrap();
        }
    }
}

/// Families appear once each: a collector never leaves half a family.
fn well_formed(text: &str) {
    let mut seen = std::collections::HashSet::new();
    for l in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        assert!(seen.insert(l.to_owned()), "family repeated: {l}");
    }
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let v = l.rsplit(' ').next().unwrap();
        assert!(
            v.parse::<f64>().is_ok() || v == "NaN" || v == "+Inf" || v == "-Inf",
            "bad sample line {l:?}"
        );
    }
}

#[test]
fn proc_and_sys_entries_vanishing_under_load() {
    let root = TempDir::new();
    copy_dir(&fixtures().join("proc"), &root.path("proc"));
    copy_dir(&fixtures().join("sys"), &root.path("sys"));
    let extra = format!(
        "proc_root = \"{}\"\nsys_root = \"{}\"\n",
        root.path("proc").display(),
        root.path("sys").display()
    );
    let mut d = Daemon::start(&extra, Some(&no_password_mode()));
    let stop = Arc::new(AtomicBool::new(false));
    let chaos = {
        let stop = stop.clone();
        let proc_dir = root.path("proc");
        let sys_dir = root.path("sys");
        std::thread::spawn(move || {
            let files = ["stat", "net/tcp", "net/tcp6", "net/dev"];
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let f = files[i % files.len()];
                let p = proc_dir.join(f);
                let original = std::fs::read(fixtures().join("proc").join(f)).unwrap();
                match i % 3 {
                    0 => {
                        let _ = std::fs::remove_file(&p);
                    }
                    1 => std::fs::write(&p, &original[..original.len() / 2]).unwrap(),
                    _ => std::fs::write(&p, &original).unwrap(),
                }
                if i.is_multiple_of(7) {
                    let zone = sys_dir.join("class/thermal/thermal_zone1");
                    if zone.exists() {
                        let _ = std::fs::remove_dir_all(&zone);
                    } else {
                        copy_dir(&fixtures().join("sys/class/thermal/thermal_zone1"), &zone);
                    }
                }
                i += 1;
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };
    let end = Instant::now() + Duration::from_secs(3);
    let mut n = 0;
    while Instant::now() < end {
        let r = d.get("/metrics", &[]);
        assert_eq!(r.status, 200);
        well_formed(&r.text());
        if n % 50 == 0 {
            assert_eq!(promtool_check(&r.text()), "");
        }
        n += 1;
    }
    stop.store(true, Ordering::Relaxed);
    chaos.join().unwrap();
    assert!(n > 20, "{n} scrapes");
    assert!(d.child.try_wait().unwrap().is_none());
}

#[test]
fn token_file_deleted_and_recreated_under_load() {
    let d = Daemon::start("", Some(&password_mode(&hash("pw", bcrypt::Version::TwoA, 4), "")));
    let config = d.dir.path("config.toml");
    let out =
        std::process::Command::new(BIN).args(["token", "new", "--config"]).arg(&config).output().unwrap();
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let file = d.dir.path("token.sha256");
    let saved = std::fs::read(&file).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let chaos = {
        let (stop, file, saved) = (stop.clone(), file.clone(), saved.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                match i % 3 {
                    0 => {
                        let _ = std::fs::remove_file(&file);
                    }
                    1 => std::fs::write(&file, &saved[..saved.len() / 3]).unwrap(),
                    _ => std::fs::write(&file, &saved).unwrap(),
                }
                i += 1;
                std::thread::sleep(Duration::from_micros(500));
            }
        })
    };
    let good = format!("Bearer {token}");
    let end = Instant::now() + Duration::from_secs(2);
    let (mut ok, mut refused) = (0, 0);
    while Instant::now() < end {
        match d.get("/metrics", &[("Authorization", &good)]).status {
            200 => ok += 1,
            401 | 429 => refused += 1,
            s => panic!("status {s}"),
        }
        let s = d.get("/metrics", &[("Authorization", "Bearer jkm_not-the-token")]).status;
        assert!(s == 401 || s == 429, "a wrong token got {s}");
    }
    stop.store(true, Ordering::Relaxed);
    chaos.join().unwrap();
    std::fs::write(&file, &saved).unwrap();
    std::thread::sleep(Duration::from_millis(10));
    assert_eq!(d.get("/metrics", &[("Authorization", &good)]).status, 200);
    assert!(ok > 0, "{ok} ok, {refused} refused");
}

#[test]
fn sighup_storm_while_scraping() {
    let mut d = Daemon::start("", Some(&password_mode(&hash("pw", bcrypt::Version::TwoA, 4), "")));
    let pid = d.child.id() as i32;
    let stop = Arc::new(AtomicBool::new(false));
    let storm = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && n < 500 {
                // SAFETY: signalling our own child.
                unsafe { libc::kill(pid, libc::SIGHUP) };
                n += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            n
        })
    };
    let creds = basic("", "pw");
    for _ in 0..100 {
        assert_eq!(d.get("/metrics", &[("Authorization", &creds)]).status, 200);
    }
    stop.store(true, Ordering::Relaxed);
    let sent = storm.join().unwrap();
    assert!(sent > 10);
    assert!(d.child.try_wait().unwrap().is_none(), "daemon died in a SIGHUP storm");
    assert_eq!(d.get("/metrics", &[("Authorization", &creds)]).status, 200);
}
