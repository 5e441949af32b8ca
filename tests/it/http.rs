use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::util::*;

#[test]
fn metrics_are_text_format_and_never_compressed() {
    let d = Daemon::start("", Some(&no_password_mode()));
    let plain = d.get("/metrics", &[]);
    assert_eq!(plain.status, 200);
    assert_eq!(plain.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    assert_eq!(plain.header("content-encoding"), None);
    let zipped = d.get(
        "/metrics",
        &[
            (
                "Accept",
                "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4,*/*;q=0.1",
            ),
            ("Accept-Encoding", "gzip"),
        ],
    );
    // Prometheus offers gzip; the body still goes out as it is (docs/DESIGN.md).
    assert_eq!(zipped.status, 200);
    assert_eq!(zipped.header("content-encoding"), None);
    assert_eq!(zipped.header("vary"), Some("Accept, Accept-Encoding"));
    assert!(zipped.text().contains("jetkvm_exporter_build_info{target=\""));
    for accepting in ["gzip;q=0, identity", "*", "identity;q=0.1, gzip", "nonsense;;q=x"] {
        let r = d.get("/metrics", &[("Accept-Encoding", accepting)]);
        assert_eq!((r.status, r.header("content-encoding")), (200, None), "{accepting}");
    }
    // A client that takes nothing uncompressed: 406, naming what there is.
    for refusing in ["identity;q=0", "gzip, identity;q=0", "*;q=0", "br, *;q=0"] {
        let r = d.get("/metrics", &[("Accept-Encoding", refusing)]);
        assert_eq!(r.status, 406, "{refusing}");
        assert_eq!(r.text(), "identity\n", "{refusing}");
    }
}

/// The `Accept` Prometheus sends, by release (its `acceptHeader` over the
/// default `scrape_protocols`, and one with the protocol buffer first, as
/// for native histograms).
const PROMETHEUS_ACCEPT: [(&str, &str); 5] = [
    (
        "2.x before scrape_protocols",
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,\
         text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    ),
    (
        "2.49 to 2.55",
        "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,\
         text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
    ),
    (
        "3.0",
        "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,\
         application/openmetrics-text;version=0.0.1;escaping=allow-utf-8;q=0.5,\
         text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;escaping=allow-utf-8;q=0.3,\
         */*;q=0.2",
    ),
    (
        "later 3.x (escaping only on the 1.0.0 formats)",
        "application/openmetrics-text;version=1.0.0;escaping=underscores;q=0.6,\
         application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=underscores;q=0.4,\
         text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
    ),
    (
        "3.x, protocol buffer first",
        "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.6,\
         application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,\
         text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
    ),
];

/// A media type and its `version`, as a Content-Type or an Accept range
/// names them.
fn media(value: &str) -> (String, Option<String>) {
    let mut parts = value.split(';').map(str::trim);
    let kind = parts.next().unwrap_or_default().to_ascii_lowercase();
    let version = parts.find_map(|p| p.strip_prefix("version=")).map(str::to_owned);
    (kind, version)
}

#[test]
fn each_prometheus_gets_a_format_it_offered_and_a_body_in_it() {
    let d = Daemon::start("", Some(&no_password_mode()));
    for (release, accept) in PROMETHEUS_ACCEPT {
        let r = d.get("/metrics", &[("Accept", accept), ("Accept-Encoding", "gzip")]);
        assert_eq!(r.status, 200, "{release}");
        let served = media(r.header("content-type").expect("a Content-Type"));
        let offered: Vec<_> = accept.split(',').map(media).collect();
        assert!(offered.contains(&served), "{release}: {served:?} not among {offered:?}");
        assert_eq!(served, ("text/plain".to_owned(), Some("0.0.4".to_owned())), "{release}");
        assert_eq!(promtool_check(&r.text()), "", "{release}");
        // Asked by Prometheus, /healthz answers an empty exposition of the
        // same type: a credential-free job is `up` while the device answers.
        let h = d.get("/healthz", &[("Accept", accept)]);
        assert_eq!((h.status, h.header("content-type")), (200, r.header("content-type")), "{release}");
        assert_eq!((h.text().as_str(), h.header("vary")), ("", Some("Accept")), "{release}");
    }
    // Anyone else is told `ok`.
    for accept in [None, Some("*/*"), Some("text/html,application/xhtml+xml,*/*;q=0.8")] {
        let headers: Vec<(&str, &str)> = accept.iter().map(|a| ("Accept", *a)).collect();
        let h = d.get("/healthz", &headers);
        assert_eq!((h.status, h.text()), (200, "ok\n".to_owned()), "{accept:?}");
        assert_eq!((h.header("vary"), h.header("cache-control")), (Some("Accept"), Some("no-store")));
    }
    // A client that takes nothing the daemon writes: 406, naming it,
    // counted as a bad request, not as a scrape.
    let scrapes = d.sample("jetkvm_exporter_scrapes_total", &[]);
    let before = d.sample("jetkvm_exporter_http_bad_requests_total", &[]);
    for refusing in
        ["application/openmetrics-text;version=1.0.0", "text/plain;version=1.0.0", "text/*;q=0, */*"]
    {
        let r = d.get("/metrics", &[("Accept", refusing)]);
        assert_eq!(r.status, 406, "{refusing}");
        assert_eq!(r.text(), "text/plain; version=0.0.4; charset=utf-8\n", "{refusing}");
        assert_eq!(r.header("vary"), Some("Accept, Accept-Encoding"), "{refusing}");
    }
    assert_eq!(d.sample("jetkvm_exporter_http_bad_requests_total", &[]), before + 3.0);
    // Only the three scrapes that read the counters (a 406 would be a fourth).
    assert_eq!(d.sample("jetkvm_exporter_scrapes_total", &[]), scrapes + 3.0);
}

#[test]
fn methods_and_paths() {
    let d = Daemon::start("", Some(&no_password_mode()));
    let r = raw(
        d.addr,
        b"POST /metrics HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    let r = raw(d.addr, b"HEAD /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert_eq!(d.get("/nope", &[]).status, 404);
    assert_eq!(d.get("/metrics?x=1", &[]).status, 200);
    assert_eq!(d.sample("jetkvm_exporter_http_bad_requests_total", &[]), 1.0);
}

#[test]
fn oversized_and_garbage_requests_are_answered_and_counted() {
    let d = Daemon::start("[limits]\nmax_header_bytes = 8192\nmax_headers = 16\n", Some(&no_password_mode()));
    let big = format!("GET /metrics HTTP/1.1\r\nHost: localhost\r\nX-Pad: {}\r\n\r\n", "a".repeat(20_000));
    let r = raw(d.addr, big.as_bytes());
    assert_eq!(r.status, 431);
    let mut many = String::from("GET /metrics HTTP/1.1\r\nHost: localhost\r\n");
    for i in 0..40 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(raw(d.addr, many.as_bytes()).status, 431);
    assert_eq!(raw(d.addr, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n").status, 400);
    assert_eq!(raw(d.addr, b"GET /metrics HTTP/9.9\r\n\r\n").status / 100, 4);
    let text = d.get("/metrics", &[]).text();
    assert!(
        sample(&text, "jetkvm_exporter_http_errors_total{reason=\"too_large\"}").unwrap() >= 2.0,
        "{text}"
    );
    assert!(sample(&text, "jetkvm_exporter_http_errors_total{reason=\"parse\"}").unwrap() >= 1.0);
}

/// Reads until EOF or error; true if the server closed within `within`.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn slow_clients_are_cut_off() {
    let d = Daemon::start("[limits]\nheader_timeout = \"1s\"\n", Some(&no_password_mode()));
    // Slowloris: a byte at a time, never finishing the head.
    let mut s = TcpStream::connect(d.addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
    let start = Instant::now();
    let mut cut = false;
    while start.elapsed() < Duration::from_secs(10) {
        if s.write_all(b"X-A: b\r\n").is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(cut || closed_within(&mut s, Duration::from_secs(3)), "slowloris connection still open");
    // An idle connection that never sends anything.
    let mut idle = TcpStream::connect(d.addr).unwrap();
    assert!(closed_within(&mut idle, Duration::from_secs(5)));
    assert!(d.sample("jetkvm_exporter_http_errors_total{reason=\"timeout\"}", &[]) >= 1.0);
}

#[test]
fn connection_cap_evicts_idle_connections_so_scrapes_still_succeed() {
    let d =
        Daemon::start("[limits]\nmax_connections = 4\nheader_timeout = \"60s\"\n", Some(&no_password_mode()));
    let mut held = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(d.addr).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
        held.push(s);
    }
    std::thread::sleep(Duration::from_millis(200));
    let r = d.get("/metrics", &[]);
    assert_eq!(r.status, 200);
    assert!(sample(&r.text(), "jetkvm_exporter_connections_evicted_total").unwrap() >= 16.0, "{}", r.text());
    drop(held);
}

#[test]
fn keep_alive_serves_many_scrapes_on_one_connection() {
    let d = Daemon::start("", Some(&no_password_mode()));
    let mut s = TcpStream::connect(d.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for _ in 0..5 {
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).unwrap();
        let r = parse_response(&buf[..n]).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"ok\n"[..]));
    }
}

#[test]
fn sigterm_and_sigint_stop_gracefully() {
    for sig in ["TERM", "INT"] {
        let mut d = Daemon::start("", Some(&no_password_mode()));
        assert_eq!(d.get("/healthz", &[]).status, 200);
        d.signal(sig);
        let status = d.wait_exit(Duration::from_secs(10)).expect("still running");
        assert!(status.success(), "{sig}: {status:?}");
        let log = d.wait_log("stopped");
        assert!(log.contains("stopped"), "{log}");
    }
}

/// Requests whose framing two parsers could read differently are refused,
/// never forwarded to a handler.
#[test]
fn request_smuggling_attempts_answer_400() {
    let d = Daemon::start("", Some(&no_password_mode()));
    for req in [
        &b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
        b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nContent-Length: +5\r\n\r\nhello",
    ] {
        let r = raw(d.addr, req);
        assert_eq!(r.status, 400, "{:?}", String::from_utf8_lossy(req));
    }
    assert!(d.sample("jetkvm_exporter_http_errors_total{reason=\"parse\"}", &[]) >= 4.0);
}

/// A client that stops reading its responses holds its connection no
/// longer than the write timeout once its socket buffers are full.
#[test]
fn a_client_that_stops_reading_is_dropped() {
    let d = Daemon::start(
        "[limits]\nwrite_timeout = \"1s\"\nheader_timeout = \"60s\"\n",
        Some(&no_password_mode()),
    );
    let mut s = TcpStream::connect(d.addr).unwrap();
    // Many pipelined scrapes, far more than the socket buffers hold.
    let one = b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n";
    s.write_all(&one.repeat(2000)).unwrap();
    std::thread::sleep(Duration::from_secs(4));
    assert!(closed_within(&mut s, Duration::from_secs(10)), "a stalled reader kept its connection");
    assert!(d.sample("jetkvm_exporter_http_errors_total{reason=\"timeout\"}", &[]) >= 1.0);
}

/// SIGTERM while a scrape is being answered: the scrape completes.
#[test]
fn sigterm_lets_a_scrape_in_flight_finish() {
    // Cost 12: the first check of the password takes a while.
    let mut d = Daemon::start("", Some(&password_mode(&hash("pw", bcrypt::Version::TwoA, 12), "")));
    let addr = d.addr;
    let scrape =
        std::thread::spawn(move || get(addr, "/metrics", &[("Authorization", &basic("a", "pw"))]).status);
    std::thread::sleep(Duration::from_millis(50));
    d.signal("TERM");
    assert_eq!(scrape.join().unwrap(), 200, "the scrape in flight was cut off");
    let status = d.wait_exit(Duration::from_secs(10)).expect("still running");
    assert!(status.success());
}
