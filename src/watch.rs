//! Noticing that a file changed without reading it, for the files the
//! daemon re-reads on demand (device config, token, certificates). No
//! timers: callers stat on use and compare.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A file modified this recently may still change without its stat
/// changing (timestamps have coarse ticks): do not trust a cache of it.
pub const RACY_WINDOW: Duration = Duration::from_secs(2);

/// What identifies one version of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    /// Modified within [`RACY_WINDOW`] of when this key was taken.
    pub racy: bool,
}

impl FileKey {
    pub fn of(m: &std::fs::Metadata) -> FileKey {
        let mtime =
            UNIX_EPOCH + Duration::new(m.mtime().max(0) as u64, m.mtime_nsec().clamp(0, 999_999_999) as u32);
        let racy = match SystemTime::now().duration_since(mtime) {
            Ok(age) => age < RACY_WINDOW,
            Err(_) => true, // modified "in the future": do not trust
        };
        FileKey {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
            ctime_ns: m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
            racy,
        }
    }

    /// `None` if the file cannot be stat'ed (missing, no permission).
    pub fn stat(path: &Path) -> Option<FileKey> {
        std::fs::metadata(path).ok().map(|m| FileKey::of(&m))
    }

    /// Same file version, ignoring how recent it was.
    pub fn same(&self, other: &FileKey) -> bool {
        (self.dev, self.ino, self.size, self.mtime_ns, self.ctime_ns)
            == (other.dev, other.ino, other.size, other.mtime_ns, other.ctime_ns)
    }
}

/// The versions of several files at once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stamp(Vec<Option<FileKey>>);

impl Stamp {
    pub fn of<'a>(paths: impl IntoIterator<Item = &'a Path>) -> Stamp {
        Stamp(paths.into_iter().map(FileKey::stat).collect())
    }

    /// Whether a cache built at `self` is still good now at `now`.
    pub fn still(&self, now: &Stamp) -> bool {
        self.0.len() == now.0.len()
            && self.0.iter().zip(&now.0).all(|(a, b)| match (a, b) {
                (Some(a), Some(b)) => !a.racy && a.same(b),
                (None, None) => true,
                _ => false,
            })
    }
}
