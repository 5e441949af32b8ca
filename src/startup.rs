//! What `serve` and `check-config` do with a configuration before serving:
//! load it from its file, and check that what its keys name is usable on
//! this machine. `config` parses; this module reads files and words what it
//! finds with the keys' names.

use std::path::Path;

use crate::config::{Config, DEFAULT_PATH};
use crate::tls::{FileError, Role};
use crate::wording::io_reason;

/// Loads `path`, or [`DEFAULT_PATH`] if it exists, or the defaults.
pub fn load(path: Option<&Path>) -> Result<Config, Vec<String>> {
    load_or(path, Path::new(DEFAULT_PATH))
}

/// Loads `path`, or `default` if there is anything at all at that path,
/// or the built-in defaults if there is nothing there. A named file that
/// is missing is an error; so is a default path that cannot be looked at
/// or read (permissions, a directory, a dangling link): only a path that
/// certainly does not exist means "no configuration".
pub fn load_or(path: Option<&Path>, default: &Path) -> Result<Config, Vec<String>> {
    let path = match path {
        Some(p) => p.to_path_buf(),
        None => match std::fs::symlink_metadata(default) {
            Ok(_) => default.to_path_buf(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(e) => return Err(vec![format!("config {}: {}", default.display(), io_reason(&e))]),
        },
    };
    let text = read_trusted(&path).map_err(|why| vec![format!("config {}: {why}", path.display())])?;
    Config::parse(&text, &path.display().to_string())
}

/// The most a configuration file holds.
const CONFIG_MAX: u64 = 1 << 20;

/// The configuration's text, if only the user running this (root on the
/// device) could have written it: a regular file (never a link followed,
/// never a FIFO waited on) of theirs (or root's) that no one else may
/// write, in a directory of theirs (or root's) that no one else may write. What the
/// file says decides ports, paths and the privileged helper's targets.
fn read_trusted(path: &Path) -> Result<String, String> {
    let (text, meta) = crate::files::read_regular(path, CONFIG_MAX).map_err(|e| io_reason(&e))?;
    // Root's is trusted too (it could write anything anyway).
    if let Some(why) = crate::files::not_only_mine(&meta, Some(0)) {
        return Err(why);
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let dir_meta =
        std::fs::metadata(dir).map_err(|e| format!("its directory {}: {}", dir.display(), io_reason(&e)))?;
    match crate::files::not_only_mine(&dir_meta, Some(0)) {
        Some(why) => Err(format!("its directory {} is {why}", dir.display())),
        None => Ok(text),
    }
}

/// Problems that stop `serve`: roots the collectors cannot work without.
pub fn roots(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for (key, dir) in [("proc_root", &config.proc_root), ("sys_root", &config.sys_root)] {
        if !dir.is_dir() {
            out.push(format!(
                "config {}: key \"{key}\": {} is not a directory",
                config.source,
                dir.display()
            ));
        }
    }
    out
}

/// A metrics service certificate problem as a configuration line.
pub fn tls_problem(config: &Config, e: &FileError) -> String {
    let key = match e.role {
        Role::Certificate => "metrics_service.keypairs.cert_file",
        Role::Key => "metrics_service.keypairs.key_file",
        Role::Ca => "metrics_service.ca_certs",
    };
    format!("config {}: key \"{key}\": {e}", config.source)
}

/// Problems that stop `serve`: the roots the collectors need, and the
/// metrics service's certificates (never fall back to plaintext). `serve`
/// checks the certificates as it builds the service.
pub fn errors(config: &Config) -> Vec<String> {
    let mut out = roots(config);
    if let Some(ms) = config.metrics_service.as_ref().filter(|m| !m.keypairs.is_empty()) {
        if let Err(e) = crate::tls::Acceptor::new(ms) {
            out.push(tls_problem(config, &e));
        }
    }
    out
}

/// What `check` found.
pub struct Checked {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

/// What `check-config` reports beyond syntax: errors are what would stop
/// `serve` (the roots, the metrics service's certificates); warnings are
/// named paths that are not usable on this machine now. The device's state
/// is not configuration: a device not set up yet (no `device_config` file)
/// or without a token is a valid state.
pub fn check(config: &Config) -> Checked {
    let errors = errors(config);
    let mut warnings = Vec::new();
    let mut warn =
        |key: &str, e: String| warnings.push(format!("config {}: key \"{key}\": {e}", config.source));
    if let Err(e) = crate::auth::token::status(&config.token_file) {
        warn("token_file", format!("{e}; tokens are refused until it is fixed"));
    }
    if config.device_config.exists() {
        if let Err(e) = crate::device::DeviceConfig::load(&config.device_config) {
            warn("device_config", format!("{e}; device credentials are refused while it is"));
        }
    }
    for f in &config.filesystems {
        if let Err(e) = nix::sys::statvfs::statvfs(f) {
            warn("filesystems", format!("{}: {e}", f.display()));
        }
    }
    Checked { errors, warnings }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: a default config file that could not be looked at (a
    /// dangling link, a loop, no permission) meant "no file": the daemon
    /// ran on the defaults, whatever the file said.
    #[test]
    fn a_default_path_that_cannot_be_read_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let missing = dir.join("missing.toml");
        assert_eq!(load_or(None, &missing).unwrap().source, "built-in defaults");
        let looped = dir.join("loop.toml");
        std::os::unix::fs::symlink(&looped, &looped).unwrap();
        let dangling = dir.join("dangling.toml");
        std::os::unix::fs::symlink(dir.join("nowhere"), &dangling).unwrap();
        let directory = dir.join("dir.toml");
        std::fs::create_dir(&directory).unwrap();
        for bad in [&looped, &dangling, &directory] {
            let e = load_or(None, bad).unwrap_err();
            assert!(e[0].starts_with(&format!("config {}: ", bad.display())), "{e:?}");
        }
        let good = dir.join("good.toml");
        std::fs::write(&good, "workers = 1\n").unwrap();
        assert_eq!(load_or(None, &good).unwrap().source, good.display().to_string());
    }
}
