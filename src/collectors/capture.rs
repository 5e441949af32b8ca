//! Whether the device's app holds the video capture node open: its native
//! process opens the node only while a remote session is connected **and**
//! the host's HDMI signal is there (not asleep), and closes it when the
//! last session leaves. So 1 means "video is being captured for a
//! session", not "someone is watching": a session without a signal leaves
//! it 0. The app's processes are the `app` collector's; `capture_holders` says how
//! their open files are read, and with what privilege. The question is
//! asked before the scrape's collectors run, on the runtime (the helper may
//! take a while to answer; the worker serves others meanwhile). What
//! cannot be read fails the collector: it never passes for "not held".

use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::app::Found;
use super::collector::{io_error, Collector, Error, Result};
use crate::capture_holders::{Answer, Holders};
use crate::metrics::{Families, Kind};

/// The collector, and the handle its scrape's question is asked through.
#[derive(Clone)]
pub struct Capture(Arc<Inner>);

struct Inner {
    app: Found,
    holders: Holders,
    capture: PathBuf,
    /// This scrape's answer: whether any process of the app holds the node.
    asked: Mutex<Option<Result<bool>>>,
}

impl Capture {
    pub fn new(app: Found, holders: Holders, capture: PathBuf) -> Self {
        Capture(Arc::new(Inner { app, holders, capture, asked: Mutex::new(None) }))
    }

    /// Finds the app's processes for this scrape (the `app` collector
    /// reports what was found), then asks who of them holds the node.
    pub async fn prepare(&self) {
        let answer = self.ask().await;
        *self.0.asked.lock().unwrap_or_else(|e| e.into_inner()) = Some(answer);
    }

    async fn ask(&self) -> Result<bool> {
        let pids = self.0.app.update()?;
        let node = std::fs::metadata(&self.0.capture).map_err(|e| io_error(&self.0.capture, e))?;
        if !node.file_type().is_char_device() {
            return Err(Error::NoData(format!("{}: not a device node", self.0.capture.display())));
        }
        // No process of the app: nobody captures through it.
        if pids.is_empty() {
            return Ok(false);
        }
        let answers = self.0.holders.ask(&pids).await.map_err(Error::Failed)?.pids;
        if let Some(i) = answers.iter().position(|a| *a == Answer::Unreadable) {
            return Err(Error::Failed(format!(
                "/proc/{}: its name or open files could not be read (another process's open files need CAP_SYS_PTRACE)",
                pids[i]
            )));
        }
        Ok(answers.contains(&Answer::Open))
    }
}

impl Collector for Capture {
    fn name(&self) -> &'static str {
        "video_capture"
    }

    fn update(&self, out: &mut Families) -> Result<()> {
        // Taken: each scrape reports its own question.
        let asked = self.0.asked.lock().unwrap_or_else(|e| e.into_inner()).take();
        let open = asked.ok_or_else(|| Error::NoData("not asked yet".into()))??;
        out.single(
            "jetkvm_video_capture_open",
            "Whether a process of the device's app holds the video capture node open: it does while a remote session is connected and the HDMI signal is present.",
            Kind::Gauge,
            if open { 1.0 } else { 0.0 },
        );
        Ok(())
    }
}
