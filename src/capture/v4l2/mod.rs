//! The V4L2 camera as a `FrameSource`: find and open the pinned device, refuse a virtual or swapped one,
//! negotiate and verify the format and rate, stream through mmap buffers lent to the pipeline without a copy,
//! drop defective frames (counted), and when the camera is lost re-open it with back-off.

pub mod counters;
pub mod device;
pub mod enrolment;
pub mod identity;
pub mod integrity;
pub mod negotiate;
pub mod section;

use crate::capture::FrameSource;
use crate::frame::Frame;
use anyhow::{anyhow, bail, Result};
use counters::{Backoff, Counters, SequenceTracker};
use device::{Device, StartError, Stream};
use enrolment::{Enrolment, UsbIdentity};
use identity::{Candidate, Identity, Pins, Selection};
use integrity::{ClockCheck, FrozenDetector, Picture};
use negotiate::{Defect, Mode, Requested};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The `[source] kind = "v4l2"` settings as the source uses them (keys, meaning and validation: `section`).
#[derive(Clone, Debug, PartialEq)]
pub struct V4l2Settings {
    pub device: Option<PathBuf>,
    pub pins: Pins,
    pub requested: Requested,
    pub frame_rate: f32,
    pub min_frame_rate: Option<f32>,
    pub buffers: u32,
    pub allow_virtual: bool,
    /// The enrolment file, when the board names one (`section`, `enrolment`).
    pub enrolment: Option<PathBuf>,
    /// Repeats in a row that make the picture frozen; 0: not checked.
    pub frozen_frames: u32,
}

/// Why a camera could not be opened; the kind decides what the runtime does.
#[derive(Debug)]
pub enum OpenError {
    /// Not there or not usable now (unplugged, busy, not streaming yet): camera lost, retried.
    Absent(anyhow::Error),
    /// A device whose identity differs from the pins or the enrolment (a swapped camera), or any device while
    /// the board names an enrolment file that does not exist yet: camera lost, retried, never used.
    Mismatch(anyhow::Error),
    /// The configuration cannot work with this device (virtual device not allowed, a format or rate the driver
    /// cannot give, another buffer count, several devices matching): an error at start (exit status 2); after
    /// the first open, camera lost and retried like the others.
    Refused(anyhow::Error),
}

impl OpenError {
    pub fn error(&self) -> &anyhow::Error {
        match self {
            OpenError::Absent(error) | OpenError::Mismatch(error) | OpenError::Refused(error) => error,
        }
    }

    pub fn into_error(self) -> anyhow::Error {
        match self {
            OpenError::Absent(error) | OpenError::Mismatch(error) | OpenError::Refused(error) => error,
        }
    }
}

/// What the camera was opened as: for logs, `deepgate capture` and probes.
#[derive(Clone, Debug)]
pub struct Opened {
    pub path: String,
    pub identity: Identity,
    pub is_virtual: bool,
    pub mode: Mode,
    /// The rate the driver reports after VIDIOC_S_PARM, `None` when it reports none.
    pub frame_rate: Option<f32>,
}

struct Open {
    stream: Stream,
    opened: Opened,
    /// Waiting longer than this for a frame is a time-out.
    timeout: Duration,
}

enum State {
    Streaming(Box<Open>),
    Lost { retry_at: Instant },
}

/// The longest a `next_frame` call waits (in poll or in back-off), so the caller sees its stop flag often.
const SLICE: Duration = Duration::from_millis(250);
/// Time-outs in a row after which the camera counts as lost and is re-opened.
const TIMEOUTS_LOST: u32 = 3;

/// The time-out for one frame: 4 frame periods, at least 200 ms.
fn frame_timeout(frames_per_second: f32) -> Duration {
    let period = if frames_per_second > 0.0 { 1.0 / frames_per_second } else { 1.0 };
    Duration::from_secs_f32((4.0 * period).clamp(0.2, 10.0))
}

/// A capture device found and checked against the board's pins and the virtual-device rule, not yet streaming.
struct Found {
    device: Device,
    path: String,
    identity: Identity,
    is_virtual: bool,
}

/// The camera the board's settings select, with its whole identity: what `deepgate enroll` records.
#[derive(Clone, Debug)]
pub struct Identified {
    pub path: String,
    pub identity: Identity,
    /// The USB device's ids from sysfs; `None`: not a USB device.
    pub usb: Option<UsbIdentity>,
    pub is_virtual: bool,
}

/// Finds the camera `settings` select (the configured path, or the one scanned device matching the board's
/// pins) and reads its identity, without the enrolment check and without streaming: for `deepgate enroll`.
pub fn identify(settings: &V4l2Settings) -> Result<Identified, OpenError> {
    let found = find_camera(settings, &settings.pins)?;
    let usb = usb_of(&found)?;
    Ok(Identified { path: found.path, identity: found.identity, usb, is_virtual: found.is_virtual })
}

/// The USB ids of a found device, from sysfs.
fn usb_of(found: &Found) -> Result<Option<UsbIdentity>, OpenError> {
    let path = &found.path;
    let (major, minor) = found
        .device
        .char_device()
        .map_err(|error| OpenError::Absent(anyhow!("camera {path}: fstat: {error}")))?;
    enrolment::usb_identity(major, minor).map_err(|error| {
        OpenError::Absent(anyhow!(
            "camera {path}: reading its device in /sys/dev/char/{major}:{minor}: {error}"
        ))
    })
}

/// Whether a found camera is the enrolled one, when the board names an enrolment file: a camera that is not,
/// or any camera while none is enrolled, is refused like a swapped one (`Mismatch`: camera lost, retried).
/// The file is read at every open, so a camera enrolled while the runtime waits is taken at the next try.
fn check_enrolment(settings: &V4l2Settings, found: &Found) -> Result<(), OpenError> {
    let Some(file) = &settings.enrolment else { return Ok(()) };
    let (path, identity) = (&found.path, &found.identity);
    let enrolled = match Enrolment::load(file) {
        Ok(Some(enrolled)) => enrolled,
        Ok(None) => {
            return Err(OpenError::Mismatch(anyhow!(
                "camera {path} ({identity}) refused: no camera is enrolled ({} does not exist); record this \
                 kiosk's camera with `deepgate enroll --board FILE`",
                file.display()
            )))
        }
        Err(error) => {
            return Err(OpenError::Mismatch(anyhow!("camera {path} ({identity}) refused: {error:#}")));
        }
    };
    let usb = usb_of(found)?;
    match enrolled.mismatch(identity, usb.as_ref()) {
        None => Ok(()),
        Some(difference) => Err(OpenError::Mismatch(anyhow!(
            "camera {path} is not the enrolled camera: {difference} (enrolled in {}); refused until the \
             enrolled camera is back or `deepgate enroll --replace` enrols this one",
            file.display()
        ))),
    }
}

/// Finds the device (the configured path, or the one scanned device matching the pins) and checks what it is:
/// a streaming capture device, matching the pins, virtual only where allowed.
fn find_camera(settings: &V4l2Settings, pins: &Pins) -> Result<Found, OpenError> {
    let device = match &settings.device {
        Some(path) => Device::open(path).map_err(|error| {
            let message = anyhow!("opening camera {}: {error}", path.display());
            match error.kind() {
                std::io::ErrorKind::PermissionDenied => OpenError::Refused(anyhow!(
                    "{message} (the user running deepgate needs read-write access: the `video` group)"
                )),
                _ => OpenError::Absent(message),
            }
        })?,
        None => {
            let found = scan();
            let chosen = identity::select(&found, pins).map_err(|selection| match selection {
                Selection::NoneMatches(message) => OpenError::Absent(anyhow!(message)),
                Selection::Ambiguous(message) => OpenError::Refused(anyhow!(message)),
            })?;
            Device::open(&chosen.path).map_err(|error| {
                OpenError::Absent(anyhow!("opening camera {}: {error}", chosen.path.display()))
            })?
        }
    };
    let path = device.path().display().to_string();
    let caps = device
        .query_caps()
        .map_err(|error| OpenError::Absent(anyhow!("camera {path}: VIDIOC_QUERYCAP: {error}")))?;
    let identity = caps.identity.clone();
    if !caps.is_streaming_capture() {
        return Err(OpenError::Refused(anyhow!(
            "{path} ({identity}) is not a video capture device that streams (capabilities {:#x}); \
             source.device must name a camera's capture node (see `deepgate probe`)",
            caps.caps
        )));
    }
    if let Some(difference) = pins.mismatch(&identity) {
        return Err(OpenError::Mismatch(anyhow!(
            "camera {path} is not the pinned camera: {difference} (expected {pins}; found {identity}); \
             refused until the pinned camera is back"
        )));
    }
    let is_virtual = identity::is_virtual(&identity.driver);
    if is_virtual && !settings.allow_virtual {
        return Err(OpenError::Refused(anyhow!(
            "camera {path} is a virtual device (driver `{}`, not one of the camera drivers {:?}): refused; set \
             source.allow_virtual = true only for tests and demos",
            identity.driver,
            identity::REAL_DRIVERS
        )));
    }
    Ok(Found { device, path, identity, is_virtual })
}

/// Finds the camera, checks it against the enrolment, and streams from it in the configured mode.
fn open_camera(settings: &V4l2Settings, pins: &Pins) -> Result<Open, OpenError> {
    let found = find_camera(settings, pins)?;
    check_enrolment(settings, &found)?;
    let Found { device, path, identity, is_virtual } = found;
    let requested = settings.requested;
    // An ioctl failing here is the device's state (v4l2loopback refuses formats until its writer streams,
    // another process may hold the device), not the configuration: retried. A format the driver answers
    // with, but not the one configured, is refused.
    let accepted = device
        .set_format(requested)
        .map_err(|error| OpenError::Absent(anyhow!("camera {path}: setting the format: {error}")))?;
    let mode = negotiate::verify_format(requested, accepted)
        .map_err(|error| OpenError::Refused(error.context(format!("camera {path} ({identity})"))))?;
    let (numerator, denominator) = negotiate::interval_for(settings.frame_rate);
    let (numerator, denominator) = device.set_frame_interval(numerator, denominator);
    let frame_rate = negotiate::rate_of(numerator, denominator);
    negotiate::verify_rate(settings.frame_rate, frame_rate, settings.min_frame_rate)
        .map_err(|error| OpenError::Refused(error.context(format!("camera {path} ({identity})"))))?;
    let stream = Stream::start(device, settings.buffers).map_err(|error| match error {
        StartError::Count { requested, given } => OpenError::Refused(anyhow!(
            "camera {path}: source.buffers = {requested}, the driver gives {given} mmap buffers; set \
             source.buffers = {given} (or the driver's buffer limit, e.g. v4l2loopback max_buffers)"
        )),
        StartError::Io(call, error) => OpenError::Absent(anyhow!("camera {path}: {call}: {error}")),
    })?;
    let timeout = frame_timeout(frame_rate.unwrap_or(settings.frame_rate));
    let rate = match frame_rate {
        Some(rate) => format!("{rate:.3} fps (requested {})", settings.frame_rate),
        None => format!("rate not reported (requested {} fps)", settings.frame_rate),
    };
    log::info!(
        "camera {path} ({identity}, {}): {} {}x{}, bytesperline {}, sizeimage {}, {rate}, {} mmap buffers, \
         frame time-out {} ms",
        if is_virtual { "virtual" } else { "real" },
        mode.format.name(),
        mode.width,
        mode.height,
        mode.stride,
        mode.size_image,
        settings.buffers,
        timeout.as_millis()
    );
    Ok(Open { stream, opened: Opened { path, identity, is_virtual, mode, frame_rate }, timeout })
}

/// Every /dev/video* node that is a streaming capture device, with its identity (others are skipped).
pub fn scan() -> Vec<Candidate> {
    device::video_nodes()
        .into_iter()
        .filter_map(|path| {
            let caps = Device::open(&path).and_then(|device| device.query_caps()).ok()?;
            caps.is_streaming_capture().then_some(Candidate { path, identity: caps.identity })
        })
        .collect()
}

/// The V4L2 camera source. Contract (`FrameSource`): `next_frame` returns within about `SLICE` (longer only
/// for a driver call in progress); `Ok(None)` means no frame now, never the end; `camera_up` says whether the
/// camera is streaming.
pub struct V4l2Source {
    settings: V4l2Settings,
    /// The identity required; with `source.device` alone, the identity seen at the first open.
    pins: Pins,
    state: State,
    backoff: Backoff,
    counters: Counters,
    sequence: SequenceTracker,
    /// Injection signs: a frozen picture (a fault until it changes) and timestamps going backwards.
    frozen: FrozenDetector,
    clock: ClockCheck,
    /// Consecutive time-outs, and how long the current wait for a frame has lasted.
    timeouts_in_row: u32,
    waited: Duration,
    /// The next frame starts a new stream (first frame, after a re-open).
    discontinuity: bool,
    opened_once: bool,
    /// The last failure to open, logged once until it changes.
    last_failure: String,
    last_opened: Option<Opened>,
    description: String,
    /// Whether `next_frame` may wait for a frame (`FrameSource::may_wait`); when not, it polls without
    /// waiting and a lost camera's back-off is not slept through.
    patient: bool,
}

impl V4l2Source {
    /// Opens the camera. `Refused` (and, when `strict`, any failure) is returned as the error; otherwise a
    /// camera that cannot be opened now leaves the source lost, retrying with back-off from `next_frame`.
    pub fn open(settings: V4l2Settings, strict: bool) -> Result<V4l2Source, OpenError> {
        let description = match (&settings.device, &settings.pins.bus_info) {
            (Some(path), _) => path.display().to_string(),
            (None, Some(bus_info)) => format!("v4l2 camera at {bus_info}"),
            (None, None) => "v4l2 camera".to_string(),
        };
        let frozen_frames = settings.frozen_frames;
        let mut source = V4l2Source {
            pins: settings.pins.clone(),
            settings,
            state: State::Lost { retry_at: Instant::now() },
            backoff: Backoff::default(),
            counters: Counters::default(),
            sequence: SequenceTracker::default(),
            frozen: FrozenDetector::new(frozen_frames),
            clock: ClockCheck::default(),
            timeouts_in_row: 0,
            waited: Duration::ZERO,
            discontinuity: true,
            opened_once: false,
            last_failure: String::new(),
            last_opened: None,
            description,
            patient: true,
        };
        match open_camera(&source.settings, &source.pins) {
            Ok(open) => source.streaming(open),
            Err(error @ OpenError::Refused(_)) => return Err(error),
            Err(error) if strict => return Err(error),
            Err(error) => source.failed_to_open(&error),
        }
        Ok(source)
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// The camera as last opened (`None` if it never was).
    pub fn opened(&self) -> Option<&Opened> {
        self.last_opened.as_ref()
    }

    fn streaming(&mut self, open: Open) {
        if !self.opened_once {
            // The camera first opened (which matched every configured pin) is this run's camera: its whole
            // identity is pinned, so that a camera swapped in later is refused even where the configured pins
            // (or `source.device` alone) would not tell it apart.
            self.pins = Pins::exactly(&open.opened.identity);
        }
        if self.opened_once {
            self.counters.reopens += 1;
            log::warn!("camera {} is back", open.opened.path);
        }
        self.opened_once = true;
        self.description.clone_from(&open.opened.path);
        self.last_opened = Some(open.opened.clone());
        self.last_failure.clear();
        self.backoff.reset();
        self.sequence.reset();
        self.frozen.reset();
        self.clock.reset();
        self.timeouts_in_row = 0;
        self.waited = Duration::ZERO;
        self.discontinuity = true;
        self.state = State::Streaming(Box::new(open));
    }

    fn failed_to_open(&mut self, error: &OpenError) {
        let message = format!("{:#}", error.error());
        let delay = self.backoff.next_delay();
        if message != self.last_failure {
            log::error!(
                "{message}; camera lost, retrying (back-off up to {} s)",
                counters::MAX_RETRY.as_secs()
            );
            self.last_failure = message;
        } else {
            log::debug!("{message}; next try in {} ms", delay.as_millis());
        }
        self.state = State::Lost { retry_at: Instant::now() + delay };
    }

    /// Closes the stream (dropping it takes every buffer back) and waits to re-open.
    fn lose(&mut self, why: &str) {
        log::error!("camera {} lost: {why}; re-opening with back-off", self.description);
        self.last_failure.clear();
        // The first retry comes quickly: a USB re-enumeration takes about a second.
        self.backoff.reset();
        self.state = State::Lost { retry_at: Instant::now() + self.backoff.next_delay() };
    }

    /// One step while lost: wait for the retry time (at most one slice), then try to open.
    fn retry(&mut self) -> bool {
        let State::Lost { retry_at } = self.state else { return true };
        let now = Instant::now();
        if now < retry_at {
            if self.patient {
                std::thread::sleep((retry_at - now).min(SLICE));
            }
            return false;
        }
        match open_camera(&self.settings, &self.pins) {
            Ok(open) => {
                self.streaming(open);
                true
            }
            Err(error) => {
                self.failed_to_open(&error);
                false
            }
        }
    }

    /// Waits for and dequeues one buffer; `Ok(Some(index, length))` is a good frame now held.
    fn step(&mut self) -> Result<Option<(usize, usize, u64)>> {
        let State::Streaming(open) = &mut self.state else { return Ok(None) };
        // Impatient (a frame in flight): a poll that does not wait, and no time counted against the frame
        // time-out, which only the waits the caller allows spend.
        let slice = if self.patient {
            SLICE.min(open.timeout.saturating_sub(self.waited)).max(Duration::from_millis(1))
        } else {
            Duration::ZERO
        };
        let ready = open.stream.requeue().and_then(|()| open.stream.wait(slice.as_millis() as i32));
        let ready = match ready {
            Ok(ready) => ready,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => return Ok(None),
            Err(error) => {
                self.lose(&error.to_string());
                return Ok(None);
            }
        };
        // POLLIN answered by a DQBUF that finds nothing (EAGAIN) spends the slice too: a driver that keeps
        // saying "ready" without a buffer must end in the frame time-out, not in a silent busy loop.
        let dequeued = if ready { open.stream.dequeue() } else { Ok(None) };
        if matches!(dequeued, Ok(None)) {
            let spent = if ready { slice.min(Duration::from_millis(10)) } else { slice };
            if ready {
                std::thread::sleep(spent);
            }
            self.waited += spent;
            if self.waited < open.timeout {
                return Ok(None);
            }
            let waited = open.timeout.as_millis();
            self.waited = Duration::ZERO;
            self.counters.timeouts += 1;
            self.timeouts_in_row += 1;
            let message = format!("no frame from {} in {waited} ms", open.opened.path);
            if self.timeouts_in_row >= TIMEOUTS_LOST {
                self.lose(&format!("{message}, {TIMEOUTS_LOST} times in a row"));
            }
            bail!(message);
        }
        let dequeued = match dequeued {
            Ok(Some(dequeued)) => dequeued,
            Ok(None) => return Ok(None),
            Err(error) => {
                self.lose(&format!("VIDIOC_DQBUF: {error}"));
                return Ok(None);
            }
        };
        self.waited = Duration::ZERO;
        self.timeouts_in_row = 0;
        self.counters.dropped += self.sequence.observe(dequeued.sequence);
        let path = &open.opened.path;
        if dequeued.flags & device::V4L2_BUF_FLAG_ERROR != 0 {
            self.counters.errors += 1;
            bail!(
                "{path}: the driver flagged buffer {} (sequence {}) as corrupt; dropped",
                dequeued.index,
                dequeued.sequence
            );
        }
        let buffer = open.stream.buffer(dequeued.index);
        let mode = open.opened.mode;
        let length = match negotiate::payload(&mode, dequeued.bytes_used, buffer.len(), buffer) {
            Ok(length) => length,
            Err(Defect::Short { used, needed }) => {
                self.counters.short += 1;
                bail!(
                    "{path}: {} frame (sequence {}) has {used} bytes, {needed} needed; dropped",
                    mode.format.name(),
                    dequeued.sequence
                );
            }
            Err(Defect::Corrupt { used }) => {
                self.counters.corrupt += 1;
                bail!(
                    "{path}: MJPEG frame (sequence {}, {used} bytes) is not a complete JPEG; dropped",
                    dequeued.sequence
                );
            }
        };
        let timestamp_ns = dequeued.timestamp_ns.unwrap_or_else(monotonic_now_ns);
        Ok(Some((dequeued.index, length, timestamp_ns)))
    }
}

impl V4l2Source {
    /// Checks a dequeued frame for injection signs; `false`: it is withheld from the pipeline. A timestamp
    /// earlier than the last one loses the camera (re-opened with back-off: `camera_lost` meanwhile); a frame
    /// repeating the one before byte for byte is no new evidence and is withheld (counted), so that a still
    /// held up to the camera or injected gives two frames, not a decision's worth, before it is frozen; a frozen
    /// picture keeps the camera down (`camera_up` false) until a frame differs, which then starts a new stream.
    fn live_frame(&mut self, index: usize, length: usize, timestamp_ns: u64) -> bool {
        let State::Streaming(open) = &self.state else { return false };
        if let Err(backwards) = self.clock.observe(timestamp_ns) {
            self.counters.clock_backwards += 1;
            let why = format!(
                "the buffer timestamp went backwards by {} us ({} -> {} ns): not a live camera's clock",
                (backwards.previous_ns - backwards.now_ns) / 1000,
                backwards.previous_ns,
                backwards.now_ns
            );
            self.lose(&why);
            return false;
        }
        match self.frozen.observe(&open.stream.buffer(index)[..length]) {
            Picture::Moving => true,
            Picture::Repeating { .. } => {
                self.counters.repeated += 1;
                false
            }
            Picture::Froze { repeats } => {
                self.counters.frozen += 1;
                self.counters.repeated += 1;
                log::error!(
                    "camera {}: frozen: {repeats} frames in a row repeat the one before byte for byte \
                     (source.frozen_frames = {}); no decisions until the picture changes",
                    open.opened.path,
                    self.settings.frozen_frames
                );
                false
            }
            Picture::Frozen => {
                self.counters.repeated += 1;
                false
            }
            Picture::Thawed { repeats } => {
                log::warn!(
                    "camera {}: the picture changes again after {} repeats",
                    open.opened.path,
                    repeats
                );
                self.discontinuity = true;
                true
            }
        }
    }
}

/// CLOCK_MONOTONIC now, for drivers that do not stamp buffers on it.
fn monotonic_now_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: one valid timespec to fill; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    (now.tv_sec.max(0) as u64) * 1_000_000_000 + now.tv_nsec.max(0) as u64
}

impl FrameSource for V4l2Source {
    fn next_frame(&mut self) -> Result<Option<Frame<'_>>> {
        if matches!(self.state, State::Lost { .. }) && !self.retry() {
            return Ok(None);
        }
        let Some((index, length, timestamp_ns)) = self.step()? else { return Ok(None) };
        if !self.live_frame(index, length, timestamp_ns) {
            return Ok(None);
        }
        let State::Streaming(open) = &self.state else { return Ok(None) };
        if self.discontinuity {
            // The integrator's (and the VM tests') sign that frames flow, at start and after every re-open.
            log::info!("camera {}: streaming, first frame after opening", open.opened.path);
        }
        let mode = open.opened.mode;
        let frame = Frame {
            format: mode.format,
            width: mode.width,
            height: mode.height,
            stride: mode.stride,
            data: &open.stream.buffer(index)[..length],
            source: &open.opened.path,
            sequence: self.counters.delivered,
            timestamp_ns,
            discontinuity: self.discontinuity,
        };
        self.counters.delivered += 1;
        self.discontinuity = false;
        Ok(Some(frame))
    }

    fn describe(&self) -> &str {
        &self.description
    }

    fn may_wait(&mut self, wait: bool) {
        self.patient = wait;
    }

    fn camera_up(&self) -> Option<bool> {
        Some(matches!(self.state, State::Streaming(_)) && !self.frozen.is_frozen())
    }
}

impl Drop for V4l2Source {
    /// The run's camera summary, in one line.
    fn drop(&mut self) {
        if self.opened_once || self.counters != Counters::default() {
            log::info!("camera {}: {}", self.description, self.counters);
        }
    }
}
