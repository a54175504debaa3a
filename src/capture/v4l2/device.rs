//! The kernel side of the camera: the V4L2 ioctls on one open device node, and mmap streaming with buffers
//! that are always given back to the driver. Every `unsafe` block of the camera source is here.
//!
//! The `v4l` crate provides the kernel's videodev2.h bindings (`v4l_sys`), its request codes and the ioctl
//! and mmap calls. Its higher-level wrappers are not used on this path because they panic on what a device
//! can report: `Capabilities::from` unwraps the UTF-8 of `card`, which the kernel cuts at 32 bytes (a USB
//! product name cut inside a multi-byte character), and takes `device_caps` without checking
//! `V4L2_CAP_DEVICE_CAPS`; `Format::from` `expect`s colorspace, quantization and transfer values it knows;
//! the mmap `Stream` panics in `Drop` when STREAMOFF fails with anything but ENODEV, and after a DQBUF
//! time-out it queues again a buffer it never dequeued (EINVAL from then on); its `Handle` unwraps `close`.
//! So the few ioctls are made here directly, on a `File` (closed without a panic).

use super::identity::Identity;
use super::negotiate::{Accepted, Requested};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use v4l::v4l2::vidioc;
use v4l::v4l_sys;

// videodev2.h values, named as there.
const V4L2_BUF_TYPE_VIDEO_CAPTURE: u32 = 1;
const V4L2_MEMORY_MMAP: u32 = 1;
const V4L2_CAP_VIDEO_CAPTURE: u32 = 0x0000_0001;
const V4L2_CAP_STREAMING: u32 = 0x0400_0000;
const V4L2_CAP_DEVICE_CAPS: u32 = 0x8000_0000;
const V4L2_CAP_TIMEPERFRAME: u32 = 0x1000;
const V4L2_FRMSIZE_TYPE_DISCRETE: u32 = 1;
pub const V4L2_BUF_FLAG_ERROR: u32 = 0x0040;
const V4L2_BUF_FLAG_TIMESTAMP_MASK: u32 = 0xE000;
const V4L2_BUF_FLAG_TIMESTAMP_MONOTONIC: u32 = 0x2000;

/// What VIDIOC_QUERYCAP says about a device node.
#[derive(Clone, Debug)]
pub struct Caps {
    pub identity: Identity,
    /// The node's own capabilities (`device_caps` when the driver fills it, else `capabilities`).
    pub caps: u32,
}

impl Caps {
    /// A single-planar video capture node that streams (a UVC camera's metadata node is not).
    pub fn is_streaming_capture(&self) -> bool {
        self.caps & V4L2_CAP_VIDEO_CAPTURE != 0 && self.caps & V4L2_CAP_STREAMING != 0
    }
}

/// A fixed-size, NUL-terminated string field of a V4L2 struct, as text (lossy: never a panic).
fn text_of(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&byte| byte == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// One open V4L2 device node.
pub struct Device {
    file: File,
    path: PathBuf,
}

impl Device {
    /// Opens `path` read-write and non-blocking: DQBUF then never waits, `poll` does, with a time-out.
    pub fn open(path: &Path) -> io::Result<Device> {
        let file = OpenOptions::new().read(true).write(true).custom_flags(libc::O_NONBLOCK).open(path)?;
        Ok(Device { file, path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open node's character device number `(major, minor)`, from the open file itself (not the path, which
    /// may name another node by now): how sysfs finds the device behind it.
    pub fn char_device(&self) -> io::Result<(u32, u32)> {
        use std::os::unix::fs::MetadataExt;
        let number = self.file.metadata()?.rdev();
        Ok((libc::major(number), libc::minor(number)))
    }

    /// One ioctl on this device; `argument` must be the struct `request` is defined with.
    fn ioctl<T>(&self, request: vidioc::_IOC_TYPE, argument: &mut T) -> io::Result<()> {
        loop {
            // SAFETY: the fd is open for the life of `self.file`, and each caller passes the struct type that
            // videodev2.h defines for `request` (the request code encodes its size), which the kernel reads and
            // writes only within that size.
            let result =
                unsafe { v4l::v4l2::ioctl(self.file.as_raw_fd(), request, argument as *mut T as *mut _) };
            match result {
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    pub fn query_caps(&self) -> io::Result<Caps> {
        // SAFETY: v4l2_capability is plain integers and byte arrays; all zeroes is a valid value.
        let mut raw: v4l_sys::v4l2_capability = unsafe { std::mem::zeroed() };
        self.ioctl(vidioc::VIDIOC_QUERYCAP, &mut raw)?;
        let caps =
            if raw.capabilities & V4L2_CAP_DEVICE_CAPS != 0 { raw.device_caps } else { raw.capabilities };
        Ok(Caps {
            identity: Identity {
                driver: text_of(&raw.driver),
                card: text_of(&raw.card),
                bus_info: text_of(&raw.bus_info),
            },
            caps,
        })
    }

    /// VIDIOC_S_FMT with the requested code and size, then VIDIOC_G_FMT: what the driver will really give.
    pub fn set_format(&self, requested: Requested) -> io::Result<Accepted> {
        // SAFETY: v4l2_format is plain integers in a union; all zeroes is a valid value.
        let mut format: v4l_sys::v4l2_format = unsafe { std::mem::zeroed() };
        format.type_ = V4L2_BUF_TYPE_VIDEO_CAPTURE;
        // The `pix` member of the union is the one a VIDEO_CAPTURE format uses (writing a union field is safe).
        format.fmt.pix.width = requested.width;
        format.fmt.pix.height = requested.height;
        format.fmt.pix.pixelformat = u32::from_le_bytes(super::negotiate::fourcc(requested.format));
        format.fmt.pix.field = super::negotiate::FIELD_NONE;
        self.ioctl(vidioc::VIDIOC_S_FMT, &mut format)?;
        // SAFETY: as above.
        let mut current: v4l_sys::v4l2_format = unsafe { std::mem::zeroed() };
        current.type_ = V4L2_BUF_TYPE_VIDEO_CAPTURE;
        self.ioctl(vidioc::VIDIOC_G_FMT, &mut current)?;
        // SAFETY: for a VIDEO_CAPTURE type the kernel fills the `pix` member.
        let pix = unsafe { current.fmt.pix };
        Ok(Accepted {
            fourcc: pix.pixelformat.to_le_bytes(),
            width: pix.width,
            height: pix.height,
            bytes_per_line: pix.bytesperline,
            size_image: pix.sizeimage,
            field: pix.field,
        })
    }

    /// Asks for the frame interval `numerator/denominator` (when the driver can set one) and returns the
    /// interval it then reports, `(0, 0)` when it reports none. Drivers without VIDIOC_S_PARM keep their rate.
    pub fn set_frame_interval(&self, numerator: u32, denominator: u32) -> (u32, u32) {
        // SAFETY: v4l2_streamparm is plain integers in a union; all zeroes is a valid value.
        let mut parameters: v4l_sys::v4l2_streamparm = unsafe { std::mem::zeroed() };
        parameters.type_ = V4L2_BUF_TYPE_VIDEO_CAPTURE;
        if self.ioctl(vidioc::VIDIOC_G_PARM, &mut parameters).is_err() {
            return (0, 0);
        }
        // SAFETY: the kernel fills the `capture` member for a VIDEO_CAPTURE type.
        let capability = unsafe { parameters.parm.capture.capability };
        if capability & V4L2_CAP_TIMEPERFRAME != 0 {
            parameters.parm.capture.timeperframe.numerator = numerator;
            parameters.parm.capture.timeperframe.denominator = denominator;
            // A refusal leaves the driver's own rate, which G_PARM below reports and the caller verifies.
            let _ = self.ioctl(vidioc::VIDIOC_S_PARM, &mut parameters);
            if self.ioctl(vidioc::VIDIOC_G_PARM, &mut parameters).is_err() {
                return (0, 0);
            }
        }
        // SAFETY: as above.
        let interval = unsafe { parameters.parm.capture.timeperframe };
        (interval.numerator, interval.denominator)
    }

    /// The capture formats the driver lists (VIDIOC_ENUM_FMT): code and description.
    pub fn formats(&self) -> Vec<([u8; 4], String)> {
        let mut formats = Vec::new();
        for index in 0..256 {
            // SAFETY: plain integers and bytes; all zeroes is valid.
            let mut description: v4l_sys::v4l2_fmtdesc = unsafe { std::mem::zeroed() };
            description.index = index;
            description.type_ = V4L2_BUF_TYPE_VIDEO_CAPTURE;
            if self.ioctl(vidioc::VIDIOC_ENUM_FMT, &mut description).is_err() {
                break;
            }
            formats.push((description.pixelformat.to_le_bytes(), text_of(&description.description)));
        }
        formats
    }

    /// The frame sizes the driver lists for a format (VIDIOC_ENUM_FRAMESIZES): "640x480" for each discrete
    /// size, or "WminxHmin-WmaxxHmax step WxH" for a range.
    pub fn frame_sizes(&self, code: [u8; 4]) -> Vec<String> {
        let mut sizes = Vec::new();
        for index in 0..256 {
            // SAFETY: plain integers in a union; all zeroes is valid.
            let mut size: v4l_sys::v4l2_frmsizeenum = unsafe { std::mem::zeroed() };
            size.index = index;
            size.pixel_format = u32::from_le_bytes(code);
            if self.ioctl(vidioc::VIDIOC_ENUM_FRAMESIZES, &mut size).is_err() {
                break;
            }
            if size.type_ == V4L2_FRMSIZE_TYPE_DISCRETE {
                // SAFETY: a DISCRETE entry fills the `discrete` member.
                let discrete = unsafe { size.__bindgen_anon_1.discrete };
                sizes.push(format!("{}x{}", discrete.width, discrete.height));
            } else {
                // SAFETY: CONTINUOUS and STEPWISE entries fill the `stepwise` member; they are the last entry.
                let range = unsafe { size.__bindgen_anon_1.stepwise };
                sizes.push(format!(
                    "{}x{}-{}x{} step {}x{}",
                    range.min_width,
                    range.min_height,
                    range.max_width,
                    range.max_height,
                    range.step_width,
                    range.step_height
                ));
                break;
            }
        }
        sizes
    }
}

/// One mmap'ed driver buffer.
struct Mapping {
    pointer: *mut u8,
    length: usize,
}

/// A buffer just dequeued: which one and what the driver says about it.
#[derive(Clone, Copy, Debug)]
pub struct Dequeued {
    pub index: usize,
    pub bytes_used: u32,
    pub flags: u32,
    pub sequence: u32,
    /// Capture time in CLOCK_MONOTONIC nanoseconds, when the driver stamps buffers on that clock.
    pub timestamp_ns: Option<u64>,
}

/// mmap streaming on a device. At most one buffer is out of the driver's queue at a time (the one lent as a
/// frame, `held`): `requeue` gives it back before the next wait, and dropping the stream (STREAMOFF) takes
/// every buffer back from the driver whatever state they are in, so no path leaves one behind.
pub struct Stream {
    device: Device,
    buffers: Vec<Mapping>,
    held: Option<usize>,
}

/// Why streaming could not start.
pub enum StartError {
    /// The driver gives another number of buffers than `source.buffers` asks for.
    Count { requested: u32, given: u32 },
    /// An ioctl or mmap failed.
    Io(&'static str, io::Error),
}

impl Stream {
    /// REQBUFS `count` mmap buffers (exactly that many), maps them, queues them all and starts streaming.
    pub fn start(device: Device, count: u32) -> Result<Stream, StartError> {
        // SAFETY: plain integers; all zeroes is valid.
        let mut request: v4l_sys::v4l2_requestbuffers = unsafe { std::mem::zeroed() };
        request.count = count;
        request.type_ = V4L2_BUF_TYPE_VIDEO_CAPTURE;
        request.memory = V4L2_MEMORY_MMAP;
        device
            .ioctl(vidioc::VIDIOC_REQBUFS, &mut request)
            .map_err(|e| StartError::Io("VIDIOC_REQBUFS", e))?;
        // From here on, `Drop` releases whatever was set up, on every early return.
        let mut stream = Stream { device, buffers: Vec::new(), held: None };
        if request.count != count {
            return Err(StartError::Count { requested: count, given: request.count });
        }
        for index in 0..count {
            // SAFETY: plain integers in a union; all zeroes is valid.
            let mut buffer: v4l_sys::v4l2_buffer = unsafe { std::mem::zeroed() };
            buffer.index = index;
            buffer.type_ = V4L2_BUF_TYPE_VIDEO_CAPTURE;
            buffer.memory = V4L2_MEMORY_MMAP;
            stream
                .device
                .ioctl(vidioc::VIDIOC_QUERYBUF, &mut buffer)
                .map_err(|e| StartError::Io("VIDIOC_QUERYBUF", e))?;
            let length = buffer.length as usize;
            // SAFETY: maps `length` bytes of the driver's buffer at the offset QUERYBUF gave for MMAP memory
            // (the `offset` member of the union); the kernel checks both, and the mapping is unmapped in Drop.
            let pointer = unsafe {
                v4l::v4l2::mmap(
                    std::ptr::null_mut(),
                    length,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    stream.device.file.as_raw_fd(),
                    buffer.m.offset as libc::off_t,
                )
            }
            .map_err(|e| StartError::Io("mmap", e))?;
            stream.buffers.push(Mapping { pointer: pointer as *mut u8, length });
        }
        for index in 0..stream.buffers.len() {
            stream.queue(index).map_err(|e| StartError::Io("VIDIOC_QBUF", e))?;
        }
        let mut kind = V4L2_BUF_TYPE_VIDEO_CAPTURE;
        stream
            .device
            .ioctl(vidioc::VIDIOC_STREAMON, &mut kind)
            .map_err(|e| StartError::Io("VIDIOC_STREAMON", e))?;
        Ok(stream)
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    fn queue(&self, index: usize) -> io::Result<()> {
        // SAFETY: plain integers in a union; all zeroes is valid.
        let mut buffer: v4l_sys::v4l2_buffer = unsafe { std::mem::zeroed() };
        buffer.index = index as u32;
        buffer.type_ = V4L2_BUF_TYPE_VIDEO_CAPTURE;
        buffer.memory = V4L2_MEMORY_MMAP;
        self.device.ioctl(vidioc::VIDIOC_QBUF, &mut buffer)
    }

    /// Gives the lent buffer (if any) back to the driver. On failure the buffer stays with us until the
    /// stream is dropped, which takes all buffers back.
    pub fn requeue(&mut self) -> io::Result<()> {
        if let Some(index) = self.held {
            self.queue(index)?;
            self.held = None;
        }
        Ok(())
    }

    /// Waits at most `timeout_ms` for a filled buffer: `Ok(true)` when one is ready. POLLERR/POLLHUP (the
    /// device gone, streaming stopped by the driver) is an error.
    pub fn wait(&self, timeout_ms: i32) -> io::Result<bool> {
        let mut descriptor = libc::pollfd {
            fd: self.device.file.as_raw_fd(),
            events: libc::POLLIN | libc::POLLPRI,
            revents: 0,
        };
        // SAFETY: one valid pollfd, and the count says one.
        let ready = unsafe { libc::poll(&mut descriptor, 1, timeout_ms) };
        if ready < 0 {
            return Err(io::Error::last_os_error());
        }
        if descriptor.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
            return Err(io::Error::other(format!(
                "poll reports an error (revents {:#x})",
                descriptor.revents
            )));
        }
        Ok(ready > 0 && descriptor.revents & libc::POLLIN != 0)
    }

    /// Takes one filled buffer from the driver (`None`: none ready after all). The buffer is held (lent) until
    /// `requeue` or drop.
    pub fn dequeue(&mut self) -> io::Result<Option<Dequeued>> {
        self.requeue()?;
        // SAFETY: plain integers in a union; all zeroes is valid.
        let mut buffer: v4l_sys::v4l2_buffer = unsafe { std::mem::zeroed() };
        buffer.type_ = V4L2_BUF_TYPE_VIDEO_CAPTURE;
        buffer.memory = V4L2_MEMORY_MMAP;
        match self.device.ioctl(vidioc::VIDIOC_DQBUF, &mut buffer) {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(error) => return Err(error),
            Ok(()) => {}
        }
        let index = buffer.index as usize;
        if index >= self.buffers.len() {
            return Err(io::Error::other(format!(
                "the driver dequeued buffer {index} of {}",
                self.buffers.len()
            )));
        }
        self.held = Some(index);
        let monotonic = buffer.flags & V4L2_BUF_FLAG_TIMESTAMP_MASK == V4L2_BUF_FLAG_TIMESTAMP_MONOTONIC;
        let (seconds, microseconds) = (buffer.timestamp.tv_sec, buffer.timestamp.tv_usec);
        let timestamp_ns =
            (monotonic && (seconds > 0 || microseconds > 0) && seconds >= 0 && microseconds >= 0)
                .then(|| seconds as u64 * 1_000_000_000 + microseconds as u64 * 1000);
        Ok(Some(Dequeued {
            index,
            bytes_used: buffer.bytesused,
            flags: buffer.flags,
            sequence: buffer.sequence,
            timestamp_ns,
        }))
    }

    /// The mapped bytes of buffer `index` (whole length; the caller cuts them to `bytesused`).
    pub fn buffer(&self, index: usize) -> &[u8] {
        match self.buffers.get(index) {
            // SAFETY: the mapping is `length` bytes, alive until Drop, and only read while the buffer is
            // dequeued (the driver does not write to a buffer outside its queue); the slice borrows `self`, so
            // it cannot outlive the mapping or a requeue (which needs `&mut self`).
            Some(mapping) => unsafe { std::slice::from_raw_parts(mapping.pointer, mapping.length) },
            None => &[],
        }
    }
}

impl Drop for Stream {
    /// STREAMOFF (returns every buffer from the driver's queues), unmap, free the buffers. Errors are
    /// ignored: the device may be gone, and closing the file releases all of it anyway.
    fn drop(&mut self) {
        let mut kind = V4L2_BUF_TYPE_VIDEO_CAPTURE;
        let _ = self.device.ioctl(vidioc::VIDIOC_STREAMOFF, &mut kind);
        for mapping in self.buffers.drain(..) {
            // SAFETY: each mapping was made by mmap with this pointer and length and is unmapped once; no slice
            // of it is alive (they borrow `self`).
            let _ = unsafe { v4l::v4l2::munmap(mapping.pointer as *mut _, mapping.length) };
        }
        // SAFETY: plain integers; all zeroes is valid.
        let mut request: v4l_sys::v4l2_requestbuffers = unsafe { std::mem::zeroed() };
        request.type_ = V4L2_BUF_TYPE_VIDEO_CAPTURE;
        request.memory = V4L2_MEMORY_MMAP;
        let _ = self.device.ioctl(vidioc::VIDIOC_REQBUFS, &mut request);
    }
}

/// The /dev/video* nodes, in numeric order.
pub fn video_nodes() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/dev") else { return Vec::new() };
    let mut nodes: Vec<(u32, PathBuf)> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let number = name.strip_prefix("video")?.parse().ok()?;
            Some((number, entry.path()))
        })
        .collect();
    nodes.sort();
    nodes.into_iter().map(|(_, path)| path).collect()
}
