use crate::util::*;

/// The fixture trees as the roots, and the HDMI receiver asleep (its
/// sleep file says so): every collector has what it reads.
fn fixture_config(extra: &str) -> String {
    awake_or_asleep(&fixtures().join("sys/bus/i2c/devices/4-000f/sleep_mode"), extra)
}

/// The fixture trees as the roots, with the receiver's sleep file `sleep`.
fn awake_or_asleep(sleep: &std::path::Path, extra: &str) -> String {
    let f = fixtures();
    format!(
        "proc_root = \"{}\"\nsys_root = \"{}\"\nversion_file = \"{}\"\nvideo_sleep_file = \"{}\"\n\
         connection_ports = [80, 443, 8554]\n{extra}",
        f.join("proc").display(),
        f.join("sys").display(),
        f.join("version").display(),
        sleep.display()
    )
}

/// Every collector this scrape ran, from its success series: the tests
/// cover each collector registered, with no list of them kept here.
fn collectors(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("jetkvm_scrape_collector_success{collector=\""))
        .filter_map(|l| {
            let (name, rest) = l.split_once("\"} ")?;
            Some((name.to_owned(), rest.parse().ok()?))
        })
        .collect()
}

/// Collectors that read nothing under `proc_root` or `sys_root`: sysinfo's
/// and the app's processes (the live kernel and `/proc`), the filesystems'
/// (statvfs of configured paths), the exporter's own. Every other collector
/// fails without the fixture trees.
const NOT_FROM_ROOTS: [&str; 8] =
    ["time", "loadavg", "meminfo", "process", "filesystem", "exporter", "app", "video_capture"];

/// Families sysinfo reads from the live kernel, whatever `proc_root` says,
/// and the RTC's offset from the live system clock.
const LIVE: [&str; 7] = [
    "jetkvm_rtc_offset_seconds{",
    "jetkvm_system_uptime_seconds ",
    "jetkvm_system_boot_time_seconds ",
    "jetkvm_system_load1 ",
    "jetkvm_system_load5 ",
    "jetkvm_system_load15 ",
    "jetkvm_memory_",
];

/// Lines that vary between runs or machines: timings, the process itself,
/// the build target, what sysinfo reads.
fn stable(text: &str) -> String {
    text.lines()
        .filter(|l| {
            !(l.starts_with("jetkvm_scrape_collector_duration_seconds{")
                || l.starts_with("jetkvm_app_metrics_fetch_duration_seconds ")
                || l.starts_with("process_")
                || l.starts_with("# HELP process_")
                || l.starts_with("# TYPE process_")
                || l.starts_with("jetkvm_exporter_build_info{"))
        })
        // sysinfo reads the live kernel: its values vary;
        // `sysinfo_values_match_the_kernel` checks them.
        .map(|l| match LIVE.iter().find(|p| l.starts_with(*p)) {
            Some(_) => format!("{} LIVE", l.split(' ').next().unwrap_or(l)),
            None => l.to_owned(),
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
    let app = AppServer::text(&std::fs::read(fixtures().join("app/metrics")).unwrap());
    let d = Daemon::start(&fixture_config(&app.key()), Some(&no_password_mode()));
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
        panic!(
            "exposition differs from tests/fixtures/metrics.golden (if the change is meant, write it anew: \
             UPDATE_GOLDEN=1 cargo test --test it fixture_tree_matches_the_golden_exposition, and read the diff):\n{}",
            diff.join("\n")
        );
    }
    assert_eq!(promtool_check(&text), "");
}

#[test]
fn fixture_values_are_exact() {
    let d = Daemon::start(&fixture_config(""), Some(&no_password_mode()));
    let t = d.get("/metrics", &[]).text();
    let hz = 100.0; // USER_HZ on Linux
    for (series, want) in [
        ("jetkvm_cpu_seconds_total{mode=\"user\"}", 12345.0 / hz),
        ("jetkvm_cpu_seconds_total{mode=\"idle\"}", 234567.0 / hz),
        ("jetkvm_cpu_seconds_total{mode=\"steal\"}", 4.0 / hz),
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
        ("jetkvm_display_brightness", 64.0),
        ("jetkvm_display_max_brightness", 255.0),
        ("jetkvm_usb_gadget_speed_info{udc=\"ffb00000.usb\",speed=\"high-speed\"}", 1.0),
        ("jetkvm_usb_target_powered{extcon=\"extcon0\"}", 1.0),
        ("jetkvm_usb_gadget_bound", 1.0),
        ("jetkvm_usb_gadget_function_enabled{function=\"hid.usb0\",role=\"keyboard\"}", 1.0),
        ("jetkvm_usb_gadget_function_enabled{function=\"hid.usb1\",role=\"absolute_mouse\"}", 1.0),
        ("jetkvm_usb_gadget_function_enabled{function=\"hid.usb2\",role=\"relative_mouse\"}", 0.0),
        ("jetkvm_usb_gadget_function_enabled{function=\"mass_storage.usb0\",role=\"mass_storage\"}", 1.0),
        ("jetkvm_virtual_media_mounted", 1.0),
        ("jetkvm_virtual_media_info{image=\"nbd0\",source=\"nbd\",type=\"cdrom\"}", 1.0),
        ("jetkvm_virtual_media_read_only", 1.0),
        ("jetkvm_virtual_media_size_bytes", 2097152.0 * 512.0),
        ("jetkvm_network_info{device=\"eth0\",operstate=\"up\",duplex=\"full\"}", 1.0),
        ("jetkvm_network_info{device=\"usb0\",operstate=\"down\",duplex=\"\"}", 1.0),
        ("jetkvm_network_up{device=\"eth0\"}", 1.0),
        ("jetkvm_network_up{device=\"usb0\"}", 0.0),
        ("jetkvm_network_carrier{device=\"eth0\"}", 1.0),
        ("jetkvm_network_speed_bytes{device=\"eth0\"}", 12_500_000.0),
        ("jetkvm_network_carrier_changes_total{device=\"eth0\"}", 3.0),
        ("jetkvm_network_carrier_changes_total{device=\"usb0\"}", 0.0),
        ("jetkvm_rtc_time_seconds{rtc=\"rtc0\"}", 1_764_547_200.0),
    ] {
        assert_eq!(sample(&t, series), Some(want), "{series}");
    }
    // Port 40000 is not a device service: not counted anywhere.
    assert!(!t.contains("port=\"40000\""));
    // What the kernel does not give is no sample: loopback, a down link's
    // carrier, a speed of -1.
    assert!(!t.contains("jetkvm_network_up{device=\"lo\"}"));
    assert_eq!(sample(&t, "jetkvm_network_carrier{device=\"usb0\"}"), None);
    assert_eq!(sample(&t, "jetkvm_network_speed_bytes{device=\"usb0\"}"), None);
    // The system clock minus the fixture RTC's time, as of this scrape.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let offset = sample(&t, "jetkvm_rtc_offset_seconds{rtc=\"rtc0\"}").unwrap();
    assert!((now - 1_764_547_200.0 - offset).abs() < 5.0, "{offset}");
    // Every collector registered succeeds on the fixture trees: one added
    // without its fixture fails here.
    let all = collectors(&t);
    assert!(all.len() >= 20, "{all:?}");
    let failed: Vec<_> = all.iter().filter(|(_, ok)| *ok != 1.0).collect();
    assert!(failed.is_empty(), "no fixture for: {failed:?}");
}

/// A number from a kernel file: the `field` line's first value (`None`:
/// the file's first value).
fn kernel(path: &str, field: Option<&str>) -> f64 {
    let text = std::fs::read_to_string(path).unwrap();
    let rest = match field {
        Some(f) => text.lines().find_map(|l| l.strip_prefix(f)).unwrap_or_else(|| panic!("{f} in {path}")),
        None => &text,
    };
    rest.trim_start_matches(':').split_whitespace().next().unwrap().parse().unwrap()
}

/// Whether `got` lies between two reads of the same kernel value taken
/// around the scrape, give or take `slack`.
fn between(got: f64, before: f64, after: f64, slack: f64) -> bool {
    before.min(after) - slack <= got && got <= before.max(after) + slack
}

/// What sysinfo reads, checked against an independent read of the same
/// kernel files around the scrape.
#[test]
fn sysinfo_values_match_the_kernel() {
    let d = Daemon::start("", Some(&no_password_mode()));
    let read_all = || {
        [
            kernel("/proc/uptime", None),
            kernel("/proc/loadavg", None),
            kernel("/proc/meminfo", Some("MemAvailable")) * 1024.0,
            kernel("/proc/meminfo", Some("MemFree")) * 1024.0,
        ]
    };
    let before = read_all();
    let t = d.get("/metrics", &[]).text();
    let after = read_all();
    let got = |series: &str| sample(&t, series).unwrap_or_else(|| panic!("{series} not in scrape"));
    let checks = [
        ("jetkvm_system_uptime_seconds", 0, 1.0),
        ("jetkvm_system_load1", 1, 0.01),
        ("jetkvm_memory_available_bytes", 2, 16e6),
        ("jetkvm_memory_free_bytes", 3, 16e6),
    ];
    for (series, i, slack) in checks {
        let v = got(series);
        assert!(
            between(v, before[i], after[i], slack),
            "{series} = {v}, kernel {} .. {}",
            before[i],
            after[i]
        );
    }
    assert_eq!(got("jetkvm_memory_total_bytes"), kernel("/proc/meminfo", Some("MemTotal")) * 1024.0);
    assert_eq!(got("jetkvm_system_boot_time_seconds"), kernel("/proc/stat", Some("btime")));
    // The daemon's own process, against its /proc/PID/stat.
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", d.child.id())).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let started = kernel("/proc/stat", Some("btime")) + fields[19].parse::<f64>().unwrap() / 100.0;
    assert!((got("process_start_time_seconds") - started).abs() <= 1.0, "start time {started}");
    let cpu = (fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()) / 100.0;
    assert!(between(got("process_cpu_seconds_total"), cpu, cpu, 0.05), "cpu {cpu}");
    let threads = kernel(&format!("/proc/{}/status", d.child.id()), Some("Threads"));
    assert_eq!(got("process_threads"), threads);
    for c in ["time", "loadavg", "meminfo"] {
        assert_eq!(got(&format!("jetkvm_scrape_collector_success{{collector=\"{c}\"}}")), 1.0, "{c}");
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
    // Every collector that reads under the roots fails without them (and
    // the scrape goes on); an empty root is no reason to report a value.
    let all = collectors(&t);
    assert!(all.len() >= 20, "{all:?}");
    let succeeded: Vec<_> =
        all.into_iter().filter(|(c, ok)| *ok != 0.0 && !NOT_FROM_ROOTS.contains(&c.as_str())).collect();
    assert!(succeeded.is_empty(), "succeeded without their roots: {succeeded:?}");
    assert!(!t.contains("jetkvm_cpu_seconds_total"));
    // What sysinfo reads comes from the live kernel, whatever the roots.
    for c in ["time", "loadavg", "meminfo"] {
        assert_eq!(
            sample(&t, &format!("jetkvm_scrape_collector_success{{collector=\"{c}\"}}")),
            Some(1.0),
            "{c}"
        );
    }
    assert_eq!(promtool_check(&t), "");
}

#[test]
fn malformed_fixture_files_fail_only_their_collector() {
    let root = TempDir::new();
    std::fs::create_dir_all(root.path("proc/net")).unwrap();
    std::fs::write(root.path("proc/stat"), "cpu  garbage\n").unwrap();
    std::fs::write(root.path("proc/net/tcp"), "  sl local\n 0: 0100007F:ZZZZ 0:0 0A\n").unwrap();
    let extra = format!("proc_root = \"{}\"\n", root.path("proc").display());
    let d = Daemon::start(&extra, Some(&no_password_mode()));
    let t = d.get("/metrics", &[]).text();
    assert_eq!(sample(&t, "jetkvm_scrape_collector_success{collector=\"cpu\"}"), Some(0.0));
    assert_eq!(sample(&t, "jetkvm_scrape_collector_success{collector=\"tcp\"}"), Some(0.0));
    assert_eq!(sample(&t, "jetkvm_scrape_collector_success{collector=\"thermal_zone\"}"), Some(1.0));
    assert!(!t.contains("jetkvm_connections{"), "no partial family from a failed collector");
    let log = d.wait_log("collector cpu");
    assert!(log.contains("collector cpu"), "{log}");
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

#[test]
fn hdmi_asleep_is_not_asked_and_a_node_that_cannot_answer_fails_only_hdmi() {
    // The receiver sleeps (the fixtures' sleep file): its state, nothing
    // asked, no node needed.
    let d =
        Daemon::start(&fixture_config("video_device = \"/nonexistent/video0\"\n"), Some(&no_password_mode()));
    let t = d.get("/metrics", &[]).text();
    assert_eq!(sample(&t, "jetkvm_hdmi_signal{state=\"sleep\"}"), Some(1.0), "{t}");
    assert_eq!(sample(&t, "jetkvm_hdmi_signal{state=\"ok\"}"), Some(0.0));
    assert_eq!(sample(&t, "jetkvm_hdmi_width_pixels"), None);
    assert_eq!(sample(&t, "jetkvm_hdmi_query_age_seconds"), None);
    assert_eq!(sample(&t, "jetkvm_scrape_collector_success{collector=\"hdmi\"}"), Some(1.0));
    assert_eq!(promtool_check(&t), "");
    drop(d);
    // Awake, on a node that is no V4L2 device (ENOTTY): hdmi fails, the
    // scrape does not; no state is made up.
    let extra = "video_device = \"/dev/null\"\n";
    let d = Daemon::start(
        &awake_or_asleep(std::path::Path::new("/nonexistent"), extra),
        Some(&no_password_mode()),
    );
    let t = d.get("/metrics", &[]).text();
    assert_eq!(sample(&t, "jetkvm_scrape_collector_success{collector=\"hdmi\"}"), Some(0.0));
    assert!(!t.contains("jetkvm_hdmi_signal"), "{t}");
    assert!(d.wait_log("collector hdmi").contains("VIDIOC_QUERY_DV_TIMINGS"), "{}", d.log());
}

/// Unbound, a controller may keep its last state (dummy_udc does): with no
/// gadget on it the link is down whatever the state file says.
#[test]
fn a_controller_without_a_gadget_has_no_link() {
    let sys = TempDir::new();
    let udc = sys.path("sys/class/udc/dummy_udc.0");
    std::fs::create_dir_all(&udc).unwrap();
    std::fs::write(udc.join("state"), "configured\n").unwrap();
    std::fs::write(udc.join("current_speed"), "high-speed\n").unwrap();
    std::fs::write(udc.join("function"), "\n").unwrap();
    let extra = format!("sys_root = \"{}\"\n", sys.path("sys").display());
    let d = Daemon::start(&extra, Some(&no_password_mode()));
    let t = d.get("/metrics", &[]).text();
    assert_eq!(
        sample(&t, "jetkvm_usb_gadget_state{udc=\"dummy_udc.0\",state=\"not attached\"}"),
        Some(1.0),
        "{t}"
    );
    assert_eq!(sample(&t, "jetkvm_usb_gadget_state{udc=\"dummy_udc.0\",state=\"configured\"}"), Some(0.0));
    assert!(!t.contains("jetkvm_usb_gadget_speed_info{"), "{t}");
    // Bound again: the kernel's state.
    std::fs::write(udc.join("function"), "jetkvm\n").unwrap();
    let t = d.get("/metrics", &[]).text();
    assert_eq!(sample(&t, "jetkvm_usb_gadget_state{udc=\"dummy_udc.0\",state=\"configured\"}"), Some(1.0));
}

/// Virtual media is mounted only while the mass storage function is linked
/// into the gadget's configuration: turned off at boot (no function) or
/// later (unlinked, its LUN's file left behind), it is 0, not "no data".
#[test]
fn virtual_media_turned_off_is_not_mounted() {
    for gadget in ["media-off-at-boot", "media-off-later"] {
        let d = Daemon::start(
            &fixture_config(&format!("usb_gadget = \"{gadget}\"\n")),
            Some(&no_password_mode()),
        );
        let t = d.get("/metrics", &[]).text();
        assert_eq!(sample(&t, "jetkvm_virtual_media_mounted"), Some(0.0), "{gadget}: {t}");
        assert_eq!(
            sample(&t, "jetkvm_scrape_collector_success{collector=\"virtual_media\"}"),
            Some(1.0),
            "{gadget}"
        );
        assert!(!t.contains("jetkvm_virtual_media_info{"), "{gadget}: {t}");
        assert_eq!(
            sample(
                &t,
                "jetkvm_usb_gadget_function_enabled{function=\"mass_storage.usb0\",role=\"mass_storage\"}"
            ),
            if gadget == "media-off-later" { Some(0.0) } else { None },
            "{gadget}"
        );
    }
}
