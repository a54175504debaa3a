//! The argument structs of the preprocessing kernels, laid out as `kernels/warp.cuh` and `kernels/crops.cu`
//! declare them (`repr(C)`), and how the pipeline's frames, maps and model inputs become them. Shared by the
//! CUDA launchers and the host build of the kernels the tests run, so both pass exactly the same arguments.

use crate::frame::{Frame, PixelFormat};
use crate::manifest::{ChannelOrder, InputSpec, Layout};
use crate::preprocess::Affine;
use anyhow::{bail, ensure, Result};

// The sizes the C structs have (warp.cuh, crops.cu); a field added on one side only fails the build.
const _: () = assert!(std::mem::size_of::<DgFrame>() == 32 && std::mem::size_of::<Affine>() == 24);
const _: () = assert!(std::mem::size_of::<DgNorm>() == 32 && std::mem::size_of::<DgCrop>() == 48);

/// Most crops one launch makes. The pipeline asks for a quality crop and a classifier crop for each face the
/// detector may report, and checks at compile time that they fit (`pipeline`: `2 * MAX_FACES <= MAX_CROPS`);
/// preprocessing sits below detection and does not know its limit.
pub const MAX_CROPS: usize = 16;

/// Threads per block along x and y: 16 × 16 = 256 threads, one per output pixel.
pub const BLOCK: u32 = 16;

/// `DgFrame`. `data` points at device (or mapped host) memory when launched on the GPU.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DgFrame {
    pub data: u64,
    pub bytes: u64,
    pub width: i32,
    pub height: i32,
    pub stride: i32,
    pub format: i32,
}

/// `DgNorm`: the model input's normalisation, channel order and layout.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DgNorm {
    pub scale: [f32; 3],
    pub shift: [f32; 3],
    pub layout: i32,
    pub bgr: i32,
}

/// `DgCrop`: one crop of the crops kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DgCrop {
    /// `DgMap`: `Affine` has its layout (`repr(C)`, six floats in the same order).
    pub map: Affine,
    pub taps: i32,
    pub width: i32,
    pub height: i32,
    /// 1: 8-bit RGB into the image buffer; 0: normalised floats into the tensor buffer.
    pub rgb: i32,
    /// Elements of its buffer before this crop's first value.
    pub offset: u64,
}

impl DgFrame {
    /// The kernel's view of `frame`, whose pixels are at `data` (a device address, or a host one for the host
    /// build). Refuses what the kernels cannot read: MJPEG (decode it first), sizes beyond `i32`, and frames that
    /// fail `Frame::validate`.
    pub fn describe(frame: &Frame, data: u64) -> Result<DgFrame> {
        frame.validate()?;
        let format = match frame.format {
            PixelFormat::Rgb24 => 0,
            PixelFormat::Bgr24 => 1,
            PixelFormat::Grey => 2,
            PixelFormat::Yuyv => 3,
            PixelFormat::Uyvy => 4,
            PixelFormat::Nv12 => 5,
            PixelFormat::Mjpeg => bail!("MJPEG frames must be decoded before the GPU preprocesses them"),
        };
        let small = |value: usize, what: &str| -> Result<i32> {
            i32::try_from(value)
                .map_err(|_| anyhow::anyhow!("frame {what} {value} is too large for the kernels"))
        };
        Ok(DgFrame {
            data,
            bytes: frame.data.len() as u64,
            width: small(frame.width as usize, "width")?,
            height: small(frame.height as usize, "height")?,
            stride: small(frame.stride, "stride")?,
            format,
        })
    }
}

impl DgNorm {
    /// Scale and shift computed exactly as `preprocess::normalise_into` computes them (the same f32
    /// operations), so the kernels' values equal the reference's.
    pub fn of(spec: &InputSpec) -> DgNorm {
        DgNorm {
            scale: std::array::from_fn(|c| 1.0 / (255.0 * spec.std[c])),
            shift: std::array::from_fn(|c| spec.mean[c] / spec.std[c]),
            layout: match spec.layout {
                Layout::Nhwc => 0,
                Layout::Nchw => 1,
            },
            bgr: i32::from(spec.colour == ChannelOrder::Bgr),
        }
    }
}

/// Checks an output size for the kernels: non-empty and small enough for their `i32` coordinates.
pub fn output_size(width: usize, height: usize) -> Result<(i32, i32)> {
    ensure!(width > 0 && height > 0, "an output of {width}x{height} pixels is empty");
    ensure!(width <= 1 << 15 && height <= 1 << 15, "an output of {width}x{height} pixels is too large");
    Ok((width as i32, height as i32))
}

/// The grid that covers `width` × `height` output pixels with `BLOCK` × `BLOCK` blocks.
pub fn grid(width: u32, height: u32) -> (u32, u32) {
    (width.div_ceil(BLOCK), height.div_ceil(BLOCK))
}

/// One crop the crops kernel makes: the map from crop to frame pixels, its size, and what it is written as.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CropJob {
    pub map: Affine,
    pub width: usize,
    pub height: usize,
    /// True: 8-bit RGB (tight rows) into the image buffer; false: normalised floats into the tensor buffer.
    pub rgb: bool,
}

/// How one launch of the crops kernel covers its jobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CropPlan {
    /// Floats of the tensor buffer and bytes of the image buffer the crops fill.
    pub floats: usize,
    pub bytes: usize,
    /// Blocks along x and y: enough for the widest and the tallest crop (grid z is the crop).
    pub grid: (u32, u32),
}

/// Lays the jobs out one after another in the two output buffers (into `crops`, the kernel's job list) and
/// checks that outputs of `tensor_len` floats and `image_len` bytes hold them.
pub fn plan_crops(
    jobs: &[CropJob],
    tensor_len: usize,
    image_len: usize,
    crops: &mut Vec<DgCrop>,
) -> Result<CropPlan> {
    crops.clear();
    let (mut floats, mut bytes) = (0usize, 0usize);
    let (mut widest, mut tallest) = (0u32, 0u32);
    for job in jobs {
        let (width, height) = output_size(job.width, job.height)?;
        let values = job.width * job.height * 3;
        let offset = if job.rgb { &mut bytes } else { &mut floats };
        crops.push(DgCrop {
            map: job.map,
            taps: job.map.taps() as i32,
            width,
            height,
            rgb: i32::from(job.rgb),
            offset: *offset as u64,
        });
        *offset += values;
        (widest, tallest) = (widest.max(width as u32), tallest.max(height as u32));
    }
    ensure!(
        tensor_len >= floats && image_len >= bytes,
        "crop outputs of {tensor_len} floats and {image_len} bytes; the crops need {floats} and {bytes}"
    );
    Ok(CropPlan { floats, bytes, grid: grid(widest, tallest) })
}
