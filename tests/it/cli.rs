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

    // Syntax is fine, files are not: each named file is a problem.
    let files = dir.write(
        "files.toml",
        &format!("device_config = \"{}\"\nproc_root = \"/nonexistent-proc\"\nfilesystems = [\"/nonexistent-fs\"]\n", dir.path("missing.json").display()),
    );
    let (code, out, _) = run(&["check-config", "-c", files.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(out.contains("key \"proc_root\": /nonexistent-proc is not a directory"));
    assert!(out.contains("missing.json: no such file"));
    assert!(out.contains("key \"filesystems\": /nonexistent-fs"));

    let torn = dir.write("torn.json", "{\"localAuthMode\": \"pass");
    let f = dir.write("torn.toml", &format!("device_config = \"{}\"\nfilesystems = []\n", torn.display()));
    let (code, out, _) = run(&["check-config", "-c", f.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(out.contains("torn.json: not valid JSON"), "{out}");
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
