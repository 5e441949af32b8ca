use crate::util::*;

fn fixture_config(extra: &str) -> String {
    let f = fixtures();
    format!(
        "proc_root = \"{}\"\nsys_root = \"{}\"\nversion_file = \"{}\"\nconnection_ports = [80, 443, 8554]\n{extra}",
        f.join("proc").display(),
        f.join("sys").display(),
        f.join("version").display()
    )
}

/// Lines that vary between runs or machines: timings, the process itself,
/// the build target.
fn stable(text: &str) -> String {
    text.lines()
        .filter(|l| {
            !(l.starts_with("jetkvm_scrape_collector_duration_seconds{")
                || l.starts_with("process_")
                || l.starts_with("# HELP process_")
                || l.starts_with("# TYPE process_")
                || l.starts_with("jetkvm_exporter_build_info{"))
        })
        .map(|l| match (l.find("address=\""), l.find("\",tls=")) {
            // The bound port differs every run.
            (Some(a), Some(b)) => format!("{}address=\"ADDR{}\n", &l[..a], &l[b..]),
            _ => format!("{l}\n"),
        })
        .collect()
}

#[test]
fn fixture_tree_matches_the_golden_exposition() {
    let d = Daemon::start(&fixture_config(""), Some(&no_password_mode()));
    let text = d.get("/metrics", &[]).text();
    let got = stable(&text);
    let golden_path = fixtures().join("metrics.golden");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden_path, &got).unwrap();
    }
    let want = std::fs::read_to_string(&golden_path).unwrap();
    if got != want {
        let diff: Vec<String> = want
            .lines()
            .filter(|l| !got.lines().any(|g| g == *l))
            .map(|l| format!("- {l}"))
            .chain(got.lines().filter(|l| !want.lines().any(|w| w == *l)).map(|l| format!("+ {l}")))
            .collect();
        panic!("exposition differs from tests/fixtures/metrics.golden:\n{}", diff.join("\n"));
    }
    assert_eq!(promtool_check(&text), "");
}

#[test]
fn fixture_values_are_exact() {
    let d = Daemon::start(&fixture_config(""), Some(&no_password_mode()));
    let t = d.get("/metrics", &[]).text();
    let hz = 100.0; // USER_HZ on Linux
    for (series, want) in [
        ("jetkvm_system_uptime_seconds", 350735.47),
        ("jetkvm_system_boot_time_seconds", 1700000000.0),
        ("jetkvm_system_load1", 0.52),
        ("jetkvm_system_load15", 0.59),
        ("jetkvm_cpu_seconds_total{mode=\"user\"}", 12345.0 / hz),
        ("jetkvm_cpu_seconds_total{mode=\"idle\"}", 234567.0 / hz),
        ("jetkvm_cpu_seconds_total{mode=\"steal\"}", 4.0 / hz),
        ("jetkvm_memory_total_bytes", 246580.0 * 1024.0),
        ("jetkvm_memory_available_bytes", 153600.0 * 1024.0),
        ("jetkvm_connections{port=\"80\",state=\"established\"}", 2.0),
        ("jetkvm_connections{port=\"80\",state=\"listen\"}", 1.0),
        ("jetkvm_connections{port=\"80\",state=\"time_wait\"}", 1.0),
        ("jetkvm_connections{port=\"443\",state=\"listen\"}", 1.0),
        ("jetkvm_connections{port=\"443\",state=\"established\"}", 1.0),
        ("jetkvm_connections{port=\"443\",state=\"close_wait\"}", 1.0),
        ("jetkvm_connections{port=\"8554\",state=\"established\"}", 1.0),
        ("jetkvm_connections{port=\"8554\",state=\"listen\"}", 1.0),
        ("jetkvm_network_receive_bytes_total{device=\"eth0\"}", 123456789.0),
        ("jetkvm_network_transmit_bytes_total{device=\"eth0\"}", 987654321.0),
        ("jetkvm_network_receive_drop_total{device=\"eth0\"}", 2.0),
        ("jetkvm_network_transmit_errors_total{device=\"eth0\"}", 3.0),
        ("jetkvm_thermal_zone_celsius{zone=\"0\",type=\"soc-thermal\"}", 48.125),
        ("jetkvm_thermal_zone_celsius{zone=\"1\",type=\"gpu-thermal\"}", 39.5),
        ("jetkvm_usb_gadget_state{udc=\"ffb00000.usb\",state=\"configured\"}", 1.0),
        ("jetkvm_usb_gadget_state{udc=\"ffb00000.usb\",state=\"not attached\"}", 0.0),
        ("jetkvm_device_info{version=\"0.4.8\"}", 1.0),
    ] {
        assert_eq!(sample(&t, series), Some(want), "{series}");
    }
    // Port 40000 is not a device service: not counted anywhere.
    assert!(!t.contains("port=\"40000\""));
    for c in [
        "time",
        "loadavg",
        "cpu",
        "meminfo",
        "tcp",
        "netdev",
        "filesystem",
        "thermal_zone",
        "usb_gadget",
        "device",
    ] {
        assert_eq!(
            sample(&t, &format!("jetkvm_scrape_collector_success{{collector=\"{c}\"}}")),
            Some(1.0),
            "{c}"
        );
    }
}

#[test]
fn filesystem_values_match_statvfs() {
    let dir = TempDir::new();
    let d = Daemon::start(
        &format!("filesystems = [\"{}\", \"/nonexistent-mount\"]\n", dir.0.display()),
        Some(&no_password_mode()),
    );
    let t = d.get("/metrics", &[]).text();
    let s = nix::sys::statvfs::statvfs(&dir.0).unwrap();
    let m = dir.0.display();
    let size = s.blocks() as f64 * s.fragment_size() as f64;
    assert_eq!(sample(&t, &format!("jetkvm_filesystem_size_bytes{{mountpoint=\"{m}\"}}")), Some(size));
    assert_eq!(sample(&t, &format!("jetkvm_filesystem_files{{mountpoint=\"{m}\"}}")), Some(s.files() as f64));
    assert!(sample(&t, &format!("jetkvm_filesystem_avail_bytes{{mountpoint=\"{m}\"}}")).unwrap() > 0.0);
    assert_eq!(sample(&t, &format!("jetkvm_filesystem_device_error{{mountpoint=\"{m}\"}}")), Some(0.0));
    assert_eq!(sample(&t, "jetkvm_filesystem_device_error{mountpoint=\"/nonexistent-mount\"}"), Some(1.0));
    assert_eq!(sample(&t, "jetkvm_scrape_collector_success{collector=\"filesystem\"}"), Some(1.0));
}

#[test]
fn a_collector_without_its_source_reports_zero_and_the_scrape_succeeds() {
    let empty = TempDir::new();
    std::fs::create_dir_all(empty.path("proc")).unwrap();
    std::fs::create_dir_all(empty.path("sys")).unwrap();
    let extra = format!(
        "proc_root = \"{}\"\nsys_root = \"{}\"\nversion_file = \"{}\"\n",
        empty.path("proc").display(),
        empty.path("sys").display(),
        empty.path("version").display()
    );
    let d = Daemon::start(&extra, Some(&no_password_mode()));
    let r = d.get("/metrics", &[]);
    assert_eq!(r.status, 200);
    let t = r.text();
    for c in ["time", "loadavg", "cpu", "meminfo", "tcp", "netdev", "thermal_zone", "usb_gadget", "device"] {
        assert_eq!(
            sample(&t, &format!("jetkvm_scrape_collector_success{{collector=\"{c}\"}}")),
            Some(0.0),
            "{c}"
        );
    }
    assert!(!t.contains("jetkvm_system_uptime_seconds"));
    assert_eq!(promtool_check(&t), "");
}

#[test]
fn malformed_fixture_files_fail_only_their_collector() {
    let root = TempDir::new();
    std::fs::create_dir_all(root.path("proc/net")).unwrap();
    std::fs::write(root.path("proc/loadavg"), "garbage\n").unwrap();
    std::fs::write(root.path("proc/net/tcp"), "  sl local\n 0: 0100007F:ZZZZ 0:0 0A\n").unwrap();
    std::fs::copy(fixtures().join("proc/uptime"), root.path("proc/uptime")).unwrap();
    std::fs::copy(fixtures().join("proc/stat"), root.path("proc/stat")).unwrap();
    let extra = format!("proc_root = \"{}\"\n", root.path("proc").display());
    let d = Daemon::start(&extra, Some(&no_password_mode()));
    let t = d.get("/metrics", &[]).text();
    assert_eq!(sample(&t, "jetkvm_scrape_collector_success{collector=\"loadavg\"}"), Some(0.0));
    assert_eq!(sample(&t, "jetkvm_scrape_collector_success{collector=\"tcp\"}"), Some(0.0));
    assert_eq!(sample(&t, "jetkvm_scrape_collector_success{collector=\"time\"}"), Some(1.0));
    assert_eq!(sample(&t, "jetkvm_scrape_collector_success{collector=\"cpu\"}"), Some(1.0));
    assert!(!t.contains("jetkvm_connections{"), "no partial family from a failed collector");
    let log = d.wait_log("collector loadavg");
    assert!(log.contains("collector loadavg"), "{log}");
}

#[test]
fn live_scrape_of_this_machine_passes_promtool() {
    let d =
        Daemon::start("filesystems = [\"/\"]\nversion_file = \"/nonexistent\"\n", Some(&no_password_mode()));
    let r = d.get("/metrics", &[("Accept-Encoding", "gzip")]);
    assert_eq!(r.status, 200);
    let t = r.text();
    assert_eq!(promtool_check(&t), "", "promtool complained about:\n{t}");
    for family in [
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "jetkvm_cpu_seconds_total",
    ] {
        assert!(t.contains(&format!("\n{family}")), "{family} missing");
    }
    assert!(sample(&t, "process_resident_memory_bytes").unwrap() > 100_000.0);
}

#[test]
fn live_tcp_connections_are_counted_by_port_and_state() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let _a = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let _b = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let d = Daemon::start(
        &format!("proc_root = \"/proc\"\nsys_root = \"/sys\"\nconnection_ports = [{port}]\n"),
        Some(&no_password_mode()),
    );
    let t = d.get("/metrics", &[]).text();
    assert_eq!(
        sample(&t, &format!("jetkvm_connections{{port=\"{port}\",state=\"listen\"}}")),
        Some(1.0),
        "{t}"
    );
    assert_eq!(
        sample(&t, &format!("jetkvm_connections{{port=\"{port}\",state=\"established\"}}")),
        Some(2.0)
    );
    assert_eq!(sample(&t, "jetkvm_scrape_collector_success{collector=\"tcp\"}"), Some(1.0));
}
