//! The GPU platform, shared by preprocessing (`preprocess::cuda`) and inference (`infer`): the probe that comes
//! before anything touches cudarc or tract-cuda, the typed `GpuFault` that says "the GPU can no longer be
//! trusted" (the only error a caller drops its GPU path for), and panic containment.
//!
//! cudarc and tract-cuda panic on some failures (a context or stream that cannot be created, a missing header at
//! kernel compile time) instead of returning an error. The runtime calls them through `contain`, which turns
//! such a panic into a `GpuFault` for the caller to fall back from.
//!
//! A panic anywhere else still means the process cannot be trusted: the relay's panic hook latches the door in
//! its fault state (ARCHITECTURE.md, invariant 12). The hook asks `contained` first, so that a library panic
//! the runtime recovers from does not lock the door until a restart.

use anyhow::Result;
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};

thread_local! {
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Whether this thread is inside `contain`: a panic now is caught and becomes an error.
pub fn contained() -> bool {
    DEPTH.with(|depth| depth.get() > 0)
}

/// Runs `work`; a panic inside it becomes a `GpuFault` saying `what` panicked and its message. Only for calls into
/// libraries whose state the caller drops on error (the GPU path, a GPU model plan): nothing they touched is
/// used again.
pub fn contain<T>(what: &str, work: impl FnOnce() -> Result<T>) -> Result<T> {
    struct Leave;
    impl Drop for Leave {
        fn drop(&mut self) {
            DEPTH.with(|depth| depth.set(depth.get().saturating_sub(1)));
        }
    }
    DEPTH.with(|depth| depth.set(depth.get() + 1));
    let caught = {
        let _leave = Leave;
        catch_unwind(AssertUnwindSafe(work))
    };
    caught.unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("(no message)");
        Err(GpuFault::error(format!("{what} panicked: {message}")))
    })
}

/// The GPU failed (a CUDA driver error, sticky or not; a panic inside a GPU library; a GPU buffer that is not
/// where the path left it): whoever holds a GPU path drops it for the rest of the run and does the work on the
/// CPU. Any other error from a GPU call (a frame the kernels cannot take) is that call's error, not this.
#[derive(Debug)]
pub struct GpuFault {
    message: String,
}

impl GpuFault {
    /// A fault described by `message` (what failed, and the driver's word for it), as an `anyhow` error.
    pub fn error(message: impl std::fmt::Display) -> anyhow::Error {
        anyhow::Error::new(GpuFault { message: message.to_string() })
    }
}

impl std::fmt::Display for GpuFault {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.message)
    }
}

impl std::error::Error for GpuFault {}

/// Whether `error` is, or was caused by, a `GpuFault` (context added on the way up does not hide it).
pub fn is_fault(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| cause.is::<GpuFault>())
}

/// Whether the GPU can be tried: libcuda and libnvrtc load and a device is there. Never panics; the error
/// says what is missing.
#[cfg(feature = "cuda")]
pub fn probe() -> Result<()> {
    use anyhow::{bail, ensure, Context};
    // SAFETY: these only try to dlopen the libraries.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        bail!("no CUDA driver library (libcuda) on this machine");
    }
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        bail!("no NVRTC library (libnvrtc) on this machine: the kernels cannot be compiled");
    }
    let count = cudarc::driver::CudaContext::device_count()
        .map_err(|error| GpuFault::error(format!("CUDA: {error}")))
        .context("counting CUDA devices")?;
    ensure!(count > 0, "the CUDA driver reports no GPU");
    Ok(())
}

/// Without the `cuda` feature there is no GPU to probe.
#[cfg(not(feature = "cuda"))]
pub fn probe() -> Result<()> {
    anyhow::bail!("this build has no CUDA path (built without the `cuda` feature)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_is_recognised_under_context_and_nothing_else_is() {
        use anyhow::Context;
        let fault: Result<()> = Err(GpuFault::error("CUDA: an illegal memory access"));
        let error = fault.context("dg_letterbox").context("frame 3").unwrap_err();
        assert!(is_fault(&error));
        assert_eq!(format!("{error:#}"), "frame 3: dg_letterbox: CUDA: an illegal memory access");
        let other: Result<()> = Err(anyhow::anyhow!("an output of 0x0 pixels is empty"));
        assert!(!is_fault(&other.context("dg_crops").unwrap_err()));
    }

    #[test]
    fn a_panic_becomes_an_error_and_the_thread_is_no_longer_contained() {
        assert!(!contained());
        let inside = contain("the library", || Ok(contained())).unwrap();
        assert!(inside);
        let error = contain::<()>("the library", || panic!("no stream")).unwrap_err();
        assert_eq!(format!("{error}"), "the library panicked: no stream");
        assert!(is_fault(&error), "a contained panic is a GPU fault");
        let error = contain::<()>("it", || Err(anyhow::anyhow!("plain error"))).unwrap_err();
        assert_eq!(format!("{error}"), "plain error");
        assert!(!is_fault(&error), "an ordinary error stays what it is");
        assert!(!contained(), "left after a panic and after an error");
        let nested =
            contain("outer", || contain("inner", || Ok(contained())).map(|inner| inner && contained()));
        assert!(nested.unwrap());
        assert!(!contained());
    }
}
