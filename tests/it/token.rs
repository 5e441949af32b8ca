use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use bcrypt::Version;

use crate::util::*;

fn token_cmd(config: &std::path::Path, sub: &str) -> (i32, String, String) {
    let out = Command::new(BIN).args(["token", sub, "--config"]).arg(config).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

#[test]
fn new_rotate_revoke_without_restart() {
    let d = Daemon::start("", Some(&password_mode(&hash("pw", Version::TwoA, 4), "")));
    let config = d.dir.path("config.toml");
    let file = d.dir.path("token.sha256");

    let (code, out, _) = token_cmd(&config, "status");
    assert_eq!((code, out.trim()), (0, format!("no token ({})", file.display()).as_str()));

    let (code, out, err) = token_cmd(&config, "new");
    assert_eq!(code, 0, "{err}");
    let first = out.trim().to_owned();
    assert!(first.starts_with("jkm_") && first.len() == 47, "{first}");
    assert!(err.contains("SHA-256"), "{err}");
    let stored = std::fs::read_to_string(&file).unwrap();
    assert!(!stored.contains(&first), "the token itself must not be stored");
    assert!(stored.contains("sha256="));
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let leftovers: Vec<_> = std::fs::read_dir(&d.dir.0)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
    let (_, out, _) = token_cmd(&config, "status");
    assert!(out.starts_with("token set since 20") && out.contains('T') && !out.contains(&first), "{out}");

    // Bearer and basic-password forms, no restart.
    assert_eq!(d.get("/metrics", &[("Authorization", &bearer(&first))]).status, 200);
    assert_eq!(d.get("/metrics", &[("Authorization", &basic("prometheus", &first))]).status, 200);

    // Rotate: the old token stops working at once.
    let (_, out, _) = token_cmd(&config, "new");
    let second = out.trim().to_owned();
    assert_ne!(first, second);
    assert_eq!(d.get("/metrics", &[("Authorization", &bearer(&first))]).status, 401);
    assert_eq!(d.get("/metrics", &[("Authorization", &bearer(&second))]).status, 200);

    let (code, out, _) = token_cmd(&config, "revoke");
    assert_eq!(code, 0);
    assert!(out.starts_with("token revoked"));
    assert_eq!(d.get("/metrics", &[("Authorization", &bearer(&second))]).status, 401);
    let (_, out, _) = token_cmd(&config, "revoke");
    assert!(out.starts_with("no token was set"));

    let t = d.get("/metrics", &[("Authorization", &basic("", "pw"))]).text();
    assert_eq!(sample(&t, "jetkvm_exporter_auth_successes_total{method=\"token\"}"), Some(3.0));
    assert_eq!(sample(&t, "jetkvm_exporter_auth_failures_total{reason=\"bad_token\"}"), Some(2.0));
    let log = d.wait_log("token set");
    assert!(!log.contains(&first) && !log.contains(&second), "token in log");
}

/// A rotation that keeps the previous token for a while: both work, the
/// status says until when, and the options are refused where they do not
/// belong.
#[test]
fn a_rotation_can_keep_the_previous_token_for_a_while() {
    let d = Daemon::start("", Some(&password_mode(&hash("pw", Version::TwoA, 4), "")));
    let config = d.dir.path("config.toml");
    let first = token_cmd(&config, "new").1.trim().to_owned();
    let out =
        Command::new(BIN).args(["token", "new", "--keep-previous", "10m", "--config"]).arg(&config).output();
    let out = out.unwrap();
    let second = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(String::from_utf8_lossy(&out.stderr).contains("works 600 s more, until 20"), "{out:?}");
    assert_eq!(d.get("/metrics", &[("Authorization", &bearer(&first))]).status, 200);
    assert_eq!(d.get("/metrics", &[("Authorization", &bearer(&second))]).status, 200);
    let (_, status, _) = token_cmd(&config, "status");
    assert!(status.contains("the previous token works until 20"), "{status}");
    for bad in [
        &["token", "new", "--keep-previous", "25h"][..],
        &["token", "new", "--keep-previous", "500ms"],
        &["token", "status", "--keep-previous", "1m"],
    ] {
        let out = Command::new(BIN).args(bad).arg("--config").arg(&config).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("--keep-previous"), "{out:?}");
    }
}

#[test]
fn token_works_whatever_the_device_state() {
    let h = hash("pw", Version::TwoA, 4);
    let states: Vec<(&str, Option<String>)> = vec![
        ("not set up", Some("{\"localAuthMode\": \"\"}".into())),
        ("missing", None),
        ("torn", Some(password_mode(&h, "")[..25].to_owned())),
        ("password", Some(password_mode(&h, ""))),
    ];
    for (name, device) in states {
        let d = Daemon::start("", device.as_deref());
        let (_, out, _) = token_cmd(&d.dir.path("config.toml"), "new");
        let t = out.trim().to_owned();
        assert_eq!(d.get("/metrics", &[("Authorization", &bearer(&t))]).status, 200, "{name}");
        assert_eq!(d.get("/metrics", &[("Authorization", &bearer("jkm_wrong"))]).status, 401, "{name}");
        assert_eq!(d.get("/metrics", &[]).status, 401, "{name}");
    }
    // Unreadable device config (a directory where the file should be).
    let d = Daemon::start("", None);
    std::fs::create_dir(d.device_config()).unwrap();
    let (_, out, _) = token_cmd(&d.dir.path("config.toml"), "new");
    assert_eq!(d.get("/metrics", &[("Authorization", &bearer(out.trim()))]).status, 200);
}

#[test]
fn device_password_can_be_refused_leaving_token_and_session() {
    let d = Daemon::start(
        "[auth]\ndevice_password = false\n",
        Some(&password_mode(&hash("pw", Version::TwoA, 4), "sess")),
    );
    assert_eq!(d.get("/metrics", &[("Authorization", &basic("admin", "pw"))]).status, 401);
    assert_eq!(d.get("/metrics", &[("Cookie", "authToken=sess")]).status, 200);
    let (_, out, _) = token_cmd(&d.dir.path("config.toml"), "new");
    let t = out.trim().to_owned();
    assert_eq!(d.get("/metrics", &[("Authorization", &bearer(&t))]).status, 200);
    // The token as a basic-auth password still works: it is not the device password.
    let text = d.get("/metrics", &[("Authorization", &basic("x", &t))]).text();
    assert_eq!(
        sample(&text, "jetkvm_exporter_auth_failures_total{reason=\"device_password_disabled\"}"),
        Some(1.0)
    );
    // No plaintext-password warning when the password is refused anyway
    // (logged at start, so long before the token is first read).
    let log = d.wait_log("token set");
    assert!(log.contains("token set") && !log.contains("crosses the network in clear"), "{log}");
}

#[test]
fn a_corrupt_token_file_refuses_tokens() {
    let d = Daemon::start("", Some(&password_mode(&hash("pw", Version::TwoA, 4), "sess")));
    let (_, out, _) = token_cmd(&d.dir.path("config.toml"), "new");
    let t = out.trim().to_owned();
    assert_eq!(d.get("/metrics", &[("Authorization", &bearer(&t))]).status, 200);
    std::fs::write(d.dir.path("token.sha256"), "sha256=not-hex\n").unwrap();
    assert_eq!(d.get("/metrics", &[("Authorization", &bearer(&t))]).status, 401);
    let text = d.get("/metrics", &[("Cookie", "authToken=sess")]).text();
    assert_eq!(sample(&text, "jetkvm_exporter_token_load_success"), Some(0.0));
    assert_eq!(sample(&text, "jetkvm_exporter_auth_failures_total{reason=\"token_unavailable\"}"), Some(1.0));
    let (code, _, err) = token_cmd(&d.dir.path("config.toml"), "status");
    assert_eq!(code, 1);
    assert!(err.contains("token_file") && err.contains("sha256"), "{err}");
    // The token is state, not configuration: check-config warns.
    let out =
        Command::new(BIN).args(["check-config", "--config"]).arg(d.dir.path("config.toml")).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning: config"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("key \"token_file\""));
}

/// Regression: a line of the token file that did not parse was quoted in
/// the log and by `token status`, and it may be a pasted token.
#[test]
fn a_token_pasted_into_the_token_file_is_never_quoted() {
    let d = Daemon::start("", Some(&password_mode(&hash("pw", Version::TwoA, 4), "sess")));
    let (_, out, _) = token_cmd(&d.dir.path("config.toml"), "new");
    let t = out.trim().to_owned();
    let mut f = std::fs::OpenOptions::new().append(true).open(d.dir.path("token.sha256")).unwrap();
    std::io::Write::write_all(&mut f, format!("{t}\n").as_bytes()).unwrap();
    drop(f);
    assert_eq!(d.get("/metrics", &[("Authorization", &bearer(&t))]).status, 401);
    let log = d.wait_log("refusing tokens");
    assert!(log.contains("line 4: not KEY=VALUE of a token record"), "{log}");
    let (code, out, err) = token_cmd(&d.dir.path("config.toml"), "status");
    assert_eq!(code, 1);
    let secret = &t[4..];
    for text in [&log, &out, &err] {
        assert!(!text.contains(secret), "the token was quoted: {text}");
    }
}

/// Regression: a token file, or its directory, that others could write was
/// trusted: anyone who can write it chooses the token.
#[test]
fn a_token_file_others_can_write_refuses_every_token() {
    let d = Daemon::start("", Some(&password_mode(&hash("pw", Version::TwoA, 4), "")));
    let (_, out, _) = token_cmd(&d.dir.path("config.toml"), "new");
    let auth = bearer(out.trim());
    let file = d.dir.path("token.sha256");
    let set_mode = |p: &std::path::Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    assert_eq!(d.get("/metrics", &[("Authorization", &auth)]).status, 200);
    set_mode(&file, 0o666);
    assert_eq!(d.get("/metrics", &[("Authorization", &auth)]).status, 401);
    let log = d.wait_log("writable by group or others (mode 666); refusing tokens");
    assert!(
        log.contains(&format!(
            "token file {}: writable by group or others (mode 666); refusing tokens",
            file.display()
        )),
        "{log}"
    );
    set_mode(&file, 0o600);
    assert_eq!(d.get("/metrics", &[("Authorization", &auth)]).status, 200);
    set_mode(&d.dir.0, 0o777);
    assert_eq!(d.get("/metrics", &[("Authorization", &auth)]).status, 401);
    set_mode(&d.dir.0, 0o755);
    assert_eq!(d.get("/metrics", &[("Authorization", &auth)]).status, 200);
    // Owned by another user: refused as well.
    std::os::unix::fs::chown(&file, Some(65534), None).unwrap();
    assert_eq!(d.get("/metrics", &[("Authorization", &auth)]).status, 401);
    assert!(d.wait_log("owned by uid 65534").contains("owned by uid 65534"));
}
