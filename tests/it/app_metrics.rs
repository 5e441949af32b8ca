use std::time::{Duration, Instant};

use crate::util::*;

fn success(t: &str, collector: &str) -> Option<f64> {
    sample(t, &format!("jetkvm_scrape_collector_success{{collector=\"{collector}\"}}"))
}

#[test]
fn the_apps_families_merged_without_clients_and_nothing_else() {
    let app = AppServer::text(&std::fs::read(fixtures().join("app/metrics")).unwrap());
    let d = Daemon::start(&app.key(), Some(&no_password_mode()));
    let t = d.get("/metrics", &[]).text();
    assert_eq!(success(&t, "app_metrics"), Some(1.0), "{t}");
    // One request per scrape, HTTP/1.0 for the text format, nothing else.
    let asked = app.requests.lock().unwrap().clone();
    assert_eq!(asked.len(), 1);
    assert!(asked[0].starts_with("GET /metrics HTTP/1.0\r\n"), "{}", asked[0]);
    assert!(asked[0].contains("\r\nAccept: text/plain;version=0.0.4\r\n"), "{}", asked[0]);
    // Counters and histograms add up over clients; gauges keep the highest.
    for (series, want) in [
        ("jetkvm_connection_ping_sent_total{type=\"local\"}", 52.0),
        ("jetkvm_connection_ping_sent_total{type=\"cloud\"}", 120.0),
        ("jetkvm_connection_session_requests_total{type=\"local\"}", 4.0),
        ("jetkvm_connection_ping_duration_seconds_bucket{type=\"local\",le=\"0.1\"}", 48.0),
        ("jetkvm_connection_ping_duration_seconds_bucket{type=\"local\",le=\"+Inf\"}", 52.0),
        ("jetkvm_connection_ping_duration_seconds_sum{type=\"local\"}", 3.75),
        ("jetkvm_connection_ping_duration_seconds_count{type=\"local\"}", 52.0),
        ("jetkvm_connection_last_ping_timestamp_seconds{type=\"local\"}", 1.76454726e9),
        ("jetkvm_connection_last_ping_duration_seconds{type=\"local\"}", 0.012),
        ("jetkvm_cloud_connection_status", 1.0),
        ("jetkvm_timesync_status", 1.0),
        ("jetkvm_dc_power_watts", 12.4),
    ] {
        assert_eq!(sample(&t, series), Some(want), "{series}\n{t}");
    }
    // (An empty label value is no label: the app's empty `branch` goes.)
    assert!(t.contains("\njetkvm_app_build_info{goarch=\"arm\","), "{t}");
    let bridged = |l: &&str| {
        ["jetkvm_cloud_", "jetkvm_connection_", "jetkvm_timesync_", "jetkvm_dc_"]
            .iter()
            .any(|p| l.starts_with(p))
    };
    assert_eq!(t.lines().filter(bridged).filter(|l| l.contains("source=")).count(), 0, "{t}");
    for absent in ["\ngo_", "\npromhttp_", "\njetkvm_build_info", "api.jetkvm.com", "192.168.1.20"] {
        assert!(!t.contains(absent), "{absent} re-exposed:\n{t}");
    }
    assert_eq!(promtool_check(&t), "");
    // Behind the daemon's authentication like everything else.
    let d = Daemon::start(&app.key(), Some(&password_mode(&hash("pw", bcrypt::Version::TwoB, 4), "s")));
    let r = d.get("/metrics", &[]);
    assert_eq!(r.status, 401);
    assert!(!r.text().contains("jetkvm_cloud"));
    assert_eq!(app.requests.lock().unwrap().len(), 1, "the app asked for a refused scrape");
}

/// TCP sockets of this host whose local port is `port`.
fn sockets_on(port: u16) -> usize {
    let local = format!(":{port:04X} ");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .map(|t| {
            t.lines()
                .filter(|l| l.split_whitespace().nth(1).is_some_and(|a| format!("{a} ").ends_with(&local)))
                .count()
        })
        .sum()
}

#[test]
fn asking_the_app_leaves_no_socket_on_its_port() {
    // The app closes first; were the daemon to close with a FIN, the app's
    // side would wait a minute in TIME_WAIT, counted on its port.
    // A port that this host's other sockets (thousands in TIME_WAIT after
    // the other tests) do not also use, so every socket on it is the app's.
    let app = std::iter::repeat_with(|| AppServer::text(b"jetkvm_timesync_status 1\n"))
        .take(50)
        .find(|a| sockets_on(a.addr.port()) == 1)
        .expect("a port of its own");
    let port = app.addr.port();
    let extra = format!("{}proc_root = \"/proc\"\nconnection_ports = [{port}]\n", app.key());
    let d = Daemon::start(&extra, Some(&no_password_mode()));
    let mut t = String::new();
    for _ in 0..3 {
        t = d.get("/metrics", &[]).text();
        assert_eq!(success(&t, "app_metrics"), Some(1.0), "{t}");
    }
    assert_eq!(app.requests.lock().unwrap().len(), 3);
    for state in ["time_wait", "fin_wait2", "close_wait", "established"] {
        let series = format!("jetkvm_connections{{port=\"{port}\",state=\"{state}\"}}");
        assert_eq!(sample(&t, &series), Some(0.0), "{series}\n{t}");
    }
    assert_eq!(
        sample(&t, &format!("jetkvm_connections{{port=\"{port}\",state=\"listen\"}}")),
        Some(1.0),
        "{t}"
    );
}

/// Newer builds of the app may protect its `/metrics`: asked for
/// credentials, the daemon says so in one series and one log line, however
/// many scrapes, and the rest of the scrape is whole; served again, it
/// says that once too.
#[test]
fn an_app_asking_for_credentials_is_a_state_logged_once() {
    let unauthorized = AppServer::start(Some(
        b"HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
            .to_vec(),
    ));
    let d = Daemon::start(&unauthorized.key(), Some(&no_password_mode()));
    for _ in 0..5 {
        let r = d.get("/metrics", &[]);
        let t = r.text();
        assert_eq!((r.status, success(&t, "app_metrics")), (200, Some(1.0)), "{t}");
        assert_eq!(sample(&t, "jetkvm_app_metrics_auth_required"), Some(1.0), "{t}");
        assert!(!t.contains("jetkvm_dc_"), "{t}");
        assert_eq!(success(&t, "cpu"), Some(1.0));
    }
    let log = d.wait_log("asks for credentials");
    assert_eq!(log.matches("asks for credentials").count(), 1, "{log}");
    assert_eq!(log.matches("collector app_metrics").count(), 0, "not a collector failure: {log}");
}

/// A collector that keeps failing for one reason is logged once, not on
/// every scrape (the device's log is a small ring).
#[test]
fn a_failing_collector_is_logged_once_per_reason() {
    let malformed = AppServer::text(b"# TYPE jetkvm_dc_x counter\njetkvm_dc_x{a=\"1} 2\n");
    let d = Daemon::start(&malformed.key(), Some(&no_password_mode()));
    for _ in 0..20 {
        assert_eq!(success(&d.get("/metrics", &[]).text(), "app_metrics"), Some(0.0));
    }
    let log = d.wait_log("collector app_metrics");
    assert_eq!(log.matches("collector app_metrics").count(), 1, "{log}");
}

#[test]
fn an_app_that_is_down_silent_or_hostile_fails_only_its_collector() {
    // Nothing listens.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let down = format!("app_metrics_address = \"{closed}\"\n");
    // Accepts and never answers: the scrape waits out the deadline only.
    let silent = AppServer::start(None);
    let oversized = AppServer::text(&vec![b'#'; 300 * 1024]);
    let malformed = AppServer::text(b"# TYPE jetkvm_dc_x counter\njetkvm_dc_x{a=\"1} 2\n");
    let not_found = AppServer::start(Some(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec()));
    let chunked = AppServer::start(Some(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\njetkv\r\n0\r\n\r\n".to_vec(),
    ));
    for (config, why) in [
        (down, "connecting to"),
        (silent.key() + "app_metrics_timeout = \"300ms\"\n", "no answer within 300ms"),
        (oversized.key(), "line 1: over 16 KiB"),
        (malformed.key(), "line 2: a label value without its closing quote"),
        (not_found.key(), "answered 404"),
        (chunked.key(), "an encoded body (Transfer-Encoding: chunked)"),
    ] {
        let d = Daemon::start(&config, Some(&no_password_mode()));
        let start = Instant::now();
        let r = d.get("/metrics", &[]);
        assert!(start.elapsed() < Duration::from_secs(3), "{why}: {:?}", start.elapsed());
        let t = r.text();
        assert_eq!((r.status, success(&t, "app_metrics")), (200, Some(0.0)), "{why}\n{t}");
        assert_eq!(success(&t, "cpu"), Some(1.0), "{why}");
        assert!(!t.contains("jetkvm_dc_") && !t.contains("jetkvm_app_metrics_fetch"), "{why}\n{t}");
        if why != "connecting to" {
            // The app refusing is its being down (debug); anything else warns.
            assert!(d.wait_log("collector app_metrics").contains(why), "{why}\n{}", d.log());
        }
    }
}

/// The app's many clients (one `source` each, merged away) never push its
/// metrics out: 10,000 of them come through whole, in an answer of
/// megabytes read line by line.
#[test]
fn ten_thousand_clients_of_the_app_come_through() {
    let mut body = String::from("# HELP jetkvm_connection_ping_sent_total Pings sent.\n# TYPE jetkvm_connection_ping_sent_total counter\n");
    for i in 0..10_000 {
        body += &format!("jetkvm_connection_ping_sent_total{{type=\"local\",source=\"fd00::{i:x}\"}} 1\n");
    }
    body += "# HELP jetkvm_timesync_status Synced.\n# TYPE jetkvm_timesync_status gauge\njetkvm_timesync_status 1\n";
    let app = AppServer::text(body.as_bytes());
    let d = Daemon::start(&app.key(), Some(&no_password_mode()));
    let t = d.get("/metrics", &[]).text();
    assert_eq!(success(&t, "app_metrics"), Some(1.0), "{}", d.log());
    assert_eq!(sample(&t, "jetkvm_connection_ping_sent_total{type=\"local\"}"), Some(10_000.0));
    assert_eq!(sample(&t, "jetkvm_timesync_status"), Some(1.0));
    assert_eq!(sample(&t, "jetkvm_app_metrics_families_dropped"), Some(0.0));
    assert_eq!(promtool_check(&t), "");
}

/// What a hostile or broken app (any process on an unprivileged
/// `app_metrics_address` counts as the app) can write never breaks the
/// exposition: promtool passes the whole scrape, the offending families
/// alone are dropped and counted, logged once. The sources: a histogram `x`
/// beside a gauge `x_count`, an empty label value beside none, +Inf and
/// -Inf counters, 4,998 buckets in one histogram, and seeded random
/// families of every type, label and value the format allows.
#[test]
fn hostile_app_output_never_breaks_the_exposition() {
    let mut hostile = String::from(
        "# TYPE jetkvm_dc_x histogram\njetkvm_dc_x_bucket{le=\"1\"} 1\njetkvm_dc_x_count 1\n\
         # TYPE jetkvm_dc_x_count gauge\njetkvm_dc_x_count 3\n\
         # TYPE jetkvm_dc_e counter\njetkvm_dc_e{zone=\"\"} 1\njetkvm_dc_e 2\n\
         # TYPE jetkvm_dc_inf counter\njetkvm_dc_inf{source=\"a\"} +Inf\njetkvm_dc_inf{source=\"b\"} -Inf\n\
         # TYPE jetkvm_dc_wide histogram\n",
    );
    for i in 0..4998 {
        hostile += &format!("jetkvm_dc_wide_bucket{{le=\"{i}\"}} {i}\n");
    }
    hostile += "jetkvm_dc_wide_count 4998\n# TYPE jetkvm_timesync_status gauge\njetkvm_timesync_status 1\n";
    let app = AppServer::text(hostile.as_bytes());
    let d = Daemon::start(&app.key(), Some(&no_password_mode()));
    for _ in 0..3 {
        let t = d.get("/metrics", &[]).text();
        assert_eq!(promtool_beyond_the_apps_style(&t), "", "{t}");
        assert_eq!(sample(&t, "jetkvm_app_metrics_families_dropped"), Some(4.0), "{t}");
        assert_eq!(sample(&t, "jetkvm_dc_e"), Some(3.0), "an empty label is no label: {t}");
        assert_eq!(sample(&t, "jetkvm_timesync_status"), Some(1.0));
        assert!(t.len() < 40_000, "{} bytes", t.len());
    }
    let log = d.wait_log("app metrics: dropped");
    assert_eq!(log.matches("app metrics: dropped").count(), 1, "{log}");
    for name in
        ["jetkvm_dc_x (", "jetkvm_dc_x_count (", "jetkvm_dc_inf (", "jetkvm_dc_wide (more than 64 buckets)"]
    {
        assert!(log.contains(name), "{name}: {log}");
    }
    drop(d);
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for round in 0..24 {
        let text = random_exposition(&mut seed);
        let app = AppServer::text(text.as_bytes());
        let d = Daemon::start(&app.key(), Some(&no_password_mode()));
        let t = d.get("/metrics", &[]).text();
        assert_eq!(promtool_beyond_the_apps_style(&t), "", "round {round}:\n{text}\n---\n{t}");
    }
}

/// What promtool says of an exposition beyond the style of the app's own
/// families (its HELP texts and names are the app's): an error that would
/// fail the whole scrape, or a complaint about any other family.
fn promtool_beyond_the_apps_style(text: &str) -> String {
    let app = |l: &&str| {
        ["jetkvm_dc_", "jetkvm_cloud_", "jetkvm_connection_", "jetkvm_timesync_"]
            .iter()
            .any(|p| l.starts_with(p))
            && !l.contains("error")
    };
    promtool_check(text).lines().filter(|l| !app(l)).map(|l| format!("{l}\n")).collect()
}

/// A random exposition of the app's kind, from a small world of names,
/// labels and values, so that its families meet, merge and collide.
fn random_exposition(seed: &mut u64) -> String {
    let mut next = |n: usize| {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        (*seed % n as u64) as usize
    };
    let names = [
        "jetkvm_dc_a",
        "jetkvm_dc_a_count",
        "jetkvm_dc_a_sum",
        "jetkvm_dc_b",
        "jetkvm_dc_b_bucket",
        "jetkvm_cloud_c",
    ];
    let kinds = ["counter", "gauge", "histogram", "summary", "untyped"];
    let values = ["0", "1", "-1", "2.5", "+Inf", "-Inf", "NaN", "1e300", "9007199254740991", "3"];
    let labels =
        ["", "source=\"a\",", "source=\"b\",", "type=\"\",", "type=\"x\",", "source=\"\",type=\"x\","];
    let mut out = String::new();
    let mut used = Vec::new();
    for _ in 0..1 + next(5) {
        let name = names[next(names.len())];
        if used.contains(&name) {
            continue;
        }
        used.push(name);
        let kind = kinds[next(kinds.len())];
        out += &format!("# HELP {name} A \\\\ help\\n text.\n# TYPE {name} {kind}\n");
        for _ in 0..1 + next(6) {
            let l = labels[next(labels.len())];
            let v = values[next(values.len())];
            let (suffix, extra) = match (kind, next(4)) {
                ("histogram", 0) => ("_bucket", format!("le=\"{}\",", ["0.1", "1", "+Inf"][next(3)])),
                ("histogram" | "summary", 1) => ("_sum", String::new()),
                ("histogram" | "summary", 2) => ("_count", String::new()),
                ("summary", _) => ("", format!("quantile=\"{}\",", ["0", "0.5", "1"][next(3)])),
                _ => ("", String::new()),
            };
            out += &format!("{name}{suffix}{{{l}{extra}}} {v}\n");
        }
    }
    out
}
