//! The host's HDMI signal as the HDMI receiver's V4L2 node reports it: the
//! DV-timings query (`VIDIOC_QUERY_DV_TIMINGS`) says whether there is a
//! signal (or why not: `ENOLINK` no signal, `ENOLCK` no lock, `ERANGE` out
//! of range) and its timings; the `DV_RX_POWER_PRESENT` control says whether
//! the source's +5 V is there. On the device the query touches the
//! receiver's registers: it runs at most once per `video_query_interval`,
//! whatever the scrape rate, on a node opened for it and closed after; a
//! scrape in between reuses the last answer and exports its age. Never a
//! set ioctl, never `VIDIOC_LOG_STATUS`, never a capture stream. While the
//! receiver's sleep file says it sleeps, nothing is asked at all.

use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::errno::Errno;

use super::collector::{io_error, read, Collector, Error, Result};
use crate::metrics::{Families, Kind};

/// `struct v4l2_bt_timings` (packed).
#[repr(C, packed)]
#[derive(Clone, Copy)]
pub struct BtTimings {
    pub width: u32,
    pub height: u32,
    pub interlaced: u32,
    pub polarities: u32,
    pub pixelclock: u64,
    pub hfrontporch: u32,
    pub hsync: u32,
    pub hbackporch: u32,
    pub vfrontporch: u32,
    pub vsync: u32,
    pub vbackporch: u32,
    pub il_vfrontporch: u32,
    pub il_vsync: u32,
    pub il_vbackporch: u32,
    pub standards: u32,
    pub flags: u32,
    pub picture_aspect: [u32; 2],
    pub cea861_vic: u8,
    pub hdmi_vic: u8,
    pub reserved: [u8; 46],
}

/// `struct v4l2_dv_timings` (packed): a type and a 128-byte union whose
/// BT.656/1120 member is the only one defined.
#[repr(C, packed)]
#[derive(Clone, Copy)]
struct DvTimings {
    kind: u32,
    bt: BtTimings,
    rest_of_union: [u8; 4],
}

/// `struct v4l2_control`.
#[repr(C)]
struct Control {
    id: u32,
    value: i32,
}

const _: () = assert!(std::mem::size_of::<DvTimings>() == 132);
const V4L2_CID_DV_RX_POWER_PRESENT: u32 = 0x00a0_0964;

nix::ioctl_read!(query_dv_timings, b'V', 99, DvTimings);
nix::ioctl_readwrite!(get_control, b'V', 27, Control);

/// A signal's picture.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timings {
    pub width: u32,
    pub height: u32,
    pub interlaced: bool,
    /// Pictures per second: frames, or fields when interlaced (1080i60
    /// has 60 fields, 30 frames).
    pub refresh: f64,
}

/// How a receiver's driver reports an interlaced signal's pixel clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clock {
    /// As V4L2 defines it (vivid, most drivers): the clock of the whole
    /// frame, so a frame takes the total frame's pixels.
    Standard,
    /// Toshiba's TC358743 family (the device's tc35874x): the driver
    /// measures a field, doubles the height and halves the pixel clock, so
    /// the clock over the total frame is a quarter of the field rate.
    HalvedWhenInterlaced,
}

/// Drivers whose V4L2 name marks [`Clock::HalvedWhenInterlaced`].
const HALVED_CLOCK_DRIVERS: [&str; 2] = ["tc358743", "tc35874x"];

impl Clock {
    /// The clock a node's V4L2 name (sysfs `name`) implies.
    pub fn of(name: &str) -> Clock {
        if HALVED_CLOCK_DRIVERS.iter().any(|d| name.contains(d)) {
            Clock::HalvedWhenInterlaced
        } else {
            Clock::Standard
        }
    }
}

/// The timings' picture; the total frame counts the blanking, and both
/// fields of an interlaced frame.
pub fn timings(bt: &BtTimings, clock: Clock) -> Timings {
    let bt = *bt;
    let total_width =
        u64::from(bt.width) + u64::from(bt.hfrontporch) + u64::from(bt.hsync) + u64::from(bt.hbackporch);
    let mut total_height =
        u64::from(bt.height) + u64::from(bt.vfrontporch) + u64::from(bt.vsync) + u64::from(bt.vbackporch);
    let interlaced = bt.interlaced != 0;
    if interlaced {
        total_height += u64::from(bt.il_vfrontporch) + u64::from(bt.il_vsync) + u64::from(bt.il_vbackporch);
    }
    let frame = total_width * total_height;
    let pixelclock = bt.pixelclock;
    let frames = if frame == 0 { 0.0 } else { pixelclock as f64 / frame as f64 };
    // Two fields a frame; twice again where the driver halved the clock.
    let per_frame = match (interlaced, clock) {
        (false, _) => 1.0,
        (true, Clock::Standard) => 2.0,
        (true, Clock::HalvedWhenInterlaced) => 4.0,
    };
    Timings { width: bt.width, height: bt.height, interlaced, refresh: frames * per_frame }
}

#[derive(Clone, Copy, Debug, PartialEq)]
#[allow(clippy::enum_variant_names)] // the states' own names
pub enum Signal {
    Ok(Timings),
    NoSignal,
    NoLock,
    OutOfRange,
    /// The receiver sleeps: not asked.
    Sleep,
}

const STATES: [&str; 5] = ["ok", "no_signal", "no_lock", "out_of_range", "sleep"];

impl Signal {
    fn label(&self) -> &'static str {
        match self {
            Signal::Ok(_) => "ok",
            Signal::NoSignal => "no_signal",
            Signal::NoLock => "no_lock",
            Signal::OutOfRange => "out_of_range",
            Signal::Sleep => "sleep",
        }
    }
}

/// The query's answer as a signal: the errors that mean "no picture" are
/// states; any other is a failure to read.
pub fn signal(
    answer: std::result::Result<BtTimings, Errno>,
    clock: Clock,
) -> std::result::Result<Signal, Errno> {
    match answer {
        Ok(bt) => Ok(Signal::Ok(timings(&bt, clock))),
        Err(Errno::ENOLINK) => Ok(Signal::NoSignal),
        Err(Errno::ENOLCK) => Ok(Signal::NoLock),
        Err(Errno::ERANGE) => Ok(Signal::OutOfRange),
        Err(e) => Err(e),
    }
}

#[derive(Clone, Copy)]
struct Reading {
    signal: Signal,
    /// +5 V from the source; `None` if the node has no such control.
    power: Option<bool>,
    at: Instant,
}

/// The receiver's last answer, or why it could not be asked:
/// `(no data, message)`.
type Answer = std::result::Result<Reading, (bool, String)>;

pub struct Hdmi {
    /// The node, if configured; else found by `driver`.
    device: Option<PathBuf>,
    driver: String,
    sysfs: PathBuf,
    sleep_file: PathBuf,
    interval: Duration,
    last: Mutex<Option<(Instant, Answer)>>,
}

impl Hdmi {
    pub fn new(
        device: Option<PathBuf>,
        driver: String,
        sysfs: PathBuf,
        sleep_file: PathBuf,
        interval: Duration,
    ) -> Self {
        Hdmi { device, driver, sysfs, sleep_file, interval, last: Mutex::new(None) }
    }

    /// The receiver's node: configured, or the first whose V4L2 name has
    /// the driver's; and how its driver reports the pixel clock.
    fn node(&self) -> Result<(PathBuf, Clock)> {
        let dir = self.sysfs.join("class/video4linux");
        let name_of = |node: &std::ffi::OsStr| read(&dir.join(node).join("name"));
        if let Some(d) = &self.device {
            let name = d.file_name().map(name_of).and_then(|n| n.ok()).unwrap_or_default();
            return Ok((d.clone(), Clock::of(&name)));
        }
        let mut nodes: Vec<_> = std::fs::read_dir(&dir).map_err(|e| io_error(&dir, e))?.flatten().collect();
        nodes.sort_by_key(|e| e.file_name());
        nodes
            .iter()
            .find_map(|e| {
                let name = name_of(&e.file_name()).ok().filter(|n| n.contains(&self.driver))?;
                Some((Path::new("/dev").join(e.file_name()), Clock::of(&name)))
            })
            .ok_or_else(|| Error::NoData(format!("{}: no V4L2 node of {}", dir.display(), self.driver)))
    }

    /// Opens the node, asks, closes it.
    fn query(&self) -> Result<Reading> {
        let (node, clock) = self.node()?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&node)
            .map_err(|e| io_error(&node, e))?;
        let fd = file.as_raw_fd();
        // SAFETY: both ioctls fill a struct of the size their numbers encode,
        // on a descriptor this function owns until it returns.
        let answer = unsafe {
            let mut t: DvTimings = std::mem::zeroed();
            query_dv_timings(fd, &mut t).map(|_| t.bt)
        };
        let signal = signal(answer, clock)
            .map_err(|e| Error::Failed(format!("{}: VIDIOC_QUERY_DV_TIMINGS: {e}", node.display())))?;
        let mut c = Control { id: V4L2_CID_DV_RX_POWER_PRESENT, value: 0 };
        // SAFETY: as above.
        let power = unsafe { get_control(fd, &mut c) }.ok().map(|_| c.value != 0);
        Ok(Reading { signal, power, at: Instant::now() })
    }

    /// The reading for this scrape: asleep, the last answer (or failure)
    /// if it is recent enough, else a new query.
    fn reading(&self) -> Result<Reading> {
        if read(&self.sleep_file).is_ok_and(|s| s.trim() == "1") {
            return Ok(Reading { signal: Signal::Sleep, power: None, at: Instant::now() });
        }
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, answer)) = &*last {
            if at.elapsed() < self.interval {
                return answer
                    .clone()
                    .map_err(|(no_data, msg)| if no_data { Error::NoData(msg) } else { Error::Failed(msg) });
            }
        }
        // A failure waits its interval too: the receiver is not asked again
        // on every scrape.
        let r = self.query();
        let kept = match &r {
            Ok(r) => Ok(*r),
            Err(Error::NoData(m)) => Err((true, m.clone())),
            Err(Error::Failed(m)) => Err((false, m.clone())),
        };
        *last = Some((Instant::now(), kept));
        r
    }
}

impl Collector for Hdmi {
    fn name(&self) -> &'static str {
        "hdmi"
    }

    fn update(&self, out: &mut Families) -> Result<()> {
        let r = self.reading()?;
        let mut f = out.family(
            "jetkvm_hdmi_signal",
            "The host's HDMI signal at the receiver: 1 for the current state (ok, no_signal, no_lock, out_of_range, sleep: the receiver sleeps and is not asked).",
            Kind::Gauge,
        );
        for s in STATES {
            f.sample(&[("state", s)], if s == r.signal.label() { 1.0 } else { 0.0 });
        }
        if let Signal::Ok(t) = r.signal {
            out.single(
                "jetkvm_hdmi_width_pixels",
                "Width of the host's picture.",
                Kind::Gauge,
                f64::from(t.width),
            );
            out.single(
                "jetkvm_hdmi_height_pixels",
                "Height of the host's picture.",
                Kind::Gauge,
                f64::from(t.height),
            );
            out.single(
                "jetkvm_hdmi_refresh_hertz",
                "Pictures per second of the host's signal: frames, or fields when interlaced (1080i60: 60).",
                Kind::Gauge,
                t.refresh,
            );
            out.single(
                "jetkvm_hdmi_interlaced",
                "Whether the host's picture is interlaced.",
                Kind::Gauge,
                if t.interlaced { 1.0 } else { 0.0 },
            );
        }
        if let Some(p) = r.power {
            out.single(
                "jetkvm_hdmi_power_present",
                "Whether the source's +5 V is on the HDMI cable (a pulled cable never has it; a sleeping host may).",
                Kind::Gauge,
                if p { 1.0 } else { 0.0 },
            );
        }
        if r.signal != Signal::Sleep {
            out.single(
                "jetkvm_hdmi_query_age_seconds",
                "Age of the receiver's last answer (asked at most once per video_query_interval).",
                Kind::Gauge,
                r.at.elapsed().as_secs_f64(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bt(width: u32, height: u32, clock: u64, h: [u32; 3], v: [u32; 3], il: Option<[u32; 3]>) -> BtTimings {
        // SAFETY: plain integers; zero is a valid value of each.
        let mut t: BtTimings = unsafe { std::mem::zeroed() };
        t.width = width;
        t.height = height;
        t.pixelclock = clock;
        [t.hfrontporch, t.hsync, t.hbackporch] = h;
        [t.vfrontporch, t.vsync, t.vbackporch] = v;
        if let Some(il) = il {
            t.interlaced = 1;
            [t.il_vfrontporch, t.il_vsync, t.il_vbackporch] = il;
        }
        t
    }

    #[test]
    fn refresh_is_the_pixel_clock_over_the_total_frame() {
        let p1080 = timings(&bt(1920, 1080, 148_500_000, [88, 44, 148], [4, 5, 36], None), Clock::Standard);
        assert_eq!((p1080.width, p1080.height, p1080.interlaced), (1920, 1080, false));
        assert!((p1080.refresh - 60.0).abs() < 1e-9, "{}", p1080.refresh);
        // The tc35874x halves only an interlaced clock.
        let halved = Clock::of("m00_b_tc35874x 4-000f");
        assert_eq!(timings(&bt(1920, 1080, 148_500_000, [88, 44, 148], [4, 5, 36], None), halved), p1080);
        assert_eq!(timings(&bt(0, 0, 0, [0; 3], [0; 3], None), Clock::Standard).refresh, 0.0);
    }

    /// 1080i60 is 60 fields a second, as each driver reports it.
    #[test]
    fn interlaced_refresh_is_the_field_rate() {
        // V4L2's own CEA-861 timings (vivid): both fields' lines, the
        // frame's clock.
        let cea = timings(
            &bt(1920, 1080, 74_250_000, [88, 44, 148], [2, 5, 15], Some([2, 5, 16])),
            Clock::Standard,
        );
        assert!(cea.interlaced);
        assert!((cea.refresh - 60.0).abs() < 1e-9, "{}", cea.refresh);
        // The tc358743 family: a field's 562 lines at 60 Hz measured, the
        // height doubled, one field's blanking, the clock halved.
        let clock = 2200 * 562 * 60 / 2;
        let tc = timings(
            &bt(1920, 1080, clock, [0, 280, 0], [0, 22, 0], Some([0, 23, 0])),
            Clock::of("tc358743 4-000f"),
        );
        assert!((tc.refresh - 59.95).abs() < 0.1, "{}", tc.refresh);
        assert_eq!(Clock::of("vivid-000-vid-cap"), Clock::Standard);
    }

    #[test]
    fn errors_that_are_states() {
        let signal = |e| signal(Err(e), Clock::Standard);
        assert_eq!(signal(Errno::ENOLINK), Ok(Signal::NoSignal));
        assert_eq!(signal(Errno::ENOLCK), Ok(Signal::NoLock));
        assert_eq!(signal(Errno::ERANGE), Ok(Signal::OutOfRange));
        assert_eq!(signal(Errno::ENOTTY), Err(Errno::ENOTTY));
    }
}
