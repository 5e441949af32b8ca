use std::process::Command;

use crate::util::*;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).env_remove("RUST_LOG").output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_and_version() {
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("jetkvm-metrics serve [--config FILE]") && out.contains("check-config"));
    let (code, out, _) = run(&["--version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with(&format!("jetkvm-metrics {}", env!("CARGO_PKG_VERSION"))), "{out}");
    let (code, _, err) = run(&["frobnicate"]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown command \"frobnicate\""), "{err}");
    let (code, _, err) = run(&[]);
    assert_eq!(code, 2);
    assert!(err.contains("missing command"), "{err}");
}

#[test]
fn check_config_ok_and_every_problem_on_its_own_line() {
    let dir = TempDir::new();
    let device = dir.write("kvm_config.json", &no_password_mode());
    let good = dir.write(
        "good.toml",
        &format!(
            "listen_addr = \"127.0.0.1:3080\"\ndevice_config = \"{}\"\nfilesystems = [\"/\"]\n",
            device.display()
        ),
    );
    let (code, out, _) = run(&["check-config", "--config", good.to_str().unwrap()]);
    assert_eq!((code, out.as_str()), (0, "OK\n"));

    let bad = dir.write(
        "bad.toml",
        &format!(
            "listen_addr = \"3080\"\ndevice_config = \"{}\"\nproc_root = \"/nonexistent-proc\"\nconnection_ports = [0]\n[limits]\nheader_timeout = \"fast\"\n",
            dir.path("missing.json").display()
        ),
    );
    let (code, out, _) = run(&["check-config", "--config", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    let b = bad.display().to_string();
    assert_eq!(
        lines[0],
        format!("config {b}: key \"listen_addr\": \"3080\" is not an IP:port socket address")
    );
    assert_eq!(lines[1], format!("config {b}: key \"connection_ports\": 0 is not a TCP port"));
    assert!(lines[2].starts_with(&format!("config {b}: key \"limits.header_timeout\"")));

    // proc_root would stop serve: an error. A device config that does not
    // exist is a device not set up yet, a valid state; a filesystem missing
    // on this machine is a warning.
    let files = dir.write(
        "files.toml",
        &format!("device_config = \"{}\"\nproc_root = \"/nonexistent-proc\"\nfilesystems = [\"/nonexistent-fs\"]\n", dir.path("missing.json").display()),
    );
    let (code, out, err) = run(&["check-config", "-c", files.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains("key \"proc_root\": /nonexistent-proc is not a directory"));
    assert!(!out.contains("missing.json") && !err.contains("missing.json"), "{out}{err}");
    assert!(err.contains("warning: ") && err.contains("key \"filesystems\": /nonexistent-fs"), "{err}");

    // A device config that exists but does not parse is the device's state
    // now, not configuration: a warning.
    let torn = dir.write("torn.json", "{\"localAuthMode\": \"pass");
    let f = dir.write("torn.toml", &format!("device_config = \"{}\"\nfilesystems = []\n", torn.display()));
    let (code, out, err) = run(&["check-config", "-c", f.to_str().unwrap()]);
    assert_eq!((code, out.as_str()), (0, "OK\n"), "{err}");
    assert!(err.contains("torn.json: not valid JSON"), "{err}");
}

/// Regression: check-config judged the device's state, failing on a device
/// not set up yet and on a machine without the device's filesystems.
#[test]
fn check_config_passes_on_the_defaults_and_on_a_device_not_set_up() {
    let dir = TempDir::new();
    if !std::path::Path::new("/etc/jetkvm-metrics/config.toml").exists() {
        let (code, out, err) = run(&["check-config"]);
        assert_eq!((code, out.as_str()), (0, "OK\n"), "{err}");
    }
    // Only what the built-in defaults name can make a warning.
    let (code, out, err) = run(&["check-config", "-c", dir.write("empty.toml", "").to_str().unwrap()]);
    assert_eq!((code, out.as_str()), (0, "OK\n"), "{err}");
    for line in err.lines() {
        assert!(line.starts_with("warning: config "), "{line}");
    }
    if !std::path::Path::new("/userdata").exists() {
        assert!(err.contains("key \"filesystems\": /userdata"), "{err}");
    }
    let f = dir.write(
        "unset.toml",
        &format!(
            "device_config = \"{}\"\ntoken_file = \"{}\"\nfilesystems = [\"/\"]\n",
            dir.path("kvm_config.json").display(),
            dir.path("no/token.sha256").display()
        ),
    );
    let (code, out, err) = run(&["check-config", "-c", f.to_str().unwrap()]);
    assert_eq!((code, out.as_str(), err.as_str()), (0, "OK\n", ""));
}

/// Regression: mtls, keypairs or ca_certs without `enabled = true` were
/// ignored, and metrics stayed on plain HTTP.
#[test]
fn metrics_service_settings_without_enabled_stop_the_daemon() {
    let dir = TempDir::new();
    let f = dir.write(
        "c.toml",
        "listen_addr = \"127.0.0.1:0\"\nfilesystems = []\n[metrics_service]\nmtls = true\nca_certs = [\"/ca.pem\"]\n",
    );
    let (code, out, _) = run(&["check-config", "-c", f.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        out.contains("key \"metrics_service.mtls\": set, but metrics_service.enabled is not true"),
        "{out}"
    );
    assert!(out.contains("key \"metrics_service.ca_certs\": set, but"), "{out}");
    let (code, _, err) = run(&["serve", "-c", f.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("metrics_service.mtls"), "{err}");
}

/// A configuration the daemon's user cannot read stops it, with the file
/// and the reason: never the built-in defaults.
#[test]
fn a_configuration_the_daemon_cannot_read_stops_it() {
    let dir = TempDir::new();
    let private = dir.path("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::write(private.join("config.toml"), "listen_addr = \"127.0.0.1:0\"\n").unwrap();
    std::fs::set_permissions(&private, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let file = private.join("config.toml");
    // As an unprivileged user (root reads anything).
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN, "serve", "--config"])
        .arg(&file)
        .env_remove("RUST_LOG")
        .output()
        .expect("setpriv (util-linux)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim(), format!("jetkvm-metrics: config {}: permission denied", file.display()));
}

#[test]
fn unknown_keys_are_errors_with_file_and_line() {
    let dir = TempDir::new();
    let f = dir.write("c.toml", "workers = 1\n\n[limits]\nmax_conns = 5\n");
    let (code, out, _) = run(&["check-config", "-c", f.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        out.starts_with(&format!("config {}: line 4: unknown field \"max_conns\"", f.display())),
        "{out}"
    );
    let (code, _, err) = run(&["serve", "-c", f.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("line 4: unknown field \"max_conns\""), "{err}");
}

#[test]
fn serve_refuses_a_missing_or_invalid_config_and_a_bad_listen_address() {
    let dir = TempDir::new();
    let missing = dir.path("nope.toml");
    let (code, _, err) = run(&["serve", "--config", missing.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert_eq!(err.trim(), format!("jetkvm-metrics: config {}: no such file", missing.display()));
    let f = dir.write("c.toml", "proc_root = \"/nonexistent-proc\"\n");
    let (code, _, err) = run(&["serve", "--config", f.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("key \"proc_root\": /nonexistent-proc is not a directory"), "{err}");
    // The port is taken: one clear line, exit 1.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let f = dir.write("p.toml", &format!("listen_addr = \"{}\"\n", taken.local_addr().unwrap()));
    let (code, _, err) = run(&["serve", "--config", f.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("address in use") || err.contains("address already in use"), "{err}");
}

#[test]
fn device_config_missing_at_start_is_not_fatal_but_refuses() {
    let d = Daemon::start("", None);
    assert_eq!(d.get("/metrics", &[]).status, 401);
    assert_eq!(d.get("/healthz", &[]).status, 200);
    std::fs::write(d.device_config(), no_password_mode()).unwrap();
    assert_eq!(d.get("/metrics", &[]).status, 200);
}

/// Regression (a third review): root read the configuration from a
/// directory the daemon's user owned. A FIFO there held `serve`, `probe`
/// and `check-config` forever; a file of that user's chose ports and the
/// privileged helper's targets. Each now refuses, at once and in one line
/// naming the file, anything but a regular file only its reader may write,
/// in a directory only its reader (or root) may write.
#[test]
fn a_configuration_someone_else_could_write_is_refused_at_once() {
    let dir = TempDir::new();
    let good = dir.write("config.toml", "listen_addr = \"127.0.0.1:0\"\n");
    let fifo = dir.path("fifo.toml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let zero = dir.path("zero.toml");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    let loose = dir.write("loose.toml", "");
    std::fs::set_permissions(&loose, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let open_dir = dir.path("open");
    std::fs::create_dir(&open_dir).unwrap();
    std::fs::set_permissions(&open_dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let in_open = open_dir.join("config.toml");
    std::fs::write(&in_open, "").unwrap();
    let mut cases = vec![
        (fifo, "not a regular file".to_string()),
        (zero, "a symbolic link".to_string()),
        (loose, "writable by group or others (mode 666)".to_string()),
        (
            in_open.clone(),
            format!("its directory {} is writable by group or others (mode 777)", open_dir.display()),
        ),
    ];
    // Another user's file (the daemon's, on the device), where this test
    // may give one away.
    if nix::unistd::geteuid().is_root() {
        let theirs = dir.write("theirs.toml", "");
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        cases.push((theirs, "owned by uid 65534, not by the user running this (uid 0)".into()));
    }
    for (path, why) in cases {
        for command in ["serve", "probe", "check-config"] {
            let start = std::time::Instant::now();
            let (code, out, err) = run(&[command, "--config", path.to_str().unwrap()]);
            let said = format!("{out}{err}");
            assert!(start.elapsed() < std::time::Duration::from_secs(5), "{command} {}", path.display());
            assert_ne!(code, 0, "{command} {}: {said}", path.display());
            let line = format!("config {}: {why}", path.display());
            assert!(said.lines().any(|l| l.ends_with(&line)), "{command}: want {line:?}, got {said:?}");
        }
    }
    let (code, out, _) = run(&["check-config", "--config", good.to_str().unwrap()]);
    assert_eq!((code, out.lines().last()), (0, Some("OK")), "{out}");
}

/// The token file is the daemon user's to write: a FIFO or a link there
/// (that user's doing) never holds root's `check-config` or `token status`.
#[test]
fn a_token_file_that_is_a_fifo_or_a_link_is_refused_at_once() {
    let dir = TempDir::new();
    let fifo = dir.path("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let link = dir.path("link");
    std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
    for (token, why) in [(&fifo, "not a regular file"), (&link, "a symbolic link")] {
        let config = dir.write("config.toml", &format!("token_file = \"{}\"\n", token.display()));
        for args in [&["check-config"][..], &["token", "status"]] {
            let start = std::time::Instant::now();
            let (_, out, err) = run(&[args, &["--config", config.to_str().unwrap()]].concat());
            assert!(start.elapsed() < std::time::Duration::from_secs(5), "{args:?} {why}");
            assert!(err.contains(&format!("{}: {why}", token.display())), "{args:?}: {out}{err}");
        }
    }
}
