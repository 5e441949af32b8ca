//! Reading a file that another user may have put in place (the daemon's
//! user, when root reads): never through a symbolic link, never waiting on
//! a FIFO or a device, only a regular file as the opened file says (fstat),
//! not as its path said a moment before, and no more than a bound.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Opens `path` for reading if it is a regular file: a link, a FIFO, a
/// device or a directory is an error, and the open never blocks.
pub fn open_regular(path: &Path) -> io::Result<(File, Metadata)> {
    open(path, libc::O_NOFOLLOW)
}

/// The bytes of a regular file of at most `max`, through any links: for
/// files a user names (certificates), which may be links, but never a FIFO
/// waited on or a device read.
pub fn read_file(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let (file, _) = open(path, 0)?;
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("larger than {max} bytes")));
    }
    Ok(bytes)
}

fn open(path: &Path, flags: libc::c_int) -> io::Result<(File, Metadata)> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(flags | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => io::Error::new(io::ErrorKind::InvalidInput, "a symbolic link"),
            _ => e,
        })?;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
    }
    Ok((file, meta))
}

/// The text of a regular file of at most `max` bytes, and what it is.
pub fn read_regular(path: &Path, max: u64) -> io::Result<(String, Metadata)> {
    let (file, meta) = open_regular(path)?;
    let mut text = String::new();
    file.take(max + 1).read_to_string(&mut text)?;
    if text.len() as u64 > max {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("larger than {max} bytes")));
    }
    Ok((text, meta))
}

/// Why a file or directory that decides what this process does is not to
/// be trusted: owned by someone other than this process's user (`also`, if
/// given, is trusted too), or writable by anyone else. `None` when only
/// they may change it.
pub fn not_only_mine(meta: &Metadata, also: Option<u32>) -> Option<String> {
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me && Some(meta.uid()) != also {
        return Some(format!("owned by uid {}, not by the user running this (uid {me})", meta.uid()));
    }
    let mode = meta.mode() & 0o7777;
    (mode & 0o022 != 0).then(|| format!("writable by group or others (mode {mode:o})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_regular_file_is_opened_and_a_fifo_never_waits() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let fifo = dir.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let link = dir.join("link");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        let file = dir.join("file");
        std::fs::write(&file, "a = 1\n").unwrap();
        for (path, why) in
            [(&fifo, "not a regular file"), (&link, "a symbolic link"), (&dir, "not a regular file")]
        {
            assert_eq!(read_regular(path, 100).unwrap_err().to_string(), why, "{}", path.display());
        }
        assert_eq!(read_regular(Path::new("/dev/zero"), 100).unwrap_err().to_string(), "not a regular file");
        let (text, _) = read_regular(&file, 100).unwrap();
        assert_eq!(text, "a = 1\n");
        assert_eq!(read_regular(&file, 3).unwrap_err().to_string(), "larger than 3 bytes");
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        assert_eq!(not_only_mine(&std::fs::metadata(&file).unwrap(), None), None);
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o664)).unwrap();
        assert_eq!(
            not_only_mine(&std::fs::metadata(&file).unwrap(), None).unwrap(),
            "writable by group or others (mode 664)"
        );
    }
}
