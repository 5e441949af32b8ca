//! One source of metrics: the [`Collector`] trait, why a collector may
//! produce nothing, the timing wrapper every collector runs in, and the file
//! helpers collectors share.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use prometheus::proto::MetricFamily;

pub use crate::metrics::{Families, Kind};

/// Why a collector produced nothing.
#[derive(Debug)]
pub enum Error {
    /// The source does not exist on this host (no thermal zone, no UDC):
    /// reported as success 0, logged only at debug level.
    NoData(String),
    /// The source exists but could not be read or parsed: logged as a warning.
    Failed(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::NoData(m) | Error::Failed(m) => f.write_str(m),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// One source of metrics.
pub trait Collector: Send + Sync {
    /// The `collector` label value.
    fn name(&self) -> &'static str;
    /// Reads the source and writes its metric families into `out`, which
    /// holds what the last update wrote (see [`Families`]).
    fn update(&self, out: &mut Families) -> Result<()>;
}

pub(super) const DURATION: &str = "jetkvm_scrape_collector_duration_seconds";
pub(super) const DURATION_HELP: &str = "Time a collector took during this scrape.";
pub(super) const SUCCESS: &str = "jetkvm_scrape_collector_success";
pub(super) const SUCCESS_HELP: &str =
    "Whether a collector succeeded during this scrape (1) or could not read its source (0).";

/// A collector with the families it keeps between scrapes: each scrape
/// runs it once and times it.
pub(super) struct Timed {
    inner: Box<dyn Collector>,
    kept: Mutex<Kept>,
}

/// What a collector's last run left.
pub(super) struct Kept {
    families: Families,
    /// Whether it succeeded: only then are its families whole.
    pub ok: bool,
    pub took: f64,
    /// Why it last failed, if it did: a failure is logged when it starts
    /// or its reason changes, not on every scrape (the device's log is a
    /// small ring).
    failure: Option<(bool, String)>,
}

impl Kept {
    /// Its families, each with its text (see `Families::encoded`), if the
    /// run succeeded: a collector that fails half-way hands over nothing
    /// partial.
    pub fn encoded(&mut self) -> impl Iterator<Item = (&MetricFamily, &[u8])> {
        self.ok.then(|| self.families.encoded()).into_iter().flatten()
    }
}

impl Timed {
    pub(super) fn new(inner: Box<dyn Collector>) -> Timed {
        let kept = Kept { families: Families::new(), ok: false, took: 0.0, failure: None };
        Timed { inner, kept: Mutex::new(kept) }
    }

    pub(super) fn name(&self) -> &'static str {
        self.inner.name()
    }

    /// Runs the collector and hands over what it left.
    pub(super) fn run(&self) -> MutexGuard<'_, Kept> {
        let name = self.inner.name();
        // A panic is an abort in this build: a poisoned lock holds nothing
        // half-done that `begin` does not start again.
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        let start = Instant::now();
        kept.families.begin();
        let failure = match self.inner.update(&mut kept.families) {
            Ok(()) => None,
            Err(Error::NoData(msg)) => Some((false, msg)),
            Err(Error::Failed(msg)) => Some((true, msg)),
        };
        if failure != kept.failure {
            match (&failure, &kept.failure) {
                (Some((false, msg)), _) => log::debug!("collector {name}: no data: {msg}"),
                (Some((true, msg)), _) => log::warn!("collector {name}: {msg}"),
                (None, Some((true, _))) => log::info!("collector {name}: working again"),
                (None, _) => {}
            }
        }
        kept.ok = failure.is_none();
        kept.failure = failure;
        if kept.ok {
            kept.families.finish();
        }
        kept.took = start.elapsed().as_secs_f64();
        kept
    }
}

/// Reads a file the kernel makes in one piece (a sysfs or configfs
/// attribute, a one-record procfs file such as `stat`, `status` or
/// `smaps_rollup`): open, one read, close. Such a file is handed out whole
/// by the first read, so a read shorter than asked for is its end.
/// `fs::read_to_string` asks for the size first, which these files do not
/// know, then reads from 32 bytes up, doubling: a dozen system calls for
/// `status` where this makes three, and a system call is the dearest thing
/// a scrape does on the device's core. "Not there" is [`Error::NoData`].
pub(crate) fn read(path: &Path) -> Result<String> {
    read_upto(path, true).map_err(|e| read_error(path, e))
}

/// [`read`] for a file that may be missing or refused (an attribute a
/// driver lacks, or refuses while its link is down): no error message is
/// made for it.
pub(crate) fn read_optional(path: &Path) -> Option<String> {
    read_upto(path, true).ok()
}

/// Reads a file of many records (`/proc/net/dev`, `/proc/net/tcp`): the
/// kernel may end a read early at a record, so only an empty read ends it.
pub(crate) fn read_table(path: &Path) -> Result<String> {
    read_upto(path, false).map_err(|e| read_error(path, e))
}

/// Larger than any file a collector reads; a file that grows past it fails.
const READ_MAX: usize = 16 << 20;

/// Why a read failed, made into a message only when asked for.
enum ReadError {
    Io(io::Error),
    TooLarge,
    NotText,
}

fn read_error(path: &Path, e: ReadError) -> Error {
    match e {
        ReadError::Io(e) => io_error(path, e),
        ReadError::TooLarge => Error::Failed(format!("{}: larger than {READ_MAX} bytes", path.display())),
        ReadError::NotText => parse_error(path, "not UTF-8 text"),
    }
}

fn read_upto(path: &Path, short_read_ends: bool) -> std::result::Result<String, ReadError> {
    use std::io::Read;
    // One page, kept per thread: most files fit, and a fresh buffer per
    // read would be zeroed, then wiped when freed (see `allocator::WipingAlloc`).
    thread_local!(static PAGE: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; 4096]));
    let mut file = std::fs::File::open(path).map_err(ReadError::Io)?;
    let mut text = Vec::new();
    PAGE.with(|page| {
        let page = &mut page.borrow_mut()[..];
        loop {
            match file.read(page) {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    text.extend_from_slice(&page[..n]);
                    if short_read_ends && n < page.len() {
                        return Ok(());
                    }
                    if text.len() > READ_MAX {
                        return Err(ReadError::TooLarge);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ReadError::Io(e)),
            }
        }
    })?;
    String::from_utf8(text).map_err(|_| ReadError::NotText)
}

pub(crate) fn io_error(path: &Path, e: io::Error) -> Error {
    let msg = format!("{}: {e}", path.display());
    match e.kind() {
        io::ErrorKind::NotFound => Error::NoData(msg),
        _ => Error::Failed(msg),
    }
}

pub(crate) fn parse_error(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::Failed(format!("{}: {what}", path.display()))
}

/// Joins a root and a relative path such as `net/tcp`.
pub(crate) fn under(root: &Path, rel: &str) -> PathBuf {
    root.join(rel)
}

/// Clock ticks per second, the unit of `/proc/stat` CPU times.
pub(crate) fn user_hz() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}
