//! Whether the device's app streams video: one of its processes holds the
//! capture node open (`holders` says how that is read, and with what
//! privilege). The app's processes are the `app` collector's.

use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;

use super::app::Found;
use super::collector::{Collector, Error, Result};
use crate::holders::{Answer, Holders};
use crate::metrics::{Families, Kind};

pub struct Streaming {
    app: Found,
    holders: Holders,
    capture: PathBuf,
}

impl Streaming {
    pub fn new(app: Found, holders: Holders, capture: PathBuf) -> Self {
        Streaming { app, holders, capture }
    }
}

impl Collector for Streaming {
    fn name(&self) -> &'static str {
        "video_streaming"
    }

    fn update(&self, out: &mut Families) -> Result<()> {
        // First, whatever else fails: the lookup shared with the `app`
        // collector counts on each scrape asking once.
        let pids = self.app.pids()?;
        let node =
            std::fs::metadata(&self.capture).map_err(|e| super::collector::io_error(&self.capture, e))?;
        if !node.file_type().is_char_device() {
            return Err(Error::NoData(format!("{}: not a device node", self.capture.display())));
        }
        // No process of the app: nobody streams through it.
        let answers =
            if pids.is_empty() { Vec::new() } else { self.holders.ask(&pids).map_err(Error::Failed)?.pids };
        if let Some(i) = answers.iter().position(|a| *a == Answer::Unreadable) {
            return Err(Error::Failed(format!(
                "/proc/{}/fd: unreadable (another process's open files need CAP_SYS_PTRACE)",
                pids[i]
            )));
        }
        out.single(
            "jetkvm_video_streaming",
            "Whether a process of the device's app holds the video capture node open (it streams while a remote session is connected).",
            Kind::Gauge,
            if answers.contains(&Answer::Open) { 1.0 } else { 0.0 },
        );
        Ok(())
    }
}
