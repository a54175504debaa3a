//! The kernels on the GPU through cudarc: probing without panicking, NVRTC compilation for the device's own
//! architecture with an on-disk cache, buffers allocated once, and the two launchers.
//!
//! cudarc loads libcuda and libnvrtc at run time (`dynamic-loading`), so the runtime builds and starts on
//! machines without CUDA; but its calls panic when a library is missing, so `crate::gpu::probe` checks first, and nothing
//! here touches cudarc before `probe` has said yes.

use super::abi::{grid, plan_crops, CropJob, CropPlan, DgCrop, DgFrame, DgNorm, BLOCK};
use super::source;
use super::Kernels;
use crate::frame::Frame;
use crate::gpu::{probe, GpuFault};
use crate::manifest::InputSpec;
use crate::preprocess::Affine;
use anyhow::{bail, ensure, Context, Result};
use cudarc::driver::{
    sys, CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr, DriverError,
    LaunchConfig, PinnedHostSlice, ValidAsZeroBits,
};
use cudarc::nvrtc;
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

// SAFETY: plain `repr(C)` values whose layout matches the kernels' structs (warp.cuh, crops.cu).
unsafe impl DeviceRepr for DgFrame {}
unsafe impl DeviceRepr for Affine {}
unsafe impl DeviceRepr for DgNorm {}
unsafe impl DeviceRepr for DgCrop {}
// SAFETY: all-zero bytes are a valid DgCrop (numbers only).
unsafe impl ValidAsZeroBits for DgCrop {}

pub use super::abi::MAX_CROPS;

/// NVRTC's version (major, minor). Only after `nvrtc_present`.
pub fn nvrtc_version() -> Result<(i32, i32)> {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: writes two ints; the library is loaded (checked by the caller).
    unsafe { nvrtc::sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|error| anyhow::anyhow!("nvrtcVersion: {error:?}"))?;
    Ok((major, minor))
}

/// Whether libnvrtc can be loaded (the compiler alone: no driver or GPU needed).
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen the library.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Compiles the kernels for `arch` (e.g. `sm_87`) to a CUBIN with the runtime's options. Needs libnvrtc only
/// (no GPU). A compile error comes back with NVRTC's log.
pub fn compile(arch: &str) -> Result<Vec<u8>> {
    compile_source(&source::program(), arch)
}

fn compile_source(source: &str, arch: &str) -> Result<Vec<u8>> {
    ensure!(nvrtc_present(), "no NVRTC library (libnvrtc) on this machine");
    let program = CString::new(source).context("kernel source holds a NUL byte")?;
    let name = c"deepgate_kernels.cu";
    let nvrtc_error =
        |what: &str, error: nvrtc::result::NvrtcError| anyhow::anyhow!("NVRTC {what}: {error:?}");
    let handle = nvrtc::result::create_program(&program, Some(name)).map_err(|e| nvrtc_error("create", e))?;
    let mut options: Vec<String> = source::OPTIONS.iter().map(|option| option.to_string()).collect();
    options.push(format!("--gpu-architecture={arch}"));
    // SAFETY: `handle` is a live program; it is destroyed on every path below.
    let result = (|| -> Result<Vec<u8>> {
        if let Err(error) = unsafe { nvrtc::result::compile_program(handle, &options) } {
            let log = unsafe { nvrtc::result::get_program_log(handle) }.unwrap_or_default();
            let log: Vec<u8> = log.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
            bail!(
                "NVRTC could not compile the kernels for {arch} ({error:?}):\n{}",
                String::from_utf8_lossy(&log)
            );
        }
        let mut size = 0usize;
        unsafe { nvrtc::sys::nvrtcGetCUBINSize(handle, &mut size) }
            .result()
            .map_err(|e| nvrtc_error("CUBIN size", e))?;
        ensure!(size > 0, "NVRTC produced no CUBIN for {arch} (a virtual architecture?)");
        let mut cubin = vec![0u8; size];
        unsafe { nvrtc::sys::nvrtcGetCUBIN(handle, cubin.as_mut_ptr().cast()) }
            .result()
            .map_err(|e| nvrtc_error("CUBIN", e))?;
        Ok(cubin)
    })();
    // SAFETY: destroyed once, after its last use.
    if let Err(error) = unsafe { nvrtc::result::destroy_program(handle) } {
        log::warn!("NVRTC: destroying the kernel program: {error:?}");
    }
    result
}

/// The kernels for `arch`, from the on-disk cache when it holds this source, options, architecture and NVRTC
/// version; otherwise compiled and stored there (best effort: a cache that cannot be written is logged and
/// the run goes on). Returns the CUBIN and where it came from.
pub fn cached_kernels(
    cache: Option<&Path>,
    arch: &str,
    nvrtc_version: (i32, i32),
) -> Result<(Vec<u8>, String)> {
    let key = source::cache_key(arch, nvrtc_version);
    let path = cache.map(|directory| directory.join(format!("{key}.cubin")));
    if let Some(path) = &path {
        if let Ok(cubin) = std::fs::read(path) {
            // An ELF header at least: a truncated or foreign file is compiled afresh and overwritten.
            if cubin.len() > 64 && cubin.starts_with(b"\x7fELF") {
                return Ok((cubin, format!("cache {}", path.display())));
            }
            log::warn!("kernel cache {} is not a CUBIN; compiling afresh", path.display());
        }
    }
    let start = Instant::now();
    let cubin = compile(arch)?;
    let how = format!(
        "compiled by NVRTC {}.{} in {} ms",
        nvrtc_version.0,
        nvrtc_version.1,
        start.elapsed().as_millis()
    );
    if let Some(path) = &path {
        if let Err(error) = store(path, &cubin) {
            log::warn!(
                "kernel cache {}: {error:#}; the kernels will be compiled again next start",
                path.display()
            );
        }
    }
    Ok((cubin, how))
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a reader never sees half a file.
fn store(path: &Path, bytes: &[u8]) -> Result<()> {
    let directory = path.parent().context("cache path has no directory")?;
    std::fs::create_dir_all(directory).with_context(|| format!("creating {}", directory.display()))?;
    let temporary = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&temporary, bytes).with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("renaming to {}", path.display()))
}

/// The kernel cache directory when the config names none: systemd's `CacheDirectory` (`$CACHE_DIRECTORY`),
/// else `$XDG_CACHE_HOME/deepgate`, else `~/.cache/deepgate`.
pub fn default_cache() -> Option<PathBuf> {
    let from = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty()).map(PathBuf::from);
    from("CACHE_DIRECTORY")
        .map(|directory| directory.join("kernels"))
        .or_else(|| from("XDG_CACHE_HOME").map(|directory| directory.join("deepgate/kernels")))
        .or_else(|| from("HOME").map(|home| home.join(".cache/deepgate/kernels")))
}

/// A CUDA driver error as a `GpuFault` with its name: the device can no longer be trusted.
fn driver_error(error: DriverError) -> anyhow::Error {
    GpuFault::error(format!("CUDA: {error}"))
}

/// The GPU the path runs on, as logged at start.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    pub name: String,
    pub capability: (i32, i32),
    pub memory_mib: usize,
    /// CUDA driver version as the driver reports it (12020 = 12.2).
    pub driver: i32,
    pub nvrtc: (i32, i32),
    /// Integrated GPU sharing the board's memory (Tegra).
    pub integrated: bool,
}

impl DeviceInfo {
    pub fn arch(&self) -> String {
        format!("sm_{}{}", self.capability.0, self.capability.1)
    }
}

impl std::fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}, {} MiB{}, driver {}.{}, NVRTC {}.{})",
            self.name,
            self.arch(),
            self.memory_mib,
            if self.integrated { ", integrated" } else { "" },
            self.driver / 1000,
            self.driver % 1000 / 10,
            self.nvrtc.0,
            self.nvrtc.1
        )
    }
}

/// Choices for the GPU path from the board config.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Read frames from mapped pinned host memory instead of copying them to the device (Tegra boards, whose
    /// GPU shares the memory).
    pub zero_copy: bool,
    /// Where compiled kernels are kept between runs; None: not kept.
    pub cache: Option<PathBuf>,
    /// Debug switch (`DEEPGATE_CUDA_FAULT_AT`): the upload of this frame (counting from 0) makes a real CUDA
    /// fault, an illegal address, which is sticky: the tests use it to prove the fallback.
    pub fault_at: Option<u64>,
}

/// One kernel argument as `cuLaunchKernel` takes it: a pointer to the argument's value, which must stay alive
/// and unmoved until the launch call returns.
fn arg<T>(value: &T) -> *mut std::ffi::c_void {
    value as *const T as *mut std::ffi::c_void
}

/// Launches `function` on `stream` with `params` (from `arg`, in the kernel's parameter order). Unlike cudarc's
/// launch builder, which collects its arguments and events in `Vec`s, this allocates nothing, so a frame's
/// launches cost no heap allocation. The builder's events order work across streams; there is one stream here,
/// which orders everything, and the device pointers' guards (`device_ptr`) still record their uses.
///
/// SAFETY: `params` must match the kernel's parameters in number, type and order, and every buffer it points
/// into must outlive the work queued on `stream`.
unsafe fn launch(
    stream: &CudaStream,
    function: &CudaFunction,
    config: LaunchConfig,
    params: &mut [*mut std::ffi::c_void],
) -> Result<()> {
    stream.context().bind_to_thread().map_err(driver_error)?;
    // SAFETY: as the caller promised; the function and the stream belong to the context just bound.
    unsafe {
        cudarc::driver::result::launch_kernel(
            function.cu_function(),
            config.grid_dim,
            config.block_dim,
            config.shared_mem_bytes,
            stream.cu_stream(),
            params,
        )
    }
    .map_err(driver_error)
}

/// A device buffer with its pinned host twin, grown on demand and otherwise reused frame after frame.
struct Staged<T: DeviceRepr + ValidAsZeroBits> {
    device: CudaSlice<T>,
    host: PinnedHostSlice<T>,
}

impl<T: DeviceRepr + ValidAsZeroBits> Staged<T> {
    fn new(context: &Arc<CudaContext>, stream: &Arc<CudaStream>, len: usize) -> Result<Staged<T>> {
        let len = len.max(1);
        Ok(Staged {
            device: stream.alloc_zeros::<T>(len).map_err(driver_error)?,
            // SAFETY: flags 0 is ordinary pinned memory (cudarc's default, write-combined, is slow to read).
            host: unsafe { context.alloc_pinned_with_flags::<T>(len, 0) }.map_err(driver_error)?,
        })
    }

    fn ensure(
        slot: &mut Option<Staged<T>>,
        context: &Arc<CudaContext>,
        stream: &Arc<CudaStream>,
        len: usize,
    ) -> Result<()> {
        if slot.as_ref().is_none_or(|staged| staged.device.len() < len) {
            *slot = None;
            *slot = Some(Staged::new(context, stream, len)?);
        }
        Ok(())
    }
}

/// The frame as the kernels read it: copied to the device, or in mapped host memory (zero-copy).
enum FrameBuffer {
    Copied(Staged<u8>),
    Mapped { host: PinnedHostSlice<u8>, device_pointer: u64 },
}

/// The GPU path: one context, one stream, the compiled kernels and every buffer, allocated once (grown only
/// when a larger frame or output arrives, which a camera's fixed mode never does).
pub struct CudaKernels {
    info: DeviceInfo,
    context: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    letterbox: CudaFunction,
    crops: CudaFunction,
    options: GpuOptions,
    frame: Option<FrameBuffer>,
    /// The uploaded frame, as the kernels see it.
    described: Option<DgFrame>,
    detector: Option<Staged<f32>>,
    jobs: CudaSlice<DgCrop>,
    plan: Vec<DgCrop>,
    tensors: Option<Staged<f32>>,
    images: Option<Staged<u8>>,
    uploads: u64,
    /// Where the kernels came from: the cache file, or NVRTC and how long it took.
    kernels_from: String,
}

impl CudaKernels {
    /// The GPU path, or why it cannot be had here: `probe`, then `new`, with a panic inside cudarc contained
    /// (it becomes the error). The one way `run`, `probe --gpu` and `bench-gpu` open it.
    pub fn open(options: GpuOptions) -> Result<CudaKernels> {
        crate::gpu::contain("the CUDA library (opening the GPU)", || {
            probe()?;
            CudaKernels::new(options)
        })
    }

    /// Opens GPU 0, compiles (or loads from the cache) the kernels for its architecture and allocates the
    /// fixed buffers. Call `probe` first (`open` does both).
    pub fn new(options: GpuOptions) -> Result<CudaKernels> {
        let context = CudaContext::new(0).map_err(driver_error).context("opening GPU 0")?;
        let capability = context.compute_capability().map_err(driver_error)?;
        let mut driver = 0;
        // SAFETY: writes one int; the driver library is loaded (probed).
        unsafe { sys::cuDriverGetVersion(&mut driver) }.result().map_err(driver_error)?;
        let integrated = context
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_INTEGRATED)
            .map_err(driver_error)?;
        let info = DeviceInfo {
            name: context.name().map_err(driver_error)?,
            capability,
            memory_mib: context.total_mem().map_err(driver_error)? >> 20,
            driver,
            nvrtc: nvrtc_version()?,
            integrated: integrated != 0,
        };
        let (cubin, how) = cached_kernels(options.cache.as_deref(), &info.arch(), info.nvrtc)?;
        let module = context
            .load_module(cudarc::nvrtc::Ptx::from_binary(cubin))
            .map_err(driver_error)
            .context("loading the compiled kernels")?;
        let letterbox = module.load_function(source::LETTERBOX_KERNEL).map_err(driver_error)?;
        let crops = module.load_function(source::CROPS_KERNEL).map_err(driver_error)?;
        let stream = context.new_stream().map_err(driver_error)?;
        let jobs = stream.alloc_zeros::<DgCrop>(MAX_CROPS).map_err(driver_error)?;
        log::info!(
            "GPU: {info}; kernels {how}; frames {}",
            if options.zero_copy {
                "read in place from mapped host memory (zero-copy)"
            } else {
                "copied to the device"
            }
        );
        Ok(CudaKernels {
            info,
            context,
            stream,
            letterbox,
            crops,
            options,
            frame: None,
            described: None,
            detector: None,
            jobs,
            plan: Vec::with_capacity(MAX_CROPS),
            tensors: None,
            images: None,
            uploads: 0,
            kernels_from: how,
        })
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// Where the kernels came from: the cache file, or NVRTC and how long it took.
    pub fn kernels_from(&self) -> &str {
        &self.kernels_from
    }

    fn uploaded(&self) -> Result<DgFrame> {
        self.described.ok_or_else(|| GpuFault::error("no frame uploaded"))
    }

    /// Launches dg_letterbox on the uploaded frame into the device's detector buffer; returns the values written.
    fn launch_letterbox(&mut self, map: &Affine, spec: &InputSpec) -> Result<usize> {
        let frame = self.uploaded()?;
        let (width, height) = spec.image_size();
        let (w, h) = super::abi::output_size(width, height)?;
        let len = width * height * 3;
        Staged::ensure(&mut self.detector, &self.context, &self.stream, len)?;
        let staged = self.detector.as_mut().ok_or_else(|| GpuFault::error("no detector buffer"))?;
        let (map, taps, norm) = (*map, map.taps() as i32, DgNorm::of(spec));
        let (grid_x, grid_y) = grid(width as u32, height as u32);
        let config =
            LaunchConfig { grid_dim: (grid_x, grid_y, 1), block_dim: (BLOCK, BLOCK, 1), shared_mem_bytes: 0 };
        let (out, _written) = staged.device.device_ptr_mut(&self.stream);
        let mut params = [arg(&frame), arg(&map), arg(&taps), arg(&norm), arg(&w), arg(&h), arg(&out)];
        // SAFETY: the arguments match dg_letterbox's parameters in type and order; the output holds w*h*3
        // floats and the frame buffer `frame.bytes` bytes; the kernel checks both.
        unsafe { launch(&self.stream, &self.letterbox, config, &mut params) }
            .context("launching dg_letterbox")?;
        Ok(len)
    }

    /// The letterbox kernel alone, timed with CUDA events over `repeats` back-to-back launches on the uploaded
    /// frame: milliseconds per launch (for `deepgate bench --gpu`).
    pub fn letterbox_kernel_ms(&mut self, map: &Affine, spec: &InputSpec, repeats: u32) -> Result<f32> {
        let timing = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
        let start = self.context.new_event(timing).map_err(driver_error)?;
        let end = self.context.new_event(timing).map_err(driver_error)?;
        start.record(&self.stream).map_err(driver_error)?;
        for _ in 0..repeats.max(1) {
            self.launch_letterbox(map, spec)?;
        }
        end.record(&self.stream).map_err(driver_error)?;
        let total = start.elapsed_ms(&end).map_err(driver_error)?;
        Ok(total / repeats.max(1) as f32)
    }

    /// The device memory's peak bandwidth in GB/s: twice (double data rate) its clock times its bus width.
    pub fn peak_bandwidth_gbps(&self) -> Result<f64> {
        use sys::CUdevice_attribute::{
            CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH, CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE,
        };
        let clock_khz =
            self.context.attribute(CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE).map_err(driver_error)?;
        let bus_bits =
            self.context.attribute(CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH).map_err(driver_error)?;
        Ok(2.0 * f64::from(clock_khz) * 1e3 * f64::from(bus_bits) / 8.0 / 1e9)
    }
}

impl Kernels for CudaKernels {
    fn name(&self) -> String {
        format!("CUDA on {}", self.info)
    }

    fn upload(&mut self, frame: &Frame) -> Result<()> {
        self.described = None;
        let len = frame.data.len();
        let fault = self.options.fault_at == Some(self.uploads);
        self.uploads += 1;
        let pointer = if self.options.zero_copy {
            if !matches!(&self.frame, Some(FrameBuffer::Mapped { host, .. }) if host.len() >= len) {
                self.frame = None;
                // SAFETY: pinned, mapped into the device's address space.
                let mut host = unsafe {
                    self.context.alloc_pinned_with_flags::<u8>(len.max(1), sys::CU_MEMHOSTALLOC_DEVICEMAP)
                }
                .map_err(driver_error)?;
                let mut device_pointer: sys::CUdeviceptr = 0;
                // SAFETY: `host` is a live mapped allocation.
                unsafe {
                    sys::cuMemHostGetDevicePointer_v2(
                        &mut device_pointer,
                        host.as_mut_ptr().map_err(driver_error)?.cast(),
                        0,
                    )
                }
                .result()
                .map_err(driver_error)?;
                self.frame = Some(FrameBuffer::Mapped { host, device_pointer });
            }
            let Some(FrameBuffer::Mapped { host, device_pointer }) = &mut self.frame else {
                return Err(GpuFault::error("the mapped frame buffer is missing"));
            };
            // The previous frame's kernels finished (every launch is followed by a synchronize).
            host.as_mut_slice().map_err(driver_error)?[..len].copy_from_slice(frame.data);
            *device_pointer
        } else {
            if !matches!(&self.frame, Some(FrameBuffer::Copied(staged)) if staged.device.len() >= len) {
                self.frame = None;
                self.frame = Some(FrameBuffer::Copied(Staged::new(&self.context, &self.stream, len)?));
            }
            let Some(FrameBuffer::Copied(staged)) = &mut self.frame else {
                return Err(GpuFault::error("the device frame buffer is missing"));
            };
            let host = &mut staged.host.as_mut_slice().map_err(driver_error)?[..len];
            host.copy_from_slice(frame.data);
            let mut device = staged.device.slice_mut(0..len);
            self.stream.memcpy_htod(&*host, &mut device).map_err(driver_error)?;
            // The device address of the copy; the stream orders the kernels after the copy.
            let (pointer, _guard) = staged.device.device_ptr(&self.stream);
            pointer
        };
        // The fault injection: an address no allocation has, read by the next kernel.
        let pointer = if fault { 0x10 } else { pointer };
        self.described = Some(DgFrame::describe(frame, pointer)?);
        Ok(())
    }

    fn letterbox(&mut self, map: &Affine, spec: &InputSpec, out: &mut [f32]) -> Result<()> {
        let len = self.launch_letterbox(map, spec)?;
        ensure!(out.len() == len, "detector input of {} values, the spec needs {len}", out.len());
        let staged = self.detector.as_mut().ok_or_else(|| GpuFault::error("no detector buffer"))?;
        self.stream.memcpy_dtoh(&staged.device.slice(0..len), &mut staged.host).map_err(driver_error)?;
        self.stream.synchronize().map_err(driver_error).context("dg_letterbox")?;
        out.copy_from_slice(&staged.host.as_slice().map_err(driver_error)?[..len]);
        Ok(())
    }

    fn crops(
        &mut self,
        jobs: &[CropJob],
        spec: &InputSpec,
        tensors: &mut [f32],
        images: &mut [u8],
    ) -> Result<()> {
        let frame = self.uploaded()?;
        if jobs.is_empty() {
            return Ok(());
        }
        ensure!(jobs.len() <= MAX_CROPS, "{} crops in one launch, at most {MAX_CROPS}", jobs.len());
        let CropPlan { floats, bytes, grid: (grid_x, grid_y) } =
            plan_crops(jobs, tensors.len(), images.len(), &mut self.plan)?;
        Staged::ensure(&mut self.tensors, &self.context, &self.stream, floats)?;
        Staged::ensure(&mut self.images, &self.context, &self.stream, bytes)?;
        let (staged_tensors, staged_images) = (
            self.tensors.as_mut().ok_or_else(|| GpuFault::error("no tensor buffer"))?,
            self.images.as_mut().ok_or_else(|| GpuFault::error("no image buffer"))?,
        );
        let count = self.plan.len() as i32;
        self.stream
            .memcpy_htod(self.plan.as_slice(), &mut self.jobs.slice_mut(0..self.plan.len()))
            .map_err(driver_error)?;
        let config = LaunchConfig {
            grid_dim: (grid_x, grid_y, count as u32),
            block_dim: (BLOCK, BLOCK, 1),
            shared_mem_bytes: 0,
        };
        let norm = DgNorm::of(spec);
        let (tensor_len, image_len) = (staged_tensors.device.len() as u64, staged_images.device.len() as u64);
        {
            // The guards record these uses once the launch is queued, when they drop.
            let (jobs, _read) = self.jobs.device_ptr(&self.stream);
            let (tensor_out, _tensors_written) = staged_tensors.device.device_ptr_mut(&self.stream);
            let (image_out, _images_written) = staged_images.device.device_ptr_mut(&self.stream);
            let mut params = [
                arg(&frame),
                arg(&jobs),
                arg(&count),
                arg(&norm),
                arg(&tensor_out),
                arg(&tensor_len),
                arg(&image_out),
                arg(&image_len),
            ];
            // SAFETY: the arguments match dg_crops's parameters; every crop's offset and size were planned
            // inside the buffers' lengths, which the kernel checks again.
            unsafe { launch(&self.stream, &self.crops, config, &mut params) }
                .context("launching dg_crops")?;
        }
        if floats > 0 {
            self.stream
                .memcpy_dtoh(&staged_tensors.device.slice(0..floats), &mut staged_tensors.host)
                .map_err(driver_error)?;
        }
        if bytes > 0 {
            self.stream
                .memcpy_dtoh(&staged_images.device.slice(0..bytes), &mut staged_images.host)
                .map_err(driver_error)?;
        }
        self.stream.synchronize().map_err(driver_error).context("dg_crops")?;
        tensors[..floats].copy_from_slice(&staged_tensors.host.as_slice().map_err(driver_error)?[..floats]);
        images[..bytes].copy_from_slice(&staged_images.host.as_slice().map_err(driver_error)?[..bytes]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::cuda::parity;

    /// NVRTC is needed; CI provides it (PyPI's NVRTC wheel) and sets DEEPGATE_REQUIRE_NVRTC, so that there a
    /// missing library fails instead of skipping.
    fn nvrtc_or_skip(test: &str) -> bool {
        if nvrtc_present() {
            return true;
        }
        assert!(
            std::env::var_os("DEEPGATE_REQUIRE_NVRTC").is_none(),
            "{test}: DEEPGATE_REQUIRE_NVRTC is set but libnvrtc cannot be loaded (LD_LIBRARY_PATH?)"
        );
        eprintln!("SKIPPED {test}: no libnvrtc on this machine (`cargo xtask ci` provides one)");
        false
    }

    /// A GPU is needed; skipped with a message elsewhere.
    fn gpu_or_skip(test: &str) -> Option<CudaKernels> {
        if let Err(reason) = probe() {
            eprintln!("SKIPPED {test}: no usable GPU here ({reason:#})");
            return None;
        }
        Some(CudaKernels::new(GpuOptions::default()).expect("the GPU path opens where the probe says yes"))
    }

    #[test]
    fn nvrtc_compiles_the_kernels_for_orin_and_the_h100() {
        if !nvrtc_or_skip("nvrtc_compiles_the_kernels_for_orin_and_the_h100") {
            return;
        }
        let version = nvrtc_version().unwrap();
        // sm_87: Jetson Orin (JetPack 6); sm_90: the H100 test machine.
        for arch in ["sm_87", "sm_90"] {
            let cubin = compile(arch).unwrap_or_else(|error| panic!("{arch}: {error:#}"));
            assert!(cubin.starts_with(b"\x7fELF"), "{arch}: not an ELF CUBIN");
            for kernel in [source::LETTERBOX_KERNEL, source::CROPS_KERNEL] {
                let found = cubin.windows(kernel.len()).any(|window| window == kernel.as_bytes());
                assert!(found, "{arch}: the CUBIN has no `{kernel}`");
            }
            eprintln!("NVRTC {}.{}: {arch} CUBIN of {} bytes", version.0, version.1, cubin.len());
        }
    }

    #[test]
    fn a_kernel_that_does_not_compile_is_an_error_with_nvrtcs_log() {
        if !nvrtc_or_skip("a_kernel_that_does_not_compile_is_an_error_with_nvrtcs_log") {
            return;
        }
        let broken = source::program()
            .replace("dg_clamp255(luma + 1.596027f * cv)", "dg_clamp255(luma + undefined_name)");
        let error = format!("{:#}", compile_source(&broken, "sm_87").unwrap_err());
        assert!(error.contains("undefined_name") && error.contains("sm_87"), "{error}");
    }

    #[test]
    fn compiled_kernels_are_cached_by_source_architecture_and_version() {
        if !nvrtc_or_skip("compiled_kernels_are_cached_by_source_architecture_and_version") {
            return;
        }
        let directory = crate::testing::scratch_dir("kernel-cache");
        let version = nvrtc_version().unwrap();
        let (first, how) = cached_kernels(Some(&directory), "sm_87", version).unwrap();
        assert!(how.starts_with("compiled by NVRTC"), "{how}");
        let (second, how) = cached_kernels(Some(&directory), "sm_87", version).unwrap();
        assert!(how.starts_with("cache "), "a restart does not recompile: {how}");
        assert_eq!(first, second);
        // Another architecture is another entry.
        let (_, how) = cached_kernels(Some(&directory), "sm_90", version).unwrap();
        assert!(how.starts_with("compiled by NVRTC"), "{how}");
        // A damaged entry is compiled afresh and replaced.
        let path = directory.join(format!("{}.cubin", source::cache_key("sm_87", version)));
        std::fs::write(&path, b"not a cubin").unwrap();
        let (third, how) = cached_kernels(Some(&directory), "sm_87", version).unwrap();
        assert!(how.starts_with("compiled by NVRTC"), "{how}");
        assert_eq!(third, first);
        assert_eq!(std::fs::read(&path).unwrap(), first);
        std::fs::remove_dir_all(&directory).unwrap();
    }

    #[test]
    fn without_a_gpu_the_probe_says_why_and_nothing_panics() {
        // SAFETY: only tries to dlopen.
        let have_driver = unsafe { cudarc::driver::sys::is_culib_present() };
        match probe() {
            Ok(()) => assert!(have_driver),
            Err(reason) => {
                let reason = format!("{reason:#}");
                assert!(!reason.is_empty());
                if !have_driver {
                    assert!(reason.contains("libcuda"), "{reason}");
                }
                eprintln!("probe: {reason}");
            }
        }
    }

    // The fault injection is tested through the binary (tests/gpu.rs): a sticky fault spoils the process's CUDA
    // context, which the other GPU tests here share.
    #[test]
    fn gpu_kernels_equal_the_cpu_reference_within_one_step() {
        let Some(mut kernels) = gpu_or_skip("gpu_kernels_equal_the_cpu_reference_within_one_step") else {
            return;
        };
        eprintln!("{}", parity::check(&mut kernels, 1.0).unwrap());
        let mut mapped = CudaKernels::new(GpuOptions { zero_copy: true, ..GpuOptions::default() }).unwrap();
        eprintln!("zero-copy: {}", parity::check(&mut mapped, 1.0).unwrap());
    }
}
