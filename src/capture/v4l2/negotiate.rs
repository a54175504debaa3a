//! What was asked of the driver and what it accepted: the pixel format and size (VIDIOC_S_FMT, verified with
//! VIDIOC_G_FMT), the frame rate (VIDIOC_S_PARM), and the checks every dequeued buffer must pass against the
//! accepted mode. Pure logic: the ioctls are in `device.rs`.
#![forbid(unsafe_code)]

use crate::frame::PixelFormat;
use anyhow::{bail, ensure, Result};

/// The V4L2 four-character code of each pixel format (videodev2.h `V4L2_PIX_FMT_*`).
pub fn fourcc(format: PixelFormat) -> [u8; 4] {
    *match format {
        PixelFormat::Rgb24 => b"RGB3",
        PixelFormat::Bgr24 => b"BGR3",
        PixelFormat::Grey => b"GREY",
        PixelFormat::Yuyv => b"YUYV",
        PixelFormat::Uyvy => b"UYVY",
        PixelFormat::Nv12 => b"NV12",
        PixelFormat::Mjpeg => b"MJPG",
    }
}

/// The pixel format of a V4L2 code, if deepgate reads it.
pub fn format_of(code: [u8; 4]) -> Option<PixelFormat> {
    PixelFormat::RAW.into_iter().chain([PixelFormat::Mjpeg]).find(|format| fourcc(*format) == code)
}

/// A four-character code as text ("YUYV"); unprintable bytes as `?`.
pub fn fourcc_text(code: [u8; 4]) -> String {
    code.iter()
        .map(|&byte| if byte.is_ascii_graphic() || byte == b' ' { byte as char } else { '?' })
        .collect()
}

/// `V4L2_FIELD_NONE`: progressive frames, the only field order deepgate reads.
pub const FIELD_NONE: u32 = 1;

/// The format the board config asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Requested {
    pub format: PixelFormat,
    pub width: u32,
    pub height: u32,
}

/// The single-planar format the driver reports (VIDIOC_G_FMT after VIDIOC_S_FMT).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accepted {
    pub fourcc: [u8; 4],
    pub width: u32,
    pub height: u32,
    pub bytes_per_line: u32,
    pub size_image: u32,
    pub field: u32,
}

/// The mode frames are read in, once verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mode {
    pub format: PixelFormat,
    pub width: u32,
    pub height: u32,
    /// Bytes per row as the driver lays them out (of the Y plane for NV12); 0 for MJPEG.
    pub stride: usize,
    /// The driver's largest frame size in bytes (`sizeimage`).
    pub size_image: usize,
}

impl Mode {
    /// The bytes a complete raw frame occupies (0 for MJPEG, whose size varies).
    pub fn frame_bytes(&self) -> usize {
        self.format.frame_bytes(self.stride, self.height)
    }
}

/// Accepts the driver's format only if it is exactly what was requested, with a sane layout; otherwise the
/// error names requested and accepted, since a silently different format would be misread.
pub fn verify_format(requested: Requested, accepted: Accepted) -> Result<Mode> {
    let wanted = fourcc(requested.format);
    let describe = |accepted: &Accepted| {
        format!(
            "{} {}x{} (bytesperline {}, sizeimage {}, field {})",
            fourcc_text(accepted.fourcc),
            accepted.width,
            accepted.height,
            accepted.bytes_per_line,
            accepted.size_image,
            accepted.field
        )
    };
    let asked = format!("{} {}x{}", requested.format.name(), requested.width, requested.height);
    ensure!(
        accepted.fourcc == wanted && accepted.width == requested.width && accepted.height == requested.height,
        "the driver cannot give source.format / source.width / source.height as configured: requested {asked}, \
         it gives {} (see `deepgate probe` for what it offers)",
        describe(&accepted)
    );
    ensure!(
        accepted.field == FIELD_NONE,
        "the driver gives interlaced frames (field {} instead of {FIELD_NONE}, progressive) for {asked}: {}",
        accepted.field,
        describe(&accepted)
    );
    let format = requested.format;
    let stride = accepted.bytes_per_line as usize;
    let size_image = accepted.size_image as usize;
    if format == PixelFormat::Mjpeg {
        ensure!(size_image > 0, "the driver reports sizeimage 0 for {asked}: {}", describe(&accepted));
        return Ok(Mode { format, width: accepted.width, height: accepted.height, stride: 0, size_image });
    }
    let min_stride = format.min_stride(accepted.width);
    ensure!(
        stride >= min_stride,
        "the driver's bytesperline {stride} is smaller than the {min_stride} bytes a row of {asked} needs: {}",
        describe(&accepted)
    );
    let mode = Mode { format, width: accepted.width, height: accepted.height, stride, size_image };
    ensure!(
        size_image >= mode.frame_bytes(),
        "the driver's sizeimage {size_image} is smaller than the {} bytes a frame of {asked} needs: {}",
        mode.frame_bytes(),
        describe(&accepted)
    );
    Ok(mode)
}

/// The frame interval (numerator, denominator in seconds) to ask for `frames_per_second`: exact for whole
/// rates (1/30), in thousandths otherwise (29.97 → 1000/29970).
pub fn interval_for(frames_per_second: f32) -> (u32, u32) {
    let rounded = frames_per_second.round();
    if (frames_per_second - rounded).abs() < 1e-4 {
        (1, rounded as u32)
    } else {
        (1000, (frames_per_second * 1000.0).round() as u32)
    }
}

/// The rate a frame interval gives, `None` when the driver reports none (a zero term).
pub fn rate_of(numerator: u32, denominator: u32) -> Option<f32> {
    (numerator != 0 && denominator != 0).then(|| denominator as f32 / numerator as f32)
}

/// Checks the rate the driver accepted against `source.min_frame_rate`. Without a minimum any rate is
/// accepted (the caller logs it); with one, a lower or unknown rate is refused.
pub fn verify_rate(requested: f32, accepted: Option<f32>, minimum: Option<f32>) -> Result<()> {
    let Some(minimum) = minimum else { return Ok(()) };
    match accepted {
        None => bail!(
            "the driver does not report its frame rate (requested {requested} fps), so source.min_frame_rate \
             {minimum} cannot be verified; remove the key to accept whatever rate the camera gives"
        ),
        Some(rate) if rate + 1e-3 < minimum => bail!(
            "the driver gives {rate:.3} fps for a request of {requested} fps, below source.min_frame_rate \
             {minimum}"
        ),
        Some(_) => Ok(()),
    }
}

/// What is wrong with a dequeued buffer; each kind is counted separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Defect {
    /// A raw frame with fewer bytes than the mode needs (`bytesused`).
    Short { used: usize, needed: usize },
    /// An MJPEG frame that is not a whole JPEG (no SOI at the start or no EOI at the end).
    Corrupt { used: usize },
}

/// The bytes of a dequeued buffer that make the frame: for raw formats the whole frame (at least
/// `mode.frame_bytes()`, `bytesused` as the driver reports it, never beyond the mapped `length`); for MJPEG
/// the JPEG up to and including its EOI marker (zero padding after it, which some cameras add, is cut).
pub fn payload(mode: &Mode, bytes_used: u32, length: usize, data: &[u8]) -> Result<usize, Defect> {
    let used = (bytes_used as usize).min(length).min(data.len());
    if mode.format == PixelFormat::Mjpeg {
        return jpeg_length(&data[..used]).ok_or(Defect::Corrupt { used });
    }
    let needed = mode.frame_bytes();
    if used < needed {
        return Err(Defect::Short { used, needed });
    }
    Ok(used)
}

/// The length of a complete JPEG at the start of `data` (SOI first, EOI last, trailing zero bytes allowed
/// after EOI), or `None`: the first MJPEG frame after stream start is often cut short.
pub fn jpeg_length(data: &[u8]) -> Option<usize> {
    let end = data.iter().rposition(|&byte| byte != 0)? + 1;
    (end >= 4 && data.starts_with(&[0xFF, 0xD8]) && data[..end].ends_with(&[0xFF, 0xD9])).then_some(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yuyv_640() -> (Requested, Accepted) {
        let requested = Requested { format: PixelFormat::Yuyv, width: 640, height: 480 };
        let accepted = Accepted {
            fourcc: *b"YUYV",
            width: 640,
            height: 480,
            bytes_per_line: 1280,
            size_image: 614_400,
            field: FIELD_NONE,
        };
        (requested, accepted)
    }

    fn refusal(requested: Requested, accepted: Accepted) -> String {
        format!("{:#}", verify_format(requested, accepted).expect_err("must be refused"))
    }

    #[test]
    fn every_format_round_trips_through_its_fourcc() {
        for format in PixelFormat::RAW.into_iter().chain([PixelFormat::Mjpeg]) {
            assert_eq!(format_of(fourcc(format)), Some(format));
        }
        assert_eq!(format_of(*b"H264"), None);
        assert_eq!(fourcc_text([b'Y', b'U', 0, 0xff]), "YU??");
    }

    #[test]
    fn the_format_requested_is_accepted_with_the_driver_stride() {
        let (requested, mut accepted) = yuyv_640();
        accepted.bytes_per_line = 1536; // padded rows
        accepted.size_image = 1536 * 480;
        let mode = verify_format(requested, accepted).expect("valid");
        assert_eq!((mode.stride, mode.size_image, mode.frame_bytes()), (1536, 737_280, 737_280));
    }

    #[test]
    fn a_different_format_or_size_is_refused_naming_requested_and_accepted() {
        let (requested, mut accepted) = yuyv_640();
        accepted.fourcc = *b"MJPG";
        let message = refusal(requested, accepted);
        assert!(message.contains("requested YUYV 640x480"), "{message}");
        assert!(message.contains("it gives MJPG 640x480"), "{message}");
        assert!(message.contains("source.format"), "{message}");

        let (requested, mut accepted) = yuyv_640();
        accepted.width = 320;
        accepted.height = 240;
        accepted.bytes_per_line = 640;
        let message = refusal(requested, accepted);
        assert!(message.contains("requested YUYV 640x480, it gives YUYV 320x240"), "{message}");
    }

    #[test]
    fn interlaced_short_strides_and_small_images_are_refused() {
        let (requested, mut accepted) = yuyv_640();
        accepted.field = 4; // V4L2_FIELD_INTERLACED
        assert!(refusal(requested, accepted).contains("interlaced"));

        let (requested, mut accepted) = yuyv_640();
        accepted.bytes_per_line = 640;
        assert!(refusal(requested, accepted).contains("bytesperline 640 is smaller than the 1280"));

        let (requested, mut accepted) = yuyv_640();
        accepted.size_image = 1000;
        assert!(refusal(requested, accepted).contains("sizeimage 1000 is smaller than the 614400"));
    }

    #[test]
    fn nv12_and_odd_sizes_need_their_chroma_rows() {
        // 641x481 NV12: rows of 642 bytes (the last chroma pair), 481 luma rows + 241 chroma rows.
        let requested = Requested { format: PixelFormat::Nv12, width: 641, height: 481 };
        let mut accepted = Accepted {
            fourcc: *b"NV12",
            width: 641,
            height: 481,
            bytes_per_line: 642,
            size_image: 642 * (481 + 241),
            field: FIELD_NONE,
        };
        let mode = verify_format(requested, accepted).expect("valid");
        assert_eq!(mode.frame_bytes(), 642 * 722);
        assert_eq!(payload(&mode, 642 * 722, 642 * 722, &vec![0; 642 * 722]), Ok(642 * 722));
        assert_eq!(
            payload(&mode, 642 * 481, 642 * 722, &vec![0; 642 * 722]),
            Err(Defect::Short { used: 642 * 481, needed: 642 * 722 }),
            "the luma plane alone is short"
        );
        accepted.bytes_per_line = 641;
        assert!(refusal(requested, accepted).contains("bytesperline 641 is smaller than the 642"));

        // Odd-width YUYV: the last pixel still takes a whole 4-byte pair.
        let yuyv = Mode { format: PixelFormat::Yuyv, width: 3, height: 2, stride: 8, size_image: 16 };
        assert_eq!(payload(&yuyv, 16, 16, &[0; 16]), Ok(16));
        assert_eq!(payload(&yuyv, 12, 16, &[0; 16]), Err(Defect::Short { used: 12, needed: 16 }));
    }

    #[test]
    fn bytesused_never_reaches_past_the_mapped_buffer() {
        let grey = Mode { format: PixelFormat::Grey, width: 4, height: 4, stride: 4, size_image: 16 };
        // A driver claiming more than the buffer holds: only the mapped bytes count.
        assert_eq!(payload(&grey, 1 << 30, 16, &[0; 16]), Ok(16));
        assert_eq!(payload(&grey, 1 << 30, 12, &[0; 12]), Err(Defect::Short { used: 12, needed: 16 }));
        assert_eq!(payload(&grey, 0, 16, &[0; 16]), Err(Defect::Short { used: 0, needed: 16 }));
    }

    #[test]
    fn only_complete_jpegs_pass_and_padding_after_eoi_is_cut() {
        let mjpeg = Mode { format: PixelFormat::Mjpeg, width: 8, height: 8, stride: 0, size_image: 64 };
        let mut buffer = [0u8; 64];
        buffer[..2].copy_from_slice(&[0xFF, 0xD8]);
        buffer[2..10].copy_from_slice(&[1, 2, 3, 4, 5, 6, 0xFF, 0xD9]);
        assert_eq!(payload(&mjpeg, 40, 64, &buffer), Ok(10), "zero padding after EOI is cut");
        assert_eq!(payload(&mjpeg, 8, 64, &buffer), Err(Defect::Corrupt { used: 8 }), "cut before EOI");
        assert_eq!(jpeg_length(&[0xFF, 0xD8, 0xFF, 0xD9]), Some(4));
        for bad in [
            &[][..],
            &[0, 0, 0][..],
            &[0xFF, 0xD9, 0xFF, 0xD9][..],
            &[0xFF, 0xD8, 1, 2][..],
            &[0xFF, 0xD9][..],
        ] {
            assert_eq!(jpeg_length(bad), None, "{bad:?}");
        }
        assert_eq!(payload(&mjpeg, 0, 64, &buffer), Err(Defect::Corrupt { used: 0 }));
    }

    #[test]
    fn frame_rates_become_intervals_and_are_checked_against_the_minimum() {
        assert_eq!(interval_for(30.0), (1, 30));
        assert_eq!(interval_for(29.97), (1000, 29970));
        assert_eq!(rate_of(1, 25), Some(25.0));
        assert_eq!(rate_of(1001, 30000).map(|rate| (rate * 100.0).round()), Some(2997.0));
        assert_eq!(rate_of(0, 30), None);
        assert!(verify_rate(30.0, Some(25.0), None).is_ok(), "no minimum: any rate");
        assert!(verify_rate(30.0, None, None).is_ok());
        assert!(verify_rate(30.0, Some(30.0), Some(30.0)).is_ok());
        assert!(verify_rate(30.0, Some(29.97), Some(25.0)).is_ok());
        let low = format!("{:#}", verify_rate(30.0, Some(25.0), Some(30.0)).unwrap_err());
        assert!(low.contains("25.000 fps") && low.contains("source.min_frame_rate 30"), "{low}");
        let unknown = format!("{:#}", verify_rate(30.0, None, Some(15.0)).unwrap_err());
        assert!(unknown.contains("does not report"), "{unknown}");
    }
}
