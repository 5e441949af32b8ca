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
    // The token and pid directories are the daemon user's (the init script
    // makes them so); a token root makes there is the daemon user's too.
    for sub in ["metrics", "run"] {
        std::fs::create_dir(dir.path(sub)).unwrap();
        std::os::unix::fs::chown(dir.path(sub), Some(uid), Some(gid)).unwrap();
    }
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
    // Both files where the daemon's user may write, as the init script has it.
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
    // Its pid file, in its own directory, written and removed by itself.
    assert_eq!(std::fs::read_to_string(&pidfile).unwrap().trim(), pid.to_string());
    d.signal("TERM");
    assert!(d.wait_exit(Duration::from_secs(10)).is_some_and(|s| s.success()));
    assert!(!pidfile.exists());
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
