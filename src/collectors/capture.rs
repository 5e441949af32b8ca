//! Whether the device's app holds the video capture node open: its native
//! process opens the node only while a remote session is connected **and**
//! the host's HDMI signal is there (not asleep), and closes it when the
//! last session leaves. So 1 means "video is being captured for a
//! session", not "someone is watching": a session without a signal leaves
//! it 0. The app's processes are the `app` collector's; `holders` says how
//! their open files are read, and with what privilege. What cannot be read
//! fails the collector: it never passes for "not held".

use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;

use super::app::Found;
use super::collector::{Collector, Error, Result};
use crate::holders::{Answer, Holders};
use crate::metrics::{Families, Kind};

pub struct Capture {
    app: Found,
    holders: Holders,
    capture: PathBuf,
}

impl Capture {
    pub fn new(app: Found, holders: Holders, capture: PathBuf) -> Self {
        Capture { app, holders, capture }
    }
}

impl Collector for Capture {
    fn name(&self) -> &'static str {
        "video_capture"
    }

    fn update(&self, out: &mut Families) -> Result<()> {
        // What the `app` collector found this scrape, or why it could not.
        let pids = self.app.pids()?;
        let node =
            std::fs::metadata(&self.capture).map_err(|e| super::collector::io_error(&self.capture, e))?;
        if !node.file_type().is_char_device() {
            return Err(Error::NoData(format!("{}: not a device node", self.capture.display())));
        }
        // No process of the app: nobody captures through it.
        let answers =
            if pids.is_empty() { Vec::new() } else { self.holders.ask(&pids).map_err(Error::Failed)?.pids };
        if let Some(i) = answers.iter().position(|a| *a == Answer::Unreadable) {
            return Err(Error::Failed(format!(
                "/proc/{}: its name or open files could not be read (another process's open files need CAP_SYS_PTRACE)",
                pids[i]
            )));
        }
        out.single(
            "jetkvm_video_capture_open",
            "Whether a process of the device's app holds the video capture node open: it does while a remote session is connected and the HDMI signal is present.",
            Kind::Gauge,
            if answers.contains(&Answer::Open) { 1.0 } else { 0.0 },
        );
        Ok(())
    }
}
