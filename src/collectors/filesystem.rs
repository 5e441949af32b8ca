//! Size and free space of the configured mount points, through statvfs(2).

use std::path::PathBuf;

use nix::sys::statvfs::statvfs;

use super::collector::{Collector, Error, Result};
use crate::metrics::{Families, Kind};

pub struct Filesystem {
    mountpoints: Vec<PathBuf>,
}

impl Filesystem {
    pub fn new(mountpoints: Vec<PathBuf>) -> Self {
        Filesystem { mountpoints }
    }
}

struct Stat {
    size: f64,
    free: f64,
    avail: f64,
    files: f64,
    files_free: f64,
}

impl Collector for Filesystem {
    fn name(&self) -> &'static str {
        "filesystem"
    }

    fn update(&self, out: &mut Families) -> Result<()> {
        let mut stats = Vec::with_capacity(self.mountpoints.len());
        for m in &self.mountpoints {
            let label = m.to_string_lossy().into_owned();
            match statvfs(m) {
                Ok(s) => {
                    let frsize = s.fragment_size() as f64;
                    stats.push((
                        label,
                        Some(Stat {
                            size: s.blocks() as f64 * frsize,
                            free: s.blocks_free() as f64 * frsize,
                            avail: s.blocks_available() as f64 * frsize,
                            files: s.files() as f64,
                            files_free: s.files_free() as f64,
                        }),
                    ))
                }
                Err(e) => {
                    log::debug!("filesystem {}: {e}", m.display());
                    stats.push((label, None));
                }
            }
        }
        if !stats.is_empty() && stats.iter().all(|(_, s)| s.is_none()) {
            return Err(Error::Failed("no configured filesystem could be read".into()));
        }
        type Get = fn(&Stat) -> f64;
        let families: [(&str, &str, Get); 5] = [
            ("jetkvm_filesystem_size_bytes", "Size of a filesystem.", |s| s.size),
            ("jetkvm_filesystem_free_bytes", "Free space on a filesystem.", |s| s.free),
            (
                "jetkvm_filesystem_avail_bytes",
                "Space on a filesystem available to unprivileged users.",
                |s| s.avail,
            ),
            ("jetkvm_filesystem_files", "Inodes of a filesystem.", |s| s.files),
            ("jetkvm_filesystem_files_free", "Free inodes of a filesystem.", |s| s.files_free),
        ];
        for (name, help, get) in families {
            let mut f = out.family(name, help, Kind::Gauge);
            for (m, s) in &stats {
                if let Some(s) = s {
                    f.sample(&[("mountpoint", m)], get(s));
                }
            }
        }
        let mut f = out.family(
            "jetkvm_filesystem_device_error",
            "Whether statvfs failed for a configured mount point.",
            Kind::Gauge,
        );
        for (m, s) in &stats {
            f.sample(&[("mountpoint", m)], if s.is_none() { 1.0 } else { 0.0 });
        }
        Ok(())
    }
}
