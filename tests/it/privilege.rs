//! `serve --user`: once listening, the daemon is its own user with one
//! capability. These tests run as root (as CI does), and switch to
//! `nobody`.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use bcrypt::Version;

use crate::util::*;

/// A field of /proc/PID/status, its words joined by one space.
fn status(pid: u32, field: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = text.lines().find_map(|l| l.strip_prefix(&format!("{field}:"))).unwrap_or("");
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn nobody() -> (u32, u32) {
    let out = Command::new("id").args(["-u", "nobody"]).output().unwrap();
    let uid = String::from_utf8(out.stdout).unwrap().trim().parse().expect("a user named nobody");
    let out = Command::new("id").args(["-g", "nobody"]).output().unwrap();
    (uid, String::from_utf8(out.stdout).unwrap().trim().parse().unwrap())
}

#[test]
fn the_daemon_runs_as_its_user_with_only_cap_dac_read_search() {
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test switches users: it runs as root");
    let (uid, gid) = nobody();
    let dir = TempDir::new();
    // The device's files as the device's app leaves them: root's, 0600.
    let device = dir.write("kvm_config.json", &password_mode(&hash("pw", Version::TwoA, 4), "sess"));
    std::fs::set_permissions(&device, std::fs::Permissions::from_mode(0o600)).unwrap();
    // The token directory is the daemon user's (the init script makes it
    // so); a token root makes there is the daemon user's too. The pid
    // file's is root's.
    std::fs::create_dir(dir.path("metrics")).unwrap();
    std::os::unix::fs::chown(dir.path("metrics"), Some(uid), Some(gid)).unwrap();
    std::fs::create_dir(dir.path("run")).unwrap();
    let config = dir.write(
        "config.toml",
        &format!(
            "listen_addr = \"127.0.0.1:0\"\ndevice_config = \"{}\"\ntoken_file = \"{}\"\nfilesystems = []\n",
            device.display(),
            dir.path("metrics/token.sha256").display()
        ),
    );
    let out = Command::new(BIN).args(["token", "new", "--config"]).arg(&config).output().unwrap();
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let meta = std::fs::metadata(dir.path("metrics/token.sha256")).unwrap();
    assert_eq!((std::os::unix::fs::MetadataExt::uid(&meta), meta.permissions().mode() & 0o777), (uid, 0o600));
    let pidfile = dir.path("run/jetkvm-metrics.pid");
    let ids = format!("{uid}:{gid}");
    // Both files where only root writes, as the init script has it.
    let ports = dir.path("run/ports");
    let args =
        ["--user", &ids, "--pidfile", pidfile.to_str().unwrap(), "--ports-file", ports.to_str().unwrap()];
    let mut d = Daemon::start_with_args(dir, &config, &args);
    let pid = d.child.id();
    // Who it is now, and what it may.
    assert_eq!(status(pid, "Uid"), format!("{uid} {uid} {uid} {uid}"));
    assert_eq!(status(pid, "Gid"), format!("{gid} {gid} {gid} {gid}"));
    assert_eq!(status(pid, "Groups"), "");
    for (field, want) in [
        ("CapEff", "0000000000000004"),
        ("CapPrm", "0000000000000004"),
        ("CapBnd", "0000000000000004"),
        ("CapInh", "0000000000000000"),
        ("CapAmb", "0000000000000000"),
        ("NoNewPrivs", "1"),
    ] {
        assert_eq!(status(pid, field), want, "{field}");
    }
    assert!(d.log().contains(&format!("running as uid {uid} gid {gid}")), "{}", d.log());
    // What it reads still works: the root-only device config (password,
    // cookie), its token, its own /proc (root's once it switched).
    assert_eq!(d.get("/metrics", &[("Authorization", &basic("admin", "pw"))]).status, 200);
    assert_eq!(d.get("/metrics", &[("Cookie", "authToken=sess")]).status, 200);
    let t = d.get("/metrics", &[("Authorization", &format!("Bearer {token}"))]).text();
    assert!(sample(&t, "process_open_fds").unwrap() > 0.0, "{t}");
    assert_eq!(sample(&t, "jetkvm_exporter_device_config_load_success"), Some(1.0));
    // Its pid file, written while it was root: root's, which its user can
    // neither change nor remove (the init script removes it).
    assert_eq!(std::fs::read_to_string(&pidfile).unwrap().trim(), pid.to_string());
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&pidfile).unwrap()), 0);
    d.signal("TERM");
    assert!(d.wait_exit(Duration::from_secs(10)).is_some_and(|s| s.success()));
    assert!(pidfile.exists());
}

/// A process of the app's name for these tests: a copy of `sleep`, with
/// `node` as its standard input if given; ended when dropped.
struct StandIn(std::process::Child);

impl StandIn {
    fn start(dir: &TempDir, name: &str, node: Option<&str>) -> StandIn {
        std::fs::copy("/bin/sleep", dir.path(name)).unwrap();
        let stdin = match node {
            Some(n) => std::process::Stdio::from(std::fs::File::open(n).unwrap()),
            None => std::process::Stdio::null(),
        };
        let child = Command::new(dir.path(name))
            .arg("600")
            .stdin(stdin)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        StandIn(child)
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The helper's pid: the daemon's child named `jkm-openfiles`.
fn helper_of(d: &Daemon) -> u32 {
    std::fs::read_to_string(format!("/proc/{}/task/{}/children", d.child.id(), d.child.id()))
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse::<u32>().unwrap())
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "jkm-openfiles")
        })
        .expect("the open-files helper, the daemon's child")
}

/// A configuration in no-password mode asking about `name`'s processes.
fn app_config(dir: &TempDir, name: &str, extra: &str) -> std::path::PathBuf {
    let device = dir.write("kvm_config.json", &no_password_mode());
    dir.write(
        "config.toml",
        &format!(
            "listen_addr = \"127.0.0.1:0\"\nfilesystems = []\napp_processes = [\"{name}\"]\n\
             video_capture_device = \"/dev/full\"\ndevice_config = \"{}\"\n{extra}",
            device.display()
        ),
    )
}

fn capture(d: &Daemon) -> (Option<f64>, Option<f64>) {
    let t = d.get("/metrics", &[]).text();
    (
        sample(&t, "jetkvm_video_capture_open"),
        sample(&t, "jetkvm_scrape_collector_success{collector=\"video_capture\"}"),
    )
}

/// The open-files helper (the one process with CAP_SYS_PTRACE): a network
/// namespace of its own and a seccomp filter, still answering; stopped, it
/// costs one scrape one wait, and the scrapes after it none.
#[test]
fn the_open_files_helper_is_confined_and_a_stopped_one_never_stalls_scrapes() {
    let (uid, gid) = nobody();
    let dir = TempDir::new();
    let name = format!("jkh{}", std::process::id() % 100_000);
    let _app = StandIn::start(&dir, &name, Some("/dev/full"));
    let config = app_config(&dir, &name, "");
    let d = Daemon::start_with_args(dir, &config, &["--user", &format!("{uid}:{gid}")]);
    let helper = helper_of(&d);
    assert_eq!(status(helper, "Seccomp"), "2");
    assert_eq!(status(helper, "NoNewPrivs"), "1");
    let net = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    assert_ne!(net(&helper.to_string()), net("self"), "the helper in the host's network namespace");
    // Walked at the first scrape; the app found, holding the node.
    assert_eq!(capture(&d), (Some(1.0), Some(1.0)), "{}", d.log());
    unsafe { libc::kill(helper as i32, libc::SIGSTOP) };
    let timed = |d: &Daemon| {
        let start = std::time::Instant::now();
        (capture(d), start.elapsed())
    };
    let (first, took) = timed(&d);
    assert_eq!(first, (None, Some(0.0)));
    assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(3), "{took:?}");
    for _ in 0..5 {
        let (then, took) = timed(&d);
        assert_eq!(then, (None, Some(0.0)));
        assert!(took < Duration::from_millis(500), "a stopped helper stalled a scrape {took:?}");
    }
    unsafe { libc::kill(helper as i32, libc::SIGCONT) };
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(capture(&d), (Some(1.0), Some(1.0)), "{}", d.log());
}

#[test]
fn a_bad_user_stops_the_daemon_with_one_line() {
    let dir = TempDir::new();
    let config = dir.write("config.toml", "listen_addr = \"127.0.0.1:0\"\nfilesystems = []\n");
    for (ids, says) in [
        ("nobody", "expected UID:GID"),
        ("65534", "expected UID:GID"),
        ("65534:", "expected UID:GID"),
        ("-1:5", "expected UID:GID"),
        ("99999999999:1", "expected UID:GID"),
        ("0:0", "root's ids"),
        ("65534:0", "root's ids"),
    ] {
        let out = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&config)
            .args(["--user", ids])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{ids}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{ids}: {err}");
        assert_eq!(err.lines().filter(|l| l.starts_with("jetkvm-metrics:")).count(), 1, "{err}");
    }
    // An option of serve only.
    let out = Command::new(BIN).args(["check-config", "--user", "65534:65534"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// Scrapes at once while the helper keeps one waiting (stopped) and the
/// app answers late: each gathers what its own asking got, never another
/// scrape's app answer taken at the helper's await (which left that other
/// scrape with none).
#[test]
fn concurrent_scrapes_each_gather_their_own_answers() {
    let (uid, gid) = nobody();
    let dir = TempDir::new();
    let name = format!("jkc{}", std::process::id() % 100_000);
    let _app = StandIn::start(&dir, &name, None);
    let body = b"# HELP jetkvm_timesync_status Synced.\n# TYPE jetkvm_timesync_status gauge\njetkvm_timesync_status 1\n";
    let mut answer =
        format!("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n", body.len())
            .into_bytes();
    answer.extend_from_slice(body);
    let server = AppServer::start_after(Some(answer), Duration::from_millis(100));
    let config = app_config(&dir, &name, &server.key());
    let d = Daemon::start_with_args(dir, &config, &["--user", &format!("{uid}:{gid}")]);
    assert_eq!(capture(&d).1, Some(1.0), "{}", d.log());
    let helper = helper_of(&d);
    unsafe { libc::kill(helper as i32, libc::SIGSTOP) };
    let addr = d.addr;
    let scrapes: Vec<_> =
        (0..3).map(|_| std::thread::spawn(move || get(addr, "/metrics", &[]).text())).collect();
    let texts: Vec<String> = scrapes.into_iter().map(|s| s.join().unwrap()).collect();
    unsafe { libc::kill(helper as i32, libc::SIGCONT) };
    for t in texts {
        assert_eq!(
            sample(&t, "jetkvm_scrape_collector_success{collector=\"app_metrics\"}"),
            Some(1.0),
            "{t}"
        );
        assert_eq!(sample(&t, "jetkvm_timesync_status"), Some(1.0));
    }
}
