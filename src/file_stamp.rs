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
        FileKey::of_at(m, SystemTime::now())
    }

    /// The key as seen at `now`. The file changed recently if its mtime or
    /// its ctime is recent: a writer can set mtime to anything (old, or in
    /// the future), not ctime. A time after `now` (the clock is behind the
    /// one that wrote the file) is not recent by itself: any later write
    /// stamps the file with an earlier time, which the key tells apart, so
    /// such a file is not re-read on every use.
    pub fn of_at(m: &std::fs::Metadata, now: SystemTime) -> FileKey {
        let recent = |secs: i64, nsec: i64| {
            let t = UNIX_EPOCH + Duration::new(secs.max(0) as u64, nsec.clamp(0, 999_999_999) as u32);
            now.duration_since(t).is_ok_and(|age| age < RACY_WINDOW)
        };
        let racy = recent(m.mtime(), m.mtime_nsec()) || recent(m.ctime(), m.ctime_nsec());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with_mtime(mtime: SystemTime) -> std::fs::Metadata {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), b"x").unwrap();
        f.as_file().set_modified(mtime).unwrap();
        std::fs::metadata(f.path()).unwrap()
    }

    /// Regression: a writer that set mtime back after writing made a file
    /// changed a moment ago look old, and trusted on stat alone.
    #[test]
    fn recent_ctime_is_recent_whatever_mtime_says() {
        let m = file_with_mtime(UNIX_EPOCH + Duration::from_secs(1_000_000_000));
        assert!(FileKey::of(&m).racy);
        let ctime = UNIX_EPOCH + Duration::new(m.ctime() as u64, m.ctime_nsec() as u32);
        assert!(!FileKey::of_at(&m, ctime + RACY_WINDOW + Duration::from_millis(1)).racy);
    }

    /// Regression: a file dated in the future (the device's clock behind)
    /// was "recent" for ever, and re-read on every request.
    #[test]
    fn a_future_time_is_not_recent_once_ctime_is_old() {
        let m = file_with_mtime(SystemTime::now() + Duration::from_secs(3600));
        let ctime = UNIX_EPOCH + Duration::new(m.ctime() as u64, m.ctime_nsec() as u32);
        assert!(FileKey::of_at(&m, ctime).racy, "just changed: ctime is recent");
        assert!(!FileKey::of_at(&m, ctime + RACY_WINDOW + Duration::from_millis(1)).racy);
    }
}
