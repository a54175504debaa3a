//! The pixel work of one frame behind one trait, `PixelWork`: the detector's letterbox and every face's crops.
//! The CPU reference (`CpuWork`) and the GPU kernels (`cuda::KernelWork`) both implement it, so the pipeline
//! never branches on the backend. `Fallback` owns the switch from the GPU to the CPU: it drops the GPU path on
//! a typed GPU fault (`gpu::GpuFault`: a driver error, a contained panic) and redoes that call on the CPU; any
//! other error is that frame's error, and the GPU path stays.

use super::cpu;
use super::cuda::abi::CropJob;
use super::{normalise_into, Affine, RgbImage};
use crate::frame::Frame;
use crate::gpu;
use crate::manifest::InputSpec;
use anyhow::{ensure, Result};

/// The pixel work one frame needs, on `frame` (validated, not MJPEG).
pub trait PixelWork: Send {
    /// A name for logs: "CPU", "CUDA on Orin (sm_87) …".
    fn name(&self) -> String;

    /// Frame → model input through `map` (the letterbox), normalised as `spec` says, into `out`.
    fn letterbox(&mut self, frame: &Frame, map: &Affine, spec: &InputSpec, out: &mut [f32]) -> Result<()>;

    /// Frame → every crop of `jobs`, in order: RGB crops (`rgb`) one after another in `images`, tensors
    /// (normalised as `spec` says) one after another in `tensors`.
    fn crops(
        &mut self,
        frame: &Frame,
        jobs: &[CropJob],
        spec: &InputSpec,
        tensors: &mut [f32],
        images: &mut [u8],
    ) -> Result<()>;
}

/// The CPU reference (`cpu::Warper`, then `normalise_into` for tensors), with the warper's buffers and an 8-bit
/// image per output size kept from call to call, so that steady state allocates nothing.
#[derive(Default)]
pub struct CpuWork {
    scratch: Vec<RgbImage>,
    warper: cpu::Warper,
}

impl CpuWork {
    /// A CPU path with its images for these output sizes allocated now (the pipeline names the sizes it uses;
    /// another size is allocated on first use and kept).
    pub fn with_sizes(sizes: &[(usize, usize)]) -> CpuWork {
        let mut work = CpuWork::default();
        for &(width, height) in sizes {
            work.image_index(width, height);
        }
        work
    }

    /// The index in `scratch` of the kept image of `width` × `height`.
    fn image_index(&mut self, width: usize, height: usize) -> usize {
        match self.scratch.iter().position(|image| (image.width, image.height) == (width, height)) {
            Some(index) => index,
            None => {
                self.scratch.push(RgbImage::new(width, height));
                self.scratch.len() - 1
            }
        }
    }
}

impl PixelWork for CpuWork {
    fn name(&self) -> String {
        "CPU".into()
    }

    fn letterbox(&mut self, frame: &Frame, map: &Affine, spec: &InputSpec, out: &mut [f32]) -> Result<()> {
        let (width, height) = spec.image_size();
        let index = self.image_index(width, height);
        let image = &mut self.scratch[index];
        self.warper.warp(frame, map, image)?;
        normalise_into(image, spec, out)
    }

    fn crops(
        &mut self,
        frame: &Frame,
        jobs: &[CropJob],
        spec: &InputSpec,
        tensors: &mut [f32],
        images: &mut [u8],
    ) -> Result<()> {
        let (mut floats, mut bytes) = (0usize, 0usize);
        // A face's quality crop and classifier crop have the same map when they have the same size: the
        // second is the first's image again, so it is warped once.
        let mut previous: Option<&CropJob> = None;
        for job in jobs {
            let values = job.width * job.height * 3;
            let index = self.image_index(job.width, job.height);
            let image = &mut self.scratch[index];
            let same = previous
                .is_some_and(|last| (last.map, last.width, last.height) == (job.map, job.width, job.height));
            if !same {
                self.warper.warp(frame, &job.map, image)?;
            }
            previous = Some(job);
            if job.rgb {
                ensure!(
                    images.len() >= bytes + values,
                    "crop images of {} bytes; the crops need more",
                    images.len()
                );
                images[bytes..bytes + values].copy_from_slice(&image.data);
                bytes += values;
            } else {
                ensure!(
                    tensors.len() >= floats + values,
                    "crop tensors of {} floats; the crops need more",
                    tensors.len()
                );
                normalise_into(image, spec, &mut tensors[floats..floats + values])?;
                floats += values;
            }
        }
        Ok(())
    }
}

/// The GPU path while it is healthy, and the CPU path it falls back to. The first GPU fault drops the GPU path
/// for good (the run goes on on the CPU; `take_lost` says why, once).
pub struct Fallback {
    gpu: Option<Box<dyn PixelWork>>,
    cpu: CpuWork,
    lost: Option<anyhow::Error>,
}

impl Fallback {
    /// The CPU path alone until `use_gpu`.
    pub fn new(cpu: CpuWork) -> Fallback {
        Fallback { gpu: None, cpu, lost: None }
    }

    /// Hands the pixel work to `gpu` from the next call on.
    pub fn use_gpu(&mut self, gpu: Box<dyn PixelWork>) {
        self.gpu = Some(gpu);
    }

    /// The GPU path's name while it is in use.
    pub fn gpu(&self) -> Option<String> {
        self.gpu.as_ref().map(|gpu| gpu.name())
    }

    /// Why the GPU path was dropped, once.
    pub fn take_lost(&mut self) -> Option<anyhow::Error> {
        self.lost.take()
    }

    /// Runs `work` on the GPU path if there is one (its panics contained); on a GPU fault drops the path and
    /// runs `work` on the CPU. Any other error is returned as it is.
    fn run(&mut self, mut work: impl FnMut(&mut dyn PixelWork) -> Result<()>) -> Result<()> {
        if let Some(gpu) = self.gpu.as_mut() {
            match gpu::contain("the CUDA library", || work(gpu.as_mut())) {
                Ok(()) => return Ok(()),
                Err(error) if gpu::is_fault(&error) => {
                    let name = gpu.name();
                    self.gpu = None;
                    let error = error.context(format!("{name}: the GPU path failed; the CPU takes over"));
                    match &self.lost {
                        None => self.lost = Some(error),
                        Some(_) => log::error!("{error:#}"),
                    }
                }
                Err(error) => return Err(error),
            }
        }
        work(&mut self.cpu)
    }
}

impl PixelWork for Fallback {
    fn name(&self) -> String {
        self.gpu().unwrap_or_else(|| self.cpu.name())
    }

    fn letterbox(&mut self, frame: &Frame, map: &Affine, spec: &InputSpec, out: &mut [f32]) -> Result<()> {
        self.run(|work| work.letterbox(frame, map, spec, out))
    }

    fn crops(
        &mut self,
        frame: &Frame,
        jobs: &[CropJob],
        spec: &InputSpec,
        tensors: &mut [f32],
        images: &mut [u8],
    ) -> Result<()> {
        self.run(|work| work.crops(frame, jobs, spec, tensors, images))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::PixelFormat;
    use crate::gpu::GpuFault;
    use crate::manifest::{ChannelOrder, Layout};

    /// A stand-in GPU path that fails as told, and counts its calls.
    struct Scripted {
        fault: bool,
        calls: u32,
    }

    impl PixelWork for Scripted {
        fn name(&self) -> String {
            "scripted GPU".into()
        }

        fn letterbox(
            &mut self,
            _frame: &Frame,
            _map: &Affine,
            _spec: &InputSpec,
            out: &mut [f32],
        ) -> Result<()> {
            self.calls += 1;
            if self.fault {
                return Err(GpuFault::error("CUDA: an illegal memory access was encountered"));
            }
            anyhow::ensure!(out.len() > 4, "an output of {} values is too small for the kernels", out.len());
            out.fill(7.0);
            Ok(())
        }

        fn crops(
            &mut self,
            _: &Frame,
            _: &[CropJob],
            _: &InputSpec,
            _: &mut [f32],
            _: &mut [u8],
        ) -> Result<()> {
            self.calls += 1;
            Ok(())
        }
    }

    fn spec(side: usize) -> InputSpec {
        InputSpec {
            name: "input".into(),
            shape: [1, side, side, 3],
            layout: Layout::Nhwc,
            colour: ChannelOrder::Rgb,
            mean: [0.5; 3],
            std: [0.5; 3],
        }
    }

    #[test]
    fn only_a_gpu_fault_drops_the_gpu_path_and_the_cpu_redoes_that_call() {
        let data = vec![200u8; 4 * 4 * 3];
        let frame = Frame {
            format: PixelFormat::Rgb24,
            width: 4,
            height: 4,
            stride: 12,
            data: &data,
            source: "test",
            sequence: 0,
            timestamp_ns: 0,
            discontinuity: true,
        };
        let map = Affine { a: 1.0, b: 0.0, c: 0.0, d: 1.0, tx: 0.0, ty: 0.0 };
        let mut fallback = Fallback::new(CpuWork::default());
        fallback.use_gpu(Box::new(Scripted { fault: false, calls: 0 }));

        // Not a GPU fault: the frame's error; the GPU path stays, and nothing is reported lost.
        let mut small = [0.0f32; 3];
        let error = fallback.letterbox(&frame, &map, &spec(1), &mut small).unwrap_err();
        assert!(format!("{error:#}").contains("too small for the kernels"), "{error:#}");
        assert_eq!(fallback.gpu().as_deref(), Some("scripted GPU"));
        assert!(fallback.take_lost().is_none());

        // The GPU's own output while it works.
        let mut out = vec![0.0f32; 4 * 4 * 3];
        fallback.letterbox(&frame, &map, &spec(4), &mut out).unwrap();
        assert!(out.iter().all(|&value| value == 7.0));

        // A GPU fault: the path is dropped, the CPU reference answers that same call, the loss is told once.
        fallback.use_gpu(Box::new(Scripted { fault: true, calls: 0 }));
        fallback.letterbox(&frame, &map, &spec(4), &mut out).unwrap();
        let mut reference = vec![0.0f32; 4 * 4 * 3];
        CpuWork::default().letterbox(&frame, &map, &spec(4), &mut reference).unwrap();
        assert_eq!(out, reference);
        assert!(fallback.gpu().is_none());
        assert_eq!(fallback.name(), "CPU");
        let lost = fallback.take_lost().expect("the loss is told");
        assert!(
            format!("{lost:#}").starts_with("scripted GPU: the GPU path failed; the CPU takes over"),
            "{lost:#}"
        );
        assert!(fallback.take_lost().is_none(), "told once");
    }
}
