//! The kernels built for the host by the C++ compiler over `kernels/host_shim.h` (see build.rs), called with
//! the same argument structs as the CUDA launches: the kernels' logic checked on any machine, GPU or not.
//! Tests only.

use super::abi::{plan_crops, CropJob, DgCrop, DgFrame, DgNorm, BLOCK};
use super::Kernels;
use crate::frame::Frame;
use crate::manifest::InputSpec;
use crate::preprocess::Affine;
use anyhow::{ensure, Context, Result};

extern "C" {
    fn dg_host_letterbox(
        frame: DgFrame,
        map: Affine,
        taps: i32,
        norm: DgNorm,
        width: i32,
        height: i32,
        out: *mut f32,
        block_x: i32,
        block_y: i32,
    );
    #[allow(clippy::too_many_arguments)]
    fn dg_host_crops(
        frame: DgFrame,
        crops: *const DgCrop,
        count: i32,
        norm: DgNorm,
        tensors: *mut f32,
        tensor_len: u64,
        images: *mut u8,
        image_len: u64,
        grid_x: i32,
        grid_y: i32,
        block_x: i32,
        block_y: i32,
    );
}

/// The host build as a `Kernels` backend. Its "device memory" is a copy of the uploaded frame.
#[derive(Default)]
pub struct HostKernels {
    crops: Vec<DgCrop>,
    frame: Vec<u8>,
    described: Option<DgFrame>,
    /// Test switch: fail every call from this upload on (counting from 0), as a dead GPU would (a GPU fault).
    pub fail_from: Option<u64>,
    /// Test switch: refuse this upload with an ordinary error, as the kernels refuse a frame they cannot take.
    pub refuse_at: Option<u64>,
    /// Test switch: panic at this upload, as cudarc or tract-cuda do on some failures.
    pub panic_at: Option<u64>,
    uploads: u64,
}

impl HostKernels {
    fn uploaded(&self) -> Result<DgFrame> {
        self.described.context("no frame uploaded")
    }
}

impl Kernels for HostKernels {
    fn name(&self) -> String {
        "host C++ build of the kernels".into()
    }

    fn upload(&mut self, frame: &Frame) -> Result<()> {
        self.described = None;
        self.uploads += 1;
        if self.fail_from.is_some_and(|from| self.uploads > from) {
            return Err(crate::gpu::GpuFault::error("injected fault"));
        }
        ensure!(self.refuse_at != Some(self.uploads), "injected refusal of frame {}", frame.sequence);
        assert!(self.panic_at != Some(self.uploads), "injected panic");
        self.frame.clear();
        self.frame.extend_from_slice(frame.data);
        self.described = Some(DgFrame::describe(frame, self.frame.as_ptr() as u64)?);
        Ok(())
    }

    fn letterbox(&mut self, map: &Affine, spec: &InputSpec, out: &mut [f32]) -> Result<()> {
        let (width, height) = spec.image_size();
        let (w, h) = super::abi::output_size(width, height)?;
        ensure!(out.len() == width * height * 3, "output of {} values for {width}x{height}", out.len());
        let described = self.uploaded()?;
        // SAFETY: `described` covers exactly the uploaded copy (validated), `out` holds width*height*3 floats, and
        // the kernel writes only inside those bounds (it checks them).
        unsafe {
            dg_host_letterbox(
                described,
                *map,
                map.taps() as i32,
                DgNorm::of(spec),
                w,
                h,
                out.as_mut_ptr(),
                BLOCK as i32,
                BLOCK as i32,
            )
        };
        Ok(())
    }

    fn crops(
        &mut self,
        jobs: &[CropJob],
        spec: &InputSpec,
        tensors: &mut [f32],
        images: &mut [u8],
    ) -> Result<()> {
        let (grid_x, grid_y) = plan_crops(jobs, tensors.len(), images.len(), &mut self.crops)?.grid;
        let described = self.uploaded()?;
        // SAFETY: as for the letterbox; the kernel checks every crop against the buffer lengths passed.
        unsafe {
            dg_host_crops(
                described,
                self.crops.as_ptr(),
                self.crops.len() as i32,
                DgNorm::of(spec),
                tensors.as_mut_ptr(),
                tensors.len() as u64,
                images.as_mut_ptr(),
                images.len() as u64,
                grid_x as i32,
                grid_y as i32,
                BLOCK as i32,
                BLOCK as i32,
            )
        };
        Ok(())
    }
}

#[test]
fn the_host_build_of_the_kernels_equals_the_cpu_reference_bit_for_bit() {
    let report = super::parity::check(&mut HostKernels::default(), 0.0).unwrap();
    eprintln!("{report}");
}
