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
use crate::preprocess::Affine;
use abi::CropJob;
use anyhow::Result;

/// The two kernels as a backend offers them, on the frame last uploaded. Any error means the backend can no
/// longer be trusted (the pipeline then redoes the work on the CPU and stops using it).
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

/// The GPU path as the board config asks for it: `Ok(None)` for the CPU backend; the opened path; or why the
/// GPU cannot be used (no driver, no NVRTC, no device, a compile or load failure). Never panics: cudarc is
/// only touched after the probe, and a panic inside it is caught and reported as the reason.
pub fn open(config: &crate::config::BoardConfig) -> std::result::Result<Option<Box<dyn Kernels>>, String> {
    use crate::config::Backend;
    if config.runtime.backend == Backend::Cpu {
        return Ok(None);
    }
    #[cfg(feature = "cuda")]
    {
        let options = gpu::GpuOptions {
            zero_copy: config.runtime.zero_copy,
            cache: match &config.runtime.kernel_cache {
                Some(path) => Some(config.resolve(path)),
                None => gpu::default_cache(),
            },
            fault_at: std::env::var("DEEPGATE_CUDA_FAULT_AT").ok().and_then(|value| value.parse().ok()),
        };
        match gpu::CudaKernels::open(options) {
            Ok(kernels) => Ok(Some(Box::new(kernels))),
            Err(error) => Err(format!("{error:#}")),
        }
    }
    #[cfg(not(feature = "cuda"))]
    {
        Err("this build has no CUDA path (built without the `cuda` feature)".into())
    }
}
