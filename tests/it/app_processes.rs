//! The device's app by role, on this host's real processes: the board's
//! stand-in app (`board/jetkvm/qemu/test-disk/jetkvm-app.c`), built here
//! and run under names of its own, in both generations.

use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::util::*;

/// The stand-in, built once for this host.
fn stand_in_binary() -> &'static std::path::Path {
    static BUILT: OnceLock<TempDir> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let dir = TempDir::new();
        let source =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("board/jetkvm/qemu/test-disk/jetkvm-app.c");
        let out = dir.path("jetkvm-app");
        let status =
            Command::new("cc").args(["-O2", "-Wall", "-Werror", "-o"]).arg(&out).arg(&source).status();
        assert!(status.is_ok_and(|s| s.success()), "building the stand-in app with cc");
        dir
    });
    Box::leak(dir.path("jetkvm-app").into_boxed_path())
}

/// A node no process of this host holds (its own processes may hold
/// /dev/null): the capture node here.
const NODE: &str = "/dev/full";

/// A running stand-in: its control directory, binary names and first process.
pub(crate) struct App {
    dir: TempDir,
    name: String,
    native_name: String,
    first: Child,
}

impl App {
    /// Starts one `shape` (`one_binary`, `two_binaries`) under a name of
    /// this test's, with or without titles.
    pub(crate) fn start(tag: &str, shape: &str, titles: bool) -> App {
        let dir = TempDir::new();
        let name = format!("jkm{}{tag}", std::process::id() % 100_000);
        let native_name = format!("{name}n");
        let bin = dir.path(&name);
        std::fs::copy(stand_in_binary(), &bin).unwrap();
        let first = Command::new(&bin)
            .env("STANDIN_SHAPE", shape)
            .env("STANDIN_DIR", dir.path(""))
            .env("STANDIN_SIGNAL", "file")
            .env("STANDIN_VIDEO", NODE)
            .env("STANDIN_TITLES", if titles { "1" } else { "0" })
            .env("STANDIN_NATIVE", &native_name)
            .env("STANDIN_WATCHDOG", "none")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        App { dir, name, native_name, first }
    }

    pub(crate) fn config(&self) -> String {
        format!(
            "app_processes = [\"{}\", \"{}\"]\nvideo_capture_device = \"{NODE}\"\n",
            self.name, self.native_name
        )
    }

    pub(crate) fn set(&self, control: &str, on: bool) {
        let path = self.dir.path(control);
        if on {
            std::fs::write(path, "").unwrap();
        } else {
            let _ = std::fs::remove_file(path);
        }
    }

    /// The pids of our processes whose command line has `needle`.
    fn pids_of(&self, needle: &str) -> Vec<u32> {
        let names = [self.name.as_str(), self.native_name.as_str()];
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else { continue };
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if names.contains(&comm.trim_end()) && String::from_utf8_lossy(&cmdline).contains(needle) {
                pids.push(pid);
            }
        }
        pids
    }

    pub(crate) fn pid_of(&self, needle: &str) -> u32 {
        *self.pids_of(needle).first().unwrap_or_else(|| panic!("no process with {needle:?}"))
    }
}

impl Drop for App {
    fn drop(&mut self) {
        // The supervisor passes SIGTERM on to the app, whose native dies
        // with it; whatever a test orphaned goes too.
        unsafe { libc::kill(self.first.id() as i32, libc::SIGTERM) };
        let _ = self.first.wait();
        self.set("hold-native", true);
        for pid in self.pids_of("") {
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

/// Scrapes until `done` holds (the daemon walks `/proc` at most every 5 s
/// while a role is missing), at most `secs` seconds; the last text.
fn scrape_until(d: &Daemon, secs: u64, done: impl Fn(&str) -> bool) -> String {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        let t = d.get("/metrics", &[]).text();
        if done(&t) || Instant::now() > end {
            return t;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn up(t: &str, role: &str) -> Option<f64> {
    sample(t, &format!("jetkvm_app_up{{role=\"{role}\"}}"))
}

fn started(t: &str, role: &str) -> Option<f64> {
    sample(t, &format!("jetkvm_app_start_time_seconds{{role=\"{role}\"}}"))
}

fn capture(t: &str) -> (Option<f64>, Option<f64>) {
    (
        sample(t, "jetkvm_video_capture_open"),
        sample(t, "jetkvm_scrape_collector_success{collector=\"video_capture\"}"),
    )
}

fn all_up(t: &str, roles: &[&str]) -> bool {
    roles.iter().all(|r| up(t, r) == Some(1.0))
}

/// Today's app: supervisor, app and native of one binary, all one name.
/// Each role is seen; capture follows native and a session with a signal;
/// native killed is native down (the rest up), and restarted, a new start.
#[test]
fn one_binary_roles_capture_and_a_native_restart() {
    let app = App::start("a", "one_binary", true);
    let d = Daemon::start(&app.config(), Some(&no_password_mode()));
    let roles = ["supervisor", "app", "native"];
    let t = scrape_until(&d, 12, |t| all_up(t, &roles));
    assert!(all_up(&t, &roles), "{t}");
    assert_eq!(sample(&t, "jetkvm_app_generation_info{generation=\"one_binary\"}"), Some(1.0), "{t}");
    assert_eq!(sample(&t, "jetkvm_app_failsafe"), Some(0.0));
    for role in roles {
        assert!(sample(&t, &format!("jetkvm_app_resident_memory_bytes{{role=\"{role}\"}}")).unwrap() > 0.0);
        assert!(sample(&t, &format!("jetkvm_app_cpu_seconds_total{{role=\"{role}\"}}")).is_some());
    }
    // Capture: a session alone is not enough, a signal too.
    assert_eq!(capture(&t), (Some(0.0), Some(1.0)), "{t}");
    app.set("session", true);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(capture(&d.get("/metrics", &[]).text()), (Some(0.0), Some(1.0)));
    app.set("signal", true);
    let t = scrape_until(&d, 5, |t| capture(t).0 == Some(1.0));
    assert_eq!(capture(&t), (Some(1.0), Some(1.0)), "{t}");
    // Native killed, and not started again yet: it alone is down.
    let first_start = started(&t, "native").unwrap();
    app.set("hold-native", true);
    std::thread::sleep(Duration::from_millis(1100));
    unsafe { libc::kill(app.pid_of("[native") as i32, libc::SIGKILL) };
    let t = scrape_until(&d, 5, |t| up(t, "native") == Some(0.0));
    assert_eq!(
        [up(&t, "supervisor"), up(&t, "app"), up(&t, "native")],
        [Some(1.0), Some(1.0), Some(0.0)],
        "{t}"
    );
    assert_eq!(started(&t, "native"), None);
    assert_eq!(capture(&t), (Some(0.0), Some(1.0)), "{t}");
    // Started again: up, a later start, capturing again.
    app.set("hold-native", false);
    let t = scrape_until(&d, 12, |t| up(t, "native") == Some(1.0) && capture(t).0 == Some(1.0));
    assert_eq!(up(&t, "native"), Some(1.0), "{t}");
    assert!(started(&t, "native").unwrap() > first_start, "{t}");
    assert_eq!(capture(&t), (Some(1.0), Some(1.0)), "{t}");
    assert_eq!(promtool_check(&t), "");
}

/// Older builds: the app and a separate native binary, no supervisor,
/// which is then never "down".
#[test]
fn two_binaries_have_no_supervisor_to_miss() {
    let app = App::start("b", "two_binaries", false);
    let d = Daemon::start(&app.config(), Some(&no_password_mode()));
    let t = scrape_until(&d, 12, |t| all_up(t, &["app", "native"]));
    assert!(all_up(&t, &["app", "native"]), "{t}");
    assert_eq!(up(&t, "supervisor"), None, "{t}");
    assert_eq!(sample(&t, "jetkvm_app_generation_info{generation=\"two_binaries\"}"), Some(1.0));
    assert_eq!(sample(&t, "jetkvm_app_failsafe"), None);
    app.set("session", true);
    app.set("signal", true);
    let t = scrape_until(&d, 5, |t| capture(t).0 == Some(1.0));
    assert_eq!(capture(&t), (Some(1.0), Some(1.0)), "{t}");
    // Native gone: down, whatever the generation once looked like alone.
    app.set("hold-native", true);
    std::thread::sleep(Duration::from_millis(1100));
    unsafe { libc::kill(app.pid_of(&app.native_name) as i32, libc::SIGKILL) };
    let t = scrape_until(&d, 5, |t| up(t, "native") == Some(0.0));
    assert_eq!([up(&t, "supervisor"), up(&t, "app"), up(&t, "native")], [None, Some(1.0), Some(0.0)], "{t}");
    assert_eq!(capture(&t), (Some(0.0), Some(1.0)));
}

/// The first moments of a start, before the titles: parentage and the
/// native argument alone tell the roles.
#[test]
fn one_binary_without_titles_by_parentage() {
    let app = App::start("c", "one_binary", false);
    let d = Daemon::start(&app.config(), Some(&no_password_mode()));
    let roles = ["supervisor", "app", "native"];
    let t = scrape_until(&d, 12, |t| all_up(t, &roles));
    assert!(all_up(&t, &roles), "{t}");
    assert_eq!(sample(&t, "jetkvm_app_generation_info{generation=\"one_binary\"}"), Some(1.0));
    assert_eq!(sample(&t, "jetkvm_app_failsafe"), None, "no title, no claim");
    // The supervisor killed (and left unreaped: a zombie is not running):
    // its app runs on, and is still the app.
    unsafe { libc::kill(app.first.id() as i32, libc::SIGKILL) };
    let t = scrape_until(&d, 5, |t| up(t, "supervisor") == Some(0.0));
    assert_eq!(
        [up(&t, "supervisor"), up(&t, "app"), up(&t, "native")],
        [Some(0.0), Some(1.0), Some(1.0)],
        "{t}"
    );
}

/// Nothing of the app runs: only the app is down; no generation, no
/// capture by anyone. No capture node: no data, never a zero.
#[test]
fn no_app_is_the_app_down_and_no_node_is_no_data() {
    let extra = format!(
        "app_processes = [\"jkm{}-none\"]\nvideo_capture_device = \"{NODE}\"\n",
        std::process::id() % 100_000
    );
    let d = Daemon::start(&extra, Some(&no_password_mode()));
    let t = d.get("/metrics", &[]).text();
    assert_eq!([up(&t, "supervisor"), up(&t, "app"), up(&t, "native")], [None, Some(0.0), None], "{t}");
    assert!(!t.contains("jetkvm_app_generation_info"), "{t}");
    assert_eq!(capture(&t), (Some(0.0), Some(1.0)));
    drop(d);
    let extra = "video_capture_device = \"/nonexistent/video0\"\n";
    let d = Daemon::start(extra, Some(&no_password_mode()));
    assert_eq!(capture(&d.get("/metrics", &[]).text()), (None, Some(0.0)));
}
