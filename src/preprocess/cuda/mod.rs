//! The CUDA preprocessing path: hand-written kernels (`kernels/*.cu`, CUDA C) that do the CPU reference's work
//! on the GPU, the argument structs they share with their launchers (`abi`), their source and cache key
//! (`source`), the cudarc launchers (`gpu`, with the `cuda` feature), and the host build of the same source
//! that the tests check against the reference (`host`, `parity`).

pub mod abi;
#[cfg(feature = "cuda")]
pub mod gpu;
pub mod source;

#[cfg(all(test, deepgate_host_kernels))]
pub(crate) mod host;
#[cfg(test)]
pub(crate) mod parity;

use crate::frame::Frame;
use crate::manifest::InputSpec;
use crate::preprocess::work::PixelWork;
use crate::preprocess::{Affine, Backend};
use abi::CropJob;
use anyhow::Result;
use std::path::PathBuf;

/// The two kernels as a backend offers them, on the frame last uploaded. A `gpu::GpuFault` among their errors
/// means the backend can no longer be trusted (`work::Fallback` then redoes the work on the CPU and stops using
/// it); any other error concerns the call (a frame or an output the kernels cannot take).
pub trait Kernels: Send {
    fn name(&self) -> String;
    /// Makes `frame` (validated, not MJPEG) the one the kernels read.
    fn upload(&mut self, frame: &Frame) -> Result<()>;
    /// Frame → model input through `map` (the letterbox), normalised as `spec` says, into `out`.
    fn letterbox(&mut self, map: &Affine, spec: &InputSpec, out: &mut [f32]) -> Result<()>;
    /// Frame → every crop of `jobs` in one launch: tensors (normalised as `spec` says) one after another in
    /// `tensors`, RGB crops one after another in `images`.
    fn crops(
        &mut self,
        jobs: &[CropJob],
        spec: &InputSpec,
        tensors: &mut [f32],
        images: &mut [u8],
    ) -> Result<()>;
}

/// A `Kernels` backend as the pipeline's `PixelWork`: uploads each frame once (the letterbox uploads it; the
/// crops of the same frame reuse it).
pub struct KernelWork {
    kernels: Box<dyn Kernels>,
    /// The frame last uploaded: its data's address and length, and its sequence number.
    uploaded: Option<(usize, usize, u64)>,
}

impl KernelWork {
    pub fn new(kernels: Box<dyn Kernels>) -> KernelWork {
        KernelWork { kernels, uploaded: None }
    }

    fn upload(&mut self, frame: &Frame) -> Result<()> {
        let identity = (frame.data.as_ptr() as usize, frame.data.len(), frame.sequence);
        if self.uploaded != Some(identity) {
            self.uploaded = None;
            self.kernels.upload(frame)?;
            self.uploaded = Some(identity);
        }
        Ok(())
    }
}

impl PixelWork for KernelWork {
    fn name(&self) -> String {
        self.kernels.name()
    }

    fn letterbox(&mut self, frame: &Frame, map: &Affine, spec: &InputSpec, out: &mut [f32]) -> Result<()> {
        // Every frame is uploaded anew, even one lent from the same buffer with the same number.
        self.uploaded = None;
        self.upload(frame)?;
        self.kernels.letterbox(map, spec, out)
    }

    fn crops(
        &mut self,
        frame: &Frame,
        jobs: &[CropJob],
        spec: &InputSpec,
        tensors: &mut [f32],
        images: &mut [u8],
    ) -> Result<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        self.upload(frame)?;
        self.kernels.crops(jobs, spec, tensors, images)
    }
}

/// The board's `[runtime]` keys that concern the GPU path, paths already resolved.
#[derive(Clone, Debug)]
pub struct CudaOptions {
    pub backend: Backend,
    /// Read frames from mapped pinned host memory instead of copying them (`zero_copy`).
    pub zero_copy: bool,
    /// Where compiled kernels are kept (`kernel_cache`); `None`: the default cache directory.
    pub kernel_cache: Option<PathBuf>,
}

/// The GPU path as `options` ask for it: `Ok(None)` for the CPU backend; the opened path; or why the GPU
/// cannot be used (no driver, no NVRTC, no device, a compile or load failure). Never panics: cudarc is only
/// touched after the probe, and a panic inside it is caught and reported as the reason.
pub fn open(options: &CudaOptions) -> Result<Option<KernelWork>> {
    if options.backend == Backend::Cpu {
        return Ok(None);
    }
    #[cfg(feature = "cuda")]
    {
        let options = gpu::GpuOptions {
            zero_copy: options.zero_copy,
            cache: options.kernel_cache.clone().or_else(gpu::default_cache),
            fault_at: std::env::var("DEEPGATE_CUDA_FAULT_AT").ok().and_then(|value| value.parse().ok()),
        };
        Ok(Some(KernelWork::new(Box::new(gpu::CudaKernels::open(options)?))))
    }
    #[cfg(not(feature = "cuda"))]
    {
        anyhow::bail!("this build has no CUDA path (built without the `cuda` feature)")
    }
}
