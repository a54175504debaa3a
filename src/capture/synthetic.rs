//! Camera frames synthesised from an RGB image, byte for byte as a camera delivers them in each pixel format:
//! for `deepgate bench`, the tests, and demos without a camera.

use crate::frame::PixelFormat;
use anyhow::{ensure, Context, Result};

/// BT.601 limited-range Y, U, V of one RGB pixel, unrounded (the inverse of the preprocessing's conversion).
fn yuv([r, g, b]: [u8; 3]) -> [f32; 3] {
    let (r, g, b) = (r as f32, g as f32, b as f32);
    [
        16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0,
        128.0 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255.0,
        128.0 + (112.0 * r - 93.786 * g - 18.214 * b) / 255.0,
    ]
}

/// BT.601 limited-range Y, U, V of one RGB pixel, rounded.
pub fn rgb_to_yuv(pixel: [u8; 3]) -> [u8; 3] {
    yuv(pixel).map(|value| value.round().clamp(0.0, 255.0) as u8)
}

/// Tight RGB as planar 4:2:0 (Y plane, then U, then V: what a YUV4MPEG2 `C420jpeg` frame holds), chroma the
/// mean over each 2×2 block (fewer pixels at an odd edge).
pub fn yuv420_planes(rgb: &[u8], width: usize, height: usize) -> Vec<u8> {
    let pixel = |x: usize, y: usize| {
        let i = (y * width + x) * 3;
        yuv([rgb[i], rgb[i + 1], rgb[i + 2]])
    };
    let to_byte = |value: f32| value.round().clamp(0.0, 255.0) as u8;
    let (chroma_width, chroma_height) = (width.div_ceil(2), height.div_ceil(2));
    let mut planes = Vec::with_capacity(width * height + 2 * chroma_width * chroma_height);
    planes.extend(
        (0..height).flat_map(|y| (0..width).map(move |x| (x, y))).map(|(x, y)| to_byte(pixel(x, y)[0])),
    );
    for channel in [1, 2] {
        for chroma_y in 0..chroma_height {
            for chroma_x in 0..chroma_width {
                let (mut sum, mut count) = (0.0, 0.0);
                for y in (2 * chroma_y)..(2 * chroma_y + 2).min(height) {
                    for x in (2 * chroma_x)..(2 * chroma_x + 2).min(width) {
                        sum += pixel(x, y)[channel];
                        count += 1.0;
                    }
                }
                planes.push(to_byte(sum / count));
            }
        }
    }
    planes
}

/// Encodes tight RGB (`width`×`height`) as a `format` frame with `stride` bytes per row (ignored for MJPEG).
/// 4:2:2 and 4:2:0 take the chroma of the even pixel and row, as simple camera firmware does; padding bytes
/// hold 0xA5 so that a reader using them shows.
pub fn camera_frame(
    rgb: &[u8],
    width: u32,
    height: u32,
    format: PixelFormat,
    stride: usize,
) -> Result<Vec<u8>> {
    let (w, h) = (width as usize, height as usize);
    ensure!(rgb.len() == w * h * 3, "RGB buffer holds {} bytes, {w}x{h} needs {}", rgb.len(), w * h * 3);
    if format == PixelFormat::Mjpeg {
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 85)
            .encode(rgb, width, height, image::ExtendedColorType::Rgb8)
            .context("encoding an MJPEG frame")?;
        return Ok(jpeg);
    }
    ensure!(
        stride >= format.min_stride(width),
        "stride {stride} is below the {} a row needs",
        format.min_stride(width)
    );
    let mut data = vec![0xA5u8; format.frame_bytes(stride, height)];
    for y in 0..h {
        let row = y * stride;
        for x in 0..w {
            let i = (y * w + x) * 3;
            let pixel = [rgb[i], rgb[i + 1], rgb[i + 2]];
            let [luma, u, v] = rgb_to_yuv(pixel);
            let pair = row + (x / 2) * 4;
            let even = x % 2 == 0;
            match format {
                PixelFormat::Rgb24 => data[row + x * 3..row + x * 3 + 3].copy_from_slice(&pixel),
                PixelFormat::Bgr24 => {
                    data[row + x * 3..row + x * 3 + 3].copy_from_slice(&[pixel[2], pixel[1], pixel[0]])
                }
                PixelFormat::Grey => data[row + x] = luma,
                PixelFormat::Yuyv => {
                    data[pair + (x & 1) * 2] = luma;
                    if even {
                        data[pair + 1] = u;
                        data[pair + 3] = v;
                    }
                }
                PixelFormat::Uyvy => {
                    data[pair + 1 + (x & 1) * 2] = luma;
                    if even {
                        data[pair] = u;
                        data[pair + 2] = v;
                    }
                }
                PixelFormat::Nv12 => {
                    data[row + x] = luma;
                    if even && y % 2 == 0 {
                        let chroma = stride * h + (y / 2) * stride + x;
                        data[chroma] = u;
                        data[chroma + 1] = v;
                    }
                }
                PixelFormat::Mjpeg => {}
            }
        }
    }
    Ok(data)
}
