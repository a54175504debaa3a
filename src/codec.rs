//! Image decoding, the one place that turns compressed pixels into a frame: JPEG and PNG stills (EXIF
//! orientation, grey/RGBA/16-bit conversion) for the replay sources, and a camera's MJPEG frames for the
//! pipeline (strict: a complete JPEG of the stream's size). It knows frames, not where they come from.

use crate::frame::{Frame, PixelFormat, MAX_DIMENSION};
use anyhow::{bail, Context, Result};
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};
use std::io::{BufRead, Cursor, Seek};
use std::path::Path;

/// The most bytes the decoder may allocate for one still. A 12-megapixel RGB photo needs 36 MiB; this leaves
/// room for large stills while keeping a hostile file from exhausting a kiosk's memory.
const MAX_DECODE_BYTES: u64 = 512 * 1024 * 1024;

/// A still decoded into an owned, tightly packed buffer: the format the replay sources lend, and what an MJPEG
/// decoder can reuse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedImage {
    /// `PixelFormat::Grey` or `PixelFormat::Rgb24`.
    pub format: PixelFormat,
    pub width: u32,
    pub height: u32,
    /// Rows of `format.min_stride(width)` bytes, no padding.
    pub data: Vec<u8>,
}

impl DecodedImage {
    /// The row stride in bytes: rows are tightly packed.
    pub fn stride(&self) -> usize {
        self.format.min_stride(self.width)
    }

    /// Lends the image as a frame with the given timing.
    pub fn frame<'a>(
        &'a self,
        source: &'a str,
        sequence: u64,
        timestamp_ns: u64,
        discontinuity: bool,
    ) -> Frame<'a> {
        Frame {
            format: self.format,
            width: self.width,
            height: self.height,
            stride: self.stride(),
            data: &self.data,
            source,
            sequence,
            timestamp_ns,
            discontinuity,
        }
    }
}

/// Decodes a JPEG or PNG held in memory (the format is recognised from the content) into 8-bit Grey or RGB24,
/// applying its EXIF orientation. `name` names the image in errors (a file path, or "MJPEG frame 12").
pub fn decode_image_bytes(bytes: &[u8], name: &str) -> Result<DecodedImage> {
    if bytes.is_empty() {
        bail!("image {name} is empty (0 bytes)");
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .with_context(|| format!("cannot read image {name}"))?;
    decode_reader(reader, name)
}

/// Decodes the JPEG or PNG file at `path`, like [`decode_image_bytes`] but streaming from the file.
pub fn decode_image_file(path: &Path) -> Result<DecodedImage> {
    let name = path.display().to_string();
    let length = std::fs::metadata(path).with_context(|| format!("cannot open image {name}"))?.len();
    if length == 0 {
        bail!("image {name} is empty (0 bytes)");
    }
    let mut reader = ImageReader::open(path).with_context(|| format!("cannot open image {name}"))?;
    // `open` guesses from the extension; forget that guess so only the content decides.
    reader.clear_format();
    let reader = reader.with_guessed_format().with_context(|| format!("cannot read image {name}"))?;
    decode_reader(reader, &name)
}

/// The decoding shared by files and memory: format check, dimension and memory limits, orientation,
/// conversion.
fn decode_reader<R: BufRead + Seek>(mut reader: ImageReader<R>, name: &str) -> Result<DecodedImage> {
    match reader.format() {
        Some(ImageFormat::Jpeg | ImageFormat::Png) => {}
        Some(other) => bail!("image {name} is {other:?}; only JPEG and PNG are supported"),
        None => bail!("image {name} is neither JPEG nor PNG (its content matches no known image signature)"),
    }
    // The decoder first gets the memory bound only, so that an oversized image reaches our own check below,
    // whose error can name the dimensions (the decoder's dimension error does not).
    let mut limits = Limits::default();
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits.clone());
    let mut decoder = reader.into_decoder().with_context(|| format!("cannot decode image {name}"))?;
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 || width > MAX_DIMENSION || height > MAX_DIMENSION {
        bail!("image {name} is {width}x{height}; each side must be between 1 and {MAX_DIMENSION} pixels");
    }
    let colour_type = decoder.color_type();
    let total_bytes = decoder.total_bytes();
    limits.max_image_width = Some(MAX_DIMENSION);
    limits.max_image_height = Some(MAX_DIMENSION);
    // The decoded buffer counts against the allowance, as `ImageReader::decode` does it.
    limits.reserve(total_bytes).with_context(|| {
        format!(
            "image {name} ({width}x{height}, {colour_type:?}) needs {total_bytes} bytes decoded, more than the \
             {MAX_DECODE_BYTES} allowed"
        )
    })?;
    decoder.set_limits(limits).with_context(|| format!("cannot decode image {name}"))?;
    // A damaged EXIF block should not cost the picture: show it as stored.
    let orientation = decoder.orientation().unwrap_or_else(|error| {
        log::warn!("image {name}: unreadable EXIF orientation ({error}); using the stored orientation");
        Orientation::NoTransforms
    });
    let mut image =
        DynamicImage::from_decoder(decoder).with_context(|| format!("cannot decode image {name}"))?;
    image.apply_orientation(orientation);
    convert_to_8bit(image, name)
}

/// Rounds a 16-bit sample to 8 bits: `round(value * 255 / 65535)`, since 65535 / 255 = 257.
pub(crate) fn sample_to_8bit(value: u16) -> u8 {
    // (65535 + 128) / 257 = 255, so the cast never truncates.
    ((u32::from(value) + 128) / 257) as u8
}

/// Converts a decoded image into Grey or RGB24, dropping alpha (kiosk stills are opaque; a transparent
/// border has no meaning to a face detector) and rounding 16-bit samples.
fn convert_to_8bit(image: DynamicImage, name: &str) -> Result<DecodedImage> {
    let (width, height) = (image.width(), image.height());
    let colour_type = image.color();
    if matches!(
        image,
        DynamicImage::ImageLuma16(_)
            | DynamicImage::ImageLumaA16(_)
            | DynamicImage::ImageRgb16(_)
            | DynamicImage::ImageRgba16(_)
    ) {
        log::debug!("image {name}: {colour_type:?} rounded to 8 bits per sample");
    }
    let (format, data): (PixelFormat, Vec<u8>) = match image {
        // The 8-bit layouts without alpha are already ours: take the buffer without copying.
        DynamicImage::ImageLuma8(buffer) => (PixelFormat::Grey, buffer.into_raw()),
        DynamicImage::ImageRgb8(buffer) => (PixelFormat::Rgb24, buffer.into_raw()),
        DynamicImage::ImageLumaA8(buffer) => {
            (PixelFormat::Grey, buffer.as_raw().iter().step_by(2).copied().collect())
        }
        DynamicImage::ImageRgba8(buffer) => (
            PixelFormat::Rgb24,
            buffer.as_raw().chunks_exact(4).flat_map(|pixel| &pixel[..3]).copied().collect(),
        ),
        DynamicImage::ImageLuma16(buffer) => {
            (PixelFormat::Grey, buffer.as_raw().iter().map(|&sample| sample_to_8bit(sample)).collect())
        }
        DynamicImage::ImageLumaA16(buffer) => (
            PixelFormat::Grey,
            buffer.as_raw().iter().step_by(2).map(|&sample| sample_to_8bit(sample)).collect(),
        ),
        DynamicImage::ImageRgb16(buffer) => {
            (PixelFormat::Rgb24, buffer.as_raw().iter().map(|&sample| sample_to_8bit(sample)).collect())
        }
        DynamicImage::ImageRgba16(buffer) => (
            PixelFormat::Rgb24,
            buffer
                .as_raw()
                .chunks_exact(4)
                .flat_map(|pixel| &pixel[..3])
                .map(|&sample| sample_to_8bit(sample))
                .collect(),
        ),
        _ => bail!(
            "image {name} has colour type {colour_type:?}, which is not supported (8- or 16-bit grey or RGB, \
             with or without alpha, only)"
        ),
    };
    Ok(DecodedImage { format, width, height, data })
}

/// Decodes an MJPEG frame, refusing the truncated frames USB cameras deliver (often the first one), which a
/// lenient JPEG decoder would otherwise fill with grey: a complete JPEG ends with the EOI marker (FF D9),
/// possibly followed by zero padding.
pub fn decode_mjpeg(frame: &Frame) -> Result<DecodedImage> {
    let end = frame.data.iter().rposition(|&byte| byte != 0).map_or(0, |last| last + 1);
    anyhow::ensure!(
        frame.data.starts_with(&[0xFF, 0xD8]) && frame.data[..end].ends_with(&[0xFF, 0xD9]),
        "MJPEG frame {} from {} is incomplete or not a JPEG ({} bytes, no start or end marker)",
        frame.sequence,
        frame.source,
        frame.data.len()
    );
    let image = decode_image_bytes(&frame.data[..end], "MJPEG frame")
        .with_context(|| format!("decoding MJPEG frame {} from {}", frame.sequence, frame.source))?;
    anyhow::ensure!(
        image.width == frame.width && image.height == frame.height,
        "MJPEG frame {} from {} is {}x{}, the stream is {}x{}",
        frame.sequence,
        frame.source,
        image.width,
        image.height,
        frame.width,
        frame.height
    );
    Ok(image)
}
