//! Load: many scrapes over keep-alive connections, and thousands of idle
//! connections that must not lock a scrape out.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::util::*;

/// One keep-alive GET; returns (status, body length).
fn keep_alive_get(r: &mut BufReader<TcpStream>, path: &str) -> (u16, usize) {
    r.get_mut().write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes()).unwrap();
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status = line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut len = 0;
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).unwrap();
    (status, len)
}

#[test]
fn a_thousand_scrapes_over_four_connections_without_an_error() {
    let d = Daemon::start("", Some(&no_password_mode()));
    let addr = d.addr;
    let workers: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let mut r = BufReader::new(s);
                let mut errors = 0;
                for _ in 0..250 {
                    let (status, len) = keep_alive_get(&mut r, "/metrics");
                    if status != 200 || len < 1000 {
                        errors += 1;
                    }
                }
                errors
            })
        })
        .collect();
    let errors: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert_eq!(errors, 0);
    assert_eq!(d.sample("jetkvm_exporter_scrapes_total", &[]), 1001.0);
}

fn raise_fd_limit(want: u64) {
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        if l.rlim_cur < want as libc::rlim_t {
            l.rlim_cur = (want as libc::rlim_t).min(l.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

#[test]
fn ten_thousand_idle_connections_do_not_lock_out_a_scrape() {
    raise_fd_limit(12_000);
    let d = Daemon::start("[limits]\nheader_timeout = \"60s\"\n", Some(&no_password_mode()));
    let mut idle = Vec::with_capacity(10_000);
    for i in 0..10_000 {
        match TcpStream::connect(d.addr) {
            // Half idle, half a slow request head that never ends.
            Ok(mut s) => {
                if i % 2 == 1 {
                    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n");
                }
                idle.push(s)
            }
            Err(e) => panic!("connection {i}: {e}"),
        }
    }
    // Every one of them connected; a scrape on a new connection still gets
    // its answer within Prometheus' default scrape timeout.
    let asked = std::time::Instant::now();
    let r = d.get("/metrics", &[]);
    assert_eq!(r.status, 200);
    assert!(asked.elapsed() < Duration::from_secs(10), "answered after {:?}", asked.elapsed());
    let evicted = sample(&r.text(), "jetkvm_exporter_connections_evicted_total").unwrap();
    assert!(evicted >= 9_000.0, "evicted {evicted}");
    drop(idle);
    assert!(d.log().lines().count() < 100, "connection churn must not flood the log");
}
