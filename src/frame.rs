//! Frames as the pipeline sees them: pixel format, geometry and timing, borrowed from their source.

use anyhow::{bail, Result};

/// The pixel formats a kiosk camera (V4L2) or a replay source delivers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PixelFormat {
    /// Packed 8-bit R, G, B.
    Rgb24,
    /// Packed 8-bit B, G, R.
    Bgr24,
    /// 8-bit luminance only.
    Grey,
    /// Packed 4:2:2, byte order Y0 U Y1 V (BT.601 limited range).
    Yuyv,
    /// Packed 4:2:2, byte order U Y0 V Y1 (BT.601 limited range).
    Uyvy,
    /// Planar 4:2:0: a Y plane, then an interleaved U V plane at half resolution (BT.601 limited range).
    Nv12,
    /// One JPEG image per frame; decoded on the CPU before any pixel work.
    Mjpeg,
}

impl PixelFormat {
    /// Every format whose pixels can be read directly (all but MJPEG, which is decoded first).
    pub const RAW: [PixelFormat; 6] = [
        PixelFormat::Rgb24,
        PixelFormat::Bgr24,
        PixelFormat::Grey,
        PixelFormat::Yuyv,
        PixelFormat::Uyvy,
        PixelFormat::Nv12,
    ];

    /// The format called `name` (V4L2 style, any case).
    pub fn from_name(name: &str) -> Option<PixelFormat> {
        Self::RAW
            .into_iter()
            .chain([PixelFormat::Mjpeg])
            .find(|format| format.name().eq_ignore_ascii_case(name))
    }

    /// The name V4L2 and the board config use for this format.
    pub fn name(self) -> &'static str {
        match self {
            PixelFormat::Rgb24 => "RGB24",
            PixelFormat::Bgr24 => "BGR24",
            PixelFormat::Grey => "GREY",
            PixelFormat::Yuyv => "YUYV",
            PixelFormat::Uyvy => "UYVY",
            PixelFormat::Nv12 => "NV12",
            PixelFormat::Mjpeg => "MJPEG",
        }
    }

    /// The smallest legal row stride in bytes for a frame `width` pixels wide (the Y plane for NV12).
    /// MJPEG has no rows: its stride is 0.
    pub fn min_stride(self, width: u32) -> usize {
        let width = width as usize;
        match self {
            PixelFormat::Rgb24 | PixelFormat::Bgr24 => width * 3,
            PixelFormat::Grey => width,
            // The chroma rows hold one U V pair per two pixels: an odd width still needs its last pair.
            PixelFormat::Nv12 => width.div_ceil(2) * 2,
            // 4:2:2 packs pixel pairs into 4 bytes; an odd width still needs its last pair.
            PixelFormat::Yuyv | PixelFormat::Uyvy => width.div_ceil(2) * 4,
            PixelFormat::Mjpeg => 0,
        }
    }

    /// The number of bytes a frame of this geometry occupies (for MJPEG: unknown, 0).
    pub fn frame_bytes(self, stride: usize, height: u32) -> usize {
        let height = height as usize;
        match self {
            // The chroma plane has one row per two luma rows (rounded up for odd heights), same stride.
            PixelFormat::Nv12 => stride * (height + height.div_ceil(2)),
            PixelFormat::Mjpeg => 0,
            _ => stride * height,
        }
    }
}

/// One frame borrowed from its source: nothing is copied between capture and preprocessing.
#[derive(Clone, Copy, Debug)]
pub struct Frame<'a> {
    pub format: PixelFormat,
    pub width: u32,
    pub height: u32,
    /// Bytes per row (of the Y plane for NV12); 0 for MJPEG.
    pub stride: usize,
    pub data: &'a [u8],
    /// Where the frame comes from: a file path or a device, for reports and verdicts.
    pub source: &'a str,
    /// Counts frames delivered by the source, starting at 0; gaps mean dropped frames.
    pub sequence: u64,
    /// Capture time in nanoseconds on the source's clock (monotonic for cameras, from the frame rate for video).
    pub timestamp_ns: u64,
    /// True when this frame does not continue the previous one (a new still image, a new clip, a camera
    /// re-opened): the decision closes any open person session before using it.
    pub discontinuity: bool,
}

impl<'a> Frame<'a> {
    /// A single frame with no history (sequence 0, time 0, not a discontinuity), as tests and benchmarks
    /// make them; sources set the timing fields themselves.
    pub fn still(
        format: PixelFormat,
        width: u32,
        height: u32,
        stride: usize,
        data: &'a [u8],
        source: &'a str,
    ) -> Frame<'a> {
        Frame {
            format,
            width,
            height,
            stride,
            data,
            source,
            sequence: 0,
            timestamp_ns: 0,
            discontinuity: false,
        }
    }

    /// Checks that the geometry is sane and the buffer holds the whole frame, so that no pixel access can
    /// fall outside `data`. Every consumer may rely on a frame that passed this check.
    pub fn validate(&self) -> Result<()> {
        if self.width == 0 || self.height == 0 {
            bail!("frame has zero size ({}x{})", self.width, self.height);
        }
        if self.width > MAX_DIMENSION || self.height > MAX_DIMENSION {
            bail!(
                "frame {}x{} exceeds the largest supported dimension {MAX_DIMENSION}",
                self.width,
                self.height
            );
        }
        if self.format == PixelFormat::Mjpeg {
            if self.data.is_empty() {
                bail!("MJPEG frame is empty");
            }
            return Ok(());
        }
        let min_stride = self.format.min_stride(self.width);
        if self.stride < min_stride {
            bail!(
                "{} frame {}x{}: stride {} is smaller than the {} bytes a row needs",
                self.format.name(),
                self.width,
                self.height,
                self.stride,
                min_stride
            );
        }
        let needed = self.format.frame_bytes(self.stride, self.height);
        if self.data.len() < needed {
            bail!(
                "{} frame {}x{} stride {}: buffer holds {} bytes, {} needed",
                self.format.name(),
                self.width,
                self.height,
                self.stride,
                self.data.len(),
                needed
            );
        }
        Ok(())
    }
}

/// Frames wider or taller than this are refused: 16384 covers every camera and still we expect, and it keeps
/// a hostile header from asking for gigabytes.
pub const MAX_DIMENSION: u32 = 16384;
